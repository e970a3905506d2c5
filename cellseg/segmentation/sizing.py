"""How big are the nuclei of a scan? (``--diameter auto``)

The estimate does not trust a segmentation that may be wrong at the wrong
scale: textured nuclei far larger than the model's typical size come out in
pieces, and the median piece would say the nuclei are small. Instead it reads
the model's *foreground* map (which pieces do not change: a nucleus cut in
four is still foreground), fills its holes, and splits it into nuclei by the
distance transform of that mask: each nucleus has a peak at its centre whose
height is its inscribed radius, touching nuclei included, while the pieces
inside a nucleus do not show. Only peaks that rise a good part of a typical
radius above the pass to a higher peak count (h-maxima), so the plateau of a
flat nucleus counts once; a watershed from them gives each nucleus its
pixels. The median equivalent diameter of those nuclei (specks left out,
:func:`typical_diameter`) is the estimate.

When the estimate asks the model to rescale, the crops are measured again at
the new scale (where the model is in its element), up to :data:`ROUNDS`
times, until the scale no longer changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from cellseg.normalize import normalize
from cellseg.segmentation.targets import merge_shallow_basins

#: Rounds of measuring at the scale the previous round asked for.
ROUNDS = 3
#: Prominence of a nucleus centre in the distance transform, as a fraction of
#: the 90th percentile of the distance inside the foreground.
H_FRACTION = 0.3
#: Smallest diameter, in scan pixels, an estimate may give.
MIN_DIAMETER_PX = 4.0


def equivalent_diameters_um(labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Diameter in µm of the circle (2D) or sphere (3D) of each object's area or volume,
    for the objects that do not touch the image border.

    Examples
    --------
    >>> lab = np.zeros((9, 9), int); lab[2:6, 2:6] = 1
    >>> np.round(equivalent_diameters_um(lab, (0.5, 0.5)), 3).tolist()
    [2.257]
    """
    sizes = np.bincount(labels.ravel())
    keep = (sizes > 0) & ~_on_border(labels, sizes.size, range(labels.ndim))
    keep[0] = False
    return _equivalent_diameters(sizes[keep] * float(np.prod(spacing)), labels.ndim)


def _on_border(labels: np.ndarray, n: int, axes) -> np.ndarray:
    """Per id below ``n``, whether it touches either end of one of ``axes``."""
    touches = np.zeros(n, bool)
    for ax in axes:
        for end in (0, -1):
            touches[np.unique(np.take(labels, end, axis=ax))] = True
    return touches


def _equivalent_diameters(measure: np.ndarray, ndim: int) -> np.ndarray:
    """Diameter of the disc (2D) or ball (3D) of each area or volume."""
    if ndim == 2:
        return 2.0 * np.sqrt(measure / np.pi)
    return np.cbrt(6.0 * measure / np.pi)


def blob_diameters_um(
    mask: np.ndarray, spacing: Sequence[float], min_diameter_um: float = 0.0
) -> np.ndarray:
    """Equivalent diameters in µm of the nuclei of a foreground mask.

    Holes are filled (plane by plane in 3D). The distance transform's
    h-maxima (maxima at least :data:`H_FRACTION` of the 90th percentile of
    the distance above their surroundings) are the nucleus centres, and a
    watershed of the distance transform from them splits touching nuclei.
    Nuclei cut by the in-plane image border are left out when enough others remain.

    Parameters
    ----------
    mask : ndarray of bool
        Foreground, (Y, X) or (Z, Y, X).
    spacing : sequence of float
        µm per axis.
    min_diameter_um : float
        Lowest prominence of a centre, as a diameter (against specks).

    Examples
    --------
    >>> yy, xx = np.mgrid[:60, :60]
    >>> m = ((yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 38) ** 2 + (xx - 36) ** 2 < 64)
    >>> np.round(blob_diameters_um(m, (1.0, 1.0)), 1).tolist()
    [15.7, 19.7]
    """
    mask = np.asarray(mask, bool)
    spacing = np.asarray(spacing, float)
    if mask.ndim == 3:
        mask = np.stack([ndi.binary_fill_holes(plane) for plane in mask])
    else:
        mask = ndi.binary_fill_holes(mask)
    dist = ndi.distance_transform_edt(mask, sampling=spacing)
    if not mask.any():
        return np.zeros(0)
    # centres: maxima of the distance that rise a good part of a typical
    # nucleus's inscribed radius above the saddles to their neighbours, so a
    # flat nucleus's plateau of maxima counts once
    height = H_FRACTION * float(np.percentile(dist[mask], 90))
    peaks = (dist >= ndi.maximum_filter(dist, size=3, mode="nearest")) & mask
    markers, n = ndi.label(peaks, structure=np.ones((3,) * mask.ndim))
    if n == 0:
        return np.zeros(0)
    regions = watershed(-dist, markers, mask=mask)
    # the h-maxima of the distance: peaks that rise less join their neighbour
    regions = merge_shallow_basins(regions, dist, n, max(height, min_diameter_um / 2.0, 1e-9))
    sizes = np.bincount(regions.ravel(), minlength=n + 1)
    cut = _on_border(regions, sizes.size, range(mask.ndim - 2, mask.ndim))
    keep = sizes > 0
    keep[0] = False
    if np.count_nonzero(keep & ~cut) >= 3:
        keep &= ~cut
    return np.sort(_equivalent_diameters(sizes[keep] * float(np.prod(spacing)), mask.ndim))


def typical_diameter(diameters: np.ndarray, ndim: int, speck: float = 0.4) -> float:
    """Median of the blob diameters that are not specks.

    Specks (debris, bits of out-of-focus planes, noise in the mask) can
    outnumber nuclei but hold little of the foreground: blobs smaller than
    ``speck`` times the diameter of the blob that holds the median foreground
    pixel (weights ``d ** ndim``) are left out, then the median of the rest is taken.

    Examples
    --------
    >>> typical_diameter(np.array([1.0] * 30 + [9.0, 10.0, 11.0]), 2)
    10.0
    """
    d = np.sort(np.asarray(diameters, float))
    weight = np.cumsum(d**ndim)
    by_area = d[np.searchsorted(weight, 0.5 * weight[-1])]
    return float(np.median(d[d >= speck * by_area]))


def sample_crops(
    image: Any, stats: dict, *, crop_px: int = 384, samples: int = 6, depth: int = 96
) -> list[np.ndarray]:
    """Up to ``samples`` normalised crops spread evenly over a scan.

    ``crop_px`` in-plane; in 3D the middle ``depth`` planes (enough to hold a
    whole nucleus of a finely sampled stack). Only the crops are read.
    """
    shape = tuple(int(n) for n in image.shape)
    nd = len(shape)
    side = int(math.ceil(math.sqrt(samples)))
    starts, sizes = [], []
    for ax, n in enumerate(shape):
        if nd == 3 and ax == 0:
            size = min(n, depth)
            starts.append([max(0, (n - size) // 2)])
        else:
            size = min(n, crop_px)
            pos = np.linspace(0, n - size, side).astype(int) if n > size else np.array([0])
            starts.append(sorted(set(pos.tolist())))
        sizes.append(size)
    grid = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, nd)
    if len(grid) > samples:
        grid = grid[np.linspace(0, len(grid) - 1, samples).round().astype(int)]
    return [
        normalize(np.asarray(image[tuple(slice(o, o + s) for o, s in zip(org, sizes))]), stats)
        for org in grid
    ]


def estimate_diameter_um(
    image: Any,
    spacing: Sequence[float],
    stats: dict,
    foreground: Callable[[list, Sequence[float], float | None], tuple[list, Sequence[float]]],
    scale_key: Callable[[float | None], tuple],
    *,
    crop_px: int = 384,
    samples: int = 6,
) -> float | None:
    """Typical (median equivalent) nucleus diameter of a scan in µm, or None.

    Parameters
    ----------
    image : array-like, (Y, X) or (Z, Y, X)
        One channel of the scan (numpy, dask or zarr); only crops are read.
    spacing : sequence of float
        µm per axis.
    stats : dict
        Scan-level statistics (:func:`cellseg.normalize.compute_scan_stats`).
    foreground : callable
        ``foreground(crops, spacing, diameter_um)`` → (masks, mask spacing):
        the model's foreground masks of the crops when it rescales them for a
        scan of that diameter (None: as they are), and their voxel size.
    scale_key : callable
        ``scale_key(diameter_um)``: the model's zoom for that diameter; the
        rounds stop when it no longer changes.
    crop_px, samples
        Crops read (see :func:`sample_crops`).
    """
    crops = sample_crops(image, stats, crop_px=crop_px, samples=samples)
    finest = min(float(s) for s in spacing)
    # what the crops can tell: from a few pixels to a third of a crop
    lo_um, hi_um = MIN_DIAMETER_PX * finest, min(crops[0].shape[-2:]) / 3.0 * finest
    estimate = None
    for _ in range(ROUNDS):
        masks, seen = foreground(crops, spacing, estimate)
        found = [blob_diameters_um(m, seen, 2.0 * min(seen)) for m in masks]
        found = np.concatenate(found) if found else np.zeros(0)
        if found.size == 0:
            return estimate
        new = typical_diameter(found, len(spacing))
        new = min(max(new, lo_um), hi_um)
        if scale_key(new) == scale_key(estimate):
            return new
        estimate = new
    return estimate
