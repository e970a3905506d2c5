"""The oracle test: tiled + stitched labels equal the whole-scan labels."""

import numpy as np
import pytest
from conftest import disk_scene

from cellseg.backends import ClassicalBackend, default_halo_px
from cellseg.metrics import match_instances, same_partition
from cellseg.pipeline import segment_array

BIG = 100_000  # a tile size that gives one tile


def _check(whole, tiled, exact):
    r = match_instances(whole, tiled, 0.5)
    assert r["f1"] >= 0.99, r
    if exact:
        assert same_partition(whole, tiled)


@pytest.mark.parametrize("tile_size", [48, 64, 100, 160])
@pytest.mark.parametrize("overlap", [None, 60])
def test_tiled_equals_whole_2d(scan2d, tile_size, overlap):
    image, _, spacing = scan2d
    whole = segment_array(image, spacing=spacing, tile_size=BIG, backend="classical")
    tiled = segment_array(
        image, spacing=spacing, tile_size=tile_size, overlap=overlap, backend="classical"
    )
    assert whole.max() > 150
    _check(whole, tiled, exact=False)


@pytest.mark.parametrize("tile_size", [(20, 32, 32), 40, 64])
def test_tiled_equals_whole_3d(scan3d, tile_size):
    image, _, spacing = scan3d
    whole = segment_array(image, spacing=spacing, tile_size=BIG, backend="classical")
    tiled = segment_array(image, spacing=spacing, tile_size=tile_size, backend="classical")
    assert whole.max() > 40
    _check(whole, tiled, exact=False)


@pytest.mark.parametrize("tile_size", [64, 96, 128])
@pytest.mark.parametrize("overlap", [None, 40])
def test_cells_on_seams_corners_and_larger_than_the_halo(tile_size, overlap):
    image, truth = disk_scene()
    spacing = (0.5, 0.5)
    be = ClassicalBackend()
    assert default_halo_px(be, spacing) < 60  # the large cell is wider than any halo here
    whole = segment_array(image, spacing=spacing, tile_size=BIG, backend="classical")
    tiled = segment_array(
        image, spacing=spacing, tile_size=tile_size, overlap=overlap, backend="classical"
    )
    # every true cell is found once, whole, in both
    for result in (whole, tiled):
        r = match_instances(truth, result, 0.75)
        assert r["tp"] == truth.max() and r["fp"] == 0, r
    assert same_partition(whole, tiled)
    # the large cell is one label, not cut at the seams
    big = truth == truth.max()
    assert len(np.unique(tiled[big & (tiled > 0)])) == 1


def test_ids_are_deterministic_and_unique(scan2d):
    image, _, spacing = scan2d
    a = segment_array(image, spacing=spacing, tile_size=64, backend="classical")
    b = segment_array(image, spacing=spacing, tile_size=64, backend="classical")
    assert np.array_equal(a, b)
    ids = np.unique(a[a > 0])
    # ids 1..N, each used by one connected cell
    assert ids[0] == 1 and ids[-1] == len(ids)
    from scipy import ndimage as ndi

    for i, sl in enumerate(ndi.find_objects(a), start=1):
        if sl is None:
            continue
        assert ndi.label(a[sl] == i)[1] == 1


def test_classical_finds_synthetic_nuclei(scan2d):
    image, truth, spacing = scan2d
    labels = segment_array(image, spacing=spacing, tile_size=128, backend="classical")
    r = match_instances(truth, labels, 0.5)
    assert r["precision"] > 0.75 and r["recall"] > 0.5, r
