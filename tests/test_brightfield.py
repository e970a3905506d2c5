"""Brightfield scans end to end: modality, the brightfield model, pyramid levels, seams."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from cellseg.io import open_labels
from cellseg.metrics import match_instances
from cellseg.stages import plan, segment
from cellseg.synth import write_brightfield_scan


def _labels(outdir, name):
    return np.asarray(open_labels(outdir / f"{name}.ome.zarr")[...])


@pytest.fixture(scope="module")
def he_scan(tmp_path_factory):
    """A 600² synthetic H&E scan at 0.35 µm with its true nuclei."""
    folder = tmp_path_factory.mktemp("he")
    image, labels = write_brightfield_scan(
        folder / "he.ome.tif",
        folder / "he_labels.tif",
        shape=(600, 600),
        spacing=(0.35, 0.35),
        seed=3,
    )
    return image, tifffile.imread(labels)


@pytest.fixture(scope="module")
def he_one_tile(he_scan, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    segment(he_scan[0], out, tile_size=1024, show_progress=False)
    return out


def test_brightfield_model_finds_the_nuclei(he_scan, he_one_tile):
    info = json.loads((he_one_tile / "work/ingest.json").read_text())
    assert info["modality"] == "brightfield" and info["stain"]["kind"] == "he"
    content = json.loads((he_one_tile / "work/tiles.json").read_text())
    assert content["backend"]["model"] == "brightfield2d"
    m = match_instances(he_scan[1], _labels(he_one_tile, "he"), 0.5)
    assert m["f1"] >= 0.85, m


def test_brightfield_tiled_equals_one_tile(he_scan, he_one_tile, tmp_path):
    segment(he_scan[0], tmp_path, tile_size=256, show_progress=False)
    m = match_instances(_labels(he_one_tile, "he"), _labels(tmp_path, "he"), 0.5)
    assert m["f1"] >= 0.99, m


def test_coarser_level_gives_full_resolution_labels(tmp_path):
    """Segmenting level 1 of a 40×-like scan: labels on the full grid, the same nuclei."""
    image, truth = write_brightfield_scan(
        tmp_path / "fine.ome.tif",
        tmp_path / "fine_labels.tif",
        shape=(1100, 1100),
        spacing=(0.25, 0.25),
        seed=4,
    )
    truth = tifffile.imread(truth)
    runs = {}
    for level in (0, 1):
        out = tmp_path / f"L{level}"
        segment(image, out, backend="classical", level=level, show_progress=False)
        assert json.loads((out / "work/tiles.json").read_text())["level"] == level
        runs[level] = _labels(out, "fine")
        assert runs[level].shape == truth.shape
    m = match_instances(runs[0], runs[1], 0.5)
    assert m["f1"] >= 0.85, m
    with pytest.raises(Exception, match="level 5 does not exist"):
        plan(tmp_path / "L0", backend="classical", level=5)


@pytest.mark.parametrize(
    "modality, pixel, levels, expected",
    [
        ("brightfield", 0.25, 4, 1),  # 40×: level 1 is the model's 0.5 µm
        ("brightfield", 0.5, 4, 0),  # 20×: already there
        ("brightfield", 0.12, 4, 2),  # 80×: two levels up
        ("brightfield", 0.12, 2, 1),  # ... as far as the pyramid goes
        ("brightfield", 1.0, 4, 0),  # 10×: never coarser, zoomed up instead
        ("fluorescence", 0.25, 4, 0),
    ],
)
def test_level_auto_follows_the_models_pixel_size(modality, pixel, levels, expected):
    from cellseg.segmentation import get_backend
    from cellseg.stages.plan import pyramid_level

    be = get_backend("model", "brightfield2d", ndim=2)
    info = {"modality": modality, "spacing": [pixel, pixel]}
    assert pyramid_level("auto", info, be, levels) == expected
