"""Stage ``stitch``: resolve the candidates of all batches and paint ``labels/cells``."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellseg import __version__
from cellseg.atomic import atomic_write_json
from cellseg.errors import InputError
from cellseg.io import create_labels, finalize_labels
from cellseg.layout import batch_path, image_path, read_json, record_seconds, work_dir
from cellseg.lock import locked
from cellseg.parallel import trim_heap
from cellseg.stages.plan import load_plan
from cellseg.stitching import ROW_FIELDS, TileCandidates, paint_tiles, resolve_candidates
from cellseg.tiling import box_dtype

log = logging.getLogger("cellseg")


def _batch_source(paths: Sequence[Path], shape: Sequence[int], n_tiles: int) -> TileCandidates:
    """The candidates of the batch files, served tile by tile.

    Only each batch's tile column is read here; a batch's other rows and its
    masks are read when a sweep reaches its tiles
    (:class:`~cellseg.stitching.TileCandidates`). Rows are kept in the smallest
    dtypes that hold them: boxes and anchors in :func:`~cellseg.tiling.box_dtype`,
    areas (at most the scan's pixels) in uint32 when that holds them. The
    sweeps only compare these values and read them as ints.
    """
    narrow = {"bbox": box_dtype(shape), "anchor": box_dtype(shape)}
    if math.prod(shape) < 2**32:
        narrow["area"] = np.uint32
    counts = np.zeros(n_tiles, np.int64)
    part_tiles, used = [], []
    for path in paths:
        with np.load(path) as f:
            tile = f["tile"]
        if not len(tile):
            continue
        present, n = np.unique(tile, return_counts=True)
        counts[present] = n
        part_tiles.append(present.tolist())
        used.append(path)

    def load_rows(k: int) -> dict[str, np.ndarray]:
        with np.load(used[k]) as f:
            return {
                name: f[name].astype(narrow[name]) if name in narrow else f[name]
                for name in ROW_FIELDS
            }

    return TileCandidates(
        part_tiles,
        counts,
        load_rows,
        lambda k: _load_masks(used[k]),
        ndim=len(shape),
    )


def _load_masks(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The packed masks of a batch file and their byte offsets."""
    with np.load(path) as f:
        return f["offsets"], f["bits"]


@locked("stitch")
def stitch(outdir: str | Path, *, show_progress: bool = True, force: bool = False) -> dict:
    """Resolve candidates of all batches and paint ``labels/cells``.

    Parameters
    ----------
    outdir : path
        Output folder whose batches are all segmented.
    show_progress : bool
        Show progress bars (or log lines in a batch job).
    force : bool
        Redo even when the labels exist for the same plan and batches.

    Returns
    -------
    dict
        The content of ``work/stitch.json``.
    """
    outdir = Path(outdir)
    info = read_json(work_dir(outdir) / "ingest.json", "ingest")
    content, tiles = load_plan(outdir)
    summary_path = work_dir(outdir) / "stitch.json"
    batches = content["batches"]
    missing = [b for b in batches if not batch_path(outdir, b).exists()]
    if missing:
        raise InputError(
            f"{outdir}: {len(missing)} tile batches are not segmented yet "
            f"({', '.join(missing[:5])}); run `cellseg segment-tiles` for them first."
        )
    batch_fps = {}
    for b in batches:
        with np.load(batch_path(outdir, b)) as f:
            fp = str(f["plan"]) if "plan" in f else ""
        if fp != content["fingerprint"]:
            raise InputError(
                f"{batch_path(outdir, b)} was made for another tile plan; "
                f"rerun `cellseg segment-tiles {outdir} --batch {b}`."
            )
        batch_fps[b] = fp
    request = {"plan": content["fingerprint"], "batches": batches}
    if not force and summary_path.exists():
        old = json.loads(summary_path.read_text())
        if (
            old.get("request") == request
            and (image_path(outdir, info) / "labels" / "cells").exists()
        ):
            log.info("stitch: %s is up to date", summary_path)
            return old

    t0 = time.perf_counter()
    # the candidates' rows and masks are read batch by batch as the sweeps need them
    paths = [batch_path(outdir, b) for b in batches]
    n_tiles = max((t.index for t in tiles), default=-1) + 1
    source = _batch_source(paths, content["shape"], n_tiles)
    core_shape = content["core_shape"]
    result = resolve_candidates(
        source, tiles, core_shape, margin=content["margin"], show_progress=show_progress
    )
    n_candidates = len(source)
    img = image_path(outdir, info)
    labels = create_labels(img, "cells", tuple(content["shape"]), tuple(core_shape))
    present = np.zeros(result.n_cells + 1, bool)  # ids painted (a byte per id, not a set)
    region = None
    for t, region in paint_tiles(source, tiles, core_shape, result, show_progress=show_progress):
        if region.any():
            labels[t.core_slices] = region
            present[np.unique(region)] = True
    n_cells = int(np.count_nonzero(present[1:]))
    counts = {
        "max_id": result.n_cells,
        "n_candidates": n_candidates,
        "n_duplicates": result.n_duplicates,
        "n_merged_pieces": result.n_merged_pieces,
        "tile_counts": result.tile_counts.tolist(),
    }
    # The candidates' rows and cached masks are not needed for the pyramid: free
    # them first, so that their memory and the pyramid's chunks are not held at once.
    del source, result, present, region
    trim_heap()
    attrs = {
        "n_cells": n_cells,
        "plan": content["fingerprint"],
        "backend": content["backend"],
        "cellseg_version": __version__,
    }
    finalize_labels(img, "cells", attrs=attrs)
    summary = {
        "n_cells": n_cells,
        **counts,
        "seconds": round(time.perf_counter() - t0, 3),
        "labels": str(img / "labels" / "cells"),
        "request": request,
    }
    atomic_write_json(summary_path, summary)
    record_seconds(outdir, "stitch", summary["seconds"])
    log.info("stitch: %d cells -> %s", n_cells, img / "labels" / "cells")
    return summary
