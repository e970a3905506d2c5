"""The stages of one scan's run, each a function on an output folder.

``ingest`` → ``plan`` → ``segment_tiles`` (per batch) → ``stitch`` → ``measure``.
Each stage reads what the previous ones wrote under ``OUTDIR`` (see
docs/ARCHITECTURE.md), writes its own outputs atomically, and can be rerun:
a stage whose outputs are already there for the same inputs and options is
skipped unless ``force`` is given. :func:`segment` runs them all in one process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellseg import __version__
from cellseg.errors import ConfigError, InputError

log = logging.getLogger("cellseg")

WORK = "work"
IMAGE_CHUNK_2D = 512
IMAGE_CHUNK_3D = (16, 256, 256)


# ----------------------------------------------------------------------------- helpers
def work_dir(outdir: Path) -> Path:
    """The folder of intermediate files of a run."""
    return Path(outdir) / WORK


def read_json(path: Path, what: str) -> dict:
    """Read a stage's JSON output, or raise a clear error naming the missing stage."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; run `cellseg {what}` for this folder first.")
    with open(path) as f:
        return json.load(f)


class LogProgress:
    """Progress for batch jobs: a plain log line at most every ``interval`` seconds."""

    def __init__(self, iterable=None, *, total=None, desc: str = "", interval: float = 30.0):
        self.iterable = iterable
        self.total = (
            total
            if total is not None
            else (len(iterable) if hasattr(iterable, "__len__") else None)
        )
        self.desc = desc
        self.n = 0
        self.interval = interval
        self._start = self._last = time.monotonic()
        self._delay: float | None = None

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, k: int = 1) -> None:
        """Count ``k`` more items done."""
        self.n += k
        if k and self._delay is None:
            self._delay = stage_delay(self.desc)
            if self._delay:
                log.info("%s: slowed down by %s", self.desc, STAGE_DELAY_ENV)
        if k and self._delay:
            time.sleep(self._delay * k)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._log()

    def _log(self) -> None:
        total = f"/{self.total}" if self.total is not None else ""
        log.info("%s: %d%s done (%.0f s)", self.desc, self.n, total, time.monotonic() - self._start)

    def close(self) -> None:
        """Log the final count."""
        if self.n and self._last != -1:
            self._log()
            self._last = -1


class _NoProgress(LogProgress):
    def _log(self) -> None:
        pass


# Testing aid: "stage=seconds,..." slows each progress step of those stages
# (the first word of a progress description: segment, stitch, measure) so that
# a test can kill a run while the stage is in the middle of writing its output.
STAGE_DELAY_ENV = "CELLSEG_DEBUG_STAGE_DELAY"


def stage_delay(desc: str) -> float:
    """Seconds to wait per progress step of stage `desc`, from ``CELLSEG_DEBUG_STAGE_DELAY``.

    Examples
    --------
    >>> os.environ[STAGE_DELAY_ENV] = "stitch=0.5,measure=2"
    >>> stage_delay("measure cells"), stage_delay("segment b0000")
    (2.0, 0.0)
    >>> del os.environ[STAGE_DELAY_ENV]
    """
    spec = os.environ.get(STAGE_DELAY_ENV, "")
    stage = desc.split(" ", 1)[0]
    for item in spec.split(","):
        name, _, seconds = item.partition("=")
        if name.strip() == stage and seconds:
            try:
                return max(0.0, float(seconds))
            except ValueError:
                return 0.0
    return 0.0


def progress(iterable=None, *, total=None, desc: str = "", enabled: bool = True):
    """A progress bar on a terminal (tqdm), periodic log lines in a batch job."""
    if not enabled:
        return _NoProgress(iterable, total=total, desc=desc)
    if not sys.stderr.isatty() or os.environ.get(STAGE_DELAY_ENV):
        return LogProgress(iterable, total=total, desc=desc)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, mininterval=0.5, dynamic_ncols=True)


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def image_path(outdir: Path, info: dict) -> Path:
    """Path of the run's OME-Zarr image."""
    return Path(outdir) / info["image"]


def record_seconds(outdir: Path, stage: str, seconds: float) -> None:
    """Write a stage's run time to ``work/times/<stage>.json`` (for the QC report).

    One file per stage (per batch for ``segment_tiles-<batch>``), so parallel
    jobs never write the same file. A stage skipped as up to date keeps its time.
    """
    from cellseg.io import atomic_write_json

    path = work_dir(outdir) / "times" / f"{stage}.json"
    atomic_write_json(path, {"stage": stage, "seconds": round(float(seconds), 3)})


def stage_seconds(outdir: Path) -> dict[str, float]:
    """Run time per stage from ``work/times/`` (batches of a stage added up)."""
    total: dict[str, float] = {}
    for path in sorted((work_dir(outdir) / "times").glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        stage = str(entry.get("stage", path.stem)).split("-")[0]
        total[stage] = total.get(stage, 0.0) + float(entry.get("seconds", 0.0))
    return total


# ----------------------------------------------------------------------------- ingest
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
    from cellseg.io import atomic_write_json, channel_index, read_scan, write_image
    from cellseg.normalize import compute_scan_stats
    from cellseg.parallel import local_threads

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


def scan_name(path: Path) -> str:
    """Scan name from a file name: ``a/b/scan1.ome.tif`` → ``scan1``."""
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".npy"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


# ----------------------------------------------------------------------------- plan
def plan(
    outdir: str | Path,
    *,
    tile_size: int | Sequence[int] = 512,
    overlap: int | None = None,
    tiles_per_batch: int = 16,
    backend: str | None = None,
    model: str | None = None,
    diameter: float | str | None = None,
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
        model on sample crops (:func:`cellseg.backends.estimate_diameter_um`);
        default: no rescaling.

    Returns
    -------
    dict
        The plan.
    """
    from cellseg.backends import get_backend
    from cellseg.io import atomic_write_json
    from cellseg.tiling import batch_tiles, plan_tiles

    t_start = time.perf_counter()
    outdir = Path(outdir)
    info = read_json(work_dir(outdir) / "ingest.json", "ingest")
    spacing = info["spacing"]
    shape = info["shape"]
    path = work_dir(outdir) / "tiles.json"
    options = {}
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
    from cellseg.backends import default_backend_name, estimate_diameter_um
    from cellseg.io import open_image

    name = backend or default_backend_name(len(info["shape"]))
    if name != "model":
        log.info("plan: --diameter auto is for the model backend; %s ignores it", name)
        return None
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        same = old.get("stats_fingerprint") == fingerprint(info["stats"])
        ob = old.get("backend", {})
        if same and ob.get("diameter") == "auto" and ob.get("model") == model:
            return ob.get("options", {}).get("diameter_um")
    image = open_image(image_path(outdir, info)).data[info["channel"]]
    est = estimate_diameter_um(image, info["spacing"], info["stats"], model=model)
    if est is None:
        log.warning("plan: no nuclei found to estimate the diameter; not rescaling")
    else:
        log.info("plan: estimated nucleus diameter %.1f µm", est)
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
    from cellseg.backends import backend_alignment, default_halo_px
    from cellseg.tiling import halo_widths, per_axis, tile_shape

    axes = axes or "zyx"[-len(shape) :]
    margin = [int(m) for m in backend.margin_px(spacing)]
    align = backend_alignment(backend, spacing)
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


def load_plan(outdir: Path):
    """Read ``tiles.json``: the plan dict and its tiles."""
    from cellseg.tiling import Tile

    content = read_json(work_dir(outdir) / "tiles.json", "plan")
    return content, [Tile.from_dict(t) for t in content["tiles"]]


# ----------------------------------------------------------------------------- segment tiles
def batch_path(outdir: Path, batch: str) -> Path:
    """Candidate file of one batch."""
    return work_dir(outdir) / "tiles" / f"{batch}.npz"


def segment_tiles(
    outdir: str | Path,
    batch: str,
    *,
    backend: str | None = None,
    model: str | None = None,
    device: str = "auto",
    batch_size: int = 4,
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

    Returns
    -------
    Path
        ``work/tiles/<batch>.npz``.
    """
    from cellseg.backends import get_backend
    from cellseg.io import open_image
    from cellseg.normalize import normalize
    from cellseg.parallel import thread_pool
    from cellseg.segment import Candidates, tile_candidates

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
    if name == "model":
        options["device"] = device
    be = get_backend(name, model, **options)
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
    per_tile = getattr(be, "per_tile_cpu", True)
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


# ----------------------------------------------------------------------------- stitch
def _batch_source(paths: Sequence[Path], shape: Sequence[int], n_tiles: int):
    """The candidates of the batch files, served tile by tile.

    Only each batch's tile column is read here; a batch's other rows and its
    masks are read when a sweep reaches its tiles
    (:class:`~cellseg.stitching.TileCandidates`). Rows are kept in the smallest
    dtypes that hold them: boxes and anchors in :func:`~cellseg.tiling.box_dtype`,
    areas (at most the scan's pixels) in uint32 when that holds them. The
    sweeps only compare these values and read them as ints.
    """
    from cellseg.stitching import ROW_FIELDS, TileCandidates
    from cellseg.tiling import box_dtype

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


def stitch(outdir: str | Path, *, show_progress: bool = True, force: bool = False) -> dict:
    """Resolve candidates of all batches and paint ``labels/cells``.

    Returns
    -------
    dict
        The content of ``work/stitch.json``.
    """
    from cellseg.io import atomic_write_json, create_labels, finalize_labels
    from cellseg.parallel import trim_heap
    from cellseg.stitching import paint_tiles, resolve_candidates

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


# ----------------------------------------------------------------------------- measure
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

    Every channel of the scan is measured (see :mod:`cellseg.measure`);
    `threads` chunks at a time (default all cores). `ring_width_um` and
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
    from cellseg import measure as m
    from cellseg.corrections import measure_base, remeasure, table_path
    from cellseg.io import open_image, open_labels

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
        import pyarrow.parquet as pq

        meta = pq.read_schema(out).metadata or {}
        if meta.get(b"cellseg.request") == json.dumps(request, sort_keys=True).encode():
            log.info("measure: %s is up to date", out)
            return out
    label_image = open_labels(img, labels)
    scan = open_image(img)
    names = list(info.get("channel_names") or scan.channel_names)
    options = {
        "spacing": info["spacing"],
        "axes": info["axes"],
        "channel_names": names,
        "ring_width_um": ring_width_um,
        "neighbor_radius_um": neighbor_radius_um,
    }
    keys = m.channel_keys(names)
    content = read_json(work_dir(outdir) / "tiles.json", "plan")
    config = {
        "pixel_size_um": info["spacing"],
        "pixel_size_source": info.get("spacing_source"),
        "nuclear_channel": info["channel"],
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
        info["axes"], keys, ring_width_um=ring_width_um, neighbor_radius_um=neighbor_radius_um
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
            )
    if labels == "cells":
        record_seconds(outdir, "measure", time.perf_counter() - t_start)
    log.info("measure: %d cells -> %s", writer.n_rows, out)
    return out


# ----------------------------------------------------------------------------- report
def report(outdir: str | Path) -> Path:
    """Write the scan's QC report ``OUTDIR/report.html`` (see :mod:`cellseg.report`).

    The report is cheap next to the other stages and is always rewritten.

    Returns
    -------
    Path
        The report's path.
    """
    from cellseg.report import write_report

    out = write_report(outdir)
    log.info("report: %s", out)
    return out


# ----------------------------------------------------------------------------- all in one
def segment(
    input_path: str | Path,
    outdir: str | Path,
    *,
    tile_size: int | Sequence[int] = 512,
    overlap: int | None = None,
    pixel_size: Sequence[float] | None = None,
    channel: int | str | None = None,
    backend: str | None = None,
    model: str | None = None,
    diameter: float | None = None,
    device: str = "auto",
    batch_size: int = 4,
    tiles_per_batch: int = 16,
    threads: int | None = None,
    name: str | None = None,
    show_progress: bool = True,
    force: bool = False,
) -> dict:
    """Run every stage for one scan in this process.

    Writes ``OUTDIR/<name>.ome.zarr`` (image and ``labels/cells``),
    ``OUTDIR/cells.parquet`` and the QC report ``OUTDIR/report.html``. Stages
    already done for the same inputs are skipped, so a killed run resumes
    where it stopped.

    Returns
    -------
    dict
        Paths of the outputs and the number of cells.
    """
    outdir = Path(outdir)
    info = ingest(
        input_path, outdir, name=name, pixel_size=pixel_size, channel=channel, force=force
    )
    content = plan(
        outdir,
        tile_size=tile_size,
        overlap=overlap,
        tiles_per_batch=tiles_per_batch,
        backend=backend,
        model=model,
        diameter=diameter,
    )
    bar = progress(total=len(content["tiles"]), desc="segment", enabled=show_progress)
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


# ----------------------------------------------------------------------------- in memory
def array_candidates(
    image: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    tile_size: int | Sequence[int] = 512,
    overlap: int | None = None,
    backend=None,
    stats: dict | None = None,
):
    """Plan the tiles of an in-memory image and segment each one into candidates.

    Parameters are those of :func:`segment_array`.

    Returns
    -------
    parts : list of Candidates
        One per tile, in tile order.
    tiles : list of Tile
    core_shape, margin : tuple of int
        As planned for the backend.
    """
    from cellseg.backends import get_backend
    from cellseg.normalize import compute_scan_stats, normalize
    from cellseg.segment import tile_candidates
    from cellseg.tiling import plan_tiles

    spacing = tuple(spacing or (1.0,) * image.ndim)
    be = (
        backend
        if backend is not None and not isinstance(backend, str)
        else get_backend(backend, ndim=image.ndim)
    )
    stats = stats or compute_scan_stats(image)
    core_shape, halo, margin, _ = tile_geometry(image.shape, spacing, be, tile_size, overlap)
    tiles = plan_tiles(image.shape, core_shape, halo)
    parts = []
    for t in tiles:
        lab = be.predict([normalize(image[t.halo_slices], stats)], spacing, stats)[0]
        parts.append(
            tile_candidates(
                lab, t, shape=image.shape, core_shape=core_shape, halo=halo, margin=margin
            )
        )
    return parts, tiles, core_shape, margin


def segment_array(
    image: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    tile_size: int | Sequence[int] = 512,
    overlap: int | None = None,
    backend=None,
    stats: dict | None = None,
) -> np.ndarray:
    """Tile, segment and stitch an in-memory image; the same code path as the stages.

    Parameters
    ----------
    image : ndarray, (Y, X) or (Z, Y, X)
        One channel.
    spacing : sequence of float, optional
        µm per axis (default 1).
    tile_size, overlap
        As for :func:`plan`.
    backend : Backend or str, optional
        Default the classical backend.
    stats : dict, optional
        Scan statistics (default computed from ``image``).

    Returns
    -------
    ndarray of uint32
        Label image.
    """
    from cellseg.segment import Candidates
    from cellseg.stitching import TileCandidates, paint_tiles, resolve_candidates

    parts, tiles, core_shape, margin = array_candidates(
        image, spacing=spacing, tile_size=tile_size, overlap=overlap, backend=backend, stats=stats
    )
    n_tiles = max((t.index for t in tiles), default=-1) + 1
    source = TileCandidates.from_candidates(Candidates.concat(parts, image.ndim), n_tiles)
    result = resolve_candidates(source, tiles, core_shape, margin=margin)
    out = np.zeros(image.shape, np.uint32)
    for t, region in paint_tiles(source, tiles, core_shape, result):
        out[t.core_slices] = region
    return out
