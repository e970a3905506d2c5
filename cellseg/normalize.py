"""Scan-level intensity statistics.

Statistics are computed once per scan from a deterministic subsample and then
used for every tile, so that neighbouring tiles normalise (and threshold) the
same way and agree at their seams.

The scale is set by the *typical nucleus*, not by the brightest pixels: the
subsample is split into background and objects by Otsu's threshold of its
log intensities above the background, each object's bright part (its 90th
percentile) is taken, and the median over objects is the typical nucleus
level. A few mitotic or apoptotic nuclei many times brighter than the rest,
or saturated specks, are a few objects among many and barely move it, where
they would set a high percentile of the pixels on their own.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from cellseg.errors import InputError

PERCENTILES = (0.5, 1.0, 2.0, 50.0, 98.0, 99.0, 99.5, 99.8)


def subsample(image, max_samples: int = 4_000_000) -> np.ndarray:
    """Deterministic strided subsample of a (dask or numpy) spatial array, as float64.

    The stride is the same along every axis and chosen so that at most about
    ``max_samples`` values are read into memory.
    """
    return np.asarray(_strided_sample(image, max_samples), dtype=np.float64)


def _strided_sample(image, max_samples: int) -> np.ndarray:
    """:func:`subsample` in the image's own dtype, flattened."""
    return sample_grid(image, max_samples).ravel()


def sample_grid(image, max_samples: int) -> np.ndarray:
    """Every ``stride``-th pixel along each axis (the same stride on all), as a numpy array.

    The stride is chosen so that at most about ``max_samples`` values are
    read; a dask array is computed.
    """
    size = math.prod(image.shape)
    stride = max(1, math.ceil((size / max_samples) ** (1.0 / image.ndim)))
    sample = image[tuple(slice(None, None, stride) for _ in range(image.ndim))]
    if hasattr(sample, "compute"):
        sample = sample.compute()
    return np.asarray(sample)


#: Share of a nucleus's pixels below its "bright part" level, and where the
#: typical nucleus's bright part lands after normalisation.
NUCLEUS_QUANTILE = 0.9
NUCLEUS_LEVEL = 0.5
#: Smallest object of the subsample that counts as a nucleus (pixels).
MIN_OBJECT_SAMPLES = 9


def nucleus_level(grid: np.ndarray, low: float, median: float) -> tuple[float, int]:
    """Typical bright level of the objects of a subsample, and how many objects there are.

    The objects are the connected parts above Otsu's threshold of
    ``log1p((x - low) / (median - low))`` (log intensities relative to the
    background, so a few very bright objects do not pull the threshold up);
    the level is the median over objects of each object's
    :data:`NUCLEUS_QUANTILE` quantile. Returns ``(nan, 0)`` when there is no object.

    Parameters
    ----------
    grid : ndarray
        The strided subsample, with its spatial layout (2D or 3D).
    low, median : float
        Background level (a low percentile) and the median of the subsample.

    Examples
    --------
    >>> g = np.full((40, 40), 10.0); g[5:12, 5:12] = 100; g[20:27, 20:27] = 110
    >>> g[30:37, 5:12] = 120; g[30:37, 30:37] = 5000  # one very bright object
    >>> nucleus_level(g, 10.0, 10.0)
    (115.0, 4)
    """
    x = np.asarray(grid, np.float32).ravel()
    spread = max(float(median) - float(low), float(np.std(x)) * 1e-3, 1e-12)
    y = np.maximum(x - np.float32(low), np.float32(0.0))
    y /= np.float32(spread)
    np.log1p(y, out=y)
    if float(y.max()) <= float(y.min()):
        return float("nan"), 0
    mask = (y > threshold_otsu(y, nbins=512)).reshape(np.shape(grid))
    del y
    labels, n = ndi.label(mask)
    if n == 0:
        return float("nan"), 0
    # only the objects' pixels are sorted: by object, then by value
    inside = np.flatnonzero(mask)
    del mask
    object_of = labels.ravel()[inside]
    del labels
    values = x[inside]
    order = np.lexsort((values, object_of))
    sorted_labels = object_of[order]
    sorted_values = values[order]
    del order, inside
    ids = np.arange(1, n + 1)
    starts = np.searchsorted(sorted_labels, ids)
    counts = np.searchsorted(sorted_labels, ids, side="right") - starts
    big = counts >= MIN_OBJECT_SAMPLES
    if not big.any():
        return float("nan"), 0
    at = starts[big] + np.floor(NUCLEUS_QUANTILE * (counts[big] - 1)).astype(np.int64)
    return float(np.median(sorted_values[at])), int(big.sum())


def otsu_threshold(values: np.ndarray, bins: int = 1024) -> float:
    """Otsu's threshold of a 1D sample (from scikit-image).

    The histogram has `bins` equal bins from the sample's minimum to its
    maximum. An integer sample is binned by its values in float64, as
    scikit-image bins a float64 sample (its own integer histogram has one bin
    per value), without a float64 copy of the sample.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iu" or values.size == 0:
        return float(threshold_otsu(values, nbins=bins))
    lo, hi = np.float64(values.min()), np.float64(values.max())
    if lo == hi:
        return float(lo)
    counts, edges = np.histogram(values.reshape(-1), bins=bins, range=(lo, hi))
    return float(threshold_otsu(hist=(counts, (edges[:-1] + edges[1:]) / 2.0)))


def compute_scan_stats(image, *, source: str = "scan", max_samples: int = 4_000_000) -> dict:
    """Intensity statistics of one channel of a scan.

    Parameters
    ----------
    image : array-like
        Spatial (Y, X) or (Z, Y, X) dask or numpy array.
    source : str
        Name of the scan, used in error messages.
    max_samples : int
        Upper bound of values read.

    Returns
    -------
    dict
        ``percentiles`` (mapping of percentile to value), ``low`` and ``high``
        (the values :func:`normalize` maps to 0 and 1: the 1st percentile,
        and the level at which the typical nucleus's bright part lands at
        :data:`NUCLEUS_LEVEL`, see :func:`nucleus_level`; the 99.8th
        percentile when the scan has no objects), ``nucleus_level`` and
        ``n_objects`` (of the subsample), ``mean``, ``std``, ``min``, ``max``
        and ``otsu`` (Otsu's threshold of the raw values, raw units).

    Raises
    ------
    InputError
        If the image contains NaN or infinite values or is constant.
    """
    grid = sample_grid(image, max_samples)
    sample = grid.ravel()
    # 8- and 16-bit unsigned samples stay in their dtype (a quarter of the memory of
    # float64) where that gives the float64 results exactly: min, max and percentiles
    # are sample values or interpolated in float64 from them, sums of such integers
    # are exact in float64, std subtracts the mean in float64 either way, and Otsu's
    # histogram bins the values in float64 (see otsu_threshold).
    small_uint = sample.dtype.kind == "u" and sample.dtype.itemsize <= 2
    values = sample if small_uint else np.asarray(sample, dtype=np.float64)
    del sample
    if values.size == 0:
        raise InputError(f"{source}: the image is empty; give a scan with pixels in it.")
    if not small_uint and not np.all(np.isfinite(values)):
        raise InputError(
            f"{source}: the image contains NaN or infinite values; replace them "
            "(e.g. with 0) before segmenting."
        )
    lo_v, hi_v = float(values.min()), float(values.max())
    if hi_v <= lo_v:
        raise InputError(
            f"{source}: the image is constant (every pixel is {lo_v:g}); "
            "check that the right file and channel were given."
        )
    pct = np.percentile(values, PERCENTILES)
    low = float(pct[1])
    median = float(pct[3])
    if median <= low:
        # more than half the scan at the background level (a slide's glass, where
        # the haematoxylin amount is 0): the objects' scale is that of the rest
        above = values[values > low]
        median = float(np.median(above)) if above.size else median
    level, n_objects = nucleus_level(grid, low, median)
    del grid
    if n_objects and level > low:
        high = low + (level - low) / NUCLEUS_LEVEL
    else:
        high = float(pct[-1])
    if high <= low:
        low, high = lo_v, hi_v
    mean = float(values.mean())
    otsu = otsu_threshold(values)
    return {
        "percentiles": {str(p): float(v) for p, v in zip(PERCENTILES, pct)},
        "low": low,
        "high": high,
        "mean": mean,
        "std": float(values.std()),
        "min": lo_v,
        "max": hi_v,
        "otsu": otsu,
        "nucleus_level": level if n_objects else None,
        "n_objects": n_objects,
        "n_samples": int(values.size),
    }


def normalize(image: np.ndarray, stats: dict) -> np.ndarray:
    """Scale intensities so the scan's ``low`` maps to 0 and ``high`` to 1 (float32).

    Examples
    --------
    >>> normalize(np.array([10, 20, 30]), {"low": 10.0, "high": 30.0})
    array([0. , 0.5, 1. ], dtype=float32)
    """
    low, high = float(stats["low"]), float(stats["high"])
    out = np.asarray(image, dtype=np.float32) - np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return out


def normalized_value(value: float, stats: dict) -> float:
    """Map one raw intensity to the normalised scale of :func:`normalize`."""
    return (float(value) - float(stats["low"])) / (float(stats["high"]) - float(stats["low"]))
