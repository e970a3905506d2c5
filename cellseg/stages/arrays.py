"""The stages on an image in memory: tile, segment and stitch without an output folder.

The same code path as the stages on files (:func:`~cellseg.stages.plan.tile_geometry`,
:func:`~cellseg.segment.tile_candidates`, :func:`~cellseg.stitching.resolve_candidates`),
for tests, benchmarks and notebooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cellseg.config import DEFAULTS
from cellseg.normalize import compute_scan_stats, normalize
from cellseg.segment import Candidates, tile_candidates
from cellseg.segmentation import Backend, get_backend
from cellseg.stages.plan import tile_geometry
from cellseg.stitching import TileCandidates, paint_tiles, resolve_candidates
from cellseg.tiling import Tile, plan_tiles


def array_candidates(
    image: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    tile_size: int | Sequence[int] = DEFAULTS["tile_size"],
    overlap: int | None = DEFAULTS["overlap"],
    backend: Backend | str | None = DEFAULTS["backend"],
    stats: dict | None = None,
) -> tuple[list[Candidates], list[Tile], list[int], list[int]]:
    """Plan the tiles of an in-memory image and segment each one into candidates.

    Parameters are those of :func:`segment_array`.

    Returns
    -------
    parts : list of Candidates
        One per tile, in tile order.
    tiles : list of Tile
    core_shape, margin : list of int
        As planned for the backend.
    """
    spacing = tuple(spacing or (1.0,) * image.ndim)
    be = (
        backend
        if backend is not None and not isinstance(backend, str)
        else get_backend(backend, ndim=image.ndim)
    )
    stats = stats or compute_scan_stats(image)
    core_shape, halo, margin, _ = tile_geometry(image.shape, spacing, be, tile_size, overlap)
    tiles = plan_tiles(image.shape, core_shape, halo)
    parts = []
    for t in tiles:
        lab = be.predict([normalize(image[t.halo_slices], stats)], spacing, stats)[0]
        parts.append(
            tile_candidates(
                lab, t, shape=image.shape, core_shape=core_shape, halo=halo, margin=margin
            )
        )
    return parts, tiles, core_shape, margin


def segment_array(
    image: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    tile_size: int | Sequence[int] = DEFAULTS["tile_size"],
    overlap: int | None = DEFAULTS["overlap"],
    backend: Backend | str | None = DEFAULTS["backend"],
    stats: dict | None = None,
) -> np.ndarray:
    """Tile, segment and stitch an in-memory image; the same code path as the stages.

    Parameters
    ----------
    image : ndarray, (Y, X) or (Z, Y, X)
        One channel.
    spacing : sequence of float, optional
        µm per axis (default 1).
    tile_size, overlap
        As for :func:`~cellseg.stages.plan`.
    backend : Backend or str, optional
        A backend, or a backend's name for :func:`cellseg.backends.get_backend`.
        Default: :func:`cellseg.backends.default_backend_name` of the image's
        axes (the model backend).
    stats : dict, optional
        Scan statistics (default computed from ``image``).

    Returns
    -------
    ndarray of uint32
        Label image.

    Examples
    --------
    Three disks 12 µm across, on tiles of 24 px: each is one cell, wherever the seams fall.

    >>> yy, xx = np.mgrid[:64, :64]
    >>> image = np.full((64, 64), 100, np.uint16)
    >>> for cy, cx in [(16, 16), (30, 44), (48, 20)]:
    ...     image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 900
    >>> labels = segment_array(image, tile_size=24, backend="classical")
    >>> labels.shape, labels.dtype.name, len(np.unique(labels)) - 1
    ((64, 64), 'uint32', 3)
    """
    parts, tiles, core_shape, margin = array_candidates(
        image, spacing=spacing, tile_size=tile_size, overlap=overlap, backend=backend, stats=stats
    )
    n_tiles = max((t.index for t in tiles), default=-1) + 1
    source = TileCandidates.from_candidates(Candidates.concat(parts, image.ndim), n_tiles)
    result = resolve_candidates(source, tiles, core_shape, margin=margin)
    out = np.zeros(image.shape, np.uint32)
    for t, region in paint_tiles(source, tiles, core_shape, result):
        out[t.core_slices] = region
    return out
