"""Stage ``segment_tiles``: one batch of tiles segmented into candidates, ``tiles/<batch>.npz``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from cellseg.config import DEFAULTS
from cellseg.errors import ConfigError
from cellseg.io import open_image
from cellseg.layout import batch_path, image_path, read_json, record_seconds, work_dir
from cellseg.normalize import normalize
from cellseg.parallel import thread_pool
from cellseg.progress import progress
from cellseg.segment import Candidates, tile_candidates
from cellseg.segmentation import get_backend
from cellseg.stages.plan import load_plan

log = logging.getLogger("cellseg")


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
        Worker threads for backends that run per tile on the CPU (default: CPU count).
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
    image = open_image(image_path(outdir, info)).data[info["channel"]]
    shape, core_shape = content["shape"], content["core_shape"]
    todo = [tiles[i] for i in content["batch_tiles"][batch]]
    own_bar = bar is None
    if own_bar:
        bar = progress(total=len(todo), desc=f"segment {batch}", enabled=show_progress)

    def run_group(group):
        crops = [normalize(np.asarray(image[t.halo_slices]), stats) for t in group]
        labels = be.predict(crops, spacing, stats)
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

    groups = [todo[i : i + max(1, batch_size)] for i in range(0, len(todo), max(1, batch_size))]
    per_tile = be.per_tile_cpu
    workers = threads or os.cpu_count() or 1
    parts = []
    if per_tile and workers > 1 and len(todo) > 1:
        singles = [[t] for t in todo]
        # the process's pool, the same threads for every batch (see thread_pool)
        for res in thread_pool(workers).map(run_group, singles):
            parts.extend(res)
            bar.update(1)
    else:
        for group in groups:
            parts.extend(run_group(group))
            bar.update(len(group))
    if own_bar:
        bar.close()
    cands = Candidates.concat(parts, len(shape))
    cands.save(out, plan=content["fingerprint"], tiles=np.array([t.index for t in todo]))
    record_seconds(outdir, f"segment_tiles-{batch}", time.perf_counter() - t_start)
    return out
