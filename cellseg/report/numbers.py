"""The numbers of a QC report: counts, the seam score, warnings, summaries.

Pure functions on the cell table (a :class:`pandas.DataFrame`) and the run's
metadata; nothing here reads a file or draws a picture.

The **seam score** compares cells whose centroid lies within one cell radius
of a tile seam with cells farther away, per unit of scan area (volume):
density and median size. Seams are arbitrary lines through the scan, so a
good stitch gives ratios near 1; cells lost or cut at the seams show as a
dip, cells reported twice as a spike.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
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


def size_column(table: pd.DataFrame) -> tuple[str, str]:
    """The size column of a table and its label: area (2D) or volume (3D).

    Parameters
    ----------
    table : pandas.DataFrame
        A cell table (or some of its columns).

    Returns
    -------
    column, label : str
        ``"volume_um3"`` where the table has it, else ``"area_um2"``; the
        axis label of its histogram.

    Examples
    --------
    >>> size_column(pd.DataFrame({"area_um2": [1.0]}))
    ('area_um2', 'area (µm²)')
    """
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

    Returns
    -------
    ndarray, (n,)
        The distance along the nearest axis to its nearest seam.

    Examples
    --------
    >>> seam_distance(np.array([[10.0, 60.0]]), [np.array([50.0]), np.array([])])
    array([40.])
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

    Parameters
    ----------
    distance_um : float
        Half-width of the band around each seam, in µm.
    seams : list of ndarray
        Seam positions per axis, in µm.
    shape : sequence of int
        Scan shape in pixels.
    spacing : sequence of float
        Pixel size in µm.

    Returns
    -------
    float
        Between 0 and 1.

    Examples
    --------
    >>> round(float(seam_share(5.0, [np.array([49.5])], (100,), (1.0,))), 6)
    0.1
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

    Parameters
    ----------
    centroids_px : ndarray, (n, ndim)
        Cell centroids in pixels.
    shape, core_shape : sequence of int
        Scan shape and tile core shape in pixels.

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

    Parameters
    ----------
    shape : sequence of int
        Scan shape in pixels.
    spacing : sequence of float
        Pixel size in µm.
    diameter_um : float
        Median cell diameter.

    Returns
    -------
    float
        Between 0 and 1.

    Examples
    --------
    >>> round(expected_border_fraction((100, 100), (1.0, 1.0), 5.0), 2)
    0.19
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

    Parameters
    ----------
    summary : dict
        As :func:`scan_summary` returns it (keys it lacks are not judged).

    Returns
    -------
    list of str
        One sentence per problem found; empty when all looks normal.

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
    """Python and the versions of the packages in :data:`PACKAGES` that are installed.

    Returns
    -------
    dict
        ``{"python": "3.x.y", package: version, ...}``.
    """
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def crop_windows(
    table: pd.DataFrame,
    *,
    shape: Sequence[int],
    core_shape: Sequence[int],
    axes: str,
    size: int = CROP_PX,
) -> list[dict[str, Any]]:
    """Choose zoomed crops: the densest and the sparsest field, and one on a seam.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table (``centroid_*_px`` columns).
    shape, core_shape : sequence of int
        Scan shape and tile core shape in pixels.
    axes : str
        The scan's spatial axes, ``"yx"`` or ``"zyx"``.
    size : int
        In-plane edge of a crop, in pixels.

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


def report_columns(names: Sequence[str], channels: Sequence[str] = ()) -> list[str]:
    """The columns of a cell table (of `names`) that a scan's report reads.

    Those of :func:`scan_summary`, :func:`crop_windows` and
    :func:`~cellseg.report.figures.figure_histograms` (mean intensity of the
    first two `channels`).

    Parameters
    ----------
    names : sequence of str
        The table's column names.
    channels : sequence of str
        The scan's channel keys (:func:`cellseg.measure.channel_keys`).

    Returns
    -------
    list of str
        In the table's order.

    Examples
    --------
    >>> report_columns(["cell_id", "centroid_y_px", "area_um2", "intensity_mean_c0"], ["c0"])
    ['centroid_y_px', 'area_um2', 'intensity_mean_c0']
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
