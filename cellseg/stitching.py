"""Stitch per-tile candidates into one label image with one global id per cell.

The global step only reads candidate metadata (boxes, anchors, kinds) and the
mask crops of candidates near each other; it never holds the scan's pixels.
It sweeps the tiles in order, each against the tiles whose crops overlap its
own, so memory holds the candidates of a window of tiles and a byte or four
per candidate, not every candidate's rows. Labels are painted tile core by
tile core: cores equal the label chunks, so every write is a whole, disjoint
set of chunks.

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

import bisect
import math
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cellseg.progress import progress
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


#: The fields of a candidate's row, all but its mask (see :class:`TileCandidates`).
ROW_FIELDS = ("tile", "kind", "bbox", "anchor", "area", "score")


class TileCandidates:
    """The candidates of a scan, served tile by tile from stored parts.

    Candidates are numbered tile after tile (tiles ascending, as the parts hold
    them). A tile's rows (boxes, anchors, kinds...) and its packed masks are
    read when needed and held in two caches, the least recently used tile
    dropped first: rows are small, so their cache spans the window of tiles a
    sweep looks at; masks are large, so theirs holds a few dozen tiles.

    Parameters
    ----------
    part_tiles : sequence of sequence of int
        The tiles of each part, ascending (parts in tile order).
    counts : ndarray of int
        Candidates of each tile, indexed by tile.
    load_rows : callable
        ``load_rows(part) -> dict``: the part's fields other than the masks
        (``tile``, ``kind``, ``bbox``, ``anchor``, ``area``, ``score``).
    load_masks : callable
        ``load_masks(part) -> (offsets, bits)``: the part's packed masks and
        their byte offsets.
    ndim : int
        Number of spatial axes.
    row_tiles, mask_tiles : int
        Tiles held in each cache (rows: at least what :meth:`fit_window` asks).
    """

    def __init__(
        self,
        part_tiles: Sequence[Sequence[int]],
        counts: np.ndarray,
        load_rows: Callable[[int], dict[str, np.ndarray]],
        load_masks: Callable[[int], tuple[np.ndarray, np.ndarray]],
        *,
        ndim: int,
        row_tiles: int = 64,
        mask_tiles: int = 48,
    ) -> None:
        self.counts = np.asarray(counts, np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._starts = self.start.tolist()  # for bisect: a pair looks up two candidates' tiles
        self.part_of = np.full(len(self.counts), -1, np.int64)
        order = [t for tiles in part_tiles for t in tiles]
        if any(b <= a for a, b in zip(order, order[1:])):
            raise ValueError("parts must hold their tiles in ascending order")
        for k, tiles in enumerate(part_tiles):
            self.part_of[np.asarray(tiles, np.int64)] = k
        self.part_tiles = [list(map(int, tiles)) for tiles in part_tiles]
        self.load_rows = load_rows
        self.load_masks = load_masks
        self.row_tiles = max(1, int(row_tiles))
        self.mask_tiles = max(1, int(mask_tiles))
        self._rows: OrderedDict[int, Candidates] = OrderedDict()
        self._masks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.ndim = int(ndim)

    @classmethod
    def from_candidates(cls, cands: Candidates, n_tiles: int) -> TileCandidates:
        """Serve candidates held in memory (sorted by tile) as one part."""
        tile = np.asarray(cands.tile)
        if np.any(np.diff(tile) < 0):
            raise ValueError("candidates must be sorted by tile")
        counts = np.bincount(tile, minlength=n_tiles) if len(tile) else np.zeros(n_tiles, int)
        source = cls(
            [list(range(n_tiles))],
            counts,
            lambda _: {f: getattr(cands, f) for f in ROW_FIELDS},
            lambda _: (cands.offsets, cands.bits),
            ndim=cands.ndim,
            row_tiles=n_tiles,
            mask_tiles=n_tiles,
        )
        return source

    def __len__(self) -> int:
        return int(self.start[-1])

    def tile_of(self, i: int) -> int:
        """Tile of candidate ``i``."""
        return bisect.bisect_right(self._starts, i) - 1

    def _cache_part(
        self, cache: OrderedDict, size: int, t: int, piece: Callable[[int, int, int], object]
    ) -> None:
        """Cache ``piece(u, a, b)`` for every tile u of the part read for tile ``t``.

        ``a:b`` are u's candidates within the part; ``t`` goes in last (most
        recent), and the least recently used tiles beyond ``size`` are dropped.
        """
        tiles = self.part_tiles[int(self.part_of[t])]
        first = int(self.start[tiles[0]])
        for u in [*(u for u in tiles if u != t), t]:
            cache[u] = piece(u, int(self.start[u]) - first, int(self.start[u + 1]) - first)
            cache.move_to_end(u)
            while len(cache) > size:
                cache.popitem(last=False)

    def rows(self, t: int) -> Candidates:
        """The rows of tile ``t``'s candidates (no masks); their indices start at ``start[t]``."""
        if t not in self._rows:
            if self.part_of[t] < 0 or not self.counts[t]:
                return self._empty()
            fields = self.load_rows(int(self.part_of[t]))

            def rows(u: int, a: int, b: int) -> Candidates:
                return Candidates(
                    offsets=np.zeros(1, np.int64),
                    bits=np.zeros(0, np.uint8),
                    **{f: fields[f][a:b].copy() for f in ROW_FIELDS if f != "tile"},
                    tile=np.broadcast_to(np.int32(u), (b - a,)),  # one value, no memory
                )

            self._cache_part(self._rows, self.row_tiles, t, rows)
        self._rows.move_to_end(t)
        return self._rows[t]

    def _empty(self) -> Candidates:
        return Candidates.empty(self.ndim)

    def fit_window(self, reach: int) -> None:
        """Hold the rows of enough tiles for a sweep that looks `reach` tiles back and ahead.

        A part is read whole, so the window also spans two parts' tiles.
        """
        widest = max((len(p) for p in self.part_tiles), default=1)
        self.row_tiles = max(self.row_tiles, 2 * reach + 2 * widest + 1)

    def mask(self, i: int) -> np.ndarray:
        """Mask crop of candidate ``i`` over its box."""
        t = self.tile_of(i)
        if t not in self._masks:
            offsets, bits = self.load_masks(int(self.part_of[t]))

            def masks(u: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
                off = offsets[a : b + 1]
                return off - off[0], bits[off[0] : off[-1]].copy()

            self._cache_part(self._masks, self.mask_tiles, t, masks)
        self._masks.move_to_end(t)
        offsets, bits = self._masks[t]
        k = i - int(self.start[t])
        return unpack_mask(bits[offsets[k] : offsets[k + 1]], self.rows(t).bbox[k])


def tile_neighbours(tiles: Sequence[Tile], core_shape: Sequence[int]) -> list[np.ndarray]:
    """For every tile, the other tiles whose halo boxes overlap its own (ascending).

    Only candidates of such tiles can overlap, as a candidate lies in its
    tile's halo box. Tiles are looked up on the grid, as far as the widest
    halo reaches, so the cost is linear in the number of tiles.
    """
    if not tiles:
        return []
    nd = len(core_shape)
    by_grid = {tuple(t.grid): t for t in tiles}
    core = [int(c) for c in core_shape]
    grow = [
        max(max(t.core[a][0] - t.halo[a][0], t.halo[a][1] - t.core[a][1]) for t in tiles)
        for a in range(nd)
    ]
    reach = [math.ceil(2 * g / c) if c > 0 else 0 for g, c in zip(grow, core)]
    steps = np.stack(
        np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij"), axis=-1
    ).reshape(-1, nd)
    out = []
    for t in tiles:
        found = []
        for step in steps:
            g = tuple(int(x) for x in np.asarray(t.grid) + step)
            u = by_grid.get(g)
            if u is not None and u.index != t.index and box_intersection(t.halo, u.halo):
                found.append(u.index)
        out.append(np.array(sorted(found), np.int64))
    return out


def _sweep_neighbours(
    source: TileCandidates, tiles: Sequence[Tile], core_shape: Sequence[int]
) -> dict[int, np.ndarray]:
    """Each tile's neighbours (:func:`tile_neighbours`); fits the row cache to their sweep."""
    neighbours = dict(zip((t.index for t in tiles), tile_neighbours(tiles, core_shape)))
    source.fit_window(max((int(nb[-1]) - t for t, nb in neighbours.items() if len(nb)), default=0))
    return neighbours


def _forward_pairs(
    source: TileCandidates,
    t: int,
    neighbours: np.ndarray,
    select: Callable[[Candidates, int], np.ndarray],
) -> np.ndarray:
    """Pairs (i < j) of selected candidates, i in tile ``t``, j in a later tile, whose boxes meet.

    ``select(rows, start)`` picks the candidates of a tile (``start``: the
    index of its first). Every pair of candidates of different tiles comes
    once over the sweep, from the earlier tile; pairs come sorted (by i, then j).
    """
    rows_t = source.rows(t)
    if not len(rows_t):
        return np.zeros((0, 2), np.int64)
    nd = rows_t.ndim
    sel_t = np.flatnonzero(select(rows_t, int(source.start[t])))
    if not len(sel_t):
        return np.zeros((0, 2), np.int64)
    lo_t, hi_t = rows_t.bbox[sel_t, :nd], rows_t.bbox[sel_t, nd:]
    found = []
    for u in neighbours[neighbours > t]:
        rows_u = source.rows(int(u))
        if not len(rows_u):
            continue
        sel_u = np.flatnonzero(select(rows_u, int(source.start[u])))
        if not len(sel_u):
            continue
        lo_u, hi_u = rows_u.bbox[sel_u, :nd], rows_u.bbox[sel_u, nd:]
        # only candidates that reach the other tile's candidates' extent can meet
        # one of them: those near the seam, a few of each tile's
        it = np.flatnonzero(_meets(lo_t, hi_t, lo_u.min(axis=0), hi_u.max(axis=0)))
        if not len(it):
            continue
        iu = np.flatnonzero(_meets(lo_u, hi_u, lo_t[it].min(axis=0), hi_t[it].max(axis=0)))
        if not len(iu):
            continue
        meet = np.ones((len(it), len(iu)), bool)
        for a in range(nd):
            meet &= (lo_t[it, None, a] < hi_u[None, iu, a]) & (
                lo_u[None, iu, a] < hi_t[it, None, a]
            )
        a_, b_ = np.nonzero(meet)
        found.append(
            np.stack([sel_t[it[a_]] + source.start[t], sel_u[iu[b_]] + source.start[u]], axis=1)
        )
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    return pairs[np.lexsort([pairs[:, 1], pairs[:, 0]])]


def _meets(lo: np.ndarray, hi: np.ndarray, box_lo: np.ndarray, box_hi: np.ndarray) -> np.ndarray:
    """Which boxes ``[lo, hi)`` meet the box ``[box_lo, box_hi)``."""
    return np.all((lo < box_hi) & (hi > box_lo), axis=1)


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
    source: TileCandidates,
    tiles: Sequence[Tile],
    core_shape: Sequence[int],
    *,
    duplicate_iou: float = 0.5,
    view_fraction: float = 0.5,
    join_fraction: float = 0.5,
    min_piece_pixels: int = 4,
    margin: Sequence[int] | None = None,
    show_progress: bool = False,
) -> StitchResult:
    """Decide which candidates are cells and give every cell a global id.

    Each rule is one sweep over the tiles in order; a tile is compared with
    the later tiles whose crops overlap its own, so every pair of candidates
    from different tiles is looked at once, in the order of their indices.

    Parameters
    ----------
    source : TileCandidates
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
    show_progress : bool
        Show a progress bar per sweep.

    Returns
    -------
    StitchResult
    """
    n = len(source)
    nd = len(core_shape)
    order = sorted(t.index for t in tiles)
    n_tiles = order[-1] + 1 if order else 0
    neighbours = _sweep_neighbours(source, tiles, core_shape)
    alive = np.ones(n, bool)
    n_dup = 0

    cores = {t.index: t.core for t in tiles}
    shape = tuple(max(t.core[a][1] for t in tiles) for a in range(nd))
    margin = tuple(margin) if margin is not None else (0,) * nd
    trusted = {t.index: reliable_box(t.halo, margin, shape) for t in tiles}

    def row(i: int) -> tuple[int, Candidates, int]:
        """Tile, the tile's rows, and the place in them of candidate i."""
        t = source.tile_of(i)
        return t, source.rows(t), i - int(source.start[t])

    def slack(t: int, box: Box) -> float:
        """How far a box of tile t stays from its crop edges (more = more context)."""
        gaps = []
        for (lo, hi), (a, b), size in zip(box, trusted[t], shape):
            gaps.append(lo - a if a > 0 else np.inf)
            gaps.append(b - hi if b < size else np.inf)
        return float(min(gaps))

    def sweep(desc: str):
        return progress(order, desc=f"stitch: {desc}", enabled=show_progress)

    def owned(rows: Candidates, start: int) -> np.ndarray:
        return rows.kind == OWNED

    def pieces_and_kept(rows: Candidates, start: int) -> np.ndarray:
        kept = alive[start : start + len(rows)]
        return (rows.kind == PIECE) | ((rows.kind == OWNED) & kept)

    def live_pieces(rows: Candidates, start: int) -> np.ndarray:
        return (rows.kind == PIECE) & alive[start : start + len(rows)]

    # 1. conflicts among owned candidates (never for tile-invariant backends): when two
    #    from different tiles overlap by IoU >= duplicate_iou, or one lies mostly
    #    inside the other, keep the one seen with more context (then higher score).
    any_piece = False
    for t in sweep("duplicates"):
        any_piece |= bool(np.any(source.rows(t).kind == PIECE))
        for i, j in _pairs(_forward_pairs(source, t, neighbours[t], owned)):
            if not (alive[i] and alive[j]):
                continue
            ti, ri, ki = row(i)
            tj, rj, kj = row(j)
            bi, bj = ri.box(ki), rj.box(kj)
            inter = _overlap(source.mask(i), bi, source.mask(j), bj)
            if inter == 0:
                continue
            area_i, area_j = int(ri.area[ki]), int(rj.area[kj])
            iou = inter / (area_i + area_j - inter)
            if iou >= duplicate_iou or inter >= view_fraction * min(area_i, area_j):
                key_i = (-slack(ti, bi), -float(ri.score[ki]), ti)
                key_j = (-slack(tj, bj), -float(rj.score[kj]), tj)
                alive[j if key_i <= key_j else i] = False
                n_dup += 1

    pieces, sizes, piece_tile, piece_anchor = array("q"), array("q"), array("q"), array("q")
    edges = array("q")
    if any_piece:
        # 2. pieces that are views of a kept cell
        for t in sweep("views"):
            for i, j in _pairs(_forward_pairs(source, t, neighbours[t], pieces_and_kept)):
                ti, ri, ki = row(i)
                tj, rj, kj = row(j)
                if ri.kind[ki] == PIECE:
                    (pi, pt, pk), (oj, ot, ok) = (i, ri, ki), (j, rj, kj)
                else:
                    (pi, pt, pk), (oj, ot, ok) = (j, rj, kj), (i, ri, ki)
                if pt.kind[pk] != PIECE or ot.kind[ok] != OWNED or not alive[pi]:
                    continue
                inter = _overlap(source.mask(pi), pt.box(pk), source.mask(oj), ot.box(ok))
                if inter >= view_fraction * int(pt.area[pk]):
                    alive[pi] = False

        # 3. join pieces across tiles: the joined pairs are the edges of a graph whose
        #    connected components are cells (arrays throughout: no per-piece objects)
        for t in sweep("pieces"):
            rows, start = source.rows(t), int(source.start[t])
            for k in np.flatnonzero(live_pieces(rows, start)):
                pieces.append(start + int(k))
                sizes.append(_count_in(source.mask(start + int(k)), rows.box(int(k)), cores[t]))
                piece_tile.append(t)
                piece_anchor.extend(int(x) for x in rows.anchor[k])
            for i, j in _pairs(_forward_pairs(source, t, neighbours[t], live_pieces)):
                ti, ri, ki = row(i)
                tj, rj, kj = row(j)
                bi, bj = ri.box(ki), rj.box(kj)
                mi, mj = source.mask(i), source.mask(j)
                for (ma, ba, ta), (mb, bb, tb) in (
                    ((mi, bi, ti), (mj, bj, tj)),
                    ((mj, bj, tj), (mi, bi, ti)),
                ):
                    # does a's object cover b's piece where a's tile can see it?
                    region = box_intersection(cores[tb], trusted[ta])
                    if region is None:
                        continue
                    visible = _count_in(mb, bb, region)
                    if visible == 0:
                        continue
                    if _overlap(ma, ba, mb, bb, within=region) >= join_fraction * visible:
                        edges.extend((i, j))
                        break
    piece_idx = np.frombuffer(pieces, np.int64) if len(pieces) else np.zeros(0, np.int64)
    group, n_groups = _piece_groups(piece_idx, np.frombuffer(edges, np.int64).reshape(-1, 2))
    del edges
    members = np.bincount(group, minlength=n_groups)
    n_merged = int(members[members > 1].sum())
    # a group is a cell when its pieces have min_piece_pixels in all; its home
    # is its first piece by (tile, anchor), then index
    size_arr = np.frombuffer(sizes, np.int64) if len(sizes) else np.zeros(0, np.int64)
    kept_group = np.bincount(group, weights=size_arr, minlength=n_groups) >= min_piece_pixels
    tile_arr = np.frombuffer(piece_tile, np.int64) if len(piece_tile) else np.zeros(0, np.int64)
    anchor_arr = (
        np.frombuffer(piece_anchor, np.int64).reshape(-1, nd)
        if len(piece_anchor)
        else np.zeros((0, nd), np.int64)
    )
    by_key = np.lexsort(
        [piece_idx, *(anchor_arr[:, a] for a in reversed(range(nd))), tile_arr, group]
    )
    first = by_key[np.flatnonzero(np.diff(group[by_key], prepend=-1))]  # per group, in order
    kept_groups = np.flatnonzero(kept_group)
    home = tile_arr[first[kept_groups]]
    by_home = kept_groups[np.argsort(home, kind="stable")]
    home_start = np.searchsorted(np.sort(home), np.arange(n_tiles + 1))

    # 4. ids: prefix sum over per-tile counts, anchor order within a tile. A tile's
    #    cells are its kept owned candidates (in index order), then the joined
    #    pieces it is home to (in group order); a stable sort by anchor orders them.
    cell_of = np.zeros(n, np.uint32)
    group_id = np.zeros(n_groups, np.int64)
    tile_counts = np.zeros(n_tiles, np.int64)
    next_id = 1
    for t in order:
        rows, start = source.rows(t), int(source.start[t])
        own = np.flatnonzero((rows.kind == OWNED) & alive[start : start + len(rows)])
        gs = by_home[home_start[t] : home_start[t + 1]]
        anchors = np.concatenate([rows.anchor[own].reshape(-1, nd), anchor_arr[first[gs]]])
        m = len(anchors)
        ids = np.empty(m, np.int64)
        ids[np.lexsort([anchors[:, a] for a in reversed(range(nd))])] = np.arange(
            next_id, next_id + m
        )
        cell_of[start + own] = ids[: len(own)]
        group_id[gs] = ids[len(own) :]
        tile_counts[t] = m
        next_id += m
    cell_of[piece_idx] = group_id[group]
    return StitchResult(
        cell_of=cell_of,
        n_cells=next_id - 1,
        tile_counts=tile_counts,
        n_duplicates=n_dup,
        n_merged_pieces=n_merged,
    )


def tile_members(
    source: TileCandidates, tile: Tile, neighbours: np.ndarray, result: StitchResult
) -> np.ndarray:
    """The kept candidates that may paint inside ``tile``'s core (ascending).

    A piece paints only in its own tile's core; a whole cell wherever its box
    meets a core, its own tile's or a neighbour's.
    """
    nd = len(tile.core)
    lo = np.array([a for a, _ in tile.core])
    hi = np.array([b for _, b in tile.core])
    found = []
    for u in sorted([tile.index, *(int(x) for x in neighbours)]):
        rows, start = source.rows(u), int(source.start[u])
        if not len(rows):
            continue
        kept = result.cell_of[start : start + len(rows)] > 0
        meets = np.all((rows.bbox[:, :nd] < hi) & (rows.bbox[:, nd:] > lo), axis=1)
        paints = kept & meets & (rows.kind != PIECE)
        if u == tile.index:
            paints |= kept & (rows.kind == PIECE)
        found.append(np.flatnonzero(paints) + start)
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def paint_region(
    source: TileCandidates,
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
    out = np.zeros(tuple(b - a for a, b in region), dtype)
    chosen = []
    for i in members:
        i = int(i)
        if result.cell_of[i] > 0:
            t = source.tile_of(i)
            rows, k = source.rows(t), i - int(source.start[t])
            chosen.append((rows.kind[k] != PIECE, -int(result.cell_of[i]), i, rows.box(k)))
    chosen.sort(key=lambda c: c[:3])
    for _, _, i, box in chosen:
        inter = box_intersection(box, region)
        if inter is None:
            continue
        m = _crop(source.mask(i), box, inter)
        dst = tuple(slice(a - r0, b - r0) for (a, b), (r0, _) in zip(inter, region))
        out[dst][m] = result.cell_of[i]
    return out


def paint_tiles(
    source: TileCandidates,
    tiles: Sequence[Tile],
    core_shape: Sequence[int],
    result: StitchResult,
    *,
    dtype=np.uint32,
    show_progress: bool = False,
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Each tile with the labels of its core, tiles in order."""
    neighbours = _sweep_neighbours(source, tiles, core_shape)
    for t in progress(sorted(tiles, key=lambda t: t.index), desc="stitch", enabled=show_progress):
        members = tile_members(source, t, neighbours[t.index], result)
        yield t, paint_region(source, result, t.core, members, dtype=dtype)
