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
from collections import OrderedDict, defaultdict
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
    cell_of : ndarray of int64, (n,)
        Global cell id of each candidate (0 = dropped).
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
        ``loader(part) -> Candidates`` loading one stored part (e.g. a batch file)
        with its masks; ``part_of[i]`` and ``local_of[i]`` locate candidate ``i``.
    part_of, local_of : ndarray, optional
        Part and index within the part for every candidate.
    cache_size : int
        Number of parts whose packed masks are held in memory (their boxes
        are those of ``meta``).
    """

    def __init__(
        self,
        meta: Candidates,
        loader: Callable[[int], Candidates] | None = None,
        part_of: np.ndarray | None = None,
        local_of: np.ndarray | None = None,
        cache_size: int = 12,
    ) -> None:
        self.meta = meta
        self.loader = loader
        self.part_of = part_of
        self.local_of = local_of
        self.cache_size = cache_size
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def mask(self, i: int) -> np.ndarray:
        """Mask crop of candidate ``i``."""
        if self.loader is None:
            return self.meta.mask(i)
        part = int(self.part_of[i])
        if part not in self._cache:
            loaded = self.loader(part)
            self._cache[part] = (loaded.offsets, loaded.bits)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(part)
        offsets, bits = self._cache[part]
        k = int(self.local_of[i])
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


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


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

    # 3. join pieces across tiles
    pieces = np.flatnonzero(piece & alive)
    index_of = {int(p): k for k, p in enumerate(pieces)}
    uf = _UnionFind(len(pieces))
    sizes = np.zeros(len(pieces), np.int64)
    for k, p in enumerate(pieces):
        sizes[k] = _count_in(source.mask(p), box(p), cores[int(c.tile[p])])
    for i, j in _pairs(candidate_pairs(c, tiles, core_shape, piece & alive)):
        mi, mj = source.mask(i), source.mask(j)
        ti, tj = int(c.tile[i]), int(c.tile[j])
        joined = False
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
                joined = True
                break
        if joined:
            uf.union(index_of[i], index_of[j])
    groups: dict[int, list[int]] = defaultdict(list)
    for k, p in enumerate(pieces):
        groups[uf.find(k)].append(int(p))
    n_merged = sum(len(g) for g in groups.values() if len(g) > 1)

    # 4. ids: prefix sum over per-tile counts, anchor order within a tile. Cells are
    #    kept owned candidates (in index order), then joined pieces (in group order),
    #    as arrays of their home tile and anchor; a stable sort by (tile, anchor)
    #    puts each tile's cells together, so a cell's id is its place in that order.
    kept = np.flatnonzero(kept_owned)
    joined = [
        members
        for members in groups.values()
        if sum(sizes[index_of[m]] for m in members) >= min_piece_pixels
    ]
    firsts = [min(m, key=lambda i: (int(c.tile[i]), tuple(c.anchor[i]))) for m in joined]
    first = np.concatenate([kept, np.asarray(firsts, np.int64)])
    home = c.tile[first]
    keys = [c.anchor[first, a] for a in reversed(range(c.ndim))]
    order = np.lexsort([*keys, home])
    del keys, first
    n_tiles = max((t.index for t in tiles), default=-1) + 1
    tile_counts = np.bincount(home, minlength=n_tiles).astype(np.int64)
    n_cells = len(home)
    del home
    cell_of = np.zeros(n, np.int64)
    for start in range(0, n_cells, 65_536):  # the cells in id order, a block at a time
        at = order[start : start + 65_536]
        ids = np.arange(start + 1, start + 1 + len(at))
        owned_cells = at < len(kept)
        cell_of[kept[at[owned_cells]]] = ids[owned_cells]
        for j, cell_id in zip(at[~owned_cells] - len(kept), ids[~owned_cells]):
            cell_of[joined[j]] = cell_id
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
