"""Scan-level intensity statistics.

Statistics are computed once per scan from a deterministic subsample and then
used for every tile, so that neighbouring tiles normalise (and threshold) the
same way and agree at their seams.
"""

from __future__ import annotations

import math

import numpy as np

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
    size = math.prod(image.shape)
    stride = max(1, math.ceil((size / max_samples) ** (1.0 / image.ndim)))
    sample = image[tuple(slice(None, None, stride) for _ in range(image.ndim))]
    if hasattr(sample, "compute"):
        sample = sample.compute()
    return np.asarray(sample).ravel()


def otsu_threshold(values: np.ndarray, bins: int = 1024) -> float:
    """Otsu's threshold of a 1D sample (from scikit-image).

    The histogram has `bins` equal bins from the sample's minimum to its
    maximum. An integer sample is binned by its values in float64, as
    scikit-image bins a float64 sample (its own integer histogram has one bin
    per value), without a float64 copy of the sample.
    """
    from skimage.filters import threshold_otsu

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
        (the 1st and 99.8th percentiles used for normalisation), ``mean``,
        ``std``, ``min``, ``max`` and ``otsu`` (Otsu's threshold, raw units).

    Raises
    ------
    InputError
        If the image contains NaN or infinite values or is constant.
    """
    sample = _strided_sample(image, max_samples)
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
    low, high = float(pct[1]), float(pct[-1])
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
