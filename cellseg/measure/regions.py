"""Every cell of a region measured at once: per-label reductions over the region's pixels.

:func:`measure_region` gives the columns of pass 2 (:mod:`cellseg.measure.cells`)
for the cells of one chunk, from one region of the label image (and the
scan's channels) that holds them and their rings whole. Nothing loops over
cells in Python but the outline tracing (OpenCV, 2D) and the meshes (3D):

- pixel counts, second moments (the ellipse or ellipsoid), boxes: sums over
  the pixels of each cell (:func:`numpy.bincount`), eigenvalues of all the
  cells' covariances at once;
- outlines, hulls and Euler numbers: :mod:`cellseg.measure.outlines` (2D),
  :mod:`cellseg.measure.surfaces` (3D);
- rings: :func:`cellseg.measure.intensity.ring_pairs`; intensity statistics
  of cells and rings: :func:`cellseg.measure.intensity.grouped_stats`;
- brightfield: the stains' optical densities per pixel
  (:func:`cellseg.stain.concentrations`) reduced like the channels.

The values equal those of :func:`cellseg.measure.shape.shape_features` and
:func:`cellseg.measure.intensity.intensity_stats` on each cell's crop (a test
compares them with tables measured cell by cell).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cellseg.measure.columns import INTENSITY_STATS, OD_STATS, brightfield_columns
from cellseg.measure.intensity import grouped_stats, ring_pairs
from cellseg.measure.outlines import outline_features
from cellseg.measure.surfaces import surface_features
from cellseg.stain import concentrations

_STAT_INDEX = {s: i for i, s in enumerate(INTENSITY_STATS)}


def measure_region(
    labels: np.ndarray,
    image: Sequence[np.ndarray],
    ids: np.ndarray,
    starts: np.ndarray,
    stops: np.ndarray,
    *,
    spacing: Sequence[float],
    ring_width_um: float,
    channel_keys: Sequence[str],
    stains: dict | None = None,
) -> dict[str, np.ndarray]:
    """The per-cell columns of cells lying whole in a region.

    Parameters
    ----------
    labels : ndarray of int, (Y, X) or (Z, Y, X)
        The region of the label image; it holds the cells and their rings.
    image : sequence of ndarray
        The scan's channels over the same region.
    ids : ndarray, (n,)
        The cells to measure, ascending.
    starts, stops : ndarray of int, (n, ndim)
        Their bounding boxes in region coordinates.
    spacing : sequence of float
        Pixel size in µm per axis.
    ring_width_um : float
        Ring width in µm.
    channel_keys : sequence of str
        Column keys of the channels.
    stains : dict, optional
        A brightfield scan's stain dict (:mod:`cellseg.stain`): the first three
        channels are RGB, and the optical-density columns are added.

    Returns
    -------
    dict of str to ndarray
        One array of length n per column: the shape columns, ``ring_n_pixels``,
        the intensity columns and, for brightfield, the stain columns.

    Examples
    --------
    >>> lab = np.zeros((5, 6), np.uint32); lab[1:4, 1:3] = 4
    >>> out = measure_region(lab, [], np.array([4]), np.array([[1, 1]]), np.array([[4, 3]]),
    ...                      spacing=(1.0, 1.0), ring_width_um=1.0, channel_keys=[])
    >>> out["area_um2"].tolist(), out["ring_n_pixels"].tolist(), out["euler_number"].tolist()
    ([6.0], [10], [1])
    """
    ids = np.asarray(ids)
    n = len(ids)
    nd = labels.ndim
    two = nd == 2
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    flat = labels.ravel()
    k = np.minimum(np.searchsorted(ids, flat), max(n - 1, 0))
    inside = ids[k] == flat if n else np.zeros(flat.shape, bool)
    pixel = np.flatnonzero(inside)
    cell = k[pixel]
    count = np.bincount(cell, minlength=n)
    out: dict[str, np.ndarray] = {}

    # second moments in µm: the ellipse (ellipsoid) with the same covariance
    coords = np.unravel_index(pixel, labels.shape)
    local = [(c - starts[cell, a]) * spacing_arr[a] for a, c in enumerate(coords)]
    del coords
    safe = np.maximum(count, 1)
    dev = [x - (np.bincount(cell, x, minlength=n) / safe)[cell] for x in local]
    del local
    cov = np.zeros((n, nd, nd))
    for a in range(nd):
        for b in range(a, nd):
            cov[:, a, b] = cov[:, b, a] = np.bincount(cell, dev[a] * dev[b], minlength=n) / safe
    del dev
    w, v = np.linalg.eigh(cov) if n else (np.zeros((0, nd)), np.zeros((0, nd, nd)))
    w, v = np.clip(w[:, ::-1], 0, None), v[:, :, ::-1]
    single = count <= 1
    w[single], v[single] = 0.0, np.eye(nd)
    lengths = np.sqrt((16.0 if two else 20.0) * w)
    size = count * float(np.prod(spacing_arr))

    if two:
        outline = outline_features(labels, ids, starts, stops, spacing)
        out["area_um2"] = size
        out["perimeter_um"] = outline["perimeter_um"]
        out["equivalent_diameter_um"] = 2.0 * np.sqrt(size / math.pi)
    else:
        outline = surface_features(labels, ids, starts, stops, spacing)
        out["volume_um3"] = size
        out["surface_area_um2"] = outline["surface_area_um2"]
        out["equivalent_diameter_um"] = (6.0 * size / math.pi) ** (1.0 / 3.0)
    out["major_axis_length_um"] = lengths[:, 0]
    if not two:
        out["middle_axis_length_um"] = lengths[:, 1]
    out["minor_axis_length_um"] = lengths[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        if two:
            ratio = np.where(w[:, 0] > 0, w[:, 1] / np.where(w[:, 0] > 0, w[:, 0], 1), 1.0)
            out["eccentricity"] = np.sqrt(np.clip(1.0 - ratio, 0, None))
        out["elongation"] = np.where(lengths[:, -1] > 0, lengths[:, 0] / lengths[:, -1], np.nan)
    major = v[:, :, 0]
    if two:
        out["orientation_deg"] = _fold(np.degrees(np.arctan2(major[:, 1], major[:, 0])))
    else:
        major = np.where(major[:, :1] < 0, -major, major)
        out["orientation_polar_deg"] = np.degrees(np.arccos(np.minimum(1.0, np.abs(major[:, 0]))))
        out["orientation_azimuth_deg"] = _fold(np.degrees(np.arctan2(major[:, 2], major[:, 1])))
    box = np.prod(stops - starts, axis=1).astype(np.float64)
    out["solidity"] = count / np.maximum(count, outline["convex"])
    out["extent"] = count / box
    with np.errstate(divide="ignore", invalid="ignore"):
        if two:
            p = out["perimeter_um"]
            out["form_factor"] = np.where(p > 0, 4.0 * math.pi * size / p**2, np.nan)
        else:
            s = out["surface_area_um2"]
            out["sphericity"] = np.where(
                s > 0, math.pi ** (1.0 / 3.0) * (6.0 * size) ** (2.0 / 3.0) / s, np.nan
            )
    out["feret_diameter_max_um"] = outline["feret_diameter_max_um"]
    if two:
        out["feret_diameter_min_um"] = outline["feret_diameter_min_um"]
    out["euler_number"] = outline["euler_number"]

    # rings and intensities
    member = np.zeros(labels.shape, np.int64)
    member[labels != 0] = n + 1
    member.ravel()[pixel] = cell + 1
    ring_pixel, ring_cell = (
        ring_pairs(member, n, spacing, ring_width_um)
        if ring_width_um > 0
        else (pixel[:0], cell[:0])
    )
    del member
    out["ring_n_pixels"] = np.bincount(ring_cell, minlength=n)
    for key, channel in zip(channel_keys, image):
        values = np.asarray(channel).ravel()
        inner = grouped_stats(values[pixel], cell, n)
        around = grouped_stats(values[ring_pixel], ring_cell, n)
        for s, j in _STAT_INDEX.items():
            out[f"intensity_{s}_{key}"] = inner[:, j]
            out[f"ring_intensity_{s}_{key}"] = around[:, j]
        out[f"intensity_mean_corrected_{key}"] = inner[:, 0] - around[:, 1]
    if stains is not None:
        out.update(_stain_columns(image, stains, pixel, cell, ring_pixel, ring_cell, n))
    return out


def _stain_columns(
    image: Sequence[np.ndarray],
    stains: dict,
    pixel: np.ndarray,
    cell: np.ndarray,
    ring_pixel: np.ndarray,
    ring_cell: np.ndarray,
    n: int,
) -> dict[str, np.ndarray]:
    """Optical-density statistics of the stains and RGB means, in the cells and their rings."""
    if len(image) < 3:
        raise ValueError(f"a brightfield scan has 3 channels (RGB), not {len(image)}")
    rgb = np.stack([np.asarray(c).ravel() for c in image[:3]], axis=-1)
    out: dict[str, np.ndarray] = {}
    names = list(stains["names"])
    for prefix, where, group in (("", pixel, cell), ("ring_", ring_pixel, ring_cell)):
        picked = rgb[where]
        amounts = concentrations(picked, stains)
        for j, name in enumerate(names):
            stats = grouped_stats(amounts[:, j], group, n)
            for s in OD_STATS:
                out[f"{prefix}od_{s}_{name}"] = stats[:, _STAT_INDEX[s]]
        count = np.maximum(np.bincount(group, minlength=n), 0)
        for j, colour in enumerate("rgb"):
            total = np.bincount(group, picked[:, j].astype(np.float64), minlength=n)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{prefix}rgb_mean_{colour}"] = np.where(count > 0, total / count, np.nan)
    expected = [c.name for c in brightfield_columns(names)]
    return {name: out[name] for name in expected}


def _fold(deg: np.ndarray) -> np.ndarray:
    """Undirected axes' angles folded into (-90, 90]."""
    folded = deg - 180.0 * np.floor((deg + 90.0) / 180.0)
    return np.where(folded <= -90.0, folded + 180.0, folded)
