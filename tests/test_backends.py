import numpy as np
import pytest
from scipy import ndimage as ndi

import cellseg.segmentation.distance as distance
from cellseg.segmentation.distance import distance_map


@pytest.mark.parametrize("slab", [1, 7, 1 << 20])
@pytest.mark.parametrize(
    "shape, spacing",
    [((40, 37), (0.5, 0.7)), ((9, 30, 31), (2.0, 0.5, 0.5)), ((1, 5), (1.0, 1.0))],
)
def test_distance_map_equals_scipy_bit_for_bit(monkeypatch, shape, spacing, slab):
    # slabs of one row, of a few rows and of the whole image give scipy's float32 values
    monkeypatch.setattr(distance, "_DISTANCE_SLAB", slab * int(np.prod(shape[1:])))
    rng = np.random.default_rng(len(shape) + slab)
    for fraction in (0.0, 0.4, 0.9, 1.0):
        mask = ndi.binary_opening(rng.random(shape) < fraction) if fraction < 1 else np.ones(shape)
        got = distance_map(mask, spacing)
        want = ndi.distance_transform_edt(mask, sampling=spacing).astype(np.float32)
        assert got.dtype == np.float32 and got.shape == mask.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # hand-computed: one background pixel at the left end of a row of 0.5 µm pixels
    row = np.ones((1, 5), bool)
    row[0, 0] = False
    assert distance_map(row, (1.0, 0.5)).tolist() == [[0.0, 0.5, 1.0, 1.5, 2.0]]
