"""3D cells of a region at once: surface areas, Euler numbers, convex hulls.

- Surface area: a marching-cubes mesh per cell
  (:func:`skimage.measure.marching_cubes` on its crop), the meshes of all the
  region's cells then Taubin-smoothed together as one sparse system and their
  triangle areas summed per cell (as :func:`cellseg.measure.shape.surface_area`).
- Euler number (26-connected cells, 6-connected background): the Euler
  characteristic of the union of the cells' closed voxel cubes, summed over
  the 2×2×2 windows of the region from a table of the 256 window patterns;
  windows inside one cell or the background add nothing, so only windows on
  a boundary are looked at.
- Convex hull and Feret diameter: per cell from the ends of its voxel rows
  (:func:`cellseg.measure.shape._hull_features`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
from scipy import sparse
from skimage.measure import marching_cubes

from cellseg.measure.shape import (
    _MIN_SMOOTH_VERTICES,
    _TAUBIN,
    _TAUBIN_ITERATIONS,
    _hull_features,
)


def _euler_table(nd: int) -> np.ndarray:
    """Euler characteristic added by each pattern of a 2^nd window (bit i: corner ``unravel(i)``).

    A window is centred on a grid vertex of the closed pixel squares (voxel
    cubes): the vertex is there if any corner is set, each of its incident
    edges (weight 1/2, shared by two vertices), faces (1/4) and cubes (1/8)
    if any cell around it is set.
    """
    corners = np.array(list(np.ndindex((2,) * nd)))
    table = np.zeros(2 ** len(corners))
    for code in range(len(table)):
        on = np.array([(code >> i) & 1 for i in range(len(corners))], bool)
        total = float(on.any())
        # an incident k-dimensional element spans k axes, each towards one side;
        # the cells around it are the corners on those sides, and it is there
        # if any of them is set
        for k in range(1, nd + 1):
            weight = (-1) ** k / 2**k
            for axes in combinations(range(nd), k):
                for side in np.ndindex((2,) * k):
                    near = np.all(corners[:, list(axes)] == np.array(side, int), axis=1)
                    total += weight * float(on[near].any())
        table[code] = total
    return table


_EULER_3D = _euler_table(3)


def euler_numbers(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Euler numbers (26-connected) of the cells `ids` (sorted) in a 3D region holding them whole.

    Examples
    --------
    >>> shell = np.ones((5, 5, 5), np.uint32); shell[2, 2, 2] = 0
    >>> euler_numbers(np.pad(shell, 1), np.array([1])).tolist()  # one cavity
    [2]
    """
    n = len(ids)
    padded = np.pad(labels, 1)
    shape = tuple(s - 1 for s in padded.shape)
    corners = [
        padded[z : z + shape[0], y : y + shape[1], x : x + shape[2]]
        for z, y, x in np.ndindex(2, 2, 2)
    ]
    mixed = np.zeros(shape, bool)
    for c in corners[1:]:
        mixed |= c != corners[0]
    where = np.flatnonzero(mixed)
    window = np.stack([c.ravel()[where] for c in corners], axis=1)  # (windows, 8)
    k = np.minimum(np.searchsorted(ids, window), n - 1)
    cell = np.where(ids[k] == window, k, -1)
    total = np.zeros(n)
    weights = 1 << np.arange(8)
    for j in range(8):
        ref = cell[:, j]
        first = ref >= 0
        for i in range(j):
            first &= cell[:, i] != ref
        code = ((cell[first] == ref[first, None]) * weights).sum(axis=1)
        total += np.bincount(ref[first], _EULER_3D[code], minlength=n)
    return np.rint(total).astype(np.int64)


def surface_features(
    labels: np.ndarray,
    ids: np.ndarray,
    starts: np.ndarray,
    stops: np.ndarray,
    spacing: Sequence[float],
) -> dict[str, np.ndarray]:
    """Surface area, Euler number, convex voxel count and largest Feret diameter of 3D cells.

    Parameters
    ----------
    labels : ndarray of int, (Z, Y, X)
        A region of the label image holding the cells whole.
    ids : ndarray, (n,)
        The cells' ids, ascending.
    starts, stops : ndarray of int, (n, 3)
        Their bounding boxes in `labels`.
    spacing : sequence of float
        Voxel size in µm.

    Returns
    -------
    dict of str to ndarray
        ``surface_area_um2``, ``euler_number``, ``convex``, ``feret_diameter_max_um``.
    """
    n = len(ids)
    spacing = np.asarray(spacing, dtype=np.float64)
    convex = np.zeros(n, np.int64)
    feret = np.zeros(n)
    verts, faces, owner, smooth = [], [], [], []
    at = 0
    for k in range(n):
        box = tuple(slice(int(a), int(b)) for a, b in zip(starts[k], stops[k]))
        mask = labels[box] == ids[k]
        convex[k], feret[k], _ = _hull_features(mask, spacing)
        v, f, _, _ = marching_cubes(
            np.pad(mask, 1).astype(np.float32),
            0.5,
            spacing=tuple(float(s) for s in spacing),
            allow_degenerate=False,
        )
        verts.append(v)
        faces.append(f + at)
        owner.append(np.full(len(f), k))
        smooth.append(np.full(len(v), len(v) >= _MIN_SMOOTH_VERTICES))
        at += len(v)
    area = np.zeros(n)
    if n:
        points = _smooth_meshes(
            np.concatenate(verts).astype(np.float64), np.concatenate(faces), np.concatenate(smooth)
        )
        tri = points[np.concatenate(faces)]
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        area = np.bincount(
            np.concatenate(owner), np.sqrt((cross**2).sum(axis=1)) / 2.0, minlength=n
        )
    return {
        "surface_area_um2": area,
        "euler_number": euler_numbers(labels, ids),
        "convex": convex,
        "feret_diameter_max_um": feret,
    }


def _smooth_meshes(verts: np.ndarray, faces: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """Taubin smoothing of the vertices marked `smooth` (whole meshes), all meshes at once.

    One sparse matrix holds every mesh's neighbour means (a vertex's
    neighbours counted once per face edge, as one mesh alone has them); the
    vertices left as they are point at themselves.
    """
    n = len(verts)
    if not smooth.any():
        return verts
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    dst = np.concatenate([edges[:, 1], edges[:, 0]])
    keep = smooth[src]
    src, dst = src[keep], dst[keep]
    degree = np.bincount(src, minlength=n)
    still = np.flatnonzero(~smooth)
    rows = np.concatenate([src, still])
    cols = np.concatenate([dst, still])
    weights = np.concatenate([1.0 / degree[src], np.ones(len(still))])
    mean = sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))
    points = verts.copy()
    for _ in range(_TAUBIN_ITERATIONS):
        for factor in _TAUBIN:
            step = mean @ points
            step -= points
            step *= factor
            points += step
    return points
