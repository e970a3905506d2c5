"""Stage ``ingest``: copy a scan into ``OUTDIR/<name>.ome.zarr`` and compute its statistics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellseg import __version__
from cellseg.atomic import atomic_write_json
from cellseg.config import DEFAULTS
from cellseg.errors import ConfigError, InputError
from cellseg.io import channel_index, read_scan, write_image
from cellseg.layout import record_seconds, work_dir
from cellseg.lock import locked
from cellseg.normalize import compute_scan_stats
from cellseg.parallel import local_threads
from cellseg.scans import check_scan_name, default_scan_name
from cellseg.stain import estimate_stains, looks_brightfield, nuclear_image
from cellseg.tissue import (
    fill_glass,
    find_tissue,
    low_resolution_rgb,
    save_tissue,
    slide_record,
)

log = logging.getLogger("cellseg")

IMAGE_CHUNK_2D = 512
IMAGE_CHUNK_3D = (16, 256, 256)
#: Pixels of the low-resolution view that the modality and stain vectors are taken from.
SAMPLE_PIXELS = 1_000_000


@locked("ingest")
def ingest(
    input_path: str | Path,
    outdir: str | Path,
    *,
    name: str | None = None,
    pixel_size: Sequence[float] | None = None,
    channel: int | str | None = None,
    modality: str = DEFAULTS["modality"],
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
        Nuclear channel, by index or name (default the first); fluorescence only.
    modality : {"auto", "fluorescence", "brightfield"}
        ``"auto"``: an 8-bit RGB scan with a bright background is brightfield
        (:func:`cellseg.stain.looks_brightfield`). Brightfield scans get
        per-scan stain vectors (``"stain"``) and the model sees their
        haematoxylin amount.
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
    name = check_scan_name(name) if name else default_scan_name(input_path)
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
        "modality": modality,
    }
    info_path = work_dir(outdir) / "ingest.json"
    if not force and info_path.exists():
        old = json.loads(info_path.read_text())
        if old.get("request") == request and (outdir / old["image"]).exists():
            log.info("ingest: %s is up to date", info_path)
            return old

    scan = read_scan(input_path, pixel_size=pixel_size)
    ch = channel_index(scan, channel)
    spatial = scan.data.shape[1:]
    if len(spatial) == 2:
        chunks = tuple(min(IMAGE_CHUNK_2D, n) for n in spatial)
    else:
        chunks = tuple(min(c, n) for c, n in zip(IMAGE_CHUNK_3D, spatial))
    with local_threads():  # reads the input file, which only this process can open
        modality, stain = _modality(scan, modality, input_path)
        tissue = find_tissue(input_path, scan, modality)  # brightfield: where the tissue is
        # glass-only chunks hold the glass colour, unread (for the statistics and the copy)
        data = fill_glass(scan.data, tissue, chunks)
        nuclear = nuclear_image(data, {"modality": modality, "channel": ch, "stain": stain})
        stats = compute_scan_stats(nuclear, source=str(input_path))
    image = f"{name}.ome.zarr"
    info = {
        "name": name,
        "image": image,
        "shape": [int(n) for n in spatial],
        "axes": scan.axes,
        "spacing": [float(s) for s in scan.spacing],
        "spacing_source": scan.spacing_source,
        "channel": int(ch),
        "modality": modality,
        "channel_names": list(scan.channel_names),
        "dtype": str(scan.data.dtype),
        "stats": stats,
        **({"stain": stain} if stain else {}),
        **slide_record(input_path, tissue),  # pyramid levels, objective; tissue fraction
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
        data,
        axes=scan.axes,
        spacing=scan.spacing,
        channel_names=scan.channel_names,
        chunks=chunks,
        attrs={k: info[k] for k in ("name", "channel", "modality", "stats", "cellseg_version")}
        | {"source": source["path"]},
    )
    save_tissue(outdir / image, tissue, chunks)  # labels/tissue
    atomic_write_json(info_path, info)
    record_seconds(outdir, "ingest", time.perf_counter() - t_start)
    return info


def _modality(scan, modality: str, path: Path) -> tuple[str, dict | None]:
    """The scan's modality (``auto`` resolved) and, for brightfield, its stain vectors."""
    if modality not in ("auto", "fluorescence", "brightfield"):
        raise ConfigError(
            f"unknown modality {modality!r}; choose auto, fluorescence or brightfield."
        )
    sample = None
    if modality != "fluorescence" and scan.n_channels in (3, 4) and scan.axes == "yx":
        # a slide's own low-resolution level where it has one: no full-resolution read
        sample = low_resolution_rgb(path, scan, SAMPLE_PIXELS)
    if modality == "auto":
        bright = sample is not None and looks_brightfield(
            np.moveaxis(sample, -1, 0), scan.data.dtype
        )
        modality = "brightfield" if bright else "fluorescence"
    if modality == "fluorescence":
        return modality, None
    if sample is None:
        raise InputError(
            f"{path}: a brightfield scan is a 2D RGB image with 3 channels, this one has "
            f"{scan.n_channels} channel(s) and axes {scan.axes}; use --modality fluorescence "
            "for a fluorescence scan."
        )
    stain = estimate_stains(sample, kind="auto")
    log.info(
        "ingest: brightfield, %s stains %s",
        stain["kind"],
        "estimated from the scan" if stain["estimated"] else "(reference vectors: little tissue)",
    )
    return modality, stain
