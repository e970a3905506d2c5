"""Stage ``ingest``: copy a scan into ``OUTDIR/<name>.ome.zarr`` and compute its statistics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from cellseg import __version__
from cellseg.atomic import atomic_write_json
from cellseg.io import channel_index, read_scan, write_image
from cellseg.layout import record_seconds, scan_name, work_dir
from cellseg.normalize import compute_scan_stats
from cellseg.parallel import local_threads

log = logging.getLogger("cellseg")

IMAGE_CHUNK_2D = 512
IMAGE_CHUNK_3D = (16, 256, 256)


def ingest(
    input_path: str | Path,
    outdir: str | Path,
    *,
    name: str | None = None,
    pixel_size: Sequence[float] | None = None,
    channel: int | str | None = None,
    force: bool = False,
) -> dict:
    """Copy a scan into ``OUTDIR/<name>.ome.zarr`` and compute its statistics.

    Parameters
    ----------
    input_path : path
        TIFF / OME-TIFF / Zarr / OME-Zarr / .npy scan (YX or ZYX, optional channel axis).
    outdir : path
        Output folder of the scan.
    name : str, optional
        Name of the scan; default the file name without its extensions.
    pixel_size : sequence of float, optional
        µm per spatial axis, overriding the file's metadata.
    channel : int or str, optional
        Nuclear channel, by index or name (default the first).
    force : bool
        Redo even when an ingest of the same file and options exists.

    Returns
    -------
    dict
        The content of ``work/ingest.json``.
    """
    t_start = time.perf_counter()
    input_path = Path(input_path)
    outdir = Path(outdir)
    name = name or scan_name(input_path)
    try:
        st = input_path.stat()
        source = {
            "path": str(input_path.resolve()),
            "size": st.st_size if input_path.is_file() else None,
            "mtime": st.st_mtime if input_path.is_file() else None,
        }
    except OSError:
        source = {"path": str(input_path)}
    request = {
        "source": source,
        "name": name,
        "pixel_size": list(pixel_size) if pixel_size else None,
        "channel": channel,
    }
    info_path = work_dir(outdir) / "ingest.json"
    if not force and info_path.exists():
        old = json.loads(info_path.read_text())
        if old.get("request") == request and (outdir / old["image"]).exists():
            log.info("ingest: %s is up to date", info_path)
            return old

    scan = read_scan(input_path, pixel_size=pixel_size)
    ch = channel_index(scan, channel)
    nuclear = scan.data[ch]
    with local_threads():  # reads the input file, which only this process can open
        stats = compute_scan_stats(nuclear, source=str(input_path))
    spatial = scan.data.shape[1:]
    if len(spatial) == 2:
        chunks = tuple(min(IMAGE_CHUNK_2D, n) for n in spatial)
    else:
        chunks = tuple(min(c, n) for c, n in zip(IMAGE_CHUNK_3D, spatial))
    image = f"{name}.ome.zarr"
    info = {
        "name": name,
        "image": image,
        "shape": [int(n) for n in spatial],
        "axes": scan.axes,
        "spacing": [float(s) for s in scan.spacing],
        "spacing_source": scan.spacing_source,
        "channel": int(ch),
        "channel_names": list(scan.channel_names),
        "dtype": str(scan.data.dtype),
        "stats": stats,
        "request": request,
        "cellseg_version": __version__,
    }
    work_dir(outdir).mkdir(parents=True, exist_ok=True)
    log.info(
        "ingest: %s (%s %s, %s µm) -> %s",
        input_path,
        scan.axes,
        "×".join(map(str, spatial)),
        scan.spacing,
        outdir / image,
    )
    write_image(
        outdir / image,
        scan.data,
        axes=scan.axes,
        spacing=scan.spacing,
        channel_names=scan.channel_names,
        chunks=chunks,
        attrs={k: info[k] for k in ("name", "channel", "stats", "cellseg_version")}
        | {"source": source["path"]},
    )
    atomic_write_json(info_path, info)
    record_seconds(outdir, "ingest", time.perf_counter() - t_start)
    return info
