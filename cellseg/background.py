"""Tiles that hold no cells: nothing above the scan's background noise around their core.

The plan reads a low-resolution view of the ingested image once (pyramid
level 1: block means of 2 × 2 pixels, which halve the noise and keep every
nucleus of 3 pixels or more whole in some block) and keeps per cell of a
coarse grid the largest block mean. The background level and noise of the
view are the median and the scaled median absolute deviation of its
(sampled) values below the scan's Otsu threshold. A tile is skipped when
every block over its core, grown by the backend's margin (the context the
network's output in the core depends on), stays below

    background + min(K * noise, EPS * (nucleus_level - background))

so a tile is never skipped for holding a nucleus brighter than ``EPS`` of the
scan's typical nucleus, nor one that stands out from the noise by ``K``
standard deviations, and scans whose noise reaches up to dim nuclei skip
nothing. Scans without objects in their statistics skip nothing either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cellseg.tiling import Tile, grow_box

#: Standard deviations of the low-resolution view's noise a block must stay below.
K = 6.0
#: Share of the typical nucleus's level above the background a block must stay below.
EPS = 0.05
#: Full-resolution pixels per view pixel along Y and X (block means).
POOL = 2
#: View pixels per cell of the grid of maxima, along Y and X.
CELL = 8
#: Values of the view held at a time, and sampled for its background and noise.
STRIP_VALUES = 1 << 24
SAMPLE_VALUES = 1 << 22


def pooled(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Means of ``factors`` blocks of a float array (edge pixels repeated to fill the last ones).

    Examples
    --------
    >>> pooled(np.arange(6.0).reshape(2, 3), (2, 2)).tolist()
    [[2.0, 3.5]]
    """
    pad = [(0, -n % k) for n, k in zip(block.shape, factors)]
    if any(p for _, p in pad):
        block = np.pad(block, pad, mode="edge")
    shape = [v for n, k in zip(block.shape, factors) for v in (n // k, k)]
    return block.reshape(shape).mean(axis=tuple(range(1, 2 * block.ndim, 2)))


def _maxima(block: np.ndarray, cells: Sequence[int]) -> np.ndarray:
    pad = [(0, -n % k) for n, k in zip(block.shape, cells)]
    if any(p for _, p in pad):
        block = np.pad(block, pad, constant_values=-np.inf)
    shape = [v for n, k in zip(block.shape, cells) for v in (n // k, k)]
    return block.reshape(shape).max(axis=tuple(range(1, 2 * block.ndim, 2)))


def view_maxima(
    view: Any, pool: Sequence[int], cells: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The grid of largest block means of a view, and a strided sample of the block means.

    Parameters
    ----------
    view : array-like, (Y, X) or (Z, Y, X)
        numpy, zarr or dask array, read a strip of axis 0 at a time.
    pool : sequence of int
        View pixels per block (mean) per axis.
    cells : sequence of int
        Blocks per grid cell (max) per axis.

    Returns
    -------
    maxima : ndarray of float32
        One value per cell (cells cover ``pool * cells`` view pixels).
    sample : ndarray of float32
        Every ``stride``-th block mean along each axis (about :data:`SAMPLE_VALUES`).
    """
    shape = tuple(int(n) for n in view.shape)
    blocks = [-(-n // p) for n, p in zip(shape, pool)]
    stride = max(1, math.ceil((math.prod(blocks) / SAMPLE_VALUES) ** (1.0 / len(shape))))
    row = math.prod(shape[1:])
    step = pool[0] * cells[0] * stride
    rows = max(step, (STRIP_VALUES // max(row, 1)) // step * step)
    grids, samples = [], []
    for start in range(0, shape[0], rows):
        block = view[start : start + rows]
        if hasattr(block, "compute"):
            block = block.compute()
        means = pooled(np.asarray(block, np.float32), pool)
        grids.append(_maxima(means, cells))
        samples.append(means[tuple(slice(None, None, stride) for _ in shape)].ravel())
    return np.concatenate(grids), np.concatenate(samples)


def background_noise(sample: np.ndarray, otsu: float) -> tuple[float, float] | None:
    """Median and scaled MAD (σ of a normal) of the sampled values below ``otsu``; None
    when fewer than 100 are."""
    low = sample[sample < otsu]
    if low.size < 100:
        return None
    level = float(np.median(low))
    return level, 1.4826 * float(np.median(np.abs(low - level)))


def background_tiles(
    view: Any,
    factors: Sequence[int],
    tiles: Sequence[Tile],
    margin: Sequence[int],
    shape: Sequence[int],
    stats: dict,
) -> tuple[list[int], dict]:
    """Indices of the tiles with nothing above the background (see the module notes).

    Parameters
    ----------
    view : array-like
        The scan's nuclear channel at a pyramid level, (Y, X) or (Z, Y, X).
    factors : sequence of int
        Full-resolution pixels per view pixel per axis.
    tiles : sequence of Tile
        The tiles to look at.
    margin : sequence of int
        Full-resolution pixels around each core that count too.
    shape : sequence of int
        The scan's full-resolution shape.
    stats : dict
        The scan's statistics (:func:`cellseg.normalize.compute_scan_stats`).

    Returns
    -------
    skipped : list of int
        ``Tile.index`` of the tiles without signal, ascending.
    summary : dict
        ``threshold``, ``background``, ``noise`` (raw units of the view's
        block means); empty when nothing could be judged.
    """
    nd = len(shape)
    level = stats.get("nucleus_level")
    if level is None or not tiles:
        return [], {}
    pool = [1] * (nd - 2) + [max(1, POOL // int(k)) for k in factors[-2:]]
    cells = [1] * (nd - 2) + [CELL, CELL]
    maxima, sample = view_maxima(view, pool, cells)
    found = background_noise(sample, float(stats["otsu"]))
    if found is None:
        return [], {}
    background, noise = found
    threshold = background + min(K * noise, EPS * (float(level) - background))
    if threshold <= background:
        return [], {}
    span = [int(k) * p * c for k, p, c in zip(factors, pool, cells)]  # full-res px per cell
    skipped = []
    for t in tiles:
        box = grow_box(t.core, margin, shape)
        region = tuple(slice(lo // s, -(-hi // s)) for (lo, hi), s in zip(box, span))
        if float(maxima[region].max()) < threshold:
            skipped.append(t.index)
    summary = {"threshold": threshold, "background": background, "noise": noise}
    return sorted(skipped), summary
