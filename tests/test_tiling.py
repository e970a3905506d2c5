import numpy as np
import pytest

from cellseg.errors import ConfigError
from cellseg.tiling import (
    batch_tiles,
    box_intersection,
    box_slices,
    boxes_intersect,
    grow_box,
    halo_widths,
    merge_boxes,
    plan_tiles,
    tile_shape,
    union_box,
)


@pytest.mark.parametrize("shape", [(100, 250), (64, 64), (20, 70, 90)])
@pytest.mark.parametrize("size", [16, 33, 64, 1000])
def test_cores_partition_the_scan(shape, size):
    tiles = plan_tiles(shape, size, 7)
    cover = np.zeros(shape, int)
    for t in tiles:
        cover[t.core_slices] += 1
        # halo contains the core, grown by 7 where the scan allows
        for (ca, cb), (ha, hb), n in zip(t.core, t.halo, shape):
            assert ha == max(ca - 7, 0) and hb == min(cb + 7, n)
    assert (cover == 1).all()


def test_cores_align_to_chunks():
    tiles = plan_tiles((300, 300), 128, 16)
    core = tile_shape((300, 300), 128)
    assert core == (128, 128)
    for t in tiles:
        for (a, _), c in zip(t.core, core):
            assert a % c == 0


def test_one_tile_when_tile_size_covers_the_scan():
    (t,) = plan_tiles((48, 512, 512), 512, 20)
    assert t.core == t.halo == ((0, 48), (0, 512), (0, 512))


def test_halo_respects_anisotropy():
    assert halo_widths(32, (2.0, 0.5, 0.5)) == (8, 32, 32)
    assert halo_widths(10, (1.0, 1.0)) == (10, 10)


def test_batches_and_errors():
    assert batch_tiles(5, 2) == {"b0000": [0, 1], "b0001": [2, 3], "b0002": [4]}
    with pytest.raises(ConfigError):
        batch_tiles(5, 0)
    with pytest.raises(ConfigError, match="3 spatial axes"):
        tile_shape((4, 5, 6), (1, 2))


def test_boxes_agree_with_the_pixels_they_cover():
    """Box geometry checked against boolean masks of the boxes."""
    shape = (12, 15)
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(40):
        a = sorted(rng.integers(0, 13, 2))
        b = sorted(rng.integers(0, 16, 2))
        boxes.append(((int(a[0]), int(a[1]) + 1), (int(b[0]), int(b[1]) + 1)))

    def mask(box):
        m = np.zeros(shape, bool)
        m[box_slices(box)] = True
        return m

    for a, b in zip(boxes[::2], boxes[1::2]):
        both = mask(a) & mask(b)
        assert boxes_intersect(a, b) == both.any()
        inter = box_intersection(a, b)
        assert (inter is None) == (not both.any())
        if inter is not None:
            assert np.array_equal(mask(inter), both)
        assert (mask(union_box(a, b)) >= (mask(a) | mask(b))).all()
    grown = grow_box(((3, 5), (0, 2)), (2, 1), shape)
    assert grown == ((1, 7), (0, 3))
    # a chain of overlaps joins into one box, however the keys are ordered
    chain = {3: ((0, 2), (0, 2)), 1: ((4, 6), (4, 6)), 2: ((1, 5), (1, 5)), 9: ((8, 9), (8, 9))}
    assert merge_boxes(chain) == [(((0, 6), (0, 6)), [1, 2, 3]), (((8, 9), (8, 9)), [9])]
