"""2D outlines of many cells at once: perimeter, Euler number, convex hull and Feret diameters.

Each cell's outlines (outer borders and holes) are traced with OpenCV
(:func:`cv2.findContours`, 8-connected cells, 4-connected holes); everything
after that runs on all the outlines of a region at once:

- the traced border pixels become the marching-squares outline (level 0.5)
  of the cell: the midpoints of the cracks between the cell's pixels and the
  background, in order (the same polygon as
  :func:`skimage.measure.find_contours` with ``fully_connected="high"``), then
  Taubin-smoothed (:func:`cellseg.measure.shape.outline_length`, one FFT per
  outline length);
- Euler number: outer borders minus holes;
- the convex hull of the pixel centres (:func:`cv2.convexHull` of the outer
  borders): its lattice points by Pick's theorem (solidity), the calipers of
  the pixel squares around it (Feret diameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from cellseg.measure.shape import _TAUBIN, _TAUBIN_ITERATIONS

#: Neighbour offsets (dy, dx) by chain code, counter-clockwise on screen; even: 4-neighbours.
_OFFSETS = np.array([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)])
_CODE = np.full((3, 3), -1, np.int64)
_CODE[_OFFSETS[:, 0] + 1, _OFFSETS[:, 1] + 1] = np.arange(8)


def outline_features(
    labels: np.ndarray,
    ids: np.ndarray,
    starts: np.ndarray,
    stops: np.ndarray,
    spacing: Sequence[float],
) -> dict[str, np.ndarray]:
    """Perimeter, Euler number, convex pixel count and Feret diameters of 2D cells.

    Parameters
    ----------
    labels : ndarray of int, (Y, X)
        A region of the label image holding the cells whole.
    ids : ndarray, (n,)
        The cells' ids.
    starts, stops : ndarray of int, (n, 2)
        Their bounding boxes in `labels`.
    spacing : sequence of float
        Pixel size in µm, (y, x).

    Returns
    -------
    dict of str to ndarray
        ``perimeter_um``, ``euler_number``, ``convex`` (pixel centres in the
        convex hull of the cell's pixel centres), ``feret_diameter_max_um``,
        ``feret_diameter_min_um``; one value per cell.

    Examples
    --------
    >>> lab = np.zeros((6, 7), np.uint32); lab[1:5, 1:6] = 3; lab[2, 3] = 0
    >>> f = outline_features(lab, np.array([3]), np.array([[1, 1]]), np.array([[5, 6]]), (1, 1))
    >>> int(f["euler_number"][0]), int(f["convex"][0]), float(f["feret_diameter_min_um"][0])
    (0, 20, 4.0)
    """
    n = len(ids)
    spacing = np.asarray(spacing, dtype=np.float64)
    euler = np.zeros(n, np.int64)
    points: list[np.ndarray] = []  # every outline's border pixels (y, x), box coordinates
    owner: list[int] = []
    hulls: list[np.ndarray] = []
    for k in range(n):
        (y0, x0), (y1, x1) = starts[k], stops[k]
        mask = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.uint8)
        np.equal(labels[y0:y1, x0:x1], ids[k], out=mask[1:-1, 1:-1].view(bool))
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        hole = hierarchy[0][:, 3] >= 0
        euler[k] = len(contours) - 2 * int(hole.sum())
        outer = [c for c, h in zip(contours, hole) if not h]
        border = outer[0] if len(outer) == 1 else np.concatenate(outer)
        hulls.append(cv2.convexHull(border)[:, 0, ::-1])
        points.extend(c[:, 0, ::-1] for c in contours)
        owner.extend([k] * len(contours))
    lengths = _outline_lengths(points, spacing)
    perimeter = np.bincount(np.asarray(owner, np.int64), lengths, minlength=n)
    convex, feret_max, feret_min = _hull_features(hulls, spacing)
    return {
        "perimeter_um": perimeter,
        "euler_number": euler,
        "convex": convex,
        "feret_diameter_max_um": feret_max,
        "feret_diameter_min_um": feret_min,
    }


def _cracks(points: np.ndarray, border: np.ndarray, offsets: np.ndarray, lengths: np.ndarray):
    """Crack midpoints (y, x) of closed traced borders and the border of each, in order."""
    pos = np.arange(len(points)) - offsets[border]
    size = lengths[border]
    prev = points[offsets[border] + (pos - 1) % size] - points
    nxt = points[offsets[border] + (pos + 1) % size] - points
    lone = size == 1
    a = np.where(lone, 0, _CODE[prev[:, 0] + 1, prev[:, 1] + 1])
    b = np.where(lone, 0, _CODE[nxt[:, 0] + 1, nxt[:, 1] + 1])
    steps = (b - a) % 8
    steps[steps == 0] = 8
    steps[lone] = 9  # all four cracks of a lone pixel
    j = np.arange(1, 9)
    codes = (a[:, None] + j[None, :]) % 8
    keep = (j[None, :] < steps[:, None]) & (codes % 2 == 0)
    rows = np.broadcast_to(np.arange(len(points))[:, None], codes.shape)[keep]
    return points[rows] + 0.5 * _OFFSETS[codes[keep]], border[rows]


def _outline_lengths(points: list[np.ndarray], spacing: np.ndarray) -> np.ndarray:
    """Length in µm of each traced border's smoothed marching-squares outline.

    All outlines are smoothed at once: the Taubin steps as neighbour means
    along each closed outline, then the fundamental (the outline's ellipse)
    put back as it was, as :func:`cellseg.measure.shape.taubin_gain` has it.
    """
    if not points:
        return np.zeros(0)
    lengths = np.array([len(p) for p in points], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    border = np.repeat(np.arange(len(points)), lengths)
    cracks, owner = _cracks(np.concatenate(points).astype(np.int64), border, offsets, lengths)
    cracks = cracks * spacing
    count = np.bincount(owner, minlength=len(points))
    first = np.cumsum(count) - count
    last = first + count - 1
    size = count[owner]
    pos = np.arange(len(owner)) - first[owner]
    # the fundamental of each outline, and the gain the steps give it; cosines
    # from one table per outline length, so a value never depends on which
    # other outlines were measured with it
    sizes, which = np.unique(count, return_inverse=True)
    tables = [2 * np.pi * np.arange(m) / m for m in sizes]
    cos = np.concatenate([np.cos(t) for t in tables])
    sin = np.concatenate([np.sin(t) for t in tables])
    at = (np.cumsum(sizes) - sizes)[which][owner] + pos
    cos, sin = cos[at], sin[at]
    fundamental = np.zeros_like(cracks)
    for a in range(2):
        c = np.bincount(owner, cracks[:, a] * cos, minlength=len(points))
        s = np.bincount(owner, cracks[:, a] * sin, minlength=len(points))
        fundamental[:, a] = 2.0 / size * (c[owner] * cos + s[owner] * sin)
    k = 1 - np.array([math.cos(2 * math.pi / m) for m in sizes])[which][owner]
    gain = np.ones_like(k)
    for factor in _TAUBIN:
        gain = gain * (1 - factor * k)
    gain = gain**_TAUBIN_ITERATIONS
    ring = cracks
    around = np.empty_like(ring)
    for _ in range(_TAUBIN_ITERATIONS):
        for factor in _TAUBIN:
            # previous + next point along each closed outline, from shifted copies
            around[1:] = ring[:-1]
            around[0] = ring[-1]
            around[first] = ring[last]
            around[:-1] += ring[1:]
            around[last] = ring[last - 1] + ring[first]
            around *= 0.5 * factor
            ring *= 1 - factor
            ring += around
    ring += ((1 - gain) * (size > 2))[:, None] * fundamental
    around[:-1] = ring[1:]
    around[last] = ring[first]
    around -= ring
    return np.bincount(owner, np.sqrt((around**2).sum(axis=1)), minlength=len(points))


#: Pairs of hull vertices compared at a time (cells × vertices²) for the Feret diameters.
_PAIRS_AT_ONCE = 1 << 21


def _hull_features(
    hulls: list[np.ndarray], spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice points in each hull (Pick's theorem) and the calipers of the pixel squares.

    The hull of the pixel squares is the Minkowski sum of the hull of their
    centres and one pixel: along a unit direction ``u`` its width is the
    centres' width plus ``|u| · spacing``; the smallest width lies across a
    hull edge or an axis, the largest between two hull vertices (each axis gap
    grown by one pixel).
    """
    n = len(hulls)
    convex = np.zeros(n, np.int64)
    feret_max = np.zeros(n)
    feret_min = np.zeros(n)
    sizes = np.array([len(h) for h in hulls], np.int64)
    flat = np.concatenate(hulls).astype(np.int64) if n else np.zeros((0, 2), np.int64)
    first = np.cumsum(sizes) - sizes
    bucket = np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64)  # sizes within 2x
    batches = []
    for b in np.unique(bucket):
        members = np.flatnonzero(bucket == b)
        top = int(sizes[members].max())
        step = max(1, _PAIRS_AT_ONCE // (top * top))
        batches += [members[i : i + step] for i in range(0, len(members), step)]
    for which in batches:
        width = int(sizes[which].max())
        # each hull padded by repeating its last vertex: zero-length edges change nothing
        v = flat[first[which][:, None] + np.minimum(np.arange(width), sizes[which][:, None] - 1)]
        nxt = np.roll(v, -1, axis=1)
        padded = np.arange(width)[None, :] >= sizes[which][:, None]
        nxt[padded] = v[padded]
        nxt[np.arange(len(which)), sizes[which] - 1] = v[:, 0]
        edge = nxt - v
        twice_area = np.abs((v[..., 1] * nxt[..., 0] - v[..., 0] * nxt[..., 1]).sum(axis=1))
        on_edges = np.gcd(np.abs(edge[..., 0]), np.abs(edge[..., 1])).sum(axis=1)
        convex[which] = (twice_area + on_edges) // 2 + 1
        um = v * spacing
        gap_y = np.abs(um[:, :, None, 0] - um[:, None, :, 0])
        gap_y += spacing[0]
        gap_y *= gap_y
        gap_x = np.abs(um[:, :, None, 1] - um[:, None, :, 1])
        gap_x += spacing[1]
        gap_x *= gap_x
        gap_y += gap_x
        feret_max[which] = np.sqrt(gap_y.max(axis=(1, 2)))
        normal = np.stack([-edge[..., 1], edge[..., 0]], axis=-1) * spacing[::-1]
        norm = np.linalg.norm(normal, axis=-1, keepdims=True)
        normal = np.where(norm > 0, normal / np.where(norm > 0, norm, 1), [1.0, 0.0])
        axes = np.broadcast_to(np.eye(2), (len(which), 2, 2))
        u = np.concatenate([normal, axes], axis=1)  # (cells, directions, 2)
        proj = np.einsum("cdk,cvk->cdv", u, um)
        widths = proj.max(axis=2) - proj.min(axis=2) + np.abs(u) @ spacing
        feret_min[which] = widths.min(axis=1)
    return convex, feret_max, feret_min
