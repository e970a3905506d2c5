"""Per-tile segmentation: label a tile's halo box, keep the objects the tile is responsible for.

Each tile labels its whole halo box and returns *candidates*, objects with a
mask crop and a global bounding box. An object is **complete** in a tile when
it stays at least the backend's margin away from every crop edge that is not a
scan edge; there the backend's result equals the whole-scan result. Every object
has an **anchor**, the integer centre of its bounding box, and exactly one tile's
core contains it. Then, per object:

- complete and anchored in this core: kept whole (``OWNED``);
- complete, anchored elsewhere, and the anchoring tile sees it complete too:
  dropped here (that tile keeps it);
- otherwise (cut by the crop edge, or too large for its owner's halo): its
  part inside this core is kept as a ``PIECE``. Stitching joins pieces of the
  same cell across tiles, so cells larger than the halo are merged, not cut.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellseg.atomic import atomic_write_bytes
from cellseg.tiling import Box, Tile, owner_grid

OWNED = 1
PIECE = 2


@dataclass
class Candidates:
    """Candidate objects of one or more tiles, masks stored as packed bits.

    Attributes
    ----------
    tile : ndarray of int32, (n,)
        Tile that produced the candidate.
    kind : ndarray of uint8, (n,)
        ``OWNED`` or ``PIECE``.
    bbox : ndarray of int64, (n, 2 * ndim)
        Global bounding box, starts then stops.
    anchor : ndarray of int64, (n, ndim)
        Integer centre of the bounding box.
    area : ndarray of int64, (n,)
        Pixel count of the whole mask.
    score : ndarray of float32, (n,)
        Backend confidence (1 for backends without one).
    offsets : ndarray of int64, (n + 1,)
        Byte offsets of each packed mask in ``bits``.
    bits : ndarray of uint8
        Concatenated ``np.packbits`` of the masks (C order over the bbox).
    """

    tile: np.ndarray
    kind: np.ndarray
    bbox: np.ndarray
    anchor: np.ndarray
    area: np.ndarray
    score: np.ndarray
    offsets: np.ndarray
    bits: np.ndarray

    FIELDS = ("tile", "kind", "bbox", "anchor", "area", "score", "offsets", "bits")

    def __len__(self) -> int:
        return len(self.tile)

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return self.bbox.shape[1] // 2

    def box(self, i: int) -> Box:
        """Bounding box of candidate ``i`` as ((start, stop), ...)."""
        bounds = self.bbox[i].tolist()
        nd = len(bounds) // 2
        return tuple(zip(bounds[:nd], bounds[nd:]))

    def mask(self, i: int) -> np.ndarray:
        """Boolean mask of candidate ``i`` over its bounding box."""
        return unpack_mask(self.bits[self.offsets[i] : self.offsets[i + 1]], self.bbox[i])

    @classmethod
    def empty(cls, ndim: int) -> Candidates:
        """No candidates."""
        return cls(
            tile=np.zeros(0, np.int32),
            kind=np.zeros(0, np.uint8),
            bbox=np.zeros((0, 2 * ndim), np.int64),
            anchor=np.zeros((0, ndim), np.int64),
            area=np.zeros(0, np.int64),
            score=np.zeros(0, np.float32),
            offsets=np.zeros(1, np.int64),
            bits=np.zeros(0, np.uint8),
        )

    @classmethod
    def concat(cls, parts: Sequence[Candidates], ndim: int) -> Candidates:
        """Join several candidate sets (offsets are rebased)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(ndim)
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        return cls(
            tile=np.concatenate([p.tile for p in parts]),
            kind=np.concatenate([p.kind for p in parts]),
            bbox=np.concatenate([p.bbox for p in parts]),
            anchor=np.concatenate([p.anchor for p in parts]),
            area=np.concatenate([p.area for p in parts]),
            score=np.concatenate([p.score for p in parts]),
            offsets=np.concatenate(offsets),
            bits=np.concatenate([p.bits for p in parts]),
        )

    def save(self, path: Path, **extra) -> None:
        """Write to a compressed ``.npz``, atomically."""
        buf = io.BytesIO()
        arrays = {f: getattr(self, f) for f in self.FIELDS}
        arrays.update({k: np.asarray(v) for k, v in extra.items()})
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> Candidates:
        """Read a file written by :meth:`save`."""
        with np.load(path) as f:
            return cls(**{k: f[k] for k in cls.FIELDS})


def unpack_mask(packed: np.ndarray, bbox: np.ndarray) -> np.ndarray:
    """A boolean mask from its packed bits and its box (starts, then stops)."""
    bounds = np.asarray(bbox).tolist()
    nd = len(bounds) // 2
    shape = tuple(hi - lo for lo, hi in zip(bounds[:nd], bounds[nd:]))
    n = math.prod(shape)
    return np.unpackbits(packed, count=n).view(bool).reshape(shape)


def reliable_box(halo: Box, margin: Sequence[int], shape: Sequence[int]) -> Box:
    """The halo box shrunk by ``margin`` on every side that is not a scan edge."""
    return tuple(
        (a + (m if a > 0 else 0), b - (m if b < n else 0))
        for (a, b), m, n in zip(halo, margin, shape)
    )


def _inside(bbox_lo, bbox_hi, box: Box) -> bool:
    return all(lo >= a and hi <= b for lo, hi, (a, b) in zip(bbox_lo, bbox_hi, box))


def tile_candidates(
    labels: np.ndarray,
    tile: Tile,
    *,
    shape: Sequence[int],
    core_shape: Sequence[int],
    halo: Sequence[int],
    margin: Sequence[int],
    scores: dict[int, float] | None = None,
) -> Candidates:
    """Turn one tile's label crop into candidates (see the module docstring).

    Parameters
    ----------
    labels : ndarray of int
        Labels of the tile's halo box (shape of ``tile.halo``).
    tile : Tile
        The tile.
    shape : sequence of int
        Spatial shape of the scan.
    core_shape : sequence of int
        Core (and label chunk) shape of the plan.
    halo : sequence of int
        Halo width per axis of the plan.
    margin : sequence of int
        Per axis, the distance from a crop edge within which the backend's output
        may differ from its whole-scan output.
    scores : dict, optional
        Confidence per local label.

    Returns
    -------
    Candidates
    """
    from scipy import ndimage as ndi

    nd = labels.ndim
    origin = np.array([a for a, _ in tile.halo], np.int64)
    reliable = reliable_box(tile.halo, margin, shape)
    grid_counts = [-(-int(n) // int(c)) for n, c in zip(shape, core_shape)]
    rows = {f: [] for f in ("kind", "bbox", "anchor", "area", "score")}
    masks = []
    for value, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        lo = origin + np.array([s.start for s in sl])
        hi = origin + np.array([s.stop for s in sl])
        anchor = (lo + hi - 1) // 2
        mask = labels[sl] == value
        complete = _inside(lo, hi, reliable)
        owned = all(a <= p < b for p, (a, b) in zip(anchor, tile.core))
        if complete and owned:
            kind = OWNED
        elif complete:
            og = owner_grid(anchor, core_shape)
            og = tuple(min(g, c - 1) for g, c in zip(og, grid_counts))
            o_core = tuple(
                (g * c, min((g + 1) * c, int(n))) for g, c, n in zip(og, core_shape, shape)
            )
            o_halo = tuple(
                (max(a - h, 0), min(b + h, int(n))) for (a, b), h, n in zip(o_core, halo, shape)
            )
            if _inside(lo, hi, reliable_box(o_halo, margin, shape)):
                continue
            kind = PIECE
        else:
            kind = PIECE
        if kind == PIECE:
            # Keep it only if part of it lies in this tile's core.
            core_local = tuple(
                slice(max(a - l0, 0), max(min(b - l0, h1 - l0), 0))
                for (a, b), l0, h1 in zip(tile.core, lo, hi)
            )
            if not mask[core_local].any():
                continue
        rows["kind"].append(kind)
        rows["bbox"].append(np.concatenate([lo, hi]))
        rows["anchor"].append(anchor)
        rows["area"].append(int(mask.sum()))
        rows["score"].append(1.0 if scores is None else float(scores.get(value, 1.0)))
        masks.append(np.packbits(mask.ravel()))
    if not masks:
        return Candidates.empty(nd)
    sizes = np.array([m.size for m in masks], np.int64)
    return Candidates(
        tile=np.full(len(masks), tile.index, np.int32),
        kind=np.array(rows["kind"], np.uint8),
        bbox=np.array(rows["bbox"], np.int64).reshape(-1, 2 * nd),
        anchor=np.array(rows["anchor"], np.int64).reshape(-1, nd),
        area=np.array(rows["area"], np.int64),
        score=np.array(rows["score"], np.float32),
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        bits=np.concatenate(masks),
    )
