"""``segment``: every stage of one scan's run, in this process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cellseg.config import DEFAULTS
from cellseg.layout import image_path
from cellseg.lock import locked
from cellseg.measure.cells import warm_processes
from cellseg.progress import progress
from cellseg.stages.ingest import ingest
from cellseg.stages.measure import measure
from cellseg.stages.plan import plan
from cellseg.stages.report import report
from cellseg.stages.segment_tiles import segment_tiles
from cellseg.stages.stitch import stitch


@locked("run")
def segment(
    input_path: str | Path,
    outdir: str | Path,
    *,
    tile_size: int | Sequence[int] = DEFAULTS["tile_size"],
    overlap: int | None = DEFAULTS["overlap"],
    pixel_size: Sequence[float] | None = None,
    channel: int | str | None = None,
    modality: str = DEFAULTS["modality"],
    backend: str | None = DEFAULTS["backend"],
    model: str | None = DEFAULTS["model"],
    diameter: float | str | None = DEFAULTS["diameter"],
    flips: bool = DEFAULTS["flips"],
    level: int | str = DEFAULTS["level"],
    device: str = DEFAULTS["device"],
    batch_size: int = DEFAULTS["batch_size"],
    tiles_per_batch: int = DEFAULTS["tiles_per_batch"],
    threads: int | None = None,
    name: str | None = None,
    show_progress: bool = True,
    force: bool = False,
) -> dict:
    """Run every stage for one scan in this process.

    Writes ``OUTDIR/<name>.ome.zarr`` (image and ``labels/cells``),
    ``OUTDIR/cells.parquet`` and the QC report ``OUTDIR/report.html``. Stages
    already done for the same inputs are skipped, so a killed run resumes
    where it stopped. The options are those of the stages:
    :func:`~cellseg.stages.ingest`, :func:`~cellseg.stages.plan`,
    :func:`~cellseg.stages.segment_tiles` and :func:`~cellseg.stages.measure`
    (`threads`).

    Returns
    -------
    dict
        Paths of the outputs and the number of cells.
    """
    outdir = Path(outdir)
    info = ingest(
        input_path,
        outdir,
        name=name,
        pixel_size=pixel_size,
        channel=channel,
        modality=modality,
        force=force,
    )
    content = plan(
        outdir,
        tile_size=tile_size,
        overlap=overlap,
        tiles_per_batch=tiles_per_batch,
        backend=backend,
        model=model,
        diameter=diameter,
        flips=flips,
        level=level,
    )
    n_tiles = sum(len(v) for v in content["batch_tiles"].values())  # glass tiles skipped
    bar = progress(total=n_tiles, desc="segment", enabled=show_progress)
    for b in content["batches"]:
        segment_tiles(
            outdir,
            b,
            device=device,
            batch_size=batch_size,
            threads=threads,
            force=force,
            show_progress=show_progress,
            bar=bar,
        )
    bar.close()
    warm_processes(info["shape"], threads)  # measure's processes import while stitch runs
    summary = stitch(outdir, show_progress=show_progress, force=force)
    table = measure(outdir, threads=threads, show_progress=show_progress, force=force)
    qc = report(outdir)
    return {
        "image": str(image_path(outdir, info)),
        "labels": summary["labels"],
        "table": str(table),
        "report": str(qc),
        "n_cells": summary["n_cells"],
    }
