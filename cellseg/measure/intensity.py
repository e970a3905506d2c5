"""Intensity columns: grey-value statistics of a cell and of its ring.

The *ring* of a cell is the background within ``ring_width_um`` of it (a
background / cytoplasm proxy); ``intensity_mean_corrected_<channel>`` is the
cell's mean minus the ring's median.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage as ndi


def intensity_stats(values: np.ndarray) -> tuple[float, ...]:
    """Mean, median, std, min, max and sum of some grey values (NaN when none; sum 0).

    Examples
    --------
    >>> intensity_stats(np.array([1.0, 2.0, 6.0]))
    (3.0, 2.0, 2.160246899469287, 1.0, 6.0, 9.0)
    """
    if values.size == 0:
        return (math.nan,) * 5 + (0.0,)
    v = values.astype(np.float64, copy=False)
    return (
        float(v.mean()),
        float(np.median(v)),
        float(v.std()),
        float(v.min()),
        float(v.max()),
        float(v.sum()),
    )


def ring_mask(
    mask: np.ndarray, labels: np.ndarray, spacing: Sequence[float], width_um: float
) -> np.ndarray:
    """Background pixels within ``width_um`` of a cell (its ring).

    Parameters
    ----------
    mask : ndarray of bool
        The cell, in a crop that reaches ``width_um`` beyond it where the scan allows.
    labels : ndarray of int, same shape
        The label image on the same crop: pixels of other cells are left out.
    spacing : sequence of float
        Pixel size in µm per axis.
    width_um : float
        Ring width in µm (centre to centre).

    Returns
    -------
    ndarray of bool
    """
    if width_um <= 0 or mask.all():
        return np.zeros(mask.shape, bool)
    dist = ndi.distance_transform_edt(~mask, sampling=tuple(float(s) for s in spacing))
    return (dist > 0) & (dist <= width_um * (1 + 1e-9)) & (labels == 0)


def grouped_stats(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    """:func:`intensity_stats` of many groups of values at once.

    Parameters
    ----------
    values : ndarray, (N,)
        Grey values.
    group : ndarray of int, (N,)
        The group (cell) of each value, in ``0..n-1``.
    n : int
        Number of groups.

    Returns
    -------
    ndarray of float64, (n, 6)
        Mean, median, std (population), min, max and sum per group; NaN (sum 0)
        for a group without values.

    Examples
    --------
    >>> grouped_stats(np.array([6, 1, 2, 5]), np.array([0, 0, 0, 2]), 3).tolist()[0]
    [3.0, 2.0, 2.160246899469287, 1.0, 6.0, 9.0]
    """
    out = np.full((n, 6), np.nan)
    count = np.bincount(group, minlength=n)
    v = values.astype(np.float64, copy=False)
    total = np.bincount(group, v, minlength=n)
    out[:, 5] = total
    has = count > 0
    mean = total / np.maximum(count, 1)
    out[has, 0] = mean[has]
    dev = v - mean[group]
    out[has, 2] = np.sqrt(np.bincount(group, dev * dev, minlength=n)[has] / count[has])
    ordered = _sorted_by_group(values, group, n)
    first = np.cumsum(count) - count
    c, f = count[has], first[has]
    out[has, 3] = ordered[f]
    out[has, 4] = ordered[f + c - 1]
    out[has, 1] = (ordered[f + (c - 1) // 2] + ordered[f + c // 2]) / 2
    return out


def _sorted_by_group(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    """The values (float64) sorted by group, then by value.

    Integer values are sorted as one integer key ``group · range + value``
    (a plain sort, no index array), others with :func:`numpy.lexsort`.
    """
    if values.size and values.dtype.kind in "ui" and values.dtype.itemsize <= 4:
        low = int(values.min())
        span = int(values.max()) - low + 1
        if span * max(n, 1) < 2**62:
            key = group.astype(np.int64) * span + (values.astype(np.int64) - low)
            key.sort()
            return (key % span + low).astype(np.float64)
    order = np.lexsort((values, group))
    return values[order].astype(np.float64)


def ring_footprint(spacing: Sequence[float], width_um: float) -> np.ndarray:
    """Offsets (pixels) within ``width_um`` of a pixel centre, itself left out, ``(k, ndim)``.

    Examples
    --------
    >>> len(ring_footprint((1.0, 1.0), 1.0)), len(ring_footprint((1.0, 1.0), 1.5))
    (4, 8)
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    reach = [int(math.ceil(width_um / s)) if width_um > 0 else 0 for s in spacing]
    grid = np.stack(
        np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1
    ).reshape(-1, len(spacing))
    dist = np.sqrt(((grid * spacing) ** 2).sum(axis=1))
    return grid[(dist > 0) & (dist <= width_um * (1 + 1e-9))]


def ring_pairs(
    member: np.ndarray, n: int, spacing: Sequence[float], width_um: float
) -> tuple[np.ndarray, np.ndarray]:
    """The rings of many cells at once: (pixel, cell) pairs, as :func:`ring_mask` per cell.

    Parameters
    ----------
    member : ndarray of int, (Y, X) or (Z, Y, X)
        Per pixel: 0 for background, ``k + 1`` for a pixel of cell ``k``
        (``0 <= k < n``), ``n + 1`` for a pixel of another cell.
    n : int
        Number of cells.
    spacing : sequence of float
        Pixel size in µm per axis.
    width_um : float
        Ring width in µm.

    Returns
    -------
    pixel : ndarray of int64
        Flat indices into `member` of ring pixels, by cell and then in raster order.
    cell : ndarray of int64
        The cell of each (a pixel in several rings comes once per ring).

    Notes
    -----
    A grey dilation and erosion of `member` over the ring's footprint (OpenCV,
    one plane at a time in 3D) give, per background pixel, the largest and
    smallest cell within reach; where they agree the pixel is in that cell's
    ring alone, and only the pixels within reach of several cells are looked
    at offset by offset.

    Examples
    --------
    >>> m = np.zeros((1, 7), np.int64); m[0, 1] = 1; m[0, 4] = 2
    >>> [a.tolist() for a in ring_pairs(m, 2, (1.0, 1.0), 1.0)]
    [[0, 2, 3, 5], [0, 0, 1, 1]]
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    offsets = ring_footprint(spacing, width_um)
    if n == 0 or len(offsets) == 0:
        return empty
    top = n + 1
    dtype = np.uint16 if top < np.iinfo(np.uint16).max else np.float32
    if top >= 2**24:
        raise ValueError(f"too many cells in one region for rings: {n}")
    high = np.iinfo(np.uint16).max if dtype == np.uint16 else float(2**24)
    m = member.astype(dtype)
    near_max = _grey_filter(m, offsets, cv2_op="dilate")
    low = np.where(m > 0, m, dtype(high))
    near_min = _grey_filter(low, offsets, cv2_op="erode")
    background = (m == 0).ravel()
    near_max, near_min = near_max.ravel(), near_min.ravel()
    alone = background & (near_max == near_min) & (near_max >= 1) & (near_max <= n)
    pixel = np.flatnonzero(alone)
    cell = near_max[pixel].astype(np.int64) - 1
    several = np.flatnonzero(background & (near_min <= n) & (near_max != near_min))
    if len(several):
        # within reach of two cells: the largest and the smallest; a third is rare
        low_cell, high_cell = near_min[several], near_max[several]
        third = np.zeros(len(several), bool)
        reach = np.abs(offsets).max(axis=0)
        padded = np.pad(member, [(r, r) for r in reach])
        strides = np.cumprod([1, *padded.shape[::-1][:-1]])[::-1]
        where = np.stack(np.unravel_index(several, member.shape), axis=1) + reach
        base = where @ strides
        flat = padded.ravel()
        steps = offsets @ strides
        for step in steps:
            value = flat[base + int(step)]
            third |= (value != 0) & (value != low_cell) & (value != high_cell)
        two = ~third
        high_is_cell = two & (high_cell <= n)
        pixel = np.concatenate([pixel, several[two], several[high_is_cell]])
        cell = np.concatenate(
            [cell, low_cell[two].astype(np.int64) - 1, high_cell[high_is_cell].astype(np.int64) - 1]
        )
        more = several[third]
        if len(more):
            base = base[third]
            found = []
            for step in steps:
                value = flat[base + int(step)]
                hit = (value >= 1) & (value <= n)
                found.append(more[hit] * top + value[hit].astype(np.int64) - 1)
            key = np.unique(np.concatenate(found))
            pixel = np.concatenate([pixel, key // top])
            cell = np.concatenate([cell, key % top])
    # by cell, each cell's pixels in raster order: sums over a ring do not depend
    # on the region it was found in
    key = cell * member.size + pixel
    key.sort()
    return key % member.size, key // member.size


def _grey_filter(image: np.ndarray, offsets: np.ndarray, cv2_op: str) -> np.ndarray:
    """Grey dilation (maximum) or erosion (minimum) over a footprint of offsets, with OpenCV.

    Outside the image is ignored. In 3D, each plane offset's 2D footprint is
    applied plane by plane and the results combined.
    """
    op = cv2.dilate if cv2_op == "dilate" else cv2.erode
    pick = np.maximum if cv2_op == "dilate" else np.minimum
    reach = np.abs(offsets).max(axis=0)
    if image.ndim == 2:
        kernel = np.zeros((2 * reach[0] + 1, 2 * reach[1] + 1), np.uint8)
        kernel[offsets[:, 0] + reach[0], offsets[:, 1] + reach[1]] = 1
        kernel[reach[0], reach[1]] = 1
        return op(image, kernel)
    out = image.copy()
    nz = image.shape[0]
    for dz in range(-reach[0], reach[0] + 1):
        plane = offsets[offsets[:, 0] == dz][:, 1:]
        if dz == 0:
            plane = np.concatenate([plane, [[0, 0]]])
        if len(plane) == 0:
            continue
        kernel = np.zeros((2 * reach[1] + 1, 2 * reach[2] + 1), np.uint8)
        kernel[plane[:, 0] + reach[1], plane[:, 1] + reach[2]] = 1
        for z in range(max(0, -dz), min(nz, nz - dz)):
            out[z] = pick(out[z], op(image[z + dz], kernel))
    return out
