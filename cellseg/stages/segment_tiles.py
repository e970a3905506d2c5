"""Stage ``segment_tiles``: one batch of tiles segmented into candidates, ``tiles/<batch>.npz``.

The tiles stream through three steps that overlap (:func:`stream_groups`):
reading and normalising the next group of tiles (``batch_size`` tiles, one
forward pass), the backend's device part (:meth:`~cellseg.segmentation.base.Backend.forward`,
a network's forward pass) on this thread, and the post-processing of the
previous groups (:meth:`~cellseg.segmentation.base.Backend.finish`: peaks,
watershed, then :func:`cellseg.segment.tile_candidates`), tile by tile on
the process's worker threads. So the device that runs the network does not
wait for the CPU work around it, and the results, gathered in tile order,
are those of running the tiles one after the other.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.config import DEFAULTS
from cellseg.errors import ConfigError
from cellseg.io import open_image
from cellseg.layout import batch_path, image_path, read_json, record_seconds, work_dir
from cellseg.lock import locked
from cellseg.normalize import normalize
from cellseg.parallel import available_cpus, in_pool_thread, thread_pool
from cellseg.progress import progress
from cellseg.segment import Candidates, tile_candidates
from cellseg.segmentation import get_backend
from cellseg.stages.plan import load_plan
from cellseg.stain import nuclear_image
from cellseg.tiling import Tile, box_at_level, box_slices, labels_to_full, level_factors
from cellseg.tissue import load_tissue, on_tissue

log = logging.getLogger("cellseg")


@locked("segment_tiles", per="batch")
def segment_tiles(
    outdir: str | Path,
    batch: str,
    *,
    backend: str | None = DEFAULTS["backend"],
    model: str | None = DEFAULTS["model"],
    device: str = DEFAULTS["device"],
    batch_size: int = DEFAULTS["batch_size"],
    threads: int | None = None,
    force: bool = False,
    show_progress: bool = True,
    bar=None,
) -> Path:
    """Segment the tiles of one batch and write their candidates.

    Parameters
    ----------
    outdir : path
        Output folder with an ingest and a plan.
    batch : str
        Batch name from the plan (e.g. ``b0000``).
    backend, model : str, optional
        Default: those the plan was made for.
    device : {"auto", "cpu", "cuda"}
        Where model backends run.
    batch_size : int
        Tiles per backend call (one forward pass for model backends).
    threads : int, optional
        Worker threads that read tiles and post-process them, tile by tile, while
        the forward pass runs (default: the job's CPUs); see :func:`stream_groups`.
    force : bool
        Redo even when the batch's file exists for the same plan.
    show_progress : bool
        Show a progress bar (or log lines in a batch job).
    bar : progress bar, optional
        A bar to advance instead of one of this batch's own (:func:`cellseg.stages.segment`).

    Returns
    -------
    Path
        ``work/tiles/<batch>.npz``.
    """
    t_start = time.perf_counter()
    outdir = Path(outdir)
    info = read_json(work_dir(outdir) / "ingest.json", "ingest")
    content, tiles = load_plan(outdir)
    if batch not in content["batch_tiles"]:
        raise ConfigError(
            f"batch {batch!r} is not in the plan of {outdir}; "
            f"the plan has {', '.join(content['batches'][:5])}..."
        )
    out = batch_path(outdir, batch)
    if not force and out.exists():
        with np.load(out) as f:
            if "plan" in f and str(f["plan"]) == content["fingerprint"]:
                log.info("segment-tiles: %s is up to date", out)
                if bar is not None:
                    bar.update(len(content["batch_tiles"][batch]))
                return out
    name = backend or content["backend"]["name"]
    model = model if model is not None else content["backend"]["model"]
    if name != content["backend"]["name"]:
        raise ConfigError(
            f"the plan of {outdir} was made for backend {content['backend']['name']!r}, "
            f"not {name!r}; rerun `cellseg plan` with --backend {name}."
        )
    options = dict(content["backend"].get("options", {}))
    be = get_backend(name, model, device=device, **options)
    spacing = content["spacing"]
    stats = info["stats"]
    level = int(content.get("level", 0))
    factors = level_factors(len(content["shape"]), level)
    seen = [float(s) * k for s, k in zip(spacing, factors)]
    image = nuclear_image(open_image(image_path(outdir, info), level=level).data, info)
    tissue = load_tissue(image_path(outdir, info), info.get("tissue"))
    shape, core_shape = content["shape"], content["core_shape"]
    todo = [tiles[i] for i in content["batch_tiles"][batch]]
    own_bar = bar is None
    if own_bar:
        bar = progress(total=len(todo), desc=f"segment {batch}", enabled=show_progress)

    def read(group: list[Tile]) -> list[np.ndarray]:
        boxes = [box_at_level(t.halo, factors) for t in group]
        return [normalize(np.asarray(image[box_slices(b)]), stats) for b in boxes]

    def candidates(labels: list[np.ndarray], group: list[Tile]) -> list[Candidates]:
        if level:
            labels = [labels_to_full(lab, t.halo, factors) for lab, t in zip(labels, group)]
        if tissue is not None:  # no nucleus on glass
            labels = [on_tissue(lab, tissue.region(t.halo)) for lab, t in zip(labels, group)]
        return [
            tile_candidates(
                lab,
                t,
                shape=shape,
                core_shape=core_shape,
                halo=content["halo"],
                margin=content["margin"],
            )
            for lab, t in zip(labels, group)
        ]

    size = max(1, batch_size)
    groups = [todo[i : i + size] for i in range(0, len(todo), size)]
    parts = []
    for group, res in zip(
        groups,
        stream_groups(
            be, groups, read, candidates, seen, stats, workers=threads or available_cpus()
        ),
    ):
        parts.extend(res)
        bar.update(len(group))
    if own_bar:
        bar.close()
    cands = Candidates.concat(parts, len(shape))
    cands.save(out, plan=content["fingerprint"], tiles=np.array([t.index for t in todo]))
    record_seconds(outdir, f"segment_tiles-{batch}", time.perf_counter() - t_start)
    return out


def stream_groups(
    backend: Any,
    groups: Sequence[list[Tile]],
    read: Callable[[list[Tile]], list[np.ndarray]],
    candidates: Callable[[list[np.ndarray], list[Tile]], list[Candidates]],
    spacing: Sequence[float],
    stats: dict,
    *,
    workers: int = 1,
) -> Iterator[list[Candidates]]:
    """The candidates of each group of tiles, in order, with reading, forward pass and
    post-processing of different groups overlapping.

    While this thread runs ``backend.forward`` on group ``i``, a worker
    thread reads group ``i + 1`` and the others finish the groups before
    ``i`` (one task per tile when the backend ``splits_finish``, else one per
    group). At most about two groups' worth of tiles beyond the workers are
    in flight, so memory stays bounded by a few groups.

    Parameters
    ----------
    backend : Backend
        Its ``forward`` and ``finish`` (or, for a backend without them, ``predict``).
    groups : sequence of list of Tile
        The tiles, one forward pass per group.
    read : callable
        Group → its normalised crops.
    candidates : callable
        (labels of a group's crops, the group) → one :class:`Candidates` per tile.
    spacing : sequence of float
        Pixel size of the crops in µm.
    stats : dict
        Scan statistics (for ``finish``).
    workers : int
        Threads that read and post-process (the process's :func:`thread_pool`).

    Yields
    ------
    list of Candidates
        One per tile of each group, groups in order.
    """
    forward = getattr(backend, "forward", None)
    finish = getattr(backend, "finish", None)
    if forward is None or finish is None:  # a backend without the optional members

        def forward(crops, spacing):
            return list(crops)

        def finish(forwarded, crops, spacing, stats):
            return backend.predict(crops, spacing, stats)

    if in_pool_thread():  # a worker of the pool must not wait on it: one after the other
        for group in groups:
            crops = read(group)
            yield candidates(finish(forward(crops, spacing), crops, spacing, stats), group)
        return
    split = bool(getattr(backend, "splits_finish", getattr(backend, "per_tile_cpu", False)))
    pool = thread_pool(max(1, int(workers)))

    def finish_part(items: list, crops: list[np.ndarray], tiles: list[Tile]) -> list[Candidates]:
        return candidates(finish(items, crops, spacing, stats), tiles)

    def submit(forwarded: list, crops: list[np.ndarray], group: list[Tile]) -> list:
        if not split:
            return [pool.submit(finish_part, list(forwarded), list(crops), list(group))]
        return [
            pool.submit(finish_part, [item], [crop], [tile])
            for item, crop, tile in zip(forwarded, crops, group)
        ]

    # tiles submitted and not yet gathered: enough for every worker, and at least the
    # two groups before the one being forwarded
    largest = max((len(g) for g in groups), default=1)
    limit = max(2 * largest, max(1, int(workers)) + largest)
    pending: deque[tuple[list, int]] = deque()
    in_flight = 0
    ahead = pool.submit(read, groups[0]) if groups else None
    try:
        for i, group in enumerate(groups):
            crops = ahead.result()
            ahead = pool.submit(read, groups[i + 1]) if i + 1 < len(groups) else None
            forwarded = forward(crops, spacing)
            pending.append((submit(forwarded, crops, group), len(group)))
            del crops, forwarded  # the finishing tasks hold what they need
            in_flight += len(group)
            while pending and in_flight > limit:
                futures, n = pending.popleft()
                in_flight -= n
                yield [c for f in futures for c in f.result()]
        while pending:
            futures, _ = pending.popleft()
            yield [c for f in futures for c in f.result()]
    finally:
        for futures, _ in pending:
            for f in futures:
                f.cancel()
        if ahead is not None:
            ahead.cancel()
