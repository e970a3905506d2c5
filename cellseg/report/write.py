"""Write the QC reports: read a run's files, compute, draw and render the pages.

A scan's report (:func:`write_report`) reads the run's small JSON files, the
dozen columns of ``cells.parquet`` it shows (a row group at a time, with
:func:`cellseg.measure.read_table_columns`), a coarse level of the OME-Zarr
image and labels and a few full-resolution crops: never the whole scan, never
the whole table. A run's report (:func:`write_run_report`) reads each scan's
``work/report.json`` and one column of its table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.atomic import atomic_write_bytes, atomic_write_json
from cellseg.classes import analysed_area, class_summary, read_classes_table
from cellseg.io import open_labels
from cellseg.layout import image_path, read_json, stage_seconds, work_dir
from cellseg.measure import channel_keys, read_table_columns, read_table_metadata
from cellseg.report.figures import (
    figure_crops,
    figure_histograms,
    figure_run,
    figure_seam,
    figure_thresholds,
    figure_thumbnail,
    figure_tile_counts,
)
from cellseg.report.numbers import (
    crop_windows,
    qc_warnings,
    report_columns,
    scan_summary,
    software_versions,
)
from cellseg.report.render import render_run_report, render_scan_report
from cellseg.tissue import load_tissue


def _level_for(group: Any, datasets: list[dict], max_edge: int) -> tuple[int, Any]:
    """The finest pyramid level whose in-plane edge is at most `max_edge` (else the last)."""
    for k, d in enumerate(datasets):
        arr = group[d["path"]]
        if max(arr.shape[-2:]) <= max_edge:
            return k, arr
    return len(datasets) - 1, group[datasets[-1]["path"]]


def _multiscale_datasets(group: Any) -> list[dict]:
    """The ``datasets`` (pyramid levels) of an OME-Zarr group's first multiscale."""
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    return ome["multiscales"][0]["datasets"]


def _channels_last(image: np.ndarray) -> np.ndarray:
    """An RGB crop read channel-first, ``(3, Y, X)``, as ``(Y, X, 3)``; a plane as it is."""
    return np.moveaxis(image, 0, -1) if image.ndim == 3 else image


def shown_channels(info: dict) -> int | slice:
    """What the report's pictures show: the nuclear channel, or all of RGB for brightfield."""
    return slice(0, 3) if info.get("modality") == "brightfield" else info["channel"]


def thumbnail_planes(
    image_path: Path, channel: int | slice, labels: str = "cells", max_edge: int = 1024
) -> tuple[np.ndarray, np.ndarray, float]:
    """A coarse pyramid level's middle plane of one channel and of the labels.

    Parameters
    ----------
    image_path : Path
        The run's OME-Zarr image (``OUTDIR/<scan>.ome.zarr``).
    channel : int or slice
        The channel to show (a slice of three: an RGB picture, channels last).
    labels : str
        The label image's name.
    max_edge : int
        The finest level whose in-plane edge is at most this is read (else
        the coarsest).

    Returns
    -------
    image, labels : ndarray
        2D planes of equal shape.
    factor : float
        Full-resolution pixels per thumbnail pixel (in-plane).
    """
    import zarr  # heavy (half a second): loaded only when pictures are drawn

    group = zarr.open_group(str(image_path), mode="r")
    datasets = _multiscale_datasets(group)
    level, arr = _level_for(group, datasets, max_edge)
    lab_group = zarr.open_group(str(Path(image_path) / "labels" / labels), mode="r")
    lab_sets = _multiscale_datasets(lab_group)
    lab = lab_group[lab_sets[min(level, len(lab_sets) - 1)]["path"]]
    full = group[datasets[0]["path"]]
    z = arr.shape[1] // 2 if arr.ndim == 4 else None
    index_img = (channel, z) if z is not None else (channel,)
    img = _channels_last(np.asarray(arr[index_img]))
    lab_plane = np.asarray(lab[(lab.shape[0] // 2,)]) if lab.ndim == 3 else np.asarray(lab[...])
    h = min(img.shape[0], lab_plane.shape[0])
    w = min(img.shape[1], lab_plane.shape[1])
    return img[:h, :w], lab_plane[:h, :w], full.shape[-1] / arr.shape[-1]


def read_crops(
    image_path: Path,
    channel: int,
    windows: Sequence[dict[str, Any]],
    core_shape: Sequence[int],
    labels: str = "cells",
) -> list[dict[str, Any]]:
    """Read the full-resolution image and labels of each crop window.

    Parameters
    ----------
    image_path : Path
        The run's OME-Zarr image.
    channel : int or slice
        The channel to show (a slice of three: an RGB picture, channels last).
    windows : sequence of dict
        As :func:`~cellseg.report.numbers.crop_windows` returns them.
    core_shape : sequence of int
        The tile core shape, to draw the seams inside each crop.
    labels : str
        The label image's name.

    Returns
    -------
    list of dict
        ``image``, ``labels``, ``title`` and ``seams`` of each crop, as
        :func:`~cellseg.report.figures.figure_crops` takes them.
    """
    import zarr  # heavy (half a second): loaded only when pictures are drawn

    group = zarr.open_group(str(image_path), mode="r")
    full = group[_multiscale_datasets(group)[0]["path"]]
    lab = open_labels(image_path, labels)
    out = []
    for win in windows:
        y0, y1, x0, x1 = win["box"]
        plane = () if win["z"] is None else (win["z"],)
        img = _channels_last(np.asarray(full[(channel, *plane, slice(y0, y1), slice(x0, x1))]))
        lab_crop = np.asarray(lab[(*plane, slice(y0, y1), slice(x0, x1))])
        seams_y = [k * core_shape[-2] - y0 - 0.5 for k in range(1, 1 + y1 // core_shape[-2])]
        seams_x = [k * core_shape[-1] - x0 - 0.5 for k in range(1, 1 + x1 // core_shape[-1])]
        seams = (
            [s for s in seams_y if 0 < s < y1 - y0],
            [s for s in seams_x if 0 < s < x1 - x0],
        )
        title = win["title"] + ("" if win["z"] is None else f", z={win['z']}")
        out.append({"image": img, "labels": lab_crop, "title": title, "seams": seams})
    return out


def write_report(outdir: str | Path, *, labels: str = "cells") -> Path:
    """Write ``OUTDIR/report.html`` (and ``work/report.json``) for one scan's run.

    Reads ``work/ingest.json``, ``work/tiles.json``, ``work/stitch.json``,
    ``cells.parquet``, the run times in ``work/times/`` and the OME-Zarr image
    and labels (a coarse pyramid level and a few full-resolution crops only).

    Parameters
    ----------
    outdir : path
        The scan's output folder.
    labels : str
        The label image's name.

    Returns
    -------
    Path
        The report's path.
    """
    import pyarrow.parquet as pq  # heavy: loaded only when a report is written

    outdir = Path(outdir)
    info = read_json(work_dir(outdir) / "ingest.json", "ingest")
    plan = read_json(work_dir(outdir) / "tiles.json", "plan")
    stitch = read_json(work_dir(outdir) / "stitch.json", "stitch")
    table_path = outdir / "cells.parquet"
    if not table_path.exists():
        read_json(table_path, "measure")
    names = list(info.get("channel_names") or [])
    keys = channel_keys(names)
    # only the columns the report uses: a third of the table
    columns = report_columns(pq.read_schema(table_path).names, keys)
    table = read_table_columns(table_path, columns)
    meta = read_table_metadata(table_path)
    axes = info["axes"]
    shape, spacing, core = info["shape"], info["spacing"], plan["core_shape"]
    summary = scan_summary(
        table,
        shape=shape,
        spacing=spacing,
        core_shape=core,
        axes=axes,
        spacing_source=info.get("spacing_source"),
    )
    summary["stitch"] = {
        k: stitch.get(k) for k in ("n_candidates", "n_duplicates", "n_merged_pieces")
    }
    warnings = qc_warnings(summary)
    classes = _classes(outdir, info)  # cellseg classify's classes.parquet, if any
    if classes is not None:
        summary["classes"] = {k: v for k, v in classes.items() if k not in ("extra", "rules")}
    stats = info.get("stats", {})
    low, high = float(stats.get("low", 0.0)), float(stats.get("high", 1.0))
    img_path = image_path(outdir, info)
    figures: dict[str, bytes] = {}
    try:
        thumb, thumb_labels, factor = thumbnail_planes(img_path, shown_channels(info), labels)
        seams = [
            [(k * c - 0.5) / factor for k in range(1, math.ceil(n / c))]
            for n, c in zip(shape[-2:], core[-2:])
        ]
        plane = "" if len(shape) == 2 else f", middle plane z={shape[0] // 2}"
        figures["thumbnail"] = figure_thumbnail(
            thumb,
            thumb_labels,
            low=low,
            high=high,
            seams=seams,
            title=f"{info['name']}: {len(table):,} cells{plane}" + _tissue_words(info),
            tissue=_tissue_plane(img_path, info, thumb.shape[:2]),
        )
        windows = crop_windows(table, shape=shape, core_shape=core, axes=axes)
        if windows:
            crops = read_crops(img_path, shown_channels(info), windows, core, labels)
            figures["crops"] = figure_crops(crops, low=low, high=high)
    except (OSError, KeyError, ValueError) as exc:  # a report without pictures beats none
        warnings.append(f"The pictures could not be drawn: {exc}")
    figures["histograms"] = figure_histograms(table, keys)
    figures["tiles"] = figure_tile_counts(np.asarray(summary["tile_counts"]))
    if classes is not None and classes["rules"]:
        figures["thresholds"] = figure_thresholds(classes["rules"])
    if summary["seam"]["has_seams"] and len(table):
        figures["seam"] = figure_seam(summary["seam"])
    config = {
        "source": info.get("request", {}).get("source", {}).get("path"),
        "channels": ", ".join(names),
        "modality": info.get("modality", "fluorescence"),
        "nuclear channel": _nuclear_channel(info, names),
        "halo (px)": plan.get("halo"),
        "overlap (px)": plan.get("overlap_px"),
        "batches": len(plan.get("batches", [])),
        "candidates": stitch.get("n_candidates"),
        "duplicates resolved": stitch.get("n_duplicates"),
        "pieces merged": stitch.get("n_merged_pieces"),
    }
    for key in ("ring_width_um", "neighbor_radius_um"):
        if key in meta.get("config", {}):
            config[key.replace("_um", " (µm)").replace("_", " ")] = meta["config"][key]
    backend = dict(plan.get("backend", {}))
    model = {"backend": backend.pop("name", None), "model": backend.pop("model", None)}
    diameter = backend.get("options", {}).get("diameter_um")
    if diameter:
        how = "measured (diameter auto)" if backend.get("diameter") == "auto" else "given"
        model["nucleus diameter (µm)"] = f"{float(diameter):.2f}, {how}"
    model.update({k: json.dumps(v) if isinstance(v, dict) else v for k, v in backend.items()})
    versions = software_versions()
    page = render_scan_report(
        name=info["name"],
        summary=summary,
        warnings=warnings,
        figures=figures,
        config=config,
        model=model,
        versions=versions,
        seconds=stage_seconds(outdir),
        classes=classes,
    )
    out = outdir / "report.html"
    atomic_write_bytes(out, page.encode("utf-8"))
    atomic_write_json(
        work_dir(outdir) / "report.json",
        {"name": info["name"], "summary": summary, "warnings": warnings},
    )
    return out


def write_run_report(
    outdirs: Sequence[str | Path], out: str | Path, *, table: str | Path | None = None
) -> Path:
    """Write the report of a run over several scans: one row per scan, compared.

    Parameters
    ----------
    outdirs : sequence of path
        The scans' output folders (each with ``cells.parquet`` and, ideally,
        its own report, linked from this one).
    out : path
        The page to write, e.g. ``results/report.html``.
    table : path, optional
        The combined table (linked when given).

    Returns
    -------
    Path
    """
    import pyarrow.parquet as pq  # heavy: loaded only when a report is written

    out = Path(out)
    rows, tables, counts, all_warnings = [], {}, {}, []
    for d in (Path(p) for p in outdirs):
        report_json = work_dir(d) / "report.json"
        table_path = d / "cells.parquet"
        if report_json.exists():
            entry = json.loads(report_json.read_text())
            name, summary, warnings = entry["name"], entry["summary"], entry["warnings"]
            diameters = read_table_columns(table_path, ["equivalent_diameter_um"])
        else:
            info = read_json(work_dir(d) / "ingest.json", "ingest")
            plan = read_json(work_dir(d) / "tiles.json", "plan")
            name = info["name"]
            cells = read_table_columns(table_path, report_columns(pq.read_schema(table_path).names))
            summary = scan_summary(
                cells,
                shape=info["shape"],
                spacing=info["spacing"],
                core_shape=plan["core_shape"],
                axes=info["axes"],
                spacing_source=info.get("spacing_source"),
            )
            warnings = qc_warnings(summary)
            # the figure's one column, not the summary's dozen, is kept for every scan
            diameters = cells[["equivalent_diameter_um"]].copy()
            del cells
        tables[name] = diameters
        counts[name] = summary["n_cells"]
        all_warnings += [f"{name}: {w}" for w in warnings]
        link = os.path.relpath(d / "report.html", out.parent)
        rows.append(
            {
                "name": name,
                "link": link,
                "axes": summary["axes"],
                "shape": summary["shape"],
                "n_cells": summary["n_cells"],
                "density": summary["density"],
                "density_unit": summary["density_unit"],
                "median_diameter_um": summary["median_diameter_um"],
                "border_fraction": summary["border_fraction"],
                "seam_score": summary["seam"]["density_ratio"],
                "seconds": sum(stage_seconds(d).values()),
                "n_warnings": len(warnings),
                "positive_percent": (summary.get("classes") or {}).get("positive_percent"),
                "h_score": (summary.get("classes") or {}).get("h_score"),
            }
        )
    page = render_run_report(
        scans=rows,
        warnings=all_warnings,
        versions=software_versions(),
        table_link=None if table is None else os.path.relpath(Path(table), out.parent),
        figure=figure_run(tables, counts) if counts else None,
        total=sum(counts.values()),
    )
    atomic_write_bytes(out, page.encode("utf-8"))
    return out


def _classes(outdir: Path, info: dict) -> dict[str, Any] | None:
    """The cells' classes for the report: counts, densities, index, H-score, rules; or None."""
    found = read_classes_table(outdir)
    if found is None:
        return None
    frame, meta = found
    area, unit, source = analysed_area(info)
    out = class_summary(frame, area=area, area_unit=unit, area_source=source)
    rules = list(meta.get("rules") or [])
    extra = []
    for rule in rules:
        extra.append(
            (f"rule {rule['name']}", f"{rule['column']} > {rule['threshold']} ({rule['method']})")
        )
    model = meta.get("classifier")
    if model:
        metrics = model.get("metrics") or {}
        extra.append(("classifier", model.get("path")))
        extra.append(("labelled cells", metrics.get("n_labelled")))
        extra.append(("cross-validated accuracy", metrics.get("cv_accuracy")))
    out.update(table=meta.get("table", "cells.parquet"), rules=rules, extra=extra)
    return out


def _nuclear_channel(info: dict, names: list[str]) -> str | int:
    """What the model saw, in words: the nuclear channel, or the stain it unmixed."""
    stain = info.get("stain")
    if info.get("modality") == "brightfield" and stain:
        how = "estimated" if stain.get("estimated") else "reference"
        return f"haematoxylin ({stain['kind'].upper()} stain vectors, {how})"
    return names[info["channel"]] if names else info["channel"]


def _tissue_plane(img_path: Path, info: dict, shape: Sequence[int]) -> np.ndarray | None:
    """A slide's tissue mask on the thumbnail's grid (nearest neighbour), or None."""
    tissue = load_tissue(img_path, info.get("tissue"))
    if tissue is None:
        return None
    rows = np.arange(shape[0]) * tissue.mask.shape[0] // max(shape[0], 1)
    cols = np.arange(shape[1]) * tissue.mask.shape[1] // max(shape[1], 1)
    return tissue.mask[np.ix_(rows, cols)]


def _tissue_words(info: dict) -> str:
    """ ", tissue 42 % (green outline)" for a slide with a tissue mask."""
    fraction = (info.get("tissue") or {}).get("fraction")
    return "" if fraction is None else f", tissue {100 * fraction:.0f} % (green outline)"
