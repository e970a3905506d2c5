"""Pass 2 and :func:`measure_cells`: the cells of each chunk measured at once.

Every cell is assigned to the chunk holding its bounding box's first corner;
per chunk, the union of its cells' boxes (grown by the ring width) is read
once, and its cells are measured together
(:func:`cellseg.measure.regions.measure_region`). Chunks run in parallel
threads. The cells' boxes come from pass 1 (:mod:`cellseg.measure.chunks`),
the neighbour columns from their centroids (:mod:`cellseg.measure.neighbours`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg.atomic import read_at, write_at
from cellseg.measure.chunks import (
    cell_boxes,
    centroid_um,
    channel_list,
    chunk_shape,
    read_block,
)
from cellseg.measure.columns import (
    DEFAULT_NEIGHBOR_RADIUS_UM,
    DEFAULT_RING_WIDTH_UM,
    channel_keys,
    column_schema,
)
from cellseg.measure.neighbours import Neighbors
from cellseg.measure.regions import measure_region
from cellseg.measure.table import ROW_GROUP_ROWS, TableWriter
from cellseg.parallel import (
    available_cpus,
    map_chunks,
    processes_allowed,
    start_process_server,
)
from cellseg.progress import progress

log = logging.getLogger(__name__)


def _measure_group(
    group: tuple[np.ndarray, np.ndarray, np.ndarray],
    label_image: Any,
    channels: Any,
    *,
    spacing: tuple[float, ...],
    shape: tuple[int, ...],
    pad: tuple[int, ...],
    ring_width_um: float,
    measured: Sequence[str],
    keys: Sequence[str],
    stains: dict | None,
) -> np.ndarray:
    """Measure the cells of one chunk at once, on one region read for them all.

    `group` holds the cells' ids (ascending) and box starts and stops; the rows
    come back as one float array (8 bytes per value, ids and counts exact), in
    the order of `measured`.
    """
    ids, starts, stops = group
    lo = np.maximum(starts - np.array(pad), 0)
    hi = np.minimum(stops + np.array(pad), np.array(shape))
    r0, r1 = lo.min(axis=0), hi.max(axis=0)
    region = tuple(slice(int(a), int(b)) for a, b in zip(r0, r1))
    labels = read_block(label_image, region)
    image = [read_block(ch, region) for ch in channels]
    values = measure_region(
        labels,
        image,
        ids,
        starts - r0,
        stops - r0,
        spacing=spacing,
        ring_width_um=ring_width_um,
        channel_keys=keys,
        stains=stains,
    )
    values["cell_id"] = ids
    rows = np.empty((len(ids), len(measured)), np.float64)
    for j, name in enumerate(measured):
        rows[:, j] = values[name]
    return rows


#: Rough single-core cost of measuring one cell, seconds, by dimensions (2 shared cores).
_SECONDS_PER_CELL = {2: 1.5e-4, 3: 2.5e-3}
#: Measure on processes of their own (see :func:`measure_cells`'s ``processes``) from this
#: much work, seconds: per-cell meshes, hulls and contours hold the GIL, so threads barely
#: overlap, while processes cost about a second to start.
PROCESS_WORK_S = 4.0
#: What the measuring processes import once, before they are forked.
_PRELOAD = ("cellseg.measure.cells", "zarr")
#: Densest cell packing assumed when guessing the work before the cells are counted.
_MAX_CELLS_PER_PIXEL = {2: 1.0 / 200, 3: 1.0 / 400}
#: Most cells measured as one piece of work, by dimensions: a chunk with more is cut
#: into slabs, so that its cells spread over the workers and the 3D meshes held at
#: once stay small (about half a second of work and at most ~0.3 GB each).
MAX_GROUP_CELLS = {2: 4096, 3: 256}


def split_groups(groups: Sequence[np.ndarray], starts: np.ndarray, most: int) -> list[np.ndarray]:
    """Cut each group of cells holding more than `most` into slabs of at most `most`.

    A group is cut along the axis its boxes' starts spread over most, so each
    slab's cells lie close together and are read as one small region; each
    slab keeps its cells in the group's (ascending id) order.

    Examples
    --------
    >>> starts = np.array([[0, 9], [0, 1], [0, 5], [0, 3]])
    >>> [g.tolist() for g in split_groups([np.arange(4)], starts, 3)]
    [[1, 3], [0, 2]]
    """
    out = []
    for group in groups:
        if len(group) <= most:
            out.append(group)
            continue
        axis = int(np.ptp(starts[group], axis=0).argmax())
        by_place = group[np.argsort(starts[group, axis], kind="stable")]
        parts = -(-len(group) // most)
        out.extend(np.sort(part) for part in np.array_split(by_place, parts))
    return out


def _by_reference(array: Any) -> bool:
    """Whether `array` pickles as a small reference (a zarr array, a dask graph over
    files), so that another process can read it, not as its pixels."""
    if isinstance(array, np.ndarray):
        return False
    try:
        return len(pickle.dumps(array)) < (1 << 20)
    except Exception:  # noqa: BLE001 - anything that does not pickle stays in this process
        return False


def _worth_processes(n_cells: int, nd: int) -> bool:
    """Whether measuring `n_cells` cells is about :data:`PROCESS_WORK_S` of work or more."""
    return n_cells * _SECONDS_PER_CELL[nd] >= PROCESS_WORK_S


def _processes_can_read(workers: int, label_image: Any, channels: Sequence[Any]) -> bool:
    """Whether processes are allowed (:func:`cellseg.parallel.allow_processes`: the
    command line), there is more than one worker, and the arrays are file-backed
    (the stage's), so that the processes open them themselves."""
    if not processes_allowed() or workers <= 1:
        return False
    return all(_by_reference(a) for a in (label_image, *channels))


def warm_processes(shape: Sequence[int], threads: int | None = None) -> None:
    """Start the measuring processes' server now when a scan of `shape` may need them.

    For a caller about to measure the file-backed labels of such a scan (the
    measure stage, or a run before its stitch stage): the server's imports
    then overlap other work. Whether processes are used is decided once the
    cells are counted; a server started for nothing only waits.
    """
    if not processes_allowed() or (threads or available_cpus()) <= 1:
        return
    nd = len(shape)
    if _worth_processes(int(np.prod(shape) * _MAX_CELLS_PER_PIXEL[nd]), nd):
        start_process_server(_PRELOAD)


class _RowStore:
    """Rows of float64 values put by row number in any order, read back in ranges.

    In memory, or in a scratch file (``path``): then only the rows being put or
    read are held, and the file is removed by :meth:`close`.
    """

    def __init__(self, n_rows: int, n_values: int, path: Path | None = None) -> None:
        self.n_values = n_values
        self.row_bytes = 8 * n_values
        self.path = path
        self.fd: int | None = None
        self.array: np.ndarray | None = None
        if path is None:
            self.array = np.zeros((n_rows, n_values), np.float64)
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def put(self, index: np.ndarray, rows: np.ndarray) -> None:
        """Store ``rows[k]`` as row ``index[k]``; runs of consecutive rows are written at once."""
        if self.array is not None:
            self.array[index] = rows
            return
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), len(index)]):
            data = memoryview(rows[a:b]).cast("B")
            offset = int(index[a]) * self.row_bytes
            while len(data):
                written = write_at(self.fd, data, offset)
                data, offset = data[written:], offset + written

    def get(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi``."""
        if self.array is not None:
            return self.array[lo:hi]
        out = np.empty((hi - lo, self.n_values), np.float64)
        view = memoryview(out).cast("B")
        offset = lo * self.row_bytes
        while len(view):
            read = read_at(self.fd, view, offset)
            if read <= 0:
                raise OSError(f"{self.path}: rows {lo}:{hi} were not all written")
            view, offset = view[read:], offset + read
        return out

    def close(self) -> None:
        """Release the rows (remove the scratch file)."""
        self.array = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            Path(self.path).unlink(missing_ok=True)


def measure_cells(
    label_image: Any,
    intensity_image: Any = None,
    *,
    spacing: Sequence[float],
    axes: str | None = None,
    chunks: Sequence[int] | None = None,
    channel_names: Sequence[str] | None = None,
    ring_width_um: float = DEFAULT_RING_WIDTH_UM,
    neighbor_radius_um: float = DEFAULT_NEIGHBOR_RADIUS_UM,
    threads: int | None = 1,
    show_progress: bool = False,
    out: TableWriter | None = None,
    stains: dict | None = None,
    processes: bool | None = False,
) -> pd.DataFrame | None:
    """Measure every cell of a label image: morphology, neighbours, intensities.

    Parameters
    ----------
    label_image : array-like of int, (Y, X) or (Z, Y, X)
        Labels (numpy, zarr or dask); 0 is background.
    intensity_image : array-like, optional
        The scan's channels, ``(C, *shape)``, or one channel of the label
        image's shape. None: no intensity columns.
    spacing : sequence of float
        Pixel size in µm per axis.
    axes : str, optional
        Axis names, default ``"yx"`` or ``"zyx"``.
    chunks : sequence of int, optional
        Block shape to process at a time (default the label image's chunks, or
        the whole image).
    channel_names : sequence of str, optional
        One name per channel (default ``c0``, ``c1``, ...); made into column
        keys by :func:`channel_keys`.
    ring_width_um : float
        Width of the ring around each cell (background / cytoplasm proxy).
    neighbor_radius_um : float
        Radius for ``n_neighbors``.
    threads : int, optional
        Chunks measured in parallel (None: all cores).
    show_progress : bool
        Show progress bars.
    out : TableWriter, optional
        Write the table there, :data:`ROW_GROUP_ROWS` rows at a time, instead
        of returning it. The measured rows wait in a scratch file beside the
        table (:meth:`TableWriter.scratch_path`) until they can be written in
        ``cell_id`` order, so memory holds a few small arrays per cell (ids,
        boxes, centroids and their k-d tree), not the table.
    stains : dict, optional
        A brightfield scan's stain dict (``ingest.json``'s ``"stain"``, see
        :mod:`cellseg.stain`): the first three channels of `intensity_image`
        are RGB, and the stains' optical-density columns and the RGB means
        (:func:`~cellseg.measure.columns.brightfield_columns`) are added.
    processes : bool or None
        Measure the chunks' cells on `threads` processes of their own
        (:func:`cellseg.parallel.process_map`) instead of threads: the
        per-cell work holds the GIL, so threads barely overlap. None: when
        there is about :data:`PROCESS_WORK_S` of work or more, the arrays
        are file-backed (zarr, or dask over files; in-memory arrays would be
        copied to every task) and the program allows it
        (:func:`cellseg.parallel.allow_processes`, as the command line does);
        the measure stage asks for this. As with any Python multiprocessing,
        a script that turns processes on must start its work under
        ``if __name__ == "__main__":`` (the processes import the script's
        main module).

    Returns
    -------
    pandas.DataFrame or None
        One row per cell id, sorted by id; the columns of :func:`column_schema`.
        None when `out` is given.

    Examples
    --------
    >>> lab = np.zeros((4, 6), np.uint32); lab[1:3, 1:4] = 7
    >>> t = measure_cells(lab, np.ones((4, 6)), spacing=(0.5, 0.5))
    >>> t[["cell_id", "centroid_y_um", "centroid_x_um", "area_um2"]].values.tolist()
    [[7.0, 0.75, 1.0, 1.5]]
    """
    shape = tuple(int(n) for n in label_image.shape)
    nd = len(shape)
    axes = axes or ("yx" if nd == 2 else "zyx")
    spacing = tuple(float(s) for s in spacing)
    if len(axes) != nd or len(spacing) != nd:
        raise ValueError(f"axes {axes!r} and spacing {spacing} do not match a {nd}D image")
    channels = channel_list(intensity_image, shape)
    n_channels = len(channels)
    names = list(channel_names) if channel_names is not None else []
    if len(names) != n_channels:
        names = [f"c{i}" for i in range(n_channels)]
    keys = channel_keys(names)
    chunks = chunk_shape(label_image, chunks, shape)

    workers = threads or available_cpus()
    readable = processes is None and _processes_can_read(workers, label_image, channels)
    if processes and workers > 1:
        start_process_server(_PRELOAD)  # it imports while pass 1 runs
    elif readable:
        warm_processes(shape, workers)
    base = cell_boxes(
        label_image,
        axes=axes,
        chunks=chunks,
        threads=threads,
        show_progress=show_progress,
    )
    stain_names = list(stains["names"]) if stains is not None else None
    schema = column_schema(
        axes,
        keys,
        ring_width_um=ring_width_um,
        neighbor_radius_um=neighbor_radius_um,
        stains=stain_names,
    )
    # the columns pass 2 gives (the rest come from pass 1 and the neighbours)
    later = {"touches_border", "n_neighbors", "nearest_neighbor_distance_um", "nearest_neighbor_id"}
    later |= {f"centroid_{a}_um" for a in axes}
    measured = ["cell_id"] + [c.name for c in schema if c.name not in base and c.name not in later]
    position = {name: j for j, name in enumerate(measured)}

    # Cells are measured per chunk (the chunk holding their box's first corner),
    # chunks in order; within a chunk in id order.
    n = len(base["cell_id"])
    starts = np.stack([base[f"bbox_{a}_start_px"] for a in axes], axis=1).reshape(n, nd)
    stops = np.stack([base[f"bbox_{a}_stop_px"] for a in axes], axis=1).reshape(n, nd)
    grid = tuple(-(-s // c) for s, c in zip(shape, chunks))
    home = np.ravel_multi_index(tuple((starts // np.array(chunks)).T), grid) if n else []
    order = np.argsort(home, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(np.asarray(home)[order])) + 1) if n else []
    groups = split_groups(groups, starts, MAX_GROUP_CELLS[nd])
    del home, starts, stops  # each group's ids and boxes are gathered when it is measured
    pad = tuple(int(math.ceil(ring_width_um / s)) if ring_width_um > 0 else 0 for s in spacing)

    measure_group = functools.partial(
        _measure_group,
        label_image=label_image,
        channels=channels,
        spacing=spacing,
        shape=shape,
        pad=pad,
        ring_width_um=ring_width_um,
        measured=measured,
        keys=keys,
        stains=stains,
    )

    def gather(index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            base["cell_id"][index],
            np.stack([base[f"bbox_{a}_start_px"][index] for a in axes], axis=1),
            np.stack([base[f"bbox_{a}_stop_px"][index] for a in axes], axis=1),
        )

    if processes is None:
        processes = readable and _worth_processes(n, nd)
    if processes:
        log.info("measure: %d cells on %d processes", n, workers)
        results = map_chunks(
            measure_group,
            (gather(index) for index in groups),
            threads=workers,
            processes=True,
            preload=_PRELOAD,
        )
    else:
        results = map_chunks(lambda index: measure_group(gather(index)), groups, threads=workers)

    store = _RowStore(n, len(measured), None if out is None else out.scratch_path("rows"))
    try:
        bar = progress(total=n, desc="measure cells", enabled=show_progress)
        for index, rows in zip(groups, results):
            store.put(index, rows)
            bar.update(len(rows))
        bar.close()
        del groups, order

        def centroids(lo: int, hi: int) -> np.ndarray:
            return np.stack(
                [centroid_um(base, a, s, lo, hi) for a, s in zip(axes, spacing)], axis=1
            ).reshape(hi - lo, nd)

        neighbors = Neighbors(centroids, base["cell_id"], neighbor_radius_um)

        def block(lo: int, hi: int) -> pd.DataFrame:
            rows = store.get(lo, hi)
            touches = np.zeros(hi - lo, bool)
            for a, size in zip(axes, shape):
                touches |= (base[f"bbox_{a}_start_px"][lo:hi] == 0) | (
                    base[f"bbox_{a}_stop_px"][lo:hi] == size
                )
            count, dist, nearest = neighbors.block(lo, hi)
            values: dict[str, np.ndarray] = {
                "touches_border": touches,
                "n_neighbors": count,
                "nearest_neighbor_distance_um": dist,
                "nearest_neighbor_id": nearest,
            }
            for a, s in zip(axes, spacing):
                values[f"centroid_{a}_um"] = centroid_um(base, a, s, lo, hi)
            for c in schema:
                if c.name in values:
                    continue
                if c.name in base:
                    values[c.name] = base[c.name][lo:hi]
                elif c.name in position:
                    values[c.name] = rows[:, position[c.name]]
            return pd.DataFrame({c.name: values[c.name].astype(c.dtype) for c in schema})

        if out is None:
            return block(0, n)
        for lo in range(0, max(n, 1), ROW_GROUP_ROWS):
            out.write(block(lo, min(n, lo + ROW_GROUP_ROWS)))
        return None
    finally:
        store.close()
