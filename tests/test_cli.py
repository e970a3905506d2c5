"""End to end through the command line: `cellseg segment` and the stage commands."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from cellseg import stages
from cellseg.cli import build_parser, main
from cellseg.config import DEFAULTS, load_schema
from cellseg.io import open_image, open_labels
from cellseg.metrics import match_instances
from cellseg.synth import write_synthetic_scan


@pytest.fixture(scope="module")
def scan2d_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan2d")
    img, lab = write_synthetic_scan(
        d / "nuclei.ome.tif", d / "nuclei_labels.tif", shape=(256, 240), spacing=(0.5, 0.5), seed=21
    )
    return img, lab


@pytest.fixture(scope="module")
def segmented2d(scan2d_file, tmp_path_factory):
    """The same scan segmented with 64-px tiles and as one tile."""
    out = tmp_path_factory.mktemp("seg2d")
    img, _ = scan2d_file
    assert (
        main(
            [
                "-q",
                "segment",
                str(img),
                "-o",
                str(out / "tiled"),
                "--tile-size",
                "64",
                "--tiles-per-batch",
                "5",
            ]
        )
        == 0
    )
    assert main(["-q", "segment", str(img), "-o", str(out / "one"), "--tile-size", "4096"]) == 0
    return out


def _labels(outdir, name="nuclei"):
    return np.asarray(open_labels(outdir / f"{name}.ome.zarr", "cells")[...])


@pytest.mark.slow
def test_tiled_matches_one_tile(segmented2d):
    tiled, one = _labels(segmented2d / "tiled"), _labels(segmented2d / "one")
    assert tiled.dtype == np.uint32 and tiled.shape == (256, 240)
    r = match_instances(one, tiled, 0.5)
    assert one.max() > 50
    assert r["f1"] >= 0.99, r


def test_table_matches_labels_and_units(segmented2d):
    out = segmented2d / "tiled"
    labels = _labels(out)
    table = pd.read_parquet(out / "cells.parquet")
    ids = np.unique(labels[labels > 0])
    assert table["cell_id"].is_unique
    assert np.array_equal(np.sort(table["cell_id"].to_numpy()), ids)
    # physical units: 0.5 µm pixels → 0.25 µm² per pixel
    assert np.allclose(table["area_um2"], table["n_pixels"] * 0.25)
    # hand-check one cell against the label image
    row = table.iloc[len(table) // 2]
    yy, xx = np.nonzero(labels == row["cell_id"])
    assert row["n_pixels"] == yy.size
    assert row["centroid_y_um"] == pytest.approx(yy.mean() * 0.5)
    assert row["centroid_x_um"] == pytest.approx(xx.mean() * 0.5)
    assert row["bbox_y_start_px"] == yy.min() and row["bbox_x_stop_px"] == xx.max() + 1
    image = np.asarray(open_image(out / "nuclei.ome.zarr").data[0].compute())
    assert row["intensity_mean_c0"] == pytest.approx(image[yy, xx].mean())


@pytest.mark.slow
def test_ids_identical_across_runs(segmented2d, scan2d_file, tmp_path):
    img, _ = scan2d_file
    # the same command as the fixture's "tiled" run, in another folder
    args = ["-q", "segment", str(img), "-o", str(tmp_path), "--tile-size", "64"]
    assert main([*args, "--tiles-per-batch", "5"]) == 0
    assert np.array_equal(_labels(tmp_path), _labels(segmented2d / "tiled"))
    a = pd.read_parquet(tmp_path / "cells.parquet")
    b = pd.read_parquet(segmented2d / "tiled" / "cells.parquet")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_rerun_resumes_after_lost_outputs(scan2d_file, tmp_path):
    img, _ = scan2d_file
    args = [
        "-q",
        "segment",
        str(img),
        "-o",
        str(tmp_path),
        "--tile-size",
        "64",
        "--tiles-per-batch",
        "4",
    ]
    assert main(args) == 0
    before = _labels(tmp_path)
    table = (tmp_path / "cells.parquet").read_bytes()
    # as if killed during segmenting: a batch and everything after it are missing
    (tmp_path / "work" / "tiles" / "b0001.npz").unlink()
    (tmp_path / "work" / "stitch.json").unlink()
    (tmp_path / "cells.parquet").unlink()
    assert main(args) == 0
    assert np.array_equal(_labels(tmp_path), before)
    assert (tmp_path / "cells.parquet").read_bytes() == table


def test_stage_commands_equal_segment(scan2d_file, segmented2d, tmp_path):
    img, _ = scan2d_file
    out = str(tmp_path)
    assert main(["-q", "ingest", str(img), "-o", out]) == 0
    assert main(["-q", "plan", out, "--tile-size", "64", "--tiles-per-batch", "5"]) == 0
    import json

    batches = json.loads((tmp_path / "work" / "tiles.json").read_text())["batches"]
    for b in batches:
        assert main(["-q", "segment-tiles", out, "--batch", b]) == 0
    assert main(["-q", "stitch", out]) == 0
    assert main(["-q", "measure", out]) == 0
    assert np.array_equal(_labels(tmp_path), _labels(segmented2d / "tiled"))


def test_flips_redo_the_tiles_and_are_recorded(scan2d_file, segmented2d, tmp_path):
    """Turning test-time flips on in an existing run re-segments every tile, and the
    table says which options made it."""
    import json
    import shutil

    import pyarrow.parquet as pq
    import tifffile

    img, truth_path = scan2d_file
    out = tmp_path / "run"
    shutil.copytree(segmented2d / "tiled", out)
    args = ["-q", "segment", str(img), "-o", str(out), "--tile-size", "64"]
    assert main([*args, "--tiles-per-batch", "5", "--flips"]) == 0
    plain, flipped = _labels(segmented2d / "tiled"), _labels(out)
    assert not np.array_equal(plain, flipped)
    assert match_instances(tifffile.imread(truth_path), flipped, 0.5)["ap"] >= 0.8
    meta = pq.read_schema(out / "cells.parquet").metadata
    backend = json.loads(meta[b"cellseg.model"])
    assert backend["name"] == "model" and backend["options"] == {"flips": True}


@pytest.mark.slow
def test_3d_with_pixel_size_override(tmp_path):
    img, truth = write_synthetic_scan(
        tmp_path / "stack.ome.tif",
        tmp_path / "stack_labels.tif",
        shape=(16, 96, 96),
        spacing=(1.0, 1.0, 1.0),
        seed=3,
    )
    out_t, out_1 = tmp_path / "tiled", tmp_path / "one"
    common = ["-q", "segment", str(img), "--pixel-size", "2", "0.5", "0.5"]
    assert main([*common, "-o", str(out_t), "--tile-size", "48"]) == 0
    assert main([*common, "-o", str(out_1), "--tile-size", "1000"]) == 0
    tiled, one = _labels(out_t, "stack"), _labels(out_1, "stack")
    assert tiled.shape == (16, 96, 96) and one.max() > 10
    assert match_instances(one, tiled, 0.5)["f1"] >= 0.99
    table = pd.read_parquet(out_t / "cells.parquet")
    assert np.allclose(table["volume_um3"], table["n_pixels"] * 2 * 0.5 * 0.5)
    scan = open_image(out_t / "stack.ome.zarr")
    assert scan.spacing == pytest.approx((2.0, 0.5, 0.5)) and scan.axes == "zyx"


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_bad_inputs_give_one_clear_error(tmp_path, capsys, scan2d_file):
    out = str(tmp_path / "out")
    missing = tmp_path / "nothing.tif"
    assert "nothing.tif" in _error(capsys, ["segment", str(missing), "-o", out])

    bad = tmp_path / "garbage.tif"
    bad.write_bytes(b"this is not a tiff")
    assert "garbage.tif" in _error(capsys, ["segment", str(bad), "-o", out])

    one_d = tmp_path / "line.npy"
    np.save(one_d, np.arange(100, dtype=np.uint16))
    assert "line.npy" in _error(capsys, ["segment", str(one_d), "-o", out])

    flat = tmp_path / "flat.npy"
    np.save(flat, np.full((64, 64), 7, np.uint16))
    err = _error(capsys, ["segment", str(flat), "-o", str(tmp_path / "o2")])
    assert "flat.npy" in err and "constant" in err

    nan = tmp_path / "nan.npy"
    a = np.ones((64, 64), np.float32)
    a[3, 3] = np.nan
    np.save(nan, a)
    err = _error(capsys, ["segment", str(nan), "-o", str(tmp_path / "o3")])
    assert "nan.npy" in err and "NaN" in err

    img, _ = scan2d_file
    err = _error(capsys, ["segment", str(img), "-o", str(tmp_path / "o4"), "--channel", "3"])
    assert img.name in err
    err = _error(capsys, ["segment", str(img), "-o", str(tmp_path / "o5"), "--channel", "GFP"])
    assert img.name in err and "GFP" in err

    err = _error(
        capsys, ["segment", str(img), "-o", str(tmp_path / "o6"), "--pixel-size", "1", "1", "1"]
    )
    assert img.name in err

    err = _error(
        capsys,
        ["segment", str(img), "-o", str(tmp_path / "o7"), "--tile-size", "64", "--overlap", "2"],
    )
    assert "--overlap" in err

    err = _error(
        capsys,
        ["segment", str(img), "-o", str(tmp_path / "o8"), "--backend", "classical", "--flips"],
    )
    assert "flips" in err and "classical" in err

    # nothing of the input was modified
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.parquet"))


def test_defaults_come_from_the_config_schema():
    """The command line's options and the stage functions' keywords share the schema's defaults."""
    schema = load_schema()["properties"]
    args = build_parser().parse_args(["segment", "scan.tif", "-o", "out"])
    assert args.tile_size == [schema["tile_size"]["default"]] == [DEFAULTS["tile_size"]]
    assert args.tiles_per_batch == schema["tiles_per_batch"]["default"]
    assert args.batch_size == schema["batch_size"]["default"]
    assert args.device == schema["device"]["default"]
    for fn in (stages.segment, stages.plan, stages.segment_tiles, stages.segment_array):
        for key, param in inspect.signature(fn).parameters.items():
            if key in ("tile_size", "tiles_per_batch", "batch_size", "device", "overlap"):
                assert param.default == DEFAULTS[key], (fn.__name__, key)
