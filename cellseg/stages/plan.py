"""Stage ``plan``: the grid of tiles of a scan for a backend, ``work/tiles.json``.

:func:`tile_geometry` sizes the tiles' cores and halos for a backend; the
in-memory entry points (:mod:`cellseg.stages.arrays`) use it too.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

from cellseg.atomic import atomic_write_json
from cellseg.config import DEFAULTS
from cellseg.errors import ConfigError
from cellseg.io import open_image
from cellseg.layout import fingerprint, image_path, read_json, record_seconds, work_dir
from cellseg.segmentation import default_halo_px, get_backend
from cellseg.tiling import Tile, batch_tiles, halo_widths, per_axis, plan_tiles, tile_shape

log = logging.getLogger("cellseg")


def plan(
    outdir: str | Path,
    *,
    tile_size: int | Sequence[int] = DEFAULTS["tile_size"],
    overlap: int | None = DEFAULTS["overlap"],
    tiles_per_batch: int = DEFAULTS["tiles_per_batch"],
    backend: str | None = DEFAULTS["backend"],
    model: str | None = DEFAULTS["model"],
    diameter: float | str | None = DEFAULTS["diameter"],
) -> dict:
    """Write the tile plan ``work/tiles.json``.

    Parameters
    ----------
    outdir : path
        Output folder of an ingested scan.
    tile_size : int or sequence of int
        Core edge per axis in pixels; a size at least the scan's gives one tile.
    overlap : int, optional
        Halo width in pixels of the finest axis (coarser axes get the same
        physical width). Default: the backend's largest cell plus its margin.
    tiles_per_batch : int
        Tiles per batch (one segment job of the workflow).
    backend, model : str, optional
        Segmentation backend and model (see :func:`cellseg.backends.get_backend`).
    diameter : float or "auto", optional
        Typical nucleus diameter of the scan in µm, for model backends (crops are
        rescaled to the model's training size); ``"auto"`` measures it with the
        model on sample crops (:mod:`cellseg.segmentation.sizing`); default
        (None): ``"auto"`` when the file states no pixel size, else no rescaling.

    Returns
    -------
    dict
        The plan.
    """
    t_start = time.perf_counter()
    outdir = Path(outdir)
    info = read_json(work_dir(outdir) / "ingest.json", "ingest")
    spacing = info["spacing"]
    shape = info["shape"]
    path = work_dir(outdir) / "tiles.json"
    options = {}
    if diameter is None and info.get("spacing_source") == "default":
        # no pixel size in the file: sizes in µm mean nothing, so measure them
        log.info("plan: the scan has no pixel size; measuring the nucleus diameter (auto)")
        diameter = "auto"
    if diameter == "auto":
        est = _auto_diameter(outdir, info, path, backend, model)
        options = {"diameter_um": est} if est else {}
    elif diameter:
        options = {"diameter_um": float(diameter)}
    be = get_backend(backend, model, ndim=len(shape), **options)
    core_shape, halo, margin, overlap_px = tile_geometry(
        shape, spacing, be, tile_size, overlap, source=str(outdir), axes=info["axes"]
    )
    tiles = plan_tiles(shape, core_shape, halo)
    batches = batch_tiles(len(tiles), tiles_per_batch)
    content = {
        "shape": shape,
        "axes": info["axes"],
        "spacing": spacing,
        "core_shape": core_shape,
        "overlap_px": overlap_px,
        "halo": halo,
        "margin": margin,
        "backend": {"name": be.name, "model": model, "options": options, "diameter": diameter},
        "stats_fingerprint": fingerprint(info["stats"]),
        "tiles": [t.to_dict() for t in tiles],
        "batch_tiles": batches,
    }
    content["fingerprint"] = fingerprint(content)
    content["batches"] = list(batches)
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("fingerprint") == content["fingerprint"]:
            return old
    atomic_write_json(path, content)
    record_seconds(outdir, "plan", time.perf_counter() - t_start)
    log.info(
        "plan: %d tiles of %s px, halo %s px, %d batches",
        len(tiles),
        core_shape,
        halo,
        len(batches),
    )
    return content


def _auto_diameter(outdir: Path, info: dict, plan_path: Path, backend, model) -> float | None:
    """The scan's nucleus diameter measured by the model (reused from an earlier plan
    of the same scan, backend and model, so that replanning keeps the tiles' results)."""
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        same = old.get("stats_fingerprint") == fingerprint(info["stats"])
        ob = old.get("backend", {})
        if same and ob.get("diameter") == "auto" and ob.get("model") == model:
            return ob.get("options", {}).get("diameter_um")
    be = get_backend(backend, model, ndim=len(info["shape"]))
    image = open_image(image_path(outdir, info)).data[info["channel"]]
    est = be.estimate_diameter_um(image, info["spacing"], info["stats"])
    if est is None and be.name != "model":
        log.info("plan: the %s backend does not rescale by nucleus size; no estimate", be.name)
        return None
    if est is None:
        log.warning("plan: no nuclei found to estimate the diameter; not rescaling")
    else:
        log.info(
            "plan: estimated nucleus diameter %.1f µm (%.0f px)", est, est / min(info["spacing"])
        )
    return est


def tile_geometry(
    shape: Sequence[int],
    spacing: Sequence[float],
    backend,
    tile_size: int | Sequence[int],
    overlap: int | None,
    *,
    source: str = "scan",
    axes: str | None = None,
) -> tuple[list[int], list[int], list[int], int]:
    """Core shape, halo and margin (per axis) of a scan's tiles for a backend.

    The halo is ``overlap`` pixels of the finest axis (default: the backend's
    largest cell plus its margin) and must exceed the backend's margin. For
    backends that need aligned crops (strided networks), core and halo are
    rounded up to multiples of the alignment.

    Returns
    -------
    core_shape, halo, margin : list of int
    overlap_px : int
    """
    axes = axes or "zyx"[-len(shape) :]
    margin = [int(m) for m in backend.margin_px(spacing)]
    align = tuple(backend.alignment(spacing))
    sizes = [int(v) for v in per_axis(tile_size, len(shape), "tile size")]
    sizes = [int(math.ceil(s / a) * a) for s, a in zip(sizes, align)]
    core_shape = list(tile_shape(shape, sizes))
    overlap_px = default_halo_px(backend, spacing) if overlap is None else int(overlap)
    halo = [int(math.ceil(h / a) * a) for h, a in zip(halo_widths(overlap_px, spacing), align)]
    for ax, (h, m, n) in enumerate(zip(halo, margin, shape)):
        if h <= m and n > core_shape[ax]:
            finest = min(spacing)
            need = math.ceil((m + 1) * spacing[ax] / finest)
            raise ConfigError(
                f"overlap {overlap_px} px is too small for the {backend.name} backend on "
                f"{source}: it needs more than {m} px of context along axis "
                f"{axes[ax]}; use --overlap {need} or more (default: automatic)."
            )
    return core_shape, halo, margin, overlap_px


def load_plan(outdir: Path) -> tuple[dict, list[Tile]]:
    """Read ``tiles.json``: the plan dict and its tiles."""
    content = read_json(work_dir(outdir) / "tiles.json", "plan")
    return content, [Tile.from_dict(t) for t in content["tiles"]]
