"""Neighbour columns from cell centroids: counts within a radius and nearest neighbours.

Distances are in µm, between centroids, found with :class:`scipy.spatial.cKDTree`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree


def neighbor_features(
    centroids_um: np.ndarray, ids: np.ndarray, radius_um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour counts and nearest neighbours from cell centroids.

    Parameters
    ----------
    centroids_um : ndarray, (n, ndim)
        Centroids in µm.
    ids : ndarray, (n,)
        Cell ids.
    radius_um : float
        Neighbourhood radius in µm.

    Returns
    -------
    n_neighbors : ndarray of int64
        Other centroids within ``radius_um``.
    distance_um : ndarray of float64
        Distance to the nearest other centroid (NaN for a lone cell).
    nearest_id : ndarray of uint32
        Its id (0 for a lone cell).

    Examples
    --------
    >>> n, d, k = neighbor_features(np.array([[0.0, 0.0], [0.0, 10.0]]), np.array([1, 2]), 20)
    >>> n.tolist(), d.tolist(), k.tolist()
    ([1, 1], [10.0, 10.0], [2, 1])
    """
    points = np.asarray(centroids_um, dtype=np.float64)
    return Neighbors(lambda lo, hi: points[lo:hi], ids, radius_um).block(0, len(ids))


class Neighbors:
    """Neighbour features of a range of cells at a time, from a k-d tree of their surroundings.

    The tree of a range ``lo:hi`` holds only the cells whose centroids lie in
    the range's bounding box grown by the radius; a cell whose nearest
    neighbour is not found inside that box is searched again in a box four
    times wider, until the box holds every cell. The results equal those of
    one tree over all cells, but when ranges of ids are near each other in
    space (as stitched ids are, tile by tile) a tree holds a few tiles' cells,
    not the scan's.

    Parameters
    ----------
    centroids : callable
        ``centroids(lo, hi)``: the centroids in µm of cells ``lo:hi``, ``(hi - lo, ndim)``.
    ids : ndarray, (n,)
        Cell ids.
    radius_um : float
        Neighbourhood radius in µm.
    """

    SCAN_ROWS = 65_536  # cells whose centroids are made at a time to find those in a box

    def __init__(
        self, centroids: Callable[[int, int], np.ndarray], ids: np.ndarray, radius_um: float
    ) -> None:
        self.centroids = centroids
        self.ids = np.asarray(ids, dtype=np.uint32)
        self.radius_um = float(radius_um)

    def _inside(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices and centroids of the cells whose centroids lie in the box ``[lo, hi]``."""
        found, points = [], []
        for start in range(0, len(self.ids), self.SCAN_ROWS):
            c = self.centroids(start, min(len(self.ids), start + self.SCAN_ROWS))
            inside = np.flatnonzero(np.all((c >= lo) & (c <= hi), axis=1))
            found.append(inside + start)
            points.append(c[inside])
        return np.concatenate(found), np.concatenate(points)

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three neighbour columns of cells ``lo:hi``."""
        n = hi - lo
        count = np.zeros(n, np.int64)
        dist = np.full(n, np.nan)
        nearest = np.zeros(n, np.uint32)
        if n <= 0 or len(self.ids) < 2:
            return count, dist, nearest
        query = np.asarray(self.centroids(lo, hi), dtype=np.float64)
        rows = np.arange(n)
        reach = self.radius_um * (1 + 1e-9) + 1e-9
        first = True
        while len(rows):
            q = query[rows]
            index, points = self._inside(q.min(axis=0) - reach, q.max(axis=0) + reach)
            whole = len(index) == len(self.ids)
            tree = cKDTree(points)
            if first:  # every centroid within the radius of a query is in the box
                count[:] = np.asarray(tree.query_ball_point(q, self.radius_um, return_length=True))
                count -= 1
                first = False
            d, k = tree.query(q, k=2)
            me = np.searchsorted(index, lo + rows)
            # the nearest other cell (a cell at the very same centroid may come first)
            other = np.where(k[:, 0] == me, 1, 0)
            d_other = d[np.arange(len(rows)), other]
            k_other = k[np.arange(len(rows)), other]
            # exact when no cell outside the box can be nearer: the box reaches
            # at least `reach` beyond every query
            sure = d_other <= reach if not whole else np.ones(len(rows), bool)
            found = sure & np.isfinite(d_other)
            dist[rows[found]] = d_other[found]
            nearest[rows[found]] = self.ids[index[k_other[found]]]
            rows = rows[~sure]
            reach *= 4
        return count, dist, nearest
