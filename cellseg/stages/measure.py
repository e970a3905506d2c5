"""Stage ``measure``: the cell table ``OUTDIR/cells.parquet`` of a label image."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pyarrow.parquet as pq

from cellseg import __version__
from cellseg import measure as m
from cellseg.io import open_image, open_labels
from cellseg.layout import fingerprint, image_path, read_json, record_seconds, work_dir
from cellseg.lock import locked
from cellseg.review import measure_base, remeasure, table_path

log = logging.getLogger("cellseg")


@locked("measure", per="labels")
def measure(
    outdir: str | Path,
    *,
    labels: str = "cells",
    threads: int | None = None,
    ring_width_um: float | None = None,
    neighbor_radius_um: float | None = None,
    show_progress: bool = True,
    force: bool = False,
) -> Path:
    """Write the cell table of label image `labels` from the labels and the scan.

    Every channel of the scan is measured (see :mod:`cellseg.measure`), and
    in a brightfield scan (``ingest.json``'s ``modality``) also its stains'
    optical densities under the scan's stain vectors (``stain``);
    `threads` chunks at a time (default all cores; on as many processes of
    their own when there are enough cells to pay for starting them, see
    :func:`cellseg.measure.measure_cells`'s ``processes``). `ring_width_um` and
    `neighbor_radius_um` default to :data:`cellseg.measure.DEFAULT_RING_WIDTH_UM`
    and :data:`cellseg.measure.DEFAULT_NEIGHBOR_RADIUS_UM`. The Parquet
    metadata documents every column and records the scan, the config, the
    model and the version that produced the table.

    ``cells`` gives ``OUTDIR/cells.parquet``; another label image gives
    ``OUTDIR/<labels>.parquet`` (:func:`cellseg.corrections.table_path`). For
    ``cells_corrected`` only the cells touched by edits since the previous
    table are measured again (:func:`cellseg.corrections.remeasure`). The
    table's metadata names the label image it came from (``cellseg.labels``).

    Returns
    -------
    Path
        The table's path.
    """
    t_start = time.perf_counter()
    ring_width_um = m.DEFAULT_RING_WIDTH_UM if ring_width_um is None else float(ring_width_um)
    if neighbor_radius_um is None:
        neighbor_radius_um = m.DEFAULT_NEIGHBOR_RADIUS_UM
    neighbor_radius_um = float(neighbor_radius_um)
    outdir = Path(outdir)
    info = read_json(work_dir(outdir) / "ingest.json", "ingest")
    stitch_info = read_json(work_dir(outdir) / "stitch.json", "stitch")
    out = table_path(outdir, labels)
    request = {
        "stitch": fingerprint(stitch_info["request"]),
        "labels": labels,
        "table_version": m.TABLE_VERSION,
        "ring_width_um": ring_width_um,
        "neighbor_radius_um": neighbor_radius_um,
    }
    img = image_path(outdir, info)
    base = measure_base(outdir, img, labels, request)
    request.update(base.get("request", {}))
    if not force and out.exists():
        meta = pq.read_schema(out).metadata or {}
        if meta.get(b"cellseg.request") == json.dumps(request, sort_keys=True).encode():
            log.info("measure: %s is up to date", out)
            return out
    label_image = open_labels(img, labels)
    scan = open_image(img)
    names = list(info.get("channel_names") or scan.channel_names)
    # brightfield: the stains' optical densities per cell (cellseg.measure.brightfield_columns)
    stains = info.get("stain") if info.get("modality") == "brightfield" else None
    options = {
        "spacing": info["spacing"],
        "axes": info["axes"],
        "channel_names": names,
        "ring_width_um": ring_width_um,
        "neighbor_radius_um": neighbor_radius_um,
        "stains": stains,
    }
    keys = m.channel_keys(names)
    content = read_json(work_dir(outdir) / "tiles.json", "plan")
    config = {
        "pixel_size_um": info["spacing"],
        "pixel_size_source": info.get("spacing_source"),
        "nuclear_channel": info["channel"],
        "modality": info.get("modality", "fluorescence"),
        **({"stain": info["stain"]} if info.get("stain") else {}),
        "tile_core_px": content.get("core_shape"),
        "halo_px": content.get("halo"),
        "overlap_px": content.get("overlap_px"),
        "n_tiles": len(content.get("tiles", [])),
        "ring_width_um": ring_width_um,
        "neighbor_radius_um": neighbor_radius_um,
    }
    metadata = {
        "cellseg.request": json.dumps(request, sort_keys=True),
        "cellseg.scan": info["name"],
        "cellseg.source": info["request"]["source"]["path"],
        "cellseg.labels": labels,
        "cellseg.spacing_um": json.dumps(info["spacing"]),
        "cellseg.axes": info["axes"],
        "cellseg.shape": json.dumps(info["shape"]),
        "cellseg.version": __version__,
        "cellseg.table_version": str(m.TABLE_VERSION),
        "cellseg.channels": json.dumps(
            [{"key": k, "name": n, "index": i} for i, (k, n) in enumerate(zip(keys, names))]
        ),
        "cellseg.config": json.dumps(config, sort_keys=True),
        "cellseg.model": json.dumps(content.get("backend", {}), sort_keys=True),
        **base.get("metadata", {}),
    }
    columns = m.column_schema(
        info["axes"],
        keys,
        ring_width_um=ring_width_um,
        neighbor_radius_um=neighbor_radius_um,
        stains=list(stains["names"]) if stains else None,
    )
    # The table goes to the file row group by row group as it is measured: the
    # stage's memory does not grow with the number of cells.
    with m.TableWriter(out, metadata=metadata, columns=columns) as writer:
        if base.get("previous") is not None:
            writer.write(
                remeasure(base["previous"], label_image, scan.data, base["edits"], **options)
            )
        else:
            m.measure_cells(
                label_image,
                scan.data,
                **options,
                chunks=label_image.chunks,
                threads=threads,
                show_progress=show_progress,
                out=writer,
                processes=None,
            )
    if labels == "cells":
        record_seconds(outdir, "measure", time.perf_counter() - t_start)
    log.info("measure: %d cells -> %s", writer.n_rows, out)
    return out
