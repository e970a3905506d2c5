"""QC reports: one self-contained ``report.html`` per scan and one for a run.

A scan's report shows at a glance whether its run went well: counts, a
thumbnail of the scan with the cells' outlines and the tile grid, zoomed
crops (the densest and the sparsest field, and one on a tile seam),
histograms of size, shape and intensity, cells per tile as a heat map, the
**seam score**, the config, model and software versions and the run time of
every stage, and warnings where something looks wrong. Figures are PNGs
embedded in the page, so the file can be mailed or archived alone.

The seam score compares cells whose centroid lies within one cell radius of a
tile seam with cells farther away, per unit of scan area (volume): density
and median size. Seams are arbitrary lines through the scan, so a good stitch
gives ratios near 1; cells lost or cut at the seams show as a dip, cells
reported twice as a spike.

The computations (:func:`seam_score`, :func:`tile_counts`,
:func:`qc_warnings`, :func:`scan_summary`) are pure functions on the table
and the run's metadata; the figures are functions returning PNG bytes;
:func:`write_report` and :func:`write_run_report` read the run's files and
write the pages.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Seam-score ratios outside this range raise a warning (when significant).
SEAM_RATIO_RANGE = (0.8, 1.25)
#: A seam ratio must also be this many standard errors from 1 to warn.
SEAM_Z_MIN = 3.0
#: Cells expected near seams before the seam score is judged.
SEAM_MIN_CELLS = 20
#: In-plane edge of the zoomed crops, in pixels.
CROP_PX = 128
#: Packages whose versions the report lists (when installed).
PACKAGES = (
    "cellseg",
    "numpy",
    "scipy",
    "scikit-image",
    "pandas",
    "pyarrow",
    "dask",
    "zarr",
    "ome-zarr",
    "torch",
    "monai",
    "matplotlib",
    "snakemake",
)


# ----------------------------------------------------------------------------- pure
def size_column(table: pd.DataFrame) -> tuple[str, str]:
    """The size column of a table and its label: area (2D) or volume (3D)."""
    if "volume_um3" in table:
        return "volume_um3", "volume (µm³)"
    return "area_um2", "area (µm²)"


def _seam_positions(shape: Sequence[int], core_shape: Sequence[int], spacing) -> list[np.ndarray]:
    """Per axis, the physical positions (µm) of the internal tile seams."""
    out = []
    for n, c, s in zip(shape, core_shape, spacing):
        k = np.arange(1, math.ceil(n / c))
        out.append((k * c - 0.5) * float(s))
    return out


def seam_distance(points_um: np.ndarray, seams: list[np.ndarray]) -> np.ndarray:
    """Distance (µm) from each point to the nearest tile seam (inf without seams).

    Parameters
    ----------
    points_um : ndarray, (n, ndim)
        Positions in µm (pixel index × spacing).
    seams : list of ndarray
        Seam positions per axis, from the tile grid.
    """
    points_um = np.asarray(points_um, dtype=np.float64).reshape(-1, len(seams))
    dist = np.full(len(points_um), np.inf)
    for ax, pos in enumerate(seams):
        if len(pos):
            d = np.abs(points_um[:, ax, None] - pos[None, :]).min(axis=1)
            dist = np.minimum(dist, d)
    return dist


def seam_share(distance_um: float, seams: list[np.ndarray], shape: Sequence[int], spacing) -> float:
    """Share of the scan's area (volume) within `distance_um` of a tile seam.

    Per axis, the share of positions (pixel centres span ``-0.5 .. n - 0.5``
    pixels) that are farther than `distance_um` from every seam on it; a
    point is far from all seams when it is far along every axis.
    """
    far = 1.0
    for pos, n, s in zip(seams, shape, spacing):
        if not len(pos):
            continue
        lo, hi = -0.5 * float(s), (n - 0.5) * float(s)
        spans = np.clip(np.stack([pos - distance_um, pos + distance_um], axis=1), lo, hi)
        covered, end = 0.0, lo
        for a, b in spans[np.argsort(spans[:, 0])]:
            a = max(a, end)
            if b > a:
                covered += b - a
                end = b
        far *= 1.0 - covered / (hi - lo)
    return 1.0 - far


def seam_score(
    centroids_um: np.ndarray,
    sizes: np.ndarray,
    *,
    shape: Sequence[int],
    core_shape: Sequence[int],
    spacing: Sequence[float],
    band_um: float | None = None,
    diameter_um: float | None = None,
) -> dict[str, Any]:
    """Cell density and size near tile seams relative to away from them.

    Parameters
    ----------
    centroids_um : ndarray, (n, ndim)
        Cell centroids in µm.
    sizes : ndarray, (n,)
        Cell areas or volumes.
    shape, core_shape : sequence of int
        Scan shape and tile core shape in pixels.
    spacing : sequence of float
        Pixel size in µm.
    band_um : float, optional
        Half-width of the band around each seam; default half the median
        equivalent diameter (`diameter_um`), at least one pixel.
    diameter_um : float, optional
        Median cell diameter, for the default band and the profile's bins.

    Returns
    -------
    dict
        ``has_seams``; ``band_um``; ``n_near`` and ``n_far`` (cells with the
        centroid within / beyond the band); ``expected_near`` (cells expected
        within the band for a uniform density); ``density_ratio`` (cells per area
        near seams over cells per area away from them); ``size_ratio`` (median
        size near over away); ``z`` (the count near seams from its expectation,
        in binomial standard errors); ``profile``: relative
        density and size per distance bin.
        Ratios are NaN where there are no seams or no cells on either side.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> pts = rng.uniform(0, 512, (4000, 2))
    >>> s = seam_score(pts, np.ones(4000), shape=(512, 512), core_shape=(128, 128),
    ...                spacing=(1.0, 1.0), band_um=4.0)
    >>> bool(0.85 < s["density_ratio"] < 1.15)
    True
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    nd = len(shape)
    centroids_um = np.asarray(centroids_um, dtype=np.float64).reshape(-1, nd)
    sizes = np.asarray(sizes, dtype=np.float64)
    seams = _seam_positions(shape, core_shape, spacing)
    has_seams = any(len(p) for p in seams)
    finest = float(spacing.min())
    if diameter_um is None or not np.isfinite(diameter_um) or diameter_um <= 0:
        diameter_um = 8 * finest
    band = float(band_um) if band_um is not None else max(diameter_um / 2.0, finest)
    out: dict[str, Any] = {
        "has_seams": bool(has_seams),
        "band_um": band,
        "n_near": 0,
        "n_far": int(len(centroids_um)),
        "expected_near": math.nan,
        "density_ratio": math.nan,
        "size_ratio": math.nan,
        "z": math.nan,
        "profile": {"distance_um": [], "density": [], "size": []},
    }
    if not has_seams or len(centroids_um) == 0:
        return out
    dist = seam_distance(centroids_um, seams)
    near = dist <= band
    n_near, n_far = int(near.sum()), int((~near).sum())
    f_near = seam_share(band, seams, shape, spacing)
    f_far = 1.0 - f_near
    out.update(n_near=n_near, n_far=n_far)
    if n_far and 0 < f_near < 1:
        out["density_ratio"] = float((n_near / f_near) / (n_far / f_far))
        # standard errors of the count near seams from its binomial expectation
        n = n_near + n_far
        out["expected_near"] = float(n * f_near)
        out["z"] = float((n_near - n * f_near) / math.sqrt(n * f_near * f_far))
    if n_near and n_far:
        out["size_ratio"] = float(np.median(sizes[near]) / np.median(sizes[~near]))
    # profile: density and median size per distance bin, relative to the whole scan
    reach = max(
        (float(n) * float(s) / 2 for n, s, p in zip(shape, spacing, seams) if len(p)),
        default=band,
    )
    top = min(reach, 4.0 * max(band, diameter_um / 2.0))
    edges = np.linspace(0.0, top, 9)
    counts, _ = np.histogram(dist, bins=edges)
    share = np.diff([seam_share(t, seams, shape, spacing) for t in edges])
    expected = share * len(dist)
    density = np.where(share > 0, counts / np.where(share > 0, expected, 1.0), np.nan)
    median_size = float(np.median(sizes)) if len(sizes) else math.nan
    size = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (dist >= lo) & (dist < hi)
        size.append(float(np.median(sizes[sel]) / median_size) if sel.any() else math.nan)
    out["profile"] = {
        "distance_um": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "density": [float(v) for v in density],
        "size": size,
    }
    return out


def tile_counts(
    centroids_px: np.ndarray, shape: Sequence[int], core_shape: Sequence[int]
) -> np.ndarray:
    """Cells per tile core (by centroid); 3D counts are summed over z tiles.

    Returns
    -------
    ndarray of int, (tiles along y, tiles along x)
    """
    grid = [math.ceil(n / c) for n, c in zip(shape, core_shape)]
    counts = np.zeros(grid, np.int64)
    if len(centroids_px):
        idx = np.floor(np.asarray(centroids_px) / np.asarray(core_shape)).astype(int)
        idx = np.clip(idx, 0, np.array(grid) - 1)
        np.add.at(counts, tuple(idx.T), 1)
    while counts.ndim > 2:
        counts = counts.sum(axis=0)
    return counts


def expected_border_fraction(
    shape: Sequence[int], spacing: Sequence[float], diameter_um: float
) -> float:
    """Fraction of cells expected to touch the scan's edge by chance.

    A cell crosses an edge when its centre lies within a radius of it, on
    either side: cells centred just outside the scan are seen cut, too. Per
    axis that is a band of one diameter at each end, relative to the cells
    centred inside the scan.
    """
    inside = 1.0
    for n, s in zip(shape, spacing):
        extent = n * float(s)
        inside *= max(0.0, 1.0 - 2.0 * diameter_um / extent) if extent > 0 else 0.0
    return 1.0 - inside


def scan_summary(
    table: pd.DataFrame,
    *,
    shape: Sequence[int],
    spacing: Sequence[float],
    core_shape: Sequence[int],
    axes: str,
    spacing_source: str | None = None,
) -> dict[str, Any]:
    """The numbers a scan's report shows and judges.

    Parameters
    ----------
    table : pandas.DataFrame
        The scan's cell table.
    shape, spacing, core_shape, axes
        The scan's geometry and tile grid.
    spacing_source : str, optional
        Where the pixel size came from (``"default"`` raises a warning).

    Returns
    -------
    dict
        Counts, densities, medians, the border share, the seam score
        (:func:`seam_score`) and the tiles' cell counts.
    """
    size_col, _ = size_column(table)
    n = len(table)
    extent = float(np.prod([k * float(s) for k, s in zip(shape, spacing)]))
    per = "mm²" if len(shape) == 2 else "mm³"
    unit = 1e6 if len(shape) == 2 else 1e9
    diam = float(table["equivalent_diameter_um"].median()) if n else math.nan
    border = int(table["touches_border"].sum()) if n else 0
    centroids_um = (
        table[[f"centroid_{a}_um" for a in axes]].to_numpy() if n else np.zeros((0, len(axes)))
    )
    centroids_px = (
        table[[f"centroid_{a}_px" for a in axes]].to_numpy() if n else np.zeros((0, len(axes)))
    )
    seam = seam_score(
        centroids_um,
        table[size_col].to_numpy() if n else np.zeros(0),
        shape=shape,
        core_shape=core_shape,
        spacing=spacing,
        diameter_um=diam,
    )
    counts = tile_counts(centroids_px, shape, core_shape)
    return {
        "n_cells": n,
        "shape": [int(k) for k in shape],
        "axes": axes,
        "spacing_um": [float(s) for s in spacing],
        "spacing_source": spacing_source,
        "core_shape": [int(k) for k in core_shape],
        "n_tiles": int(np.prod([math.ceil(k / c) for k, c in zip(shape, core_shape)])),
        "density": n / extent * unit if extent else math.nan,
        "density_unit": f"cells/{per}",
        "median_size": float(table[size_col].median()) if n else math.nan,
        "size_column": size_col,
        "median_diameter_um": diam,
        "n_border": border,
        "border_fraction": border / n if n else math.nan,
        "expected_border_fraction": (
            expected_border_fraction(shape, spacing, diam) if n else math.nan
        ),
        "seam": seam,
        "tile_counts": counts.tolist(),
    }


def qc_warnings(summary: dict[str, Any]) -> list[str]:
    """Plain-language warnings for a scan summary (:func:`scan_summary`).

    Examples
    --------
    >>> qc_warnings({"n_cells": 0})
    ['No cells were found. Check the nuclear channel (--channel), the pixel size (--pixel-size) and the scan itself.']
    """  # noqa: E501
    out = []
    n = summary.get("n_cells", 0)
    if not n:
        out.append(
            "No cells were found. Check the nuclear channel (--channel), the pixel size "
            "(--pixel-size) and the scan itself."
        )
        return out
    if summary.get("spacing_source") == "default":
        out.append(
            "The scan has no pixel size in its metadata: 1 µm per pixel was assumed, so "
            "every µm value is in pixels. Give the pixel size (--pixel-size or pixel_size "
            "in the config)."
        )
    frac, expected = summary.get("border_fraction"), summary.get("expected_border_fraction")
    if (
        frac is not None
        and expected is not None
        and np.isfinite(frac)
        and summary.get("n_border", 0) >= 5
        and frac > max(2.0 * expected, expected + 0.05)
    ):
        out.append(
            f"{summary['n_border']} cells ({frac:.0%}) touch the edge of the scan, where "
            f"about {expected:.0%} would by chance: cells are cut at the scan border, or "
            "the scan is mostly cells."
        )
    seam = summary.get("seam", {})
    lo, hi = SEAM_RATIO_RANGE
    expected = seam.get("expected_near", math.nan)
    if seam.get("has_seams") and np.isfinite(expected) and expected >= SEAM_MIN_CELLS:
        ratio, z = seam.get("density_ratio", math.nan), seam.get("z", math.nan)
        if np.isfinite(ratio) and not lo <= ratio <= hi and abs(z) >= SEAM_Z_MIN:
            what = "fewer" if ratio < 1 else "more"
            hint = (
                "cells are lost or cut at the seams"
                if ratio < 1
                else "cells are reported twice at the seams"
            )
            out.append(
                f"Seam score {ratio:.2f}: {what} cells near tile seams than away from them "
                f"({seam['n_near']} within {seam['band_um']:.1f} µm of a seam); {hint}. "
                "Try a larger overlap."
            )
        size = seam.get("size_ratio", math.nan)
        if np.isfinite(size) and not lo <= size <= hi:
            what = "smaller" if size < 1 else "larger"
            out.append(
                f"Cells near tile seams are {what} than elsewhere (median size ratio "
                f"{size:.2f}): a sign of cells cut or merged at the seams."
            )
    counts = np.asarray(summary.get("tile_counts", []))
    if counts.size > 1 and np.median(counts) >= 10:
        empty = int((counts == 0).sum())
        if empty:
            out.append(
                f"{empty} tile(s) have no cells while the median tile has "
                f"{np.median(counts):.0f}: a failed batch or an empty region of the slide?"
            )
    return out


def software_versions() -> dict[str, str]:
    """Python and the versions of the packages in :data:`PACKAGES` that are installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------- figures
def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _display(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Grey values 0-255 (uint8): `low` black, `high` white."""
    scale = (high - low) or 1.0
    grey = np.clip((np.asarray(image, dtype=np.float32) - low) * (255.0 / scale), 0, 255)
    return np.rint(grey, out=grey).astype(np.uint8)


def outline_overlay(image: np.ndarray, labels: np.ndarray, low: float, high: float) -> np.ndarray:
    """An RGB picture: the image in grey, cell outlines in colour.

    Parameters
    ----------
    image : ndarray, (Y, X)
        Intensities.
    labels : ndarray of int, (Y, X)
        Cells.
    low, high : float
        Grey values shown as black and white.

    Returns
    -------
    ndarray of uint8, (Y, X, 3)
        8 bits a colour, as the PNG holds it: a quarter of the memory of floats.
    """
    from skimage.segmentation import find_boundaries

    grey = _display(image, low, high)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    edge = find_boundaries(labels, mode="inner") & (labels > 0)
    if edge.any():
        hue = (labels[edge].astype(np.float64) * 0.618034) % 1.0
        import matplotlib.colors as mcolors

        colours = mcolors.hsv_to_rgb(np.stack([hue, np.full_like(hue, 0.8), np.ones_like(hue)], 1))
        rgb[edge] = np.rint(colours * 255).astype(np.uint8)
    return rgb


def figure_thumbnail(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    low: float,
    high: float,
    seams: Sequence[Sequence[float]] = ((), ()),
    title: str = "",
) -> bytes:
    """The scan (one plane) with cell outlines and the tile seams, as PNG."""
    plt = _pyplot()
    h, w = image.shape
    fig, ax = plt.subplots(figsize=(9.5, 9.5 * h / max(w, 1) + 0.4), layout="constrained")
    ax.imshow(outline_overlay(image, labels, low, high), interpolation="nearest")
    for y in seams[0]:
        ax.axhline(y, color="yellow", lw=0.6, ls="--", alpha=0.7)
    for x in seams[1]:
        ax.axvline(x, color="yellow", lw=0.6, ls="--", alpha=0.7)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return _png(fig)


def figure_crops(crops: Sequence[dict[str, Any]], *, low: float, high: float) -> bytes:
    """Zoomed crops side by side (``image``, ``labels``, ``title``, ``seams``), as PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(crops), figsize=(3.6 * len(crops), 3.9), squeeze=False, layout="constrained"
    )
    for ax, crop in zip(axes[0], crops):
        ax.imshow(
            outline_overlay(crop["image"], crop["labels"], low, high), interpolation="nearest"
        )
        for y in crop.get("seams", ((), ()))[0]:
            ax.axhline(y, color="yellow", lw=0.8, ls="--")
        for x in crop.get("seams", ((), ()))[1]:
            ax.axvline(x, color="yellow", lw=0.8, ls="--")
        ax.set_title(crop["title"], fontsize=9)
        ax.set_axis_off()
    return _png(fig)


def figure_histograms(table: pd.DataFrame, channels: Sequence[str] = ()) -> bytes:
    """Histograms of size, shape, neighbour distance and intensity, as PNG."""
    plt = _pyplot()
    size_col, size_label = size_column(table)
    roundness = "form_factor" if "form_factor" in table else "sphericity"
    panels = [
        (size_col, size_label),
        ("equivalent_diameter_um", "equivalent diameter (µm)"),
        (roundness, roundness.replace("_", " ")),
        ("solidity", "solidity"),
        ("elongation", "elongation (major / minor)"),
        ("nearest_neighbor_distance_um", "nearest neighbour (µm)"),
    ]
    panels += [(f"intensity_mean_{ch}", f"mean intensity {ch}") for ch in channels[:2]]
    panels = [(c, label) for c, label in panels if c in table]
    cols = 4
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.set_visible(False)
    for ax, (col, label) in zip(axes.ravel(), panels):
        ax.set_visible(True)
        values = table[col].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = np.percentile(values, [0.5, 99.5])
            ax.hist(values, bins=40, range=(lo, hi) if hi > lo else None, color="#4477aa")
            ax.axvline(np.median(values), color="#cc3311", lw=1)
        else:
            ax.text(0.5, 0.5, "no cells", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
    return _png(fig)


def figure_tile_counts(counts: np.ndarray) -> bytes:
    """Cells per tile as a heat map, as PNG."""
    plt = _pyplot()
    counts = np.asarray(counts)
    h, w = counts.shape
    fig, ax = plt.subplots(
        figsize=(min(7.5, 1.2 + 0.5 * w), min(7.5, 0.9 + 0.5 * h)), layout="constrained"
    )
    im = ax.imshow(counts, cmap="viridis", interpolation="nearest")
    if counts.size <= 400:
        top = counts.max() if counts.size else 0
        for (i, j), v in np.ndenumerate(counts):
            colour = "black" if v > 0.6 * top else "white"
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("tile column (x)")
    ax.set_ylabel("tile row (y)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="cells")
    return _png(fig)


def figure_seam(seam: dict[str, Any]) -> bytes:
    """Relative density and size against the distance to the nearest tile seam, as PNG."""
    plt = _pyplot()
    prof = seam["profile"]
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 2.8), layout="constrained")
    for ax, key, label in (
        (axes[0], "density", "cell density / scan mean"),
        (axes[1], "size", "median size / scan median"),
    ):
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axvspan(0, seam["band_um"], color="#ee7733", alpha=0.15, lw=0)
        ax.plot(prof["distance_um"], prof[key], "o-", color="#0077bb")
        ax.set_xlabel("distance to nearest tile seam (µm)")
        ax.set_ylabel(label)
        finite = [v for v in prof[key] if np.isfinite(v)]
        top = max([1.5, *finite]) if finite else 1.5
        ax.set_ylim(0, top * 1.1)
    return _png(fig)


def figure_run(tables: dict[str, pd.DataFrame], counts: dict[str, int]) -> bytes:
    """Cells per scan and the distributions of diameter compared across scans, as PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    names = list(counts)
    axes[0].barh(names, [counts[n] for n in names], color="#4477aa")
    axes[0].set_xlabel("cells")
    for name, table in tables.items():
        values = table["equivalent_diameter_um"].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            axes[1].hist(values, bins=40, histtype="step", density=True, label=name, lw=1.5)
    axes[1].set_xlabel("equivalent diameter (µm)")
    axes[1].set_ylabel("density")
    if tables:
        axes[1].legend(fontsize=8)
    return _png(fig)


# ----------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warn { background: #fff4e5; border-left: 4px solid #e67e00; padding: 0.5em 1em; margin: 0.4em 0; }
.ok { background: #eef8ee; border-left: 4px solid #2e8b57; padding: 0.5em 1em; }
.muted { color: #777; font-size: 0.85em; } img { max-width: 100%; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; min-width: 8em; }
.card b { display: block; font-size: 1.4em; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return " × ".join(_fmt(v) for v in value)
    if value is None:
        return "–"
    return str(value)


def _kv_table(rows: dict[str, Any] | list[tuple[str, Any]]) -> str:
    items = rows.items() if isinstance(rows, dict) else rows
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in items
    )
    return f"<table>{body}</table>"


def _warnings_html(warnings: Sequence[str]) -> str:
    if not warnings:
        return '<div class="ok">No warnings: counts, border and seam score look normal.</div>'
    return "".join(f'<div class="warn">⚠ {html.escape(w)}</div>' for w in warnings)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"{body}</body></html>\n"
    )


def render_scan_report(
    *,
    name: str,
    summary: dict[str, Any],
    warnings: Sequence[str],
    figures: dict[str, bytes],
    config: dict[str, Any],
    model: dict[str, Any],
    versions: dict[str, str],
    seconds: dict[str, float],
) -> str:
    """The HTML page of one scan's report (figures as PNG bytes, embedded)."""
    seam = summary["seam"]
    size_label = (
        "median area (µm²)" if summary["size_column"] == "area_um2" else ("median volume (µm³)")
    )
    cards = [
        ("cells", f"{summary['n_cells']:,}"),
        (summary["density_unit"], _fmt(summary["density"])),
        (size_label, _fmt(summary["median_size"])),
        ("median diameter (µm)", _fmt(summary["median_diameter_um"])),
        (
            "touching the border",
            _fmt(summary["border_fraction"] * 100) + " %"
            if np.isfinite(summary["border_fraction"])
            else "–",
        ),
        ("seam score", _fmt(seam["density_ratio"]) if seam["has_seams"] else "one tile"),
    ]
    parts = [
        f"<h1>cellseg QC report: {html.escape(name)}</h1>",
        f"<p class='muted'>written {time.strftime('%Y-%m-%d %H:%M')} by cellseg "
        f"{html.escape(versions.get('cellseg', '?'))}</p>",
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><b>{html.escape(v)}</b>{html.escape(k)}</div>" for k, v in cards
        )
        + "</div>",
        "<h2>Warnings</h2>",
        _warnings_html(warnings),
        "<h2>Scan</h2>",
        _kv_table(
            [
                ("axes", summary["axes"]),
                ("shape (px)", summary["shape"]),
                ("pixel size (µm)", summary["spacing_um"]),
                ("pixel size from", summary.get("spacing_source")),
                ("tile core (px)", summary["core_shape"]),
                ("tiles", summary["n_tiles"]),
                ("cells", summary["n_cells"]),
                ("cells touching the border", summary["n_border"]),
            ]
        ),
    ]
    if "thumbnail" in figures:
        parts += [
            "<h2>Overview</h2>",
            "<p>Cell outlines over the nuclear channel; dashed lines are tile seams.</p>",
            _img(figures["thumbnail"], "thumbnail"),
        ]
    if "crops" in figures:
        parts += [
            "<h2>Zoomed crops</h2>",
            "<p>Full resolution: the densest and the sparsest field, and a field on a tile "
            "seam (dashed).</p>",
            _img(figures["crops"], "crops"),
        ]
    if "histograms" in figures:
        parts += [
            "<h2>Distributions</h2>",
            "<p>Red: median.</p>",
            _img(figures["histograms"], "histograms"),
        ]
    if "tiles" in figures:
        parts += ["<h2>Cells per tile</h2>", _img(figures["tiles"], "cells per tile")]
    parts.append("<h2>Seam score</h2>")
    if seam["has_seams"]:
        parts += [
            "<p>Cells whose centroid lies within the band around a tile seam (shaded), "
            "per unit of area, over cells farther away; and their median size over "
            "the others'. Near 1 is good; a dip means cells lost or cut at seams, a "
            "spike cells reported twice.</p>",
            _kv_table(
                [
                    ("band (µm)", seam["band_um"]),
                    ("cells near seams", seam["n_near"]),
                    ("cells away from seams", seam["n_far"]),
                    ("density ratio (seam score)", seam["density_ratio"]),
                    ("standard errors from 1", seam["z"]),
                    ("median size ratio", seam["size_ratio"]),
                ]
            ),
        ]
        if "seam" in figures:
            parts.append(_img(figures["seam"], "seam score"))
    else:
        parts.append("<p>The scan was segmented as one tile: there are no seams.</p>")
    parts += [
        "<h2>Run times</h2>",
        _kv_table(
            [(k, f"{v:.1f} s") for k, v in seconds.items()]
            + [("total", f"{sum(seconds.values()):.1f} s")]
            if seconds
            else [("run times", "not recorded")]
        ),
        "<h2>Config and model</h2>",
        _kv_table({**config, **model}),
        "<h2>Software</h2>",
        _kv_table(versions),
    ]
    return _page(f"cellseg QC: {name}", "\n".join(parts))


# ----------------------------------------------------------------------------- I/O
def _level_for(group, datasets: list[dict], max_edge: int) -> tuple[int, Any]:
    """The finest pyramid level whose in-plane edge is at most `max_edge` (else the last)."""
    for k, d in enumerate(datasets):
        arr = group[d["path"]]
        if max(arr.shape[-2:]) <= max_edge:
            return k, arr
    return len(datasets) - 1, group[datasets[-1]["path"]]


def _multiscale_datasets(group) -> list[dict]:
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    return ome["multiscales"][0]["datasets"]


def thumbnail_planes(
    image_path: Path, channel: int, labels: str = "cells", max_edge: int = 1024
) -> tuple[np.ndarray, np.ndarray, float]:
    """A coarse pyramid level's middle plane of one channel and of the labels.

    Returns
    -------
    image, labels : ndarray
        2D planes of equal shape.
    factor : float
        Full-resolution pixels per thumbnail pixel (in-plane).
    """
    import zarr

    group = zarr.open_group(str(image_path), mode="r")
    datasets = _multiscale_datasets(group)
    level, arr = _level_for(group, datasets, max_edge)
    lab_group = zarr.open_group(str(Path(image_path) / "labels" / labels), mode="r")
    lab_sets = _multiscale_datasets(lab_group)
    lab = lab_group[lab_sets[min(level, len(lab_sets) - 1)]["path"]]
    full = group[datasets[0]["path"]]
    z = arr.shape[1] // 2 if arr.ndim == 4 else None
    index_img = (channel, z) if z is not None else (channel,)
    img = np.asarray(arr[index_img])
    lab_plane = np.asarray(lab[(lab.shape[0] // 2,)]) if lab.ndim == 3 else np.asarray(lab[...])
    h = min(img.shape[0], lab_plane.shape[0])
    w = min(img.shape[1], lab_plane.shape[1])
    return img[:h, :w], lab_plane[:h, :w], full.shape[-1] / arr.shape[-1]


def crop_windows(
    table: pd.DataFrame,
    *,
    shape: Sequence[int],
    core_shape: Sequence[int],
    axes: str,
    size: int = CROP_PX,
) -> list[dict[str, Any]]:
    """Choose zoomed crops: the densest and the sparsest field, and one on a seam.

    Returns
    -------
    list of dict
        ``title``, ``box`` (in-plane ``(y0, y1, x0, x1)`` in pixels) and ``z``
        (a plane for 3D scans, else None).
    """
    if not len(table):
        return []
    h, w = shape[-2], shape[-1]
    wy, wx = min(size, h), min(size, w)
    cy = table[f"centroid_{axes[-2]}_px"].to_numpy()
    cx = table[f"centroid_{axes[-1]}_px"].to_numpy()
    cz = table[f"centroid_{axes[0]}_px"].to_numpy() if len(axes) == 3 else None
    ys = np.unique(np.linspace(0, h - wy, max(1, math.ceil(2 * h / wy))).astype(int))
    xs = np.unique(np.linspace(0, w - wx, max(1, math.ceil(2 * w / wx))).astype(int))

    def members(y0, x0):
        return (cy >= y0) & (cy < y0 + wy) & (cx >= x0) & (cx < x0 + wx)

    counts = np.array([[members(y0, x0).sum() for x0 in xs] for y0 in ys])

    def window(title, y0, x0):
        sel = members(y0, x0)
        z = int(round(float(np.median(cz[sel])))) if cz is not None and sel.any() else None
        if cz is not None and z is None:
            z = shape[0] // 2
        return {"title": title, "box": (int(y0), int(y0 + wy), int(x0), int(x0 + wx)), "z": z}

    out = []
    i, j = np.unravel_index(np.argmax(counts), counts.shape)
    out.append(window(f"densest field ({counts[i, j]} cells)", ys[i], xs[j]))
    occupied = np.where(counts > 0, counts, np.iinfo(np.int64).max)
    i2, j2 = np.unravel_index(np.argmin(occupied), counts.shape)
    if (i2, j2) != (i, j):
        out.append(window(f"sparsest field ({counts[i2, j2]} cells)", ys[i2], xs[j2]))
    # a seam crossing (or a seam) with the most cells around it
    seam_y = [k * core_shape[-2] for k in range(1, math.ceil(h / core_shape[-2]))]
    seam_x = [k * core_shape[-1] for k in range(1, math.ceil(w / core_shape[-1]))]
    if seam_y or seam_x:
        cand_y = seam_y or [h // 2]
        cand_x = seam_x or [w // 2]
        best, best_n = None, -1
        for sy in cand_y:
            for sx in cand_x:
                y0 = int(np.clip(sy - wy // 2, 0, h - wy))
                x0 = int(np.clip(sx - wx // 2, 0, w - wx))
                k = int(members(y0, x0).sum())
                if k > best_n:
                    best, best_n = (y0, x0), k
        out.append(window("on a tile seam", *best))
    return out


def read_crops(
    image_path: Path,
    channel: int,
    windows: Sequence[dict[str, Any]],
    core_shape: Sequence[int],
    labels: str = "cells",
) -> list[dict[str, Any]]:
    """Read the full-resolution image and labels of each crop window."""
    import zarr

    from cellseg.io import open_labels

    group = zarr.open_group(str(image_path), mode="r")
    full = group[_multiscale_datasets(group)[0]["path"]]
    lab = open_labels(image_path, labels)
    out = []
    for win in windows:
        y0, y1, x0, x1 = win["box"]
        plane = () if win["z"] is None else (win["z"],)
        img = np.asarray(full[(channel, *plane, slice(y0, y1), slice(x0, x1))])
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


def report_columns(names: Sequence[str], channels: Sequence[str] = ()) -> list[str]:
    """The columns of a cell table (of `names`) that a scan's report reads.

    Those of :func:`scan_summary`, :func:`crop_windows` and
    :func:`figure_histograms` (mean intensity of the first two `channels`).
    """
    wanted = {
        "area_um2",
        "volume_um3",
        "equivalent_diameter_um",
        "touches_border",
        "form_factor",
        "sphericity",
        "solidity",
        "elongation",
        "nearest_neighbor_distance_um",
        *(f"intensity_mean_{ch}" for ch in channels[:2]),
    }
    return [n for n in names if n in wanted or n.startswith("centroid_")]


def write_report(outdir: str | Path, *, labels: str = "cells") -> Path:
    """Write ``OUTDIR/report.html`` (and ``work/report.json``) for one scan's run.

    Reads ``work/ingest.json``, ``work/tiles.json``, ``work/stitch.json``,
    ``cells.parquet``, the run times in ``work/times/`` and the OME-Zarr image
    and labels (a coarse pyramid level and a few full-resolution crops only).

    Returns
    -------
    Path
        The report's path.
    """
    import pyarrow.parquet as pq

    from cellseg.io import atomic_write_bytes, atomic_write_json
    from cellseg.measure import channel_keys, read_table_columns, read_table_metadata
    from cellseg.pipeline import image_path, read_json, stage_seconds, work_dir

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
    stats = info.get("stats", {})
    low, high = float(stats.get("low", 0.0)), float(stats.get("high", 1.0))
    img_path = image_path(outdir, info)
    figures: dict[str, bytes] = {}
    try:
        thumb, thumb_labels, factor = thumbnail_planes(img_path, info["channel"], labels)
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
            title=f"{info['name']}: {len(table):,} cells{plane}",
        )
        windows = crop_windows(table, shape=shape, core_shape=core, axes=axes)
        if windows:
            crops = read_crops(img_path, info["channel"], windows, core, labels)
            figures["crops"] = figure_crops(crops, low=low, high=high)
    except (OSError, KeyError, ValueError) as exc:  # a report without pictures beats none
        warnings.append(f"The pictures could not be drawn: {exc}")
    figures["histograms"] = figure_histograms(table, keys)
    figures["tiles"] = figure_tile_counts(np.asarray(summary["tile_counts"]))
    if summary["seam"]["has_seams"] and len(table):
        figures["seam"] = figure_seam(summary["seam"])
    config = {
        "source": info.get("request", {}).get("source", {}).get("path"),
        "channels": ", ".join(names),
        "nuclear channel": names[info["channel"]] if names else info["channel"],
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
    import pyarrow.parquet as pq

    from cellseg.io import atomic_write_bytes
    from cellseg.measure import read_table_columns
    from cellseg.pipeline import read_json, stage_seconds, work_dir

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
        seam = summary["seam"]
        rows.append(
            "<tr>"
            f"<td><a href='{html.escape(link)}'>{html.escape(name)}</a></td>"
            f"<td>{html.escape(summary['axes'])}</td>"
            f"<td class='num'>{html.escape(_fmt(summary['shape']))}</td>"
            f"<td class='num'>{summary['n_cells']:,}</td>"
            f"<td class='num'>{html.escape(_fmt(summary['density']))} "
            f"{html.escape(summary['density_unit'])}</td>"
            f"<td class='num'>{html.escape(_fmt(summary['median_diameter_um']))}</td>"
            f"<td class='num'>{html.escape(_fmt(summary['border_fraction']))}</td>"
            f"<td class='num'>{html.escape(_fmt(seam['density_ratio']))}</td>"
            f"<td class='num'>{sum(stage_seconds(d).values()):.0f} s</td>"
            f"<td class='num'>{len(warnings)}</td></tr>"
        )
    head = (
        "<tr><th>scan</th><th>axes</th><th>shape (px)</th><th>cells</th><th>density</th>"
        "<th>median diameter (µm)</th><th>border share</th><th>seam score</th>"
        "<th>run time</th><th>warnings</th></tr>"
    )
    total = sum(counts.values())
    parts = [
        "<h1>cellseg run report</h1>",
        f"<p class='muted'>written {time.strftime('%Y-%m-%d %H:%M')}; "
        f"{len(rows)} scan(s), {total:,} cells.</p>",
        "<h2>Warnings</h2>",
        _warnings_html(all_warnings),
        "<h2>Scans</h2>",
        f"<table>{head}{''.join(rows)}</table>",
    ]
    if table is not None:
        link = os.path.relpath(Path(table), out.parent)
        parts.append(
            f"<p>All cells in one table with a <code>scan</code> column: "
            f"<a href='{html.escape(link)}'>{html.escape(link)}</a></p>"
        )
    if counts:
        parts += ["<h2>Scans compared</h2>", _img(figure_run(tables, counts), "scans compared")]
    parts += ["<h2>Software</h2>", _kv_table(software_versions())]
    atomic_write_bytes(out, _page("cellseg run report", "\n".join(parts)).encode("utf-8"))
    return out
