"""The oracle test: tiled + stitched labels equal the whole-scan labels."""

import numpy as np
import pytest
from conftest import disk_scene

from cellseg.metrics import match_instances, same_partition
from cellseg.segmentation import ClassicalBackend, default_halo_px
from cellseg.stages import segment_array

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


def _disk_candidates(tile_size, overlap=None):
    """The candidates of every tile of the disk scene (pieces of the large cell included)."""
    from cellseg.stages import array_candidates

    image, _ = disk_scene()
    return array_candidates(
        image, spacing=(0.5, 0.5), tile_size=tile_size, overlap=overlap, backend="classical"
    )


def test_tile_candidates_hold_a_window_and_stitch_as_in_memory():
    from cellseg.segment import PIECE, Candidates
    from cellseg.stitching import ROW_FIELDS, TileCandidates, paint_tiles, resolve_candidates

    per_tile, tiles, core, margin = _disk_candidates(32, overlap=12)
    n_tiles = len(tiles)
    # parts of three tiles each, as batch files would hold them
    groups = [list(range(k, min(n_tiles, k + 3))) for k in range(0, n_tiles, 3)]
    parts = [Candidates.concat([per_tile[t] for t in g], 2) for g in groups]
    whole = Candidates.concat(parts, 2)
    assert np.any(whole.kind == PIECE) and len(parts) >= 3
    loads = {"rows": [], "masks": []}

    def load_rows(k):
        loads["rows"].append(k)
        return {f: getattr(parts[k], f) for f in ROW_FIELDS}

    def load_masks(k):
        loads["masks"].append(k)
        return parts[k].offsets, parts[k].bits

    def lazy():
        counts = np.bincount(whole.tile, minlength=n_tiles)
        kept = [[t for t in g if counts[t]] for g in groups]
        return TileCandidates(
            kept, counts, load_rows, load_masks, ndim=2, row_tiles=1, mask_tiles=2
        )

    source = lazy()
    order = np.random.default_rng(0).permutation(len(whole))
    for i in order:
        assert np.array_equal(source.mask(int(i)), whole.mask(int(i)))
        assert len(source._masks) <= 2
        t = source.tile_of(int(i))
        assert int(whole.tile[i]) == t
        assert np.array_equal(source.rows(t).bbox[int(i) - source.start[t]], whole.bbox[i])
    assert len(loads["masks"]) > len(parts)  # tiles were dropped and read again

    memory = TileCandidates.from_candidates(whole, n_tiles)
    a = resolve_candidates(memory, tiles, core, margin=margin)
    source = lazy()
    loads["rows"].clear()
    b = resolve_candidates(source, tiles, core, margin=margin)
    assert a.n_merged_pieces > 0 and a.n_cells == b.n_cells
    assert np.array_equal(a.cell_of, b.cell_of)
    assert np.array_equal(a.tile_counts, b.tile_counts)
    assert a.tile_counts.sum() == a.n_cells
    # the sweep holds a window of tiles' rows, not all of them
    assert 1 < source.row_tiles < n_tiles and len(source._rows) <= source.row_tiles
    painted = [r for _, r in paint_tiles(source, tiles, core, b)]
    assert all(
        np.array_equal(r, q) for r, (_, q) in zip(painted, paint_tiles(memory, tiles, core, a))
    )
    assert len(source._masks) <= 2


def test_piece_groups_are_components_numbered_by_first_piece():
    from cellseg.stitching import _piece_groups

    pieces = np.array([3, 5, 8, 9, 12, 20])
    edges = np.array([[9, 20], [5, 12], [12, 20]])
    group, n = _piece_groups(pieces, edges)
    assert n == 3
    assert group.tolist() == [0, 1, 2, 1, 1, 1]
    group, n = _piece_groups(np.zeros(0, np.int64), np.zeros((0, 2), np.int64))
    assert n == 0 and len(group) == 0
