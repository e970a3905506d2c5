"""Tile geometry and boxes: a grid of core boxes, each grown by a halo.

The cores partition the scan and are aligned to the label image's chunks (the
chunk shape *is* the core shape), so each tile paints its own chunks and
writes never overlap. The halo gives each tile the context it needs so that a
cell whose anchor lies in the core is seen whole.

Boxes are tuples of ``(start, stop)`` pairs in pixel (voxel) indices of the
full-resolution scan, one pair per spatial axis, stop exclusive. The box
geometry that tiles, stitching and review share is here: :func:`box_slices`,
:func:`clip_box`, :func:`grow_box`, :func:`union_box`,
:func:`boxes_intersect`, :func:`box_intersection`, :func:`box_from_json` and
:func:`merge_boxes`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellseg.errors import ConfigError

#: A box: one ``(start, stop)`` pair per spatial axis, in pixels, stop exclusive.
Box = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Tile:
    """One tile of a plan.

    Attributes
    ----------
    index : int
        Position of the tile in the plan (raster order of the grid).
    grid : tuple of int
        Grid coordinates of the tile, one per spatial axis.
    core : tuple of (start, stop)
        The part of the scan this tile owns; cores partition the scan.
    halo : tuple of (start, stop)
        The core grown by the overlap on every side, clipped to the scan.
    """

    index: int
    grid: tuple[int, ...]
    core: Box
    halo: Box

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict."""
        return {
            "index": self.index,
            "grid": list(self.grid),
            "core": [list(b) for b in self.core],
            "halo": [list(b) for b in self.halo],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Tile:
        """Inverse of :meth:`to_dict`."""
        return cls(
            index=int(d["index"]),
            grid=tuple(int(g) for g in d["grid"]),
            core=tuple((int(a), int(b)) for a, b in d["core"]),
            halo=tuple((int(a), int(b)) for a, b in d["halo"]),
        )

    @property
    def core_slices(self) -> tuple[slice, ...]:
        """Slices of the core in scan coordinates."""
        return tuple(slice(a, b) for a, b in self.core)

    @property
    def halo_slices(self) -> tuple[slice, ...]:
        """Slices of the halo box in scan coordinates."""
        return tuple(slice(a, b) for a, b in self.halo)


def per_axis(value: int | float | Sequence, ndim: int, name: str) -> tuple:
    """Broadcast a scalar or a sequence to one value per spatial axis.

    Raises
    ------
    ConfigError
        If a sequence has the wrong length.
    """
    if isinstance(value, (int, float)):
        return (value,) * ndim
    value = tuple(value)
    if len(value) == 1:
        return value * ndim
    if len(value) != ndim:
        raise ConfigError(
            f"{name} has {len(value)} values but the scan has {ndim} spatial axes; "
            f"give one value or {ndim}."
        )
    return value


def tile_shape(shape: Sequence[int], tile_size: int | Sequence[int]) -> tuple[int, ...]:
    """Core shape of the tiles (also the label chunk shape): tile size clipped to the scan.

    Examples
    --------
    >>> tile_shape((48, 512, 512), 128)
    (48, 128, 128)
    """
    sizes = per_axis(tile_size, len(shape), "tile size")
    if any(int(s) < 1 for s in sizes):
        raise ConfigError(f"tile size must be a positive number of pixels, got {tile_size}.")
    return tuple(min(int(s), int(n)) for s, n in zip(sizes, shape))


def halo_widths(
    overlap_px: int | Sequence[int] | float,
    spacing: Sequence[float],
) -> tuple[int, ...]:
    """Halo width per axis for an overlap given in pixels of the finest axis.

    In anisotropic 3D stacks the halo covers the same physical distance along
    every axis, so a coarse z axis gets fewer voxels.

    Examples
    --------
    >>> halo_widths(32, (2.0, 0.5, 0.5))
    (8, 32, 32)
    """
    spacing = tuple(float(s) for s in spacing)
    if not isinstance(overlap_px, (int, float)):
        vals = per_axis(overlap_px, len(spacing), "overlap")
        return tuple(int(v) for v in vals)
    if overlap_px < 0:
        raise ConfigError(f"overlap must be >= 0 pixels, got {overlap_px}.")
    finest = min(spacing)
    return tuple(int(math.ceil(overlap_px * finest / s)) for s in spacing)


def plan_tiles(
    shape: Sequence[int],
    tile_size: int | Sequence[int],
    halo: int | Sequence[int],
) -> list[Tile]:
    """Cut a scan into a grid of tiles.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the scan, (Y, X) or (Z, Y, X).
    tile_size : int or sequence of int
        Core edge per axis; clipped to the scan (a tile size at least the
        scan's size gives one tile along that axis).
    halo : int or sequence of int
        Halo width per axis in pixels.

    Returns
    -------
    list of Tile
        In raster order of the grid.

    Examples
    --------
    >>> tiles = plan_tiles((100, 250), 128, 16)
    >>> [t.core for t in tiles]
    [((0, 100), (0, 128)), ((0, 100), (128, 250))]
    >>> tiles[1].halo
    ((0, 100), (112, 250))
    """
    shape = tuple(int(n) for n in shape)
    core = tile_shape(shape, tile_size)
    halo = tuple(int(h) for h in per_axis(halo, len(shape), "halo"))
    counts = [math.ceil(n / c) for n, c in zip(shape, core)]
    tiles = []
    for index, grid in enumerate(itertools.product(*(range(c) for c in counts))):
        core_box = tuple((g * c, min((g + 1) * c, n)) for g, c, n in zip(grid, core, shape))
        halo_box = tuple(
            (max(a - h, 0), min(b + h, n)) for (a, b), h, n in zip(core_box, halo, shape)
        )
        tiles.append(Tile(index=index, grid=tuple(grid), core=core_box, halo=halo_box))
    return tiles


def owner_grid(point: Sequence[int], core_shape: Sequence[int]) -> tuple[int, ...]:
    """Grid coordinates of the tile whose core contains ``point``."""
    return tuple(int(p) // int(c) for p, c in zip(point, core_shape))


def coord_dtype(shape: Sequence[int]) -> type:
    """The integer dtype that holds pixel coordinates and box bounds of a scan of `shape`.

    int32 (half the memory of int64 in per-cell arrays) unless an axis reaches 2**31.

    Examples
    --------
    >>> coord_dtype((128, 2048, 2048)).__name__
    'int32'
    """
    return np.int32 if max(shape, default=0) < 2**31 else np.int64


def box_dtype(shape: Sequence[int]) -> type:
    """The dtype of per-cell box bounds (0 to the axis length) of a scan of `shape`.

    uint16 (half the memory of int32) while every axis is shorter than
    2**16 - 1 pixels, so that the largest value stays free as a sentinel; else
    :func:`coord_dtype`. Code that subtracts from such bounds widens them first.

    Examples
    --------
    >>> box_dtype((128, 2048, 2048)).__name__
    'uint16'
    >>> box_dtype((70_000, 10)).__name__
    'int32'
    """
    return np.uint16 if max(shape, default=0) < 2**16 - 1 else coord_dtype(shape)


def batch_tiles(tiles: int | Sequence[int], tiles_per_batch: int) -> dict[str, list[int]]:
    """Group tile indices into named batches of consecutive tiles.

    `tiles` is the number of tiles (indices 0 .. n-1), or the indices of the
    tiles to batch, in order (the tiles a plan keeps).

    Examples
    --------
    >>> batch_tiles(5, 2)
    {'b0000': [0, 1], 'b0001': [2, 3], 'b0002': [4]}
    >>> batch_tiles([1, 4, 6], 2)
    {'b0000': [1, 4], 'b0001': [6]}
    """
    if tiles_per_batch < 1:
        raise ConfigError(f"tiles per batch must be >= 1, got {tiles_per_batch}.")
    indices = list(range(tiles)) if isinstance(tiles, int) else [int(i) for i in tiles]
    return {
        f"b{i:04d}": indices[start : start + tiles_per_batch]
        for i, start in enumerate(range(0, len(indices), tiles_per_batch))
    }


# ----------------------------------------------------------------------------- boxes
def box_slices(box: Box) -> tuple[slice, ...]:
    """Slices of a box.

    Examples
    --------
    >>> box_slices(((1, 3), (0, 5)))
    (slice(1, 3, None), slice(0, 5, None))
    """
    return tuple(slice(int(a), int(b)) for a, b in box)


def clip_box(box: Box, shape: Sequence[int]) -> Box:
    """Clip a box to ``[0, shape)`` per axis.

    Examples
    --------
    >>> clip_box(((-2, 5), (3, 12)), (4, 10))
    ((0, 4), (3, 10))
    """
    return tuple(
        (min(max(int(a), 0), int(n)), min(max(int(b), 0), int(n))) for (a, b), n in zip(box, shape)
    )


def grow_box(box: Box, margin: int | Sequence[int], shape: Sequence[int]) -> Box:
    """Grow a box by `margin` pixels on every side (one value or one per axis), clipped.

    Examples
    --------
    >>> grow_box(((2, 4), (5, 6)), (1, 3), (10, 8))
    ((1, 5), (2, 8))
    """
    margins = [int(margin)] * len(box) if np.isscalar(margin) else [int(m) for m in margin]
    return clip_box(tuple((a - m, b + m) for (a, b), m in zip(box, margins)), shape)


def union_box(a: Box, b: Box) -> Box:
    """The smallest box holding both boxes.

    Examples
    --------
    >>> union_box(((0, 2), (5, 6)), ((1, 4), (0, 1)))
    ((0, 4), (0, 6))
    """
    return tuple((min(a0, b0), max(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))


def boxes_intersect(a: Box, b: Box) -> bool:
    """Whether two boxes share at least one pixel.

    Examples
    --------
    >>> boxes_intersect(((0, 2), (0, 2)), ((1, 3), (2, 4)))
    False
    """
    return all(a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in zip(a, b))


def box_intersection(a: Box, b: Box) -> Box | None:
    """Intersection of two boxes, or None when they do not overlap.

    Examples
    --------
    >>> box_intersection(((0, 4), (0, 4)), ((2, 6), (1, 3)))
    ((2, 4), (1, 3))
    """
    out = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))
    if any(lo >= hi for lo, hi in out):
        return None
    return out


def box_from_json(value: Sequence[Sequence[int]]) -> Box:
    """A box from its JSON form ``[[start, stop], ...]``.

    Examples
    --------
    >>> box_from_json([[0, 4], [2, 6]])
    ((0, 4), (2, 6))
    """
    return tuple((int(a), int(b)) for a, b in value)


def merge_boxes(boxes: dict[Any, Box]) -> list[tuple[Box, list[Any]]]:
    """Join overlapping boxes until none overlap.

    Parameters
    ----------
    boxes : dict
        Boxes by key.

    Returns
    -------
    list of (box, keys)
        Each joined box (the union of its members) with the keys it holds, sorted.

    Examples
    --------
    >>> merge_boxes({1: ((0, 4), (0, 4)), 2: ((3, 6), (3, 6)), 3: ((9, 10), (0, 1))})
    [(((0, 6), (0, 6)), [1, 2]), (((9, 10), (0, 1)), [3])]
    """
    clusters: list[tuple[Box, list[Any]]] = []
    for cid, box in sorted(boxes.items()):
        members = [cid]
        merged = True
        while merged:
            merged = False
            for k, (other, ids) in enumerate(clusters):
                if boxes_intersect(box, other):
                    box = union_box(box, other)
                    members += ids
                    del clusters[k]
                    merged = True
                    break
        clusters.append((box, sorted(members)))
    return sorted(clusters)


def level_factors(ndim: int, level: int) -> tuple[int, ...]:
    """Full-resolution pixels per pixel of pyramid ``level``, per axis (levels halve Y and X).

    Examples
    --------
    >>> level_factors(3, 2)
    (1, 4, 4)
    """
    return (1,) * (ndim - 2) + (2**level, 2**level)


def box_at_level(box: Box, factors: Sequence[int]) -> Box:
    """The pixels of a coarser level that cover ``box`` (a full-resolution box).

    Examples
    --------
    >>> box_at_level(((3, 10), (0, 8)), (2, 2))
    ((1, 5), (0, 4))
    """
    return tuple((lo // k, -(-hi // k)) for (lo, hi), k in zip(box, factors))


def labels_to_full(labels: np.ndarray, box: Box, factors: Sequence[int]) -> np.ndarray:
    """Labels of :func:`box_at_level` ``(box)`` on the full-resolution grid of ``box``.

    Each coarse pixel becomes a block of full-resolution pixels (nearest
    neighbour); where a coarse level's edge stops short of the scan's (odd
    sizes), the last pixels are repeated.

    Examples
    --------
    >>> labels_to_full(np.array([[1, 2], [3, 4]]), ((1, 4), (0, 3)), (2, 2))
    array([[1, 1, 2],
           [3, 3, 4],
           [3, 3, 4]])
    """
    full = labels
    for axis, k in enumerate(factors):
        if k > 1:
            full = np.repeat(full, k, axis=axis)
    want = [hi - lo for lo, hi in box]
    offset = [lo - (lo // k) * k for (lo, _), k in zip(box, factors)]
    full = full[tuple(slice(o, o + n) for o, n in zip(offset, want))]
    short = [(0, n - m) for n, m in zip(want, full.shape)]
    if any(s for _, s in short):
        full = np.pad(full, short, mode="edge")
    return full
