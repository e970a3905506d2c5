"""bioimage.io packages: export, `bioimageio test`, segmenting with a package, safe loading."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from cellseg.errors import ConfigError
from cellseg.metrics import match_instances
from cellseg.segmentation import get_backend
from cellseg.segmentation.bioimageio import (
    ARCH_FILE,
    export_model,
    is_package,
    load_package,
    read_package,
)
from cellseg.segmentation.network import load_model, models_dir, read_spec


@pytest.fixture(scope="module")
def package2d(tmp_path_factory):
    """The shipped 2D model exported as a bioimage.io package."""
    return export_model("nuclei2d", tmp_path_factory.mktemp("bioimageio") / "nuclei2d.zip")


def _rdf(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def _npy(path: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(path) as zf:
        return np.load(io.BytesIO(zf.read(name)))


def _repack(src: Path, dst: Path, edit=None, replace: dict | None = None) -> Path:
    """A copy of a package with its rdf edited and some files replaced."""
    rdf = _rdf(src)
    if edit is not None:
        edit(rdf)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "rdf.yaml":
                data = yaml.safe_dump(rdf).encode()
            zout.writestr(name, (replace or {}).get(name, data))
    return dst


def test_package_holds_the_bioimageio_05_description(package2d):
    rdf = _rdf(package2d)
    spec = read_spec(models_dir() / "nuclei2d")
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5.")
    assert rdf["license"] == "BSD-3-Clause" and rdf["cite"] and rdf["authors"]
    weights = rdf["weights"]
    assert set(weights) == {"pytorch_state_dict", "torchscript"}
    arch = weights["pytorch_state_dict"]["architecture"]
    assert arch["source"] == ARCH_FILE and arch["callable"] == "cellseg_unet"
    assert arch["kwargs"]["out_channels"] == 2 and arch["kwargs"]["spatial_dims"] == 2
    axes = rdf["inputs"][0]["axes"]
    assert [a["type"] for a in axes] == ["batch", "channel", "space", "space"]
    assert [a["scale"] for a in axes[2:]] == spec["pixel_size_um"]
    assert rdf["config"]["cellseg"]["sha256"] == spec["sha256"]
    with zipfile.ZipFile(package2d) as zf:
        names = set(zf.namelist())
        assert zf.read("cover.png")[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"## Validation" in zf.read("README.md")
    for entry in (rdf["documentation"], *rdf["covers"], weights["torchscript"]):
        assert entry["source"] in names


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_test_output_is_the_models_maps_and_torchscript_reproduces_them(package2d):
    import torch

    x = _npy(package2d, "test_input.npy")
    y = _npy(package2d, "test_output.npy")
    assert x.shape == (1, 1, 96, 96) and y.shape == (1, 2, 96, 96)
    net, _ = load_model(str(models_dir() / "nuclei2d"), "cpu")
    with torch.inference_mode():
        ours = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(y, ours, atol=1e-6)
    assert y[:, 0].max() > 0.9 and y[:, 0].min() < 0.1  # the test image has nuclei
    # what another tool does with the TorchScript weights (cellseg never loads them)
    with zipfile.ZipFile(package2d) as zf:
        scripted = torch.jit.load(io.BytesIO(zf.read("weights_torchscript.pt")))
    with torch.inference_mode():
        theirs = torch.sigmoid(scripted(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(theirs, y, atol=1e-5)


def test_segmenting_with_the_package_or_its_folder_equals_the_model_folder(
    package2d, scan2d, tmp_path
):
    from cellseg.stages import segment_array

    image, truth, spacing = scan2d
    image, truth = image[:160, :160], truth[:160, :160]
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package2d) as zf:
        zf.extractall(folder)
    assert (
        is_package(package2d) and is_package(folder) and not is_package(models_dir() / "nuclei2d")
    )
    results = [
        segment_array(image, spacing=spacing, tile_size=4096, backend=get_backend("model", m))
        for m in ("nuclei2d", str(package2d), str(folder))
    ]
    assert results[0].max() > 10
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])
    assert match_instances(truth, results[1], 0.5)["ap"] > 0.5


def test_loading_refuses_what_is_not_a_state_dict_of_a_known_architecture(package2d, tmp_path):
    import argparse

    import torch

    def drop_state_dict(rdf):
        del rdf["weights"]["pytorch_state_dict"]
        rdf["weights"]["torchscript"].pop("parent")

    only_script = _repack(package2d, tmp_path / "script.zip", drop_state_dict)
    with pytest.raises(ConfigError, match="no PyTorch state-dict weights.*never TorchScript"):
        read_package(only_script)

    def foreign(rdf):
        arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
        arch.pop("source"), arch.pop("sha256")
        arch.update(import_from="os", callable="system", kwargs={"command": "true"})

    with pytest.raises(ConfigError, match="architecture os:system is not one cellseg builds"):
        read_package(_repack(package2d, tmp_path / "foreign.zip", foreign))

    def odd_kwargs(rdf):
        rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["act"] = "!!python"
        rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["hook"] = 1

    with pytest.raises(ConfigError, match="hook"):
        read_package(_repack(package2d, tmp_path / "kwargs.zip", odd_kwargs))

    def remote(rdf):
        rdf["weights"]["pytorch_state_dict"]["source"] = "https://example.org/w.pt"

    with pytest.raises(ConfigError, match="nothing is downloaded"):
        load_package(str(_repack(package2d, tmp_path / "remote.zip", remote)))

    buf = io.BytesIO()
    torch.save({"model": argparse.Namespace(payload="any object")}, buf)

    def unchecked(rdf):
        rdf["weights"]["pytorch_state_dict"].pop("sha256")

    pickled = _repack(package2d, tmp_path / "pickle.zip", unchecked, {"weights.pt": buf.getvalue()})
    with pytest.raises(ConfigError, match="not a plain state dict"):
        load_package(str(pickled))
    tampered = _repack(package2d, tmp_path / "tampered.zip", replace={"weights.pt": b"x"})
    with pytest.raises(ConfigError, match="sha256"):
        load_package(str(tampered))

    def not_ours(rdf):
        del rdf["config"]

    with pytest.raises(ConfigError, match="not a cellseg model package"):
        read_package(_repack(package2d, tmp_path / "other.zip", not_ours))


def test_cli_exports_and_refuses_with_one_line(package2d, tmp_path):
    from cellseg.cli import main

    bad = _repack(package2d, tmp_path / "bad.zip", lambda rdf: rdf["weights"].clear())
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 900, (64, 64), np.uint16))
    proc = subprocess.run(
        [sys.executable, "-m", "cellseg.cli", "segment", str(tmp_path / "x.npy"), "-o",
         str(tmp_path / "out"), "--model", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "no PyTorch state-dict weights" in proc.stderr
    assert main(["export-model", "nuclei2d", "-o", str(tmp_path / "m.txt")]) == 2


@pytest.mark.slow
def test_bioimageio_test_passes_on_every_shipped_model(tmp_path):
    """`bioimageio test` (offline) on a package of every shipped model; 3D packages hold
    the 2D network of the orthogonal views and segment stacks as the model folder does."""
    from cellseg.stages import segment_array
    from cellseg.synth import synthesize_scan

    folders = sorted(p for p in models_dir().iterdir() if (p / "model.json").exists())
    assert {"nuclei2d", "nuclei3d"} <= {p.name for p in folders}
    packages = [export_model(p.name, tmp_path / f"{p.name}.zip") for p in folders]
    code = (
        "import sys\n"
        "from bioimageio.core import test_description\n"
        "for source in sys.argv[1:]:\n"
        "    summary = test_description(source)\n"
        "    print(source, summary.status)\n"
        "    if summary.status != 'passed':\n"
        "        summary.display()\n"
    )
    env = dict(os.environ, BIOIMAGEIO_PERFORM_IO_CHECKS="false")
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, packages)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for package in packages:
        assert f"{package} passed" in proc.stdout, out[-3000:]

    package3d = tmp_path / "nuclei3d.zip"
    rdf = _rdf(package3d)
    assert [a["type"] for a in rdf["inputs"][0]["axes"]][2:] == ["space", "space"]
    assert rdf["config"]["cellseg"]["views"] == "orthogonal"
    with zipfile.ZipFile(package3d) as zf:
        assert b"## 3D" in zf.read("README.md")
    spacing = (2.0, 0.5, 0.5)
    stack, _ = synthesize_scan((8, 64, 64), spacing=spacing, seed=5)
    results = [
        segment_array(stack, spacing=spacing, tile_size=4096, backend=get_backend("model", m))
        for m in ("nuclei3d", str(package3d))
    ]
    assert results[0].max() > 3
    np.testing.assert_array_equal(results[1], results[0])
