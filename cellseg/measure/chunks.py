"""Pass 1 over the label image: id, centroid, bounding box and pixel count per cell.

Every chunk is reduced to per-id partial sums (pixel count, coordinate sums,
bounding box); partials of cells that cross chunk borders are combined into
one row per cell. Memory holds one chunk plus one row per cell. The readers of
label and intensity chunks that both passes share are here too.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import dask.local
import numpy as np
from scipy import ndimage as ndi

from cellseg.parallel import map_chunks
from cellseg.progress import progress
from cellseg.tiling import box_dtype


def _block_partials(
    labels: np.ndarray, origin: Sequence[int], coords: type = np.int64
) -> dict[str, np.ndarray] | None:
    """Per-id partial sums of one chunk: id, pixel count, coordinate sums, box (global).

    The box is in dtype `coords` (:func:`cellseg.tiling.box_dtype` of the image).
    """
    low, high = int(labels.min()), int(labels.max())
    if high == 0:
        return None
    if high - low <= 4 * labels.size:
        # ids over a short range: a look-up table instead of a sort
        present = np.bincount((labels.ravel() - low).astype(np.intp), minlength=high - low + 1) > 0
        uniq = np.flatnonzero(present) + low
        if uniq[0] != 0:
            uniq = np.concatenate([[0], uniq])
        table = np.zeros(high - low + 1, np.intp)
        table[uniq[uniq >= low] - low] = np.flatnonzero(uniq >= low)
        inv = table[labels - low]
    else:
        uniq, inv = np.unique(labels, return_inverse=True)
        inv = inv.reshape(labels.shape)
        if uniq[0] != 0:
            inv = inv + 1
            uniq = np.concatenate([[0], uniq])
    uniq = uniq.astype(labels.dtype)
    n = uniq.size
    nd = labels.ndim
    flat = inv.ravel()
    counts = np.bincount(flat, minlength=n)
    sums = np.empty((n - 1, nd), np.float64)
    grids = np.indices(labels.shape, sparse=True)
    for ax, g in enumerate(grids):
        coord = np.broadcast_to(g, labels.shape).ravel()
        sums[:, ax] = np.bincount(flat, weights=coord, minlength=n)[1:] + origin[ax] * counts[1:]
    slices = ndi.find_objects(inv)
    starts = np.array([[s[ax].start + origin[ax] for ax in range(nd)] for s in slices], coords)
    stops = np.array([[s[ax].stop + origin[ax] for ax in range(nd)] for s in slices], coords)
    return {
        "cell_id": uniq[1:],
        "n_pixels": counts[1:].astype(np.int64),
        "sums": sums,
        "starts": starts.reshape(-1, nd),
        "stops": stops.reshape(-1, nd),
    }


class _Partials:
    """Pass 1's per-id sums, gathered chunk by chunk (see :func:`_block_partials`).

    While the ids are dense, as stitching numbers them (the largest id at
    most :data:`_DENSE_SLACK` times the partial rows seen, or below
    :data:`_DENSE_MIN`), the sums are added into arrays indexed by id as each
    chunk comes: memory holds one row per id, not one per chunk that a cell
    crosses. Sparse ids keep the chunks' partials and combine them at the end.
    """

    def __init__(self, nd: int, coords: type) -> None:
        self.nd, self.coords = nd, coords
        self.rows = 0  # partial rows seen (at least the distinct ids)
        self.dense: dict[str, np.ndarray] | None = self._dense(0)
        self.parts: list[dict[str, np.ndarray]] = []

    def _dense(self, size: int) -> dict[str, np.ndarray]:
        nd, coords = self.nd, self.coords
        return {
            "n_pixels": np.zeros(size, np.int64),
            "sums": np.zeros((size, nd), np.float64),
            "starts": np.full((size, nd), np.iinfo(coords).max, coords),
            "stops": np.zeros((size, nd), coords),
        }

    def add(self, part: dict[str, np.ndarray]) -> None:
        """Add one chunk's partials (its ids unique, ascending)."""
        ids = part["cell_id"]
        self.rows += len(ids)
        if self.dense is not None:
            top = int(ids[-1]) + 1
            if top > max(_DENSE_MIN, _DENSE_SLACK * self.rows):
                self.parts.append(self._present(self.dense))
                self.dense = None
            else:
                size = len(self.dense["n_pixels"])
                if top > size:
                    self._grow(max(top, 2 * size))
        if self.dense is None:
            self.parts.append(part)
            return
        d = self.dense
        d["n_pixels"][ids] += part["n_pixels"]
        d["sums"][ids] += part["sums"]
        d["starts"][ids] = np.minimum(d["starts"][ids], part["starts"])
        d["stops"][ids] = np.maximum(d["stops"][ids], part["stops"])

    def _grow(self, size: int) -> None:
        bigger = self._dense(size)
        for key, values in self.dense.items():
            bigger[key][: len(values)] = values
        self.dense = bigger

    @staticmethod
    def _present(dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The rows of ids with pixels, as one partial (the dense arrays are consumed)."""
        ids = np.flatnonzero(dense["n_pixels"])
        out = {"cell_id": ids.astype(np.uint32)}
        for key in ("n_pixels", "sums", "starts", "stops"):
            out[key] = dense.pop(key)[ids]
        return out

    def columns(self, axes: str) -> dict[str, np.ndarray]:
        """Per-cell id, centroid (px), bounding box and pixel count, sorted by id.

        The partials are consumed. The coordinate sums are whole numbers
        (exact in float64), so the order in which partials were added does not
        change them. The box keeps dtype `coords`; the centroid in µm is
        :func:`centroid_um` of the one in px.
        """
        if self.dense is not None:
            rows = self._present(self.dense)
            self.dense = None
        else:
            rows = _combine(self.parts, self.nd, self.coords)
            self.parts = []
        out = {"cell_id": rows.pop("cell_id")}
        count = np.maximum(rows["n_pixels"], 1).astype(np.float64)
        sums = rows.pop("sums")
        for ax, name in enumerate(axes):
            out[f"centroid_{name}_px"] = sums[:, ax] / count
        del sums, count
        starts, stops = rows.pop("starts"), rows.pop("stops")
        for ax, name in enumerate(axes):
            out[f"bbox_{name}_start_px"] = np.ascontiguousarray(starts[:, ax])
            out[f"bbox_{name}_stop_px"] = np.ascontiguousarray(stops[:, ax])
        out["n_pixels"] = rows.pop("n_pixels")
        return out


#: Ids below this are always summed in dense arrays (see :class:`_Partials`).
_DENSE_MIN = 1 << 20
#: Dense while the largest id is at most this many times the partial rows seen.
_DENSE_SLACK = 4


def _combine(parts: list[dict[str, np.ndarray]], nd: int, coords: type) -> dict[str, np.ndarray]:
    """One row per id from chunks' partials (consumed, field by field), sorted by id."""
    if not parts:
        return {
            "cell_id": np.zeros(0, np.uint32),
            "n_pixels": np.zeros(0, np.int64),
            "sums": np.zeros((0, nd), np.float64),
            "starts": np.zeros((0, nd), coords),
            "stops": np.zeros((0, nd), coords),
        }
    ids = np.concatenate([p.pop("cell_id") for p in parts])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    first = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    out = {"cell_id": ids[first].astype(np.uint32)}
    del ids

    def reduce(ufunc: np.ufunc, key: str) -> np.ndarray:
        # each field leaves the partials as it is reduced: memory holds them once
        values = np.concatenate([p.pop(key) for p in parts])
        return ufunc.reduceat(values[order], first, axis=0)

    out["n_pixels"] = reduce(np.add, "n_pixels")
    out["sums"] = reduce(np.add, "sums")
    out["starts"] = reduce(np.minimum, "starts")
    out["stops"] = reduce(np.maximum, "stops")
    return out


def centroid_um(
    base: dict[str, np.ndarray], axis: str, spacing: float, lo: int, hi: int
) -> np.ndarray:
    """Centroids in µm of cells ``lo:hi``: those in px times the pixel size (as one product).

    Parameters
    ----------
    base : dict of str to ndarray
        The columns of pass 1 (:func:`cell_boxes`).
    axis : str
        Axis name (``"y"``, ...).
    spacing : float
        Pixel size along `axis` in µm.
    lo, hi : int
        Range of rows.

    Returns
    -------
    ndarray of float64

    Examples
    --------
    >>> centroid_um({"centroid_y_px": np.array([1.0, 3.0])}, "y", 0.5, 0, 2).tolist()
    [0.5, 1.5]
    """
    return base[f"centroid_{axis}_px"][lo:hi] * spacing


def read_block(array: Any, index: tuple) -> np.ndarray:
    """Read a region of a numpy, zarr or dask array into memory.

    A dask array is computed on the calling thread, whatever scheduler is set.

    Parameters
    ----------
    array : array-like
        numpy, zarr or dask array.
    index : tuple of slice
        The region.

    Returns
    -------
    ndarray

    Examples
    --------
    >>> read_block(np.arange(10), (slice(2, 5),)).tolist()
    [2, 3, 4]
    """
    part = array[index]
    if hasattr(part, "compute"):
        # the function, not the name "synchronous": see cellseg.parallel._local_config
        part = part.compute(scheduler=dask.local.get_sync)
    return np.asarray(part)


class _Channel:
    """Channel ``c`` of a ``(C, *shape)`` array, indexed lazily like the label image."""

    def __init__(self, array: Any, c: int) -> None:
        self.array, self.c = array, c
        self.shape = tuple(array.shape[1:])

    def __getitem__(self, index: tuple) -> Any:
        return self.array[(self.c, *index)]


def channel_list(intensity_image: Any, shape: tuple[int, ...]) -> list[Any]:
    """The channels of an intensity image as a list of arrays of the label image's shape.

    Parameters
    ----------
    intensity_image : array-like or None
        One channel of the label image's shape, or all channels ``(C, *shape)``.
    shape : tuple of int
        The label image's shape.

    Returns
    -------
    list
        One array-like per channel, indexed lazily; empty for None.

    Raises
    ------
    ValueError
        If a channel's shape is not `shape`.
    """
    if intensity_image is None:
        return []
    if len(intensity_image.shape) == len(shape):
        channels = [intensity_image]
    else:
        channels = [_Channel(intensity_image, c) for c in range(intensity_image.shape[0])]
    for ch in channels:
        if tuple(ch.shape) != shape:
            raise ValueError(
                f"intensity image {tuple(intensity_image.shape)} does not match labels {shape}"
            )
    return channels


def cell_boxes(
    label_image: Any,
    *,
    axes: str,
    chunks: Sequence[int],
    threads: int | None = 1,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """Pass 1: id, centroid, bounding box and pixel count of every cell, chunk by chunk.

    Chunks run on `threads` threads, or on the dask.distributed workers inside
    :func:`cellseg.parallel.dask_scheduler` with an address.

    Parameters
    ----------
    label_image : array-like of int
        Labels (numpy, zarr or dask); 0 is background.
    axes : str
        Axis names, ``"yx"`` or ``"zyx"``.
    chunks : sequence of int
        Block shape read at a time.
    threads : int, optional
        Chunks in parallel (None: all cores).
    show_progress : bool
        Show a progress bar.

    Returns
    -------
    dict of str to ndarray
        One array per column (``cell_id``, ``centroid_<ax>_px``,
        ``bbox_<ax>_start_px``, ``bbox_<ax>_stop_px``, ``n_pixels``), one row
        per cell id, sorted by id.
    """
    shape = tuple(label_image.shape)
    coords = box_dtype(shape)
    grid = [range(0, n, c) for n, c in zip(shape, chunks)]
    blocks = list(itertools.product(*grid))

    def partials(origin: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        sl = tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, chunks, shape))
        lab = read_block(label_image, sl)
        return _block_partials(lab, origin, coords) if lab.any() else None

    gathered = _Partials(len(shape), coords)
    bar = progress(total=len(blocks), desc="measure boxes", enabled=show_progress)
    for part in map_chunks(partials, blocks, threads=threads):
        bar.update(1)
        if part is not None:
            gathered.add(part)
    bar.close()
    return gathered.columns(axes)


def chunk_shape(label_image: Any, chunks: Sequence[int] | None, shape: tuple) -> tuple[int, ...]:
    """The block shape to process at a time.

    Parameters
    ----------
    label_image : array-like
        The label image; its chunks (zarr or dask) are the default.
    chunks : sequence of int, optional
        The block shape asked for.
    shape : tuple of int
        The label image's shape: the block when there are no chunks.

    Returns
    -------
    tuple of int
        At least 1 per axis.

    Examples
    --------
    >>> chunk_shape(np.zeros((4, 6)), None, (4, 6))
    (4, 6)
    """
    if chunks is None:
        chunks = getattr(label_image, "chunks", None)
        if chunks is not None and isinstance(chunks[0], tuple):
            chunks = tuple(c[0] for c in chunks)
        chunks = chunks or shape
    return tuple(max(1, int(c)) for c in chunks)
