"""Stitch per-tile candidates into one label image with one global id per cell.

The global step only reads candidate metadata (boxes, anchors, kinds) and the
mask crops of candidates near each other; it never holds the scan's pixels.
Labels are painted tile core by tile core: cores equal the label chunks, so
every write is a whole, disjoint set of chunks.

Rules, in order:

1. ``OWNED`` candidates (complete and anchored in their tile's core) are cells.
   If two of them from different tiles overlap at IoU >= ``duplicate_iou``, or
   one lies mostly inside the other (backends that are not exactly
   tile-invariant), the one seen closer to its tile's crop edge is dropped.
2. A ``PIECE`` (the part of an object inside its tile's core) whose whole
   object mostly lies in a kept cell is a view of that cell and is dropped.
3. Pieces from different tiles are joined when one tile's object covers most
   of the other piece where the two tiles overlap: one cell, however many
   tiles it spans.
4. Ids: each cell belongs to one tile (its own, or for joined pieces the tile
   of the first piece); ids are a prefix sum over the tiles' cell counts,
   ordered within a tile by anchor, so they are deterministic.
"""

from __future__ import annotations

import itertools
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cellseg.segment import OWNED, PIECE, Candidates, reliable_box, unpack_mask
from cellseg.tiling import Box, Tile, box_intersection


@dataclass
class StitchResult:
    """Outcome of :func:`resolve_candidates`.

    Attributes
    ----------
    cell_of : ndarray of uint32, (n,)
        Global cell id of each candidate (0 = dropped), in the labels' dtype.
    n_cells : int
        Number of cells (ids are 1..n_cells).
    tile_counts : ndarray of int64
        Cells per tile (the prefix sum of which gives the id offsets).
    n_duplicates : int
        Owned candidates dropped as duplicates.
    n_merged_pieces : int
        Pieces joined into multi-tile cells.
    """

    cell_of: np.ndarray
    n_cells: int
    tile_counts: np.ndarray
    n_duplicates: int
    n_merged_pieces: int


class MaskSource:
    """Candidate metadata plus on-demand access to mask crops.

    Parameters
    ----------
    meta : Candidates
        All candidates of a scan; ``bits`` may be empty when ``loader`` is given.
    loader : callable, optional
        ``loader(part) -> (offsets, bits)``: the packed masks of one stored
        part (e.g. a batch file) and their byte offsets. The parts' candidates
        follow each other in ``meta``.
    part_starts : ndarray, optional
        With ``loader``: the index in ``meta`` of each part's first candidate,
        then ``len(meta)``.
    cache_runs : int
        Runs of candidates (a tile's, in one part) whose packed masks are held,
        the least recently used dropped first. A part is read whole and all its
        runs are cached, so memory is bounded by a few dozen tiles' masks
        however many tiles a part has.
    """

    def __init__(
        self,
        meta: Candidates,
        loader: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
        part_starts: np.ndarray | None = None,
        cache_runs: int = 48,
    ) -> None:
        self.meta = meta
        self.loader = loader
        self.cache_runs = cache_runs
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        if loader is not None:
            n = len(meta)
            self.part_starts = np.asarray(part_starts, np.int64)
            cuts = np.flatnonzero(np.diff(meta.tile)) + 1
            cuts = np.union1d(
                cuts, self.part_starts[(self.part_starts > 0) & (self.part_starts < n)]
            )
            self.run_starts = np.concatenate([[0], cuts]).astype(np.int64)
            self.run_stops = np.concatenate([cuts, [n]]).astype(np.int64)

    def _load(self, run: int) -> None:
        """Read the part that holds `run` and cache its runs, `run` last (most recent)."""
        lo = int(self.run_starts[run])
        part = int(np.searchsorted(self.part_starts, lo, side="right")) - 1
        offsets, bits = self.loader(part)
        first = int(self.part_starts[part])
        stop = int(self.part_starts[part + 1])
        runs = range(
            int(np.searchsorted(self.run_starts, first)),
            int(np.searchsorted(self.run_starts, stop)),
        )
        for r in [*(r for r in runs if r != run), run]:
            a = int(self.run_starts[r]) - first
            b = int(self.run_stops[r]) - first
            off = offsets[a : b + 1]
            self._cache[r] = (off - off[0], bits[off[0] : off[-1]].copy())
            self._cache.move_to_end(r)
            while len(self._cache) > self.cache_runs:
                self._cache.popitem(last=False)

    def mask(self, i: int) -> np.ndarray:
        """Mask crop of candidate ``i``."""
        if self.loader is None:
            return self.meta.mask(i)
        run = int(np.searchsorted(self.run_starts, i, side="right")) - 1
        if run not in self._cache:
            self._load(run)
        self._cache.move_to_end(run)
        offsets, bits = self._cache[run]
        k = i - int(self.run_starts[run])
        return unpack_mask(bits[offsets[k] : offsets[k + 1]], self.meta.bbox[i])


def _crop(mask: np.ndarray, box: Box, region: Box) -> np.ndarray:
    """Part of ``mask`` (over ``box``) inside ``region`` (which must lie within ``box``)."""
    return mask[tuple(slice(r0 - b0, r1 - b0) for (b0, _), (r0, r1) in zip(box, region))]


def _overlap(m1: np.ndarray, b1: Box, m2: np.ndarray, b2: Box, within: Box | None = None) -> int:
    """Pixels set in both masks (optionally only inside ``within``)."""
    region = box_intersection(b1, b2)
    if region is not None and within is not None:
        region = box_intersection(region, within)
    if region is None:
        return 0
    return int(np.count_nonzero(_crop(m1, b1, region) & _crop(m2, b2, region)))


def _count_in(mask: np.ndarray, box: Box, region: Box) -> int:
    inter = box_intersection(box, region)
    if inter is None:
        return 0
    return int(np.count_nonzero(_crop(mask, box, inter)))


def candidate_pairs(
    cands: Candidates, tiles: Sequence[Tile], core_shape: Sequence[int], select: np.ndarray
) -> np.ndarray:
    """Pairs (i < j) of selected candidates from different tiles whose boxes intersect.

    Two candidates of different tiles can only overlap where one of them reaches
    out of its own tile's core, so only those (near the seams) are compared,
    each against the candidates of the tiles its box touches.

    Returns
    -------
    ndarray of int64, (n_pairs, 2)
        Each pair once, sorted (by i, then j).
    """
    nd = cands.ndim
    sub = np.flatnonzero(select)
    found: list[np.ndarray] = []
    if sub.size < 2:
        return np.zeros((0, 2), np.int64)
    cs = np.asarray(core_shape)
    grid_of = {t.grid: t.index for t in tiles}
    core_lo = np.array([[a for a, _ in t.core] for t in tiles]).reshape(-1, nd)
    core_hi = np.array([[b for _, b in t.core] for t in tiles]).reshape(-1, nd)
    lo, hi = cands.bbox[:, :nd], cands.bbox[:, nd:]
    by_tile: dict[int, np.ndarray] = {}
    order = sub[np.argsort(cands.tile[sub], kind="stable")]
    tiles_sorted = cands.tile[order]
    for t in np.unique(tiles_sorted):
        by_tile[int(t)] = order[tiles_sorted == t]
    own = cands.tile[sub]
    out_of_core = np.zeros(len(sub), bool)
    for a in range(nd):  # one axis at a time: temporaries of one column, not of the boxes
        out_of_core |= lo[sub, a] < core_lo[own, a]
        out_of_core |= hi[sub, a] > core_hi[own, a]
    crossing = sub[out_of_core]
    for i in crossing:
        g_lo, g_hi = lo[i] // cs, (hi[i] - 1) // cs
        near = [
            by_tile[grid_of[g]]
            for g in itertools.product(*(range(a, b + 1) for a, b in zip(g_lo, g_hi)))
            if g in grid_of and grid_of[g] in by_tile and grid_of[g] != cands.tile[i]
        ]
        if not near:
            continue
        js = np.concatenate(near)
        js = js[np.all(lo[js] < hi[i], axis=1) & np.all(lo[i] < hi[js], axis=1)]
        found.append(np.stack([np.minimum(i, js), np.maximum(i, js)], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


def _pairs(pairs: np.ndarray) -> Iterator[tuple[int, int]]:
    """The rows of a pair array as Python ints, one at a time."""
    for k in range(len(pairs)):
        yield int(pairs[k, 0]), int(pairs[k, 1])


def _piece_groups(pieces: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Group of each piece, the connected components of the joined pairs `edges`.

    `pieces` are sorted candidate indices and `edges` pairs of them. Groups are
    numbered in the order of their first piece.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(pieces)
    ends = np.searchsorted(pieces, edges)
    graph = coo_matrix((np.ones(len(ends), np.int8), (ends[:, 0], ends[:, 1])), shape=(m, m))
    n_groups, group = connected_components(graph, directed=False)
    # renumber by first piece, whatever order the traversal gave
    first = np.full(n_groups, m, np.int64)
    np.minimum.at(first, group, np.arange(m))
    rank = np.empty(n_groups, np.int64)
    rank[np.argsort(first)] = np.arange(n_groups)
    return rank[group], int(n_groups)


def resolve_candidates(
    source: MaskSource,
    tiles: Sequence[Tile],
    core_shape: Sequence[int],
    *,
    duplicate_iou: float = 0.5,
    view_fraction: float = 0.5,
    join_fraction: float = 0.5,
    min_piece_pixels: int = 4,
    margin: Sequence[int] | None = None,
) -> StitchResult:
    """Decide which candidates are cells and give every cell a global id.

    Parameters
    ----------
    source : MaskSource
        Candidates of every tile.
    tiles : sequence of Tile
        The tile plan (indexed by ``Tile.index``).
    core_shape : sequence of int
        Core shape of the plan.
    duplicate_iou : float
        IoU at which two owned candidates of different tiles are one cell.
    view_fraction : float
        A piece whose whole object lies at least this much in a kept cell is dropped.
    join_fraction : float
        Two pieces are joined when one tile's object covers at least this
        fraction of the other piece inside the first tile's halo box.
    min_piece_pixels : int
        Joined pieces with fewer pixels in all are dropped.
    margin : sequence of int, optional
        The backend's margin per axis: a tile's view of a neighbour's core is
        only trusted farther than this from the tile's own crop edge.

    Returns
    -------
    StitchResult
    """
    c = source.meta
    n = len(c)
    alive = np.ones(n, bool)
    owned = c.kind == OWNED
    piece = c.kind == PIECE
    # boxes are made when needed: a list of all of them would hold ~0.3 KB per candidate
    box = c.box
    n_dup = 0

    cores = {t.index: t.core for t in tiles}
    shape = tuple(max(t.core[a][1] for t in tiles) for a in range(c.ndim))
    margin = tuple(margin) if margin is not None else (0,) * c.ndim
    trusted = {t.index: reliable_box(t.halo, margin, shape) for t in tiles}

    def slack(i: int) -> float:
        """How far candidate i stays from its tile's crop edges (more = more context)."""
        gaps = []
        for (lo, hi), (a, b), n in zip(box(i), trusted[int(c.tile[i])], shape):
            gaps.append(lo - a if a > 0 else np.inf)
            gaps.append(b - hi if b < n else np.inf)
        return float(min(gaps))

    # 1. conflicts among owned candidates (never for tile-invariant backends): when two
    #    from different tiles overlap by IoU >= duplicate_iou, or one lies mostly
    #    inside the other, keep the one seen with more context (then higher score).
    for i, j in _pairs(candidate_pairs(c, tiles, core_shape, owned)):
        if not (alive[i] and alive[j]):
            continue
        inter = _overlap(source.mask(i), box(i), source.mask(j), box(j))
        if inter == 0:
            continue
        iou = inter / (c.area[i] + c.area[j] - inter)
        if iou >= duplicate_iou or inter >= view_fraction * min(c.area[i], c.area[j]):
            key_i = (-slack(i), -float(c.score[i]), int(c.tile[i]))
            key_j = (-slack(j), -float(c.score[j]), int(c.tile[j]))
            alive[j if key_i <= key_j else i] = False
            n_dup += 1

    # 2. pieces that are views of a kept cell
    kept_owned = owned & alive
    for i, j in _pairs(candidate_pairs(c, tiles, core_shape, kept_owned | piece)):
        pi, oj = (i, j) if piece[i] else (j, i)
        if not (piece[pi] and kept_owned[oj]) or not alive[pi]:
            continue
        inter = _overlap(source.mask(pi), box(pi), source.mask(oj), box(oj))
        if inter >= view_fraction * c.area[pi]:
            alive[pi] = False

    # 3. join pieces across tiles: the joined pairs are the edges of a graph whose
    #    connected components are cells (arrays throughout: no per-piece objects)
    pieces = np.flatnonzero(piece & alive)
    sizes = np.zeros(len(pieces), np.int64)
    for k, p in enumerate(pieces):
        sizes[k] = _count_in(source.mask(p), box(p), cores[int(c.tile[p])])
    edges = array("q")
    for i, j in _pairs(candidate_pairs(c, tiles, core_shape, piece & alive)):
        mi, mj = source.mask(i), source.mask(j)
        ti, tj = int(c.tile[i]), int(c.tile[j])
        for (a, ma, ta), (b, mb, tb) in (((i, mi, ti), (j, mj, tj)), ((j, mj, tj), (i, mi, ti))):
            # does a's object cover b's piece where a's tile can see it?
            region = box_intersection(cores[tb], trusted[ta])
            if region is None:
                continue
            visible = _count_in(mb, box(b), region)
            if visible == 0:
                continue
            covered = _overlap(ma, box(a), mb, box(b), within=region)
            if covered >= join_fraction * visible:
                edges.extend((i, j))
                break
    group, n_groups = _piece_groups(pieces, np.frombuffer(edges, np.int64).reshape(-1, 2))
    del edges
    members = np.bincount(group, minlength=n_groups)
    n_merged = int(members[members > 1].sum())
    # a group is a cell when its pieces have min_piece_pixels in all; its home
    # is its first piece by (tile, anchor), then index
    kept_group = np.bincount(group, weights=sizes, minlength=n_groups) >= min_piece_pixels
    del sizes, members
    by_key = np.lexsort(
        [pieces, *(c.anchor[pieces, a] for a in reversed(range(c.ndim))), c.tile[pieces], group]
    )
    firsts = pieces[by_key[np.flatnonzero(np.diff(group[by_key], prepend=-1))]]
    del by_key
    firsts = firsts[kept_group]

    # 4. ids: prefix sum over per-tile counts, anchor order within a tile. Cells are
    #    kept owned candidates (in index order), then joined pieces (in group order),
    #    as arrays of their home tile and anchor; a stable sort by (tile, anchor)
    #    puts each tile's cells together, so a cell's id is its place in that order.
    kept = np.flatnonzero(kept_owned)
    first = np.concatenate([kept, firsts])
    home = c.tile[first]
    keys = [c.anchor[first, a] for a in reversed(range(c.ndim))]
    order = np.lexsort([*keys, home])
    del keys, first, firsts
    n_tiles = max((t.index for t in tiles), default=-1) + 1
    tile_counts = np.bincount(home, minlength=n_tiles).astype(np.int64)
    n_cells = len(home)
    del home
    id_of = np.empty(n_cells, np.int64)  # id of each entry of `first`
    id_of[order] = np.arange(1, n_cells + 1)
    del order
    cell_of = np.zeros(n, np.uint32)
    cell_of[kept] = id_of[: len(kept)]
    group_id = np.zeros(n_groups, np.int64)
    group_id[kept_group] = id_of[len(kept) :]
    cell_of[pieces] = group_id[group]
    return StitchResult(
        cell_of=cell_of,
        n_cells=n_cells,
        tile_counts=tile_counts,
        n_duplicates=n_dup,
        n_merged_pieces=int(n_merged),
    )


def paint_region(
    source: MaskSource,
    result: StitchResult,
    region: Box,
    members: Sequence[int],
    dtype=np.uint32,
) -> np.ndarray:
    """Paint the cells of ``members`` (candidate indices) into ``region``.

    Pieces paint only inside their own tile's core; whole cells paint where they
    lie. Pieces are painted first and whole cells over them, whole cells in
    descending id so that where two overlap the lower id wins: the result does
    not depend on the order of ``members``.
    """
    c = source.meta
    out = np.zeros(tuple(b - a for a, b in region), dtype)
    chosen = [int(i) for i in members if result.cell_of[i] > 0]
    chosen.sort(key=lambda i: (c.kind[i] != PIECE, -int(result.cell_of[i]), i))
    for i in chosen:
        box = c.box(i)
        inter = box_intersection(box, region)
        if inter is None:
            continue
        m = _crop(source.mask(i), box, inter)
        dst = tuple(slice(a - r0, b - r0) for (a, b), (r0, _) in zip(inter, region))
        out[dst][m] = result.cell_of[i]
    return out


def members_by_tile(
    cands: Candidates, tiles: Sequence[Tile], core_shape: Sequence[int], result: StitchResult
) -> dict[int, np.ndarray]:
    """For every tile, the kept candidates that may paint inside its core (ascending)."""
    nd = cands.ndim
    grid_of = {t.grid: t.index for t in tiles}
    cs = np.asarray(core_shape)
    grid_shape = np.max([t.grid for t in tiles], axis=0) + 1 if tiles else np.zeros(nd, int)
    lookup = np.full(tuple(grid_shape), -1, np.int32)
    for t in tiles:
        lookup[t.grid] = t.index
    kept_all = np.flatnonzero(result.cell_of > 0)
    tile_of: list[np.ndarray] = []
    cand_of: list[np.ndarray] = []
    for start in range(0, len(kept_all), _MEMBERS_BLOCK):  # bounded temporaries
        kept = kept_all[start : start + _MEMBERS_BLOCK]
        lo = cands.bbox[kept, :nd] // cs
        hi = (cands.bbox[kept, nd:] - 1) // cs
        piece = cands.kind[kept] == PIECE
        single = ~piece & np.all(lo == hi, axis=1)
        # pieces paint in their own tile, whole cells in every tile their box touches
        tile_of.append(cands.tile[kept[piece]].astype(np.int32))
        cand_of.append(kept[piece].astype(np.int32))
        cell_grid = lo[single]
        inside = np.all((cell_grid >= 0) & (cell_grid < grid_shape), axis=1)
        at = np.full(len(cell_grid), -1, np.int32)
        at[inside] = lookup[tuple(cell_grid[inside].T)]
        tile_of.append(at)
        cand_of.append(kept[single].astype(np.int32))
        extra_tiles, extra_cands = [], []
        for k in np.flatnonzero(~piece & ~single):
            for g in itertools.product(*(range(a, b + 1) for a, b in zip(lo[k], hi[k]))):
                if g in grid_of:
                    extra_tiles.append(grid_of[g])
                    extra_cands.append(int(kept[k]))
        tile_of.append(np.asarray(extra_tiles, np.int32))
        cand_of.append(np.asarray(extra_cands, np.int32))
    if not tile_of:
        return {}
    tile_all = np.concatenate(tile_of)
    cand_all = np.concatenate(cand_of)
    del tile_of, cand_of
    found = tile_all >= 0
    tile_all, cand_all = tile_all[found], cand_all[found]
    if not len(tile_all):
        return {}
    order = np.lexsort([cand_all, tile_all])
    tile_all, cand_all = tile_all[order], cand_all[order]
    bounds = np.flatnonzero(np.diff(tile_all)) + 1
    return {
        int(t[0]): members
        for t, members in zip(np.split(tile_all, bounds), np.split(cand_all, bounds))
    }


_MEMBERS_BLOCK = 16_384
