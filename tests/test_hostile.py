"""Hostile and unlucky input: one clear error naming the file and the fix, or a correct result.

The scan cases run in one child process under a 2 GiB address-space limit
(``prlimit --as``, as ``resource.RLIMIT_AS``), each through ``cellseg ingest``;
a traceback or a crash for memory fails the case. The other cases (names,
configs, model files, logs, a full disk, CPUs, raw I/O) run in this process.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from cellseg import atomic, parallel
from cellseg.cli import main
from cellseg.config import validate_config
from cellseg.errors import ConfigError, InputError
from cellseg.io import read_scan
from cellseg.review.logs import append_jsonl, read_jsonl

LIMIT_BYTES = 2 << 30
RNG = np.random.default_rng(0)


def _blobs(shape=(64, 64), dtype=np.uint16) -> np.ndarray:
    """A small image with a few bright discs, in `dtype` (its values fit every dtype)."""
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    image = RNG.integers(5, 20, shape).astype(np.float64)
    for cy, cx in ((16, 16), (40, 44), (20, 50)):
        image[..., (yy - cy) ** 2 + (xx - cx) ** 2 < 36] += 90
    return image.astype(dtype)


def _tiff_header_bomb(path: Path) -> None:
    """A 512 × 512 TIFF whose header claims 200000 × 200000 pixels."""
    tifffile.imwrite(path, _blobs((512, 512), np.uint8))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for tag in tif.pages[0].tags.values():
            if tag.code in (256, 257):  # ImageWidth, ImageLength
                fmt = "<H" if tag.dtype == 3 else "<I"
                value = 65535 if fmt == "<H" else 200000
                data[tag.valueoffset : tag.valueoffset + (2 if fmt == "<H" else 4)] = np.array(
                    value, fmt[1:].replace("H", "<u2").replace("I", "<u4")
                ).tobytes()
    path.write_bytes(bytes(data))


def _decompression_bomb(path: Path) -> None:
    """A Zarr array whose one stored chunk (64 KiB) would inflate to 6 GiB of pixels."""
    zarr.open_array(str(path), mode="w", shape=(40000, 40000), chunks=(40000, 40000), dtype="f4")
    chunk = path / "c" / "0" / "0"
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(zlib.compress(bytes(64 << 20), 9))


def _corrupt_zarr(path: Path) -> None:
    z = zarr.open_array(str(path), mode="w", shape=(64, 64), chunks=(32, 32), dtype="u2")
    z[:] = _blobs()
    chunk = next(p for p in sorted(path.rglob("*")) if p.is_file() and p.name[0].isdigit())
    chunk.write_bytes(b"\x00garbage" * 3)


# name → (writer of the case into a path, "ok" or a phrase the error must contain)
CASES: dict[str, tuple] = {
    "tiff_header_bomb": (".tif", _tiff_header_bomb, "header claims"),
    "tiff_truncated": (
        ".tif",
        lambda p: (tifffile.imwrite(p, _blobs((256, 256))), p.write_bytes(p.read_bytes()[:4000])),
        "cut short",
    ),
    "tiff_garbage": (".tif", lambda p: p.write_bytes(os.urandom(4096)), "cannot be read"),
    "empty_file": (".npy", lambda p: p.write_bytes(b""), "npy"),
    "zarr_chunk_count_bomb": (
        ".zarr",
        lambda p: zarr.open_array(
            str(p), mode="w", shape=(10**7, 10**7), chunks=(8, 8), dtype="u1"
        ),
        "chunks",
    ),
    "zarr_chunk_size_bomb": (
        ".zarr",
        lambda p: zarr.open_array(
            str(p), mode="w", shape=(200000, 200000), chunks=(100000, 100000), dtype="u1"
        ),
        "MiB",
    ),
    "zarr_decompression_bomb": (".zarr", _decompression_bomb, "MiB"),
    "zarr_corrupt_chunk": (".zarr", _corrupt_zarr, "cannot be read"),
    "bool": (".npy", lambda p: np.save(p, _blobs() > 50), "data type"),
    "complex": (".npy", lambda p: np.save(p, _blobs().astype(np.complex64)), "data type"),
    "object_pickle": (
        ".npy",
        lambda p: np.save(p, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True),
        "Python objects",
    ),
    "nan": (".npy", lambda p: np.save(p, np.where(_blobs() > 50, np.nan, 1.0)), "NaN"),
    "plus_minus_inf": (
        ".npy",
        lambda p: np.save(p, np.where(_blobs() > 50, np.inf, -np.inf)),
        "infinite",
    ),
    "constant": (".npy", lambda p: np.save(p, np.full((64, 64), 7, np.uint16)), "constant"),
    "time_series_5d": (
        ".tif",
        lambda p: tifffile.imwrite(
            p, _blobs((3, 2, 2, 64, 64), np.uint8), imagej=True, metadata={"axes": "TZCYX"}
        ),
        "time series",
    ),
    **{
        f"dtype_{np.dtype(t).name}": (".npy", lambda p, t=t: np.save(p, _blobs(dtype=t)), "ok")
        for t in (
            np.int8,
            np.uint8,
            np.int16,
            np.uint16,
            np.int32,
            np.uint32,
            np.int64,
            np.uint64,
            np.float16,
            np.float32,
            np.float64,
        )
    },
    "big_endian": (".npy", lambda p: np.save(p, _blobs().astype(">u2")), "ok"),
    "big_endian_tiff": (".tif", lambda p: tifffile.imwrite(p, _blobs(), byteorder=">"), "ok"),
    "negative": (".npy", lambda p: np.save(p, _blobs(dtype=np.int16) - 60), "ok"),
    "one_pixel_thick": (".npy", lambda p: np.save(p, _blobs((1, 64), np.float32)), "ok"),
    "tiny_2x2": (".npy", lambda p: np.save(p, np.array([[1, 2], [3, 4]], np.uint8)), "ok"),
    "many_channels": (
        ".tif",
        lambda p: tifffile.imwrite(
            p, _blobs((1000, 8, 8), np.uint8), photometric="minisblack", metadata={"axes": "CYX"}
        ),
        "ok",
    ),
}

RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys, time, traceback
    import numpy as np
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from cellseg.cli import main
    from cellseg.io import open_image, read_scan
    results = {{}}
    for name, path, out in json.loads(sys.argv[1]):
        err = io.StringIO()
        entry = {{}}
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                entry["rc"] = main(["-q", "ingest", path, "-o", out])
            if entry["rc"] == 0:
                info = json.load(open(out + "/work/ingest.json"))
                got = np.asarray(open_image(out + "/" + info["image"]).data[0])
                want = np.asarray(read_scan(path).data[0]).astype(np.float64)
                entry["equal"] = bool(np.array_equal(got.astype(np.float64), want))
                entry["shape"] = list(got.shape)
        except BaseException as exc:
            entry["rc"] = "traceback"
            entry["traceback"] = traceback.format_exc()[-2000:]
        entry["stderr"] = err.getvalue()[-2000:]
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = entry
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Every case of CASES ingested in one child process under a 2 GiB memory limit."""
    root = tmp_path_factory.mktemp("hostile")
    jobs = []
    for name, (suffix, write, _) in CASES.items():
        path = root / "in" / f"{name}{suffix}"
        path.parent.mkdir(exist_ok=True)
        write(path)
        jobs.append((name, str(path), str(root / "out" / name)))
    code = RUNNER.format(limit=LIMIT_BYTES)
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    print({name: r["seconds"] for name, r in results.items()})
    return root, results


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_scan(matrix, case):
    root, results = matrix
    got = results[case]
    expected = CASES[case][2]
    assert got["rc"] != "traceback", got["traceback"]
    if expected == "ok":
        assert got["rc"] == 0, got["stderr"]
        assert got["equal"], f"{case}: the ingested pixels differ from the input"
        return
    assert got["rc"] == 2, got["stderr"]
    lines = [line for line in got["stderr"].splitlines() if "error:" in line]
    assert len(lines) == 1, got["stderr"]
    assert expected in lines[0] and f"{case}." in lines[0], lines[0]
    assert "Traceback" not in got["stderr"]
    assert not (root / "out" / case / "work" / "ingest.json").exists()


# --------------------------------------------------------------------------- odd paths
def test_odd_paths_unicode_spaces_symlink_long_name(tmp_path):
    real = tmp_path / "dir with spaces ü" / "scän 1.npy"
    real.parent.mkdir()
    np.save(real, _blobs())
    link = tmp_path / "☃ link.npy"
    link.symlink_to(real)
    long = tmp_path / ("l" * 240 + ".npy")
    np.save(long, _blobs())
    for path, name in ((link, "☃ link"), (long, "l" * 200)):
        out = tmp_path / "out" / path.stem[:20]
        assert main(["-q", "ingest", str(path), "-o", str(out)]) == 0
        info = json.loads((out / "work" / "ingest.json").read_text())
        assert info["name"] == name
        assert (out / info["image"]).is_dir()
    assert real.read_bytes()[:6] == b"\x93NUMPY"  # the input is untouched


# --------------------------------------------------------------------------- scan names
@pytest.mark.parametrize("name", ["..", "../escape", "/abs/olute", "a\nb", ".hidden", "-rf"])
def test_name_that_escapes_outdir_is_refused(tmp_path, capsys, name):
    scan = tmp_path / "s.npy"
    np.save(scan, _blobs())
    out = tmp_path / "a" / "out"
    assert main(["-q", "ingest", str(scan), "-o", str(out), f"--name={name}"]) == 2
    assert "is not a scan name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "s.npy"]
    assert not any(p.suffix == ".zarr" for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("name", ["..", ".", ".x", "-x", "a/b", "a\tb"])
def test_config_scan_names_are_checked(name):
    with pytest.raises(ConfigError):
        validate_config({"scans": {name: {"path": "x.tif"}}})


def test_yaml_tags_in_a_config_run_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    config = tmp_path / "train.yaml"
    config.write_text(f'out: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert main(["-q", "train", str(config)]) == 2
    assert "not a plain YAML config" in capsys.readouterr().err
    assert not marker.exists()


# --------------------------------------------------------------------------- model files
class _Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def model_copy(tmp_path):
    import shutil

    from cellseg.segmentation.network import file_sha256

    folder = tmp_path / "model"
    shutil.copytree(Path(__file__).parents[1] / "cellseg" / "data" / "models" / "nuclei2d", folder)
    return folder, file_sha256


def test_pickle_disguised_as_safetensors_is_refused(model_copy, tmp_path):
    from cellseg.segmentation.network import load_model

    folder, sha = model_copy
    marker = tmp_path / "ran"
    weights = folder / "model.safetensors"
    weights.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    spec = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(dict(spec, sha256=sha(weights))))
    with pytest.raises(ConfigError, match="not a safetensors weights file"):
        load_model(str(folder))
    assert not marker.exists()


def test_tampered_weights_fail_their_checksum(model_copy):
    from cellseg.segmentation.network import load_model

    folder, _ = model_copy
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="checksum differs"):
        load_model(str(folder))


def test_model_zip_traversal_and_bomb_are_refused(tmp_path, monkeypatch):
    from cellseg.segmentation import bioimageio

    package = tmp_path / "model.zip"
    with zipfile.ZipFile(package, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rdf.yaml", "type: model\n")
        zf.writestr("weights.pt", b"\0" * (4 << 20))
    opened = bioimageio._Package(package)
    with pytest.raises(ConfigError, match="not a file inside the package"):
        opened.read("../../etc/passwd", "weights")
    monkeypatch.setattr(bioimageio, "MAX_MEMBER_BYTES", 1 << 20)
    with pytest.raises(ConfigError, match="unpacks to 4194304 bytes"):
        opened.read("weights.pt", "weights")


# --------------------------------------------------------------------------- edit logs
def test_torn_last_line_is_recovered_and_the_log_stays_whole(tmp_path):
    log = tmp_path / "edits.jsonl"
    append_jsonl(log, {"n": 1})
    append_jsonl(log, {"n": 2})
    with open(log, "ab") as f:
        f.write(b'{"n": 3, "removed": [1')  # killed in the middle of a write
    assert [r["n"] for r in read_jsonl(log)] == [1, 2]
    append_jsonl(log, {"n": 4})
    assert [r["n"] for r in read_jsonl(log)] == [1, 2, 4]
    assert log.read_text().count("\n") == 3


def test_damage_inside_the_log_is_an_error_naming_the_line(tmp_path):
    log = tmp_path / "edits.jsonl"
    for n in range(3):
        append_jsonl(log, {"n": n})
    lines = log.read_text().splitlines()
    lines[1] = lines[1][:-3]
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"edits.jsonl, line 2: not a JSON record"):
        read_jsonl(log)
    log.write_text('{"n": 0}\n[1, 2]\n')
    with pytest.raises(InputError, match="line 2: a JSON list"):
        read_jsonl(log)


# --------------------------------------------------------------------------- a full disk
def test_full_disk_is_one_clear_error_and_keeps_earlier_outputs(tmp_path, monkeypatch, capsys):
    # the module (the package's attribute of that name is the function)
    stitch_module = importlib.import_module("cellseg.stages.stitch")

    scan = tmp_path / "s.npy"
    np.save(scan, _blobs((96, 96)))
    out = tmp_path / "out"

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(stitch_module, "atomic_write_json", full)
    args = ["-q", "segment", str(scan), "-o", str(out), "--backend", "classical"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "stitch.json" in err and "Traceback" not in err
    kept = {p: p.read_bytes() for p in (out / "work").glob("*.json")}
    assert {p.name for p in kept} == {"ingest.json", "tiles.json"}
    monkeypatch.undo()
    assert main(args) == 0
    assert all(p.read_bytes() == data for p, data in kept.items())
    assert (out / "cells.parquet").exists()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs mounted in tmp_path (root only), and a function that resizes it."""
    where = tmp_path / "small"
    where.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mount.stderr.strip()}")

    def resize(size: str) -> None:
        cmd = ["mount", "-o", f"remount,size={size}", str(where)]
        subprocess.run(cmd, check=True, capture_output=True)

    try:
        yield where, resize
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_really_full_filesystem_then_a_rerun_with_space(tmp_path, small_filesystem, capsys):
    """On a 1 MiB filesystem a run stops with one line; given space, the rerun finishes it."""
    from cellseg.synth import synthesize_scan

    where, resize = small_filesystem
    image, _ = synthesize_scan((512, 512), spacing=(0.5, 0.5), seed=3)
    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, image)
    options = ["--backend", "classical", "--pixel-size", "0.5", "0.5"]
    assert main(["-q", "segment", str(scan), "-o", str(tmp_path / "ref"), *options]) == 0
    capsys.readouterr()

    out = where / "out"
    assert main(["-q", "segment", str(scan), "-o", str(out), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and str(where) in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    resize("16m")
    assert main(["-q", "segment", str(scan), "-o", str(out), *options]) == 0
    ref = pd.read_parquet(tmp_path / "ref" / "cells.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "cells.parquet"), ref)
    labels = zarr.open_array(str(out / "scan.ome.zarr" / "labels" / "cells" / "0"), mode="r")
    ref_labels = zarr.open_array(str(tmp_path / "ref/scan.ome.zarr/labels/cells/0"), mode="r")
    np.testing.assert_array_equal(labels[...], ref_labels[...])
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------- resources
def test_cpu_count_follows_slurm_and_cgroup(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert parallel.available_cpus() == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert parallel.cgroup_cpu_limit(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert parallel.cgroup_cpu_limit(str(tmp_path)) is None
    monkeypatch.setattr(parallel, "cgroup_cpu_limit", lambda: 1)
    assert parallel.available_cpus() == 1


def test_cuda_visible_devices_is_respected():
    code = (
        "from cellseg.segmentation.network import resolve_device\n"
        "from cellseg.errors import ConfigError\n"
        "print(resolve_device('auto'))\n"
        "try:\n    resolve_device('cuda')\nexcept ConfigError as e:\n    print('refused')\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.stdout.split() == ["cpu", "refused"], proc.stderr


# --------------------------------------------------------------------------- raw I/O
def test_raw_io_without_preadv_and_pwrite(tmp_path, monkeypatch):
    image = _blobs((300, 700))
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image)  # uncompressed, untiled: read by positional reads
    monkeypatch.delattr(os, "preadv", raising=False)
    monkeypatch.delattr(os, "pwrite", raising=False)
    assert np.array_equal(np.asarray(read_scan(path).data[0]), image)
    fd = os.open(tmp_path / "rows", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert atomic.write_at(fd, b"abcdef", 10) == 6
        buffer = bytearray(8)
        assert atomic.read_at(fd, memoryview(buffer), 8) == 8
        assert bytes(buffer) == b"\0\0abcdef"
    finally:
        os.close(fd)
