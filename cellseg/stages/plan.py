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
from cellseg.background import background_tiles
from cellseg.config import DEFAULTS
from cellseg.errors import ConfigError
from cellseg.io import image_levels, open_image
from cellseg.layout import fingerprint, image_path, read_json, record_seconds, work_dir
from cellseg.lock import locked
from cellseg.segmentation import default_backend_name, default_halo_px, get_backend
from cellseg.segmentation.network import default_model
from cellseg.stain import nuclear_image
from cellseg.tiling import (
    Tile,
    batch_tiles,
    halo_widths,
    level_factors,
    per_axis,
    plan_tiles,
    tile_shape,
)
from cellseg.tissue import plan_tissue_tiles

log = logging.getLogger("cellseg")


@locked("plan")
def plan(
    outdir: str | Path,
    *,
    tile_size: int | Sequence[int] = DEFAULTS["tile_size"],
    overlap: int | None = DEFAULTS["overlap"],
    tiles_per_batch: int = DEFAULTS["tiles_per_batch"],
    backend: str | None = DEFAULTS["backend"],
    model: str | None = DEFAULTS["model"],
    diameter: float | str | None = DEFAULTS["diameter"],
    flips: bool = DEFAULTS["flips"],
    level: int | str = DEFAULTS["level"],
    skip_background: bool = True,
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
        Segmentation backend and model (see :func:`cellseg.segmentation.get_backend`);
        default model: the shipped one of the scan's dimensions and modality.
    diameter : float or "auto", optional
        Typical nucleus diameter of the scan in µm, for model backends (crops are
        rescaled to the model's training size); ``"auto"`` measures it with the
        model on sample crops (:mod:`cellseg.segmentation.sizing`); default
        (None): ``"auto"`` when the file states no pixel size, else no rescaling.
    flips : bool
        Test-time flips for the model backend (see
        :class:`~cellseg.segmentation.model_backend.ModelBackend`); recorded in
        the plan's backend options, so changing it redoes the tiles.
    level : int or "auto"
        Pyramid level of the ingested image that the tiles are segmented at
        (each level halves Y and X; the labels are always on the full-resolution
        grid). ``"auto"``: for brightfield scans the coarsest level not coarser
        than the pixel size the model works at, so that no more pixels are
        read than the model uses; 0 (full resolution) for fluorescence.
    skip_background : bool
        Fluorescence: leave out of the batches the tiles with nothing above
        the scan's background noise around their core (:mod:`cellseg.background`;
        listed as ``background_tiles``), which the network would find empty.

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
    if model is None and info.get("modality") == "brightfield":
        if (backend or default_backend_name(len(shape))) == "model":
            model = default_model(len(shape), "brightfield")
    if diameter is None and info.get("spacing_source") == "default":
        # no pixel size in the file: sizes in µm mean nothing, so measure them
        log.info("plan: the scan has no pixel size; measuring the nucleus diameter (auto)")
        diameter = "auto"
    if diameter == "auto":
        est = _auto_diameter(outdir, info, path, backend, model)
        options = {"diameter_um": est} if est else {}
    elif diameter:
        options = {"diameter_um": float(diameter)}
    if flips:
        name = backend or default_backend_name(len(shape))
        if name != "model":
            raise ConfigError(
                f"flips average a network's maps; the {name} backend has none "
                "(use --backend model, or leave out --flips)."
            )
        options["flips"] = True
    be = get_backend(backend, model, ndim=len(shape), **options)
    level = pyramid_level(level, info, be, image_levels(image_path(outdir, info)))
    core_shape, halo, margin, overlap_px = tile_geometry(
        shape,
        spacing,
        be,
        tile_size,
        overlap,
        source=str(outdir),
        axes=info["axes"],
        level=level,
    )
    tiles = plan_tiles(shape, core_shape, halo)
    # brightfield: only tiles with tissue are segmented, the others are skipped as glass
    image = image_path(outdir, info)
    batches, skipped = plan_tissue_tiles(image, tiles, tiles_per_batch, info.get("tissue"))
    empty: list[int] | None = None
    if skip_background and info.get("modality") != "brightfield":
        batches, empty = _skip_background(outdir, info, tiles, batches, margin, tiles_per_batch)
    content = {
        "shape": shape,
        "axes": info["axes"],
        "spacing": spacing,
        "core_shape": core_shape,
        "overlap_px": overlap_px,
        "halo": halo,
        "margin": margin,
        "level": level,
        "backend": {"name": be.name, "model": model, "options": options, "diameter": diameter},
        "stats_fingerprint": fingerprint(info["stats"]),
        "tiles": [t.to_dict() for t in tiles],
        "batch_tiles": batches,
        **({"skipped_tiles": skipped} if skipped is not None else {}),
        **({"background_tiles": empty} if empty is not None else {}),
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


def _skip_background(
    outdir: Path,
    info: dict,
    tiles: list[Tile],
    batches: dict[str, list[int]],
    margin: Sequence[int],
    tiles_per_batch: int,
) -> tuple[dict[str, list[int]], list[int]]:
    """The batches without the tiles that hold nothing above the background, and those tiles."""
    path = image_path(outdir, info)
    level = min(1, image_levels(path) - 1)
    view = nuclear_image(open_image(path, level=level).data, info)
    kept = [tiles[i] for part in batches.values() for i in part]
    factors = level_factors(len(info["shape"]), level)
    empty, summary = background_tiles(view, factors, kept, margin, info["shape"], info["stats"])
    if not empty:
        if summary:
            log.info("plan: no tile is background only")
        return batches, []
    if len(empty) == len(kept):  # one tile stays, so that the stages after have a batch
        empty = empty[1:]
    gone = set(empty)
    left = [t.index for t in kept if t.index not in gone]
    log.info(
        "plan: %d of %d tiles hold nothing above the background (below %.4g, noise %.3g); skipped",
        len(empty),
        len(kept),
        summary["threshold"],
        summary["noise"],
    )
    return batch_tiles(left, tiles_per_batch), empty


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
    image = nuclear_image(open_image(image_path(outdir, info)).data, info)
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


def pyramid_level(level: int | str, info: dict, backend, n_levels: int) -> int:
    """The pyramid level that tiles are segmented at (see :func:`plan`'s ``level``)."""
    if level == "auto":
        if info.get("modality") != "brightfield":
            return 0
        spacing = [float(s) for s in info["spacing"][-2:]]
        seen = backend.model_spacing(info["spacing"])[-2:]
        coarser = min(t / s for t, s in zip(seen, spacing))
        # a tenth of slack: a 0.26 µm scan for a 0.5 µm model still uses level 1
        return max(0, min(n_levels - 1, int(math.floor(math.log2(coarser * 1.1)))))
    level = int(level)
    if not 0 <= level < n_levels:
        raise ConfigError(
            f"level {level} does not exist: the ingested image has levels 0 to {n_levels - 1}; "
            "use --level auto or one of those."
        )
    return level


def tile_geometry(
    shape: Sequence[int],
    spacing: Sequence[float],
    backend,
    tile_size: int | Sequence[int],
    overlap: int | None,
    *,
    source: str = "scan",
    axes: str | None = None,
    level: int = 0,
) -> tuple[list[int], list[int], list[int], int]:
    """Core shape, halo and margin (per axis) of a scan's tiles for a backend.

    The halo is ``overlap`` pixels of the finest axis (default: the backend's
    largest cell plus its margin) and must exceed the backend's margin. For
    backends that need aligned crops (strided networks), core and halo are
    rounded up to multiples of the alignment. Tiles segmented at a coarser
    pyramid ``level`` get the backend's margin and alignment at that level,
    in full-resolution pixels.

    Returns
    -------
    core_shape, halo, margin : list of int
    overlap_px : int
    """
    axes = axes or "zyx"[-len(shape) :]
    factors = level_factors(len(shape), level)
    seen = [float(s) * k for s, k in zip(spacing, factors)]
    margin = [int(m) * k for m, k in zip(backend.margin_px(seen), factors)]
    align = tuple(a * k for a, k in zip(backend.alignment(seen), factors))
    sizes = [int(v) for v in per_axis(tile_size, len(shape), "tile size")]
    sizes = [int(math.ceil(s / a) * a) for s, a in zip(sizes, align)]
    core_shape = list(tile_shape(shape, sizes))
    if overlap is None:
        overlap_px = default_halo_px(backend, seen) * 2**level
    else:
        overlap_px = int(overlap)
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
