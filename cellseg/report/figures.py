"""The figures of a QC report, each a function returning PNG bytes.

matplotlib is imported inside the functions that draw, with the ``Agg``
backend: it takes a second to import, and only the report draws.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

from cellseg.report.numbers import size_column


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes (90 dpi); the figure is closed."""
    import matplotlib.pyplot as plt  # heavy: loaded only when a figure is drawn

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _frame(
    fig: Any,
    *,
    left: float = 0.1,
    right: float = 0.1,
    bottom: float = 0.1,
    top: float = 0.35,
    wspace: float = 0.1,
    hspace: float = 0.1,
) -> None:
    """Fixed margins in inches (a layout engine would draw every figure twice)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / w,
        right=1 - right / w,
        bottom=bottom / h,
        top=1 - top / h,
        wspace=wspace,
        hspace=hspace,
    )


def _pyplot() -> Any:
    """matplotlib's pyplot, on the Agg backend unless one was chosen already."""
    import matplotlib  # heavy: loaded only when a figure is drawn

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
    image : ndarray, (Y, X) or (Y, X, 3)
        Intensities, or an 8-bit RGB (brightfield) picture shown as it is.
    labels : ndarray of int, (Y, X)
        Cells.
    low, high : float
        Grey values shown as black and white (intensities only).

    Returns
    -------
    ndarray of uint8, (Y, X, 3)
        8 bits a colour, as the PNG holds it: a quarter of the memory of floats.
    """
    if image.ndim == 3 and image.shape[-1] == 3:
        rgb = np.array(image, dtype=np.uint8)
    else:
        rgb = np.repeat(_display(image, low, high)[..., None], 3, axis=2)
    edge = find_boundaries(labels, mode="inner") & (labels > 0)
    if edge.any():
        hue = (labels[edge].astype(np.float64) * 0.618034) % 1.0
        import matplotlib.colors as mcolors  # heavy: loaded only when a figure is drawn

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
    tissue: np.ndarray | None = None,
) -> bytes:
    """The scan (one plane) with cell outlines and the tile seams, as PNG.

    Parameters
    ----------
    image : ndarray, (Y, X) or (Y, X, 3)
        One plane of the nuclear channel (a coarse pyramid level), or RGB.
    labels : ndarray of int, (Y, X)
        The cells of the same plane and level.
    low, high : float
        Grey values shown as black and white.
    seams : pair of sequence of float
        Seam positions along y and along x, in the plane's pixels.
    title : str
        Drawn above the picture.
    tissue : ndarray of bool, (Y, X), optional
        The tissue mask of a slide on the same grid, outlined in green.

    Returns
    -------
    bytes
        A PNG file.
    """
    plt = _pyplot()
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(9.5, 9.5 * h / max(w, 1) + 0.4))
    _frame(fig, top=0.4)
    ax.imshow(outline_overlay(image, labels, low, high), interpolation="nearest")
    for y in seams[0]:
        ax.axhline(y, color="yellow", lw=0.6, ls="--", alpha=0.7)
    for x in seams[1]:
        ax.axvline(x, color="yellow", lw=0.6, ls="--", alpha=0.7)
    if tissue is not None and tissue.any() and not tissue.all():
        ax.contour(tissue.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.2)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return _png(fig)


def figure_crops(crops: Sequence[dict[str, Any]], *, low: float, high: float) -> bytes:
    """Zoomed crops side by side, as PNG.

    Parameters
    ----------
    crops : sequence of dict
        ``image`` and ``labels`` (2D arrays), ``title`` and, optionally,
        ``seams`` (positions along y and along x in the crop's pixels).
    low, high : float
        Grey values shown as black and white.

    Returns
    -------
    bytes
        A PNG file.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(crops), figsize=(3.6 * len(crops), 3.9), squeeze=False)
    _frame(fig, wspace=0.05)
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
    """Histograms of size, shape, neighbour distance and intensity, as PNG.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table (columns it lacks are left out).
    channels : sequence of str
        Channel keys; the mean intensity of the first two is drawn.

    Returns
    -------
    bytes
        A PNG file.

    Examples
    --------
    >>> png = figure_histograms(pd.DataFrame({"area_um2": [40.0, 50.0, 60.0]}))
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
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
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    _frame(fig, left=0.45, right=0.15, bottom=0.5, top=0.15, wspace=0.3, hspace=0.45)
    for ax in axes.ravel():
        ax.set_visible(False)
    for ax, (col, label) in zip(axes.ravel(), panels):
        ax.set_visible(True)
        values = table[col].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = np.percentile(values, [0.5, 99.5])
            # one filled outline, not a patch per bar: a tenth of the drawing time
            counts, edges = np.histogram(values, bins=40, range=(lo, hi) if hi > lo else None)
            ax.stairs(counts, edges, fill=True, color="#4477aa")
            ax.axvline(np.median(values), color="#cc3311", lw=1)
        else:
            ax.text(0.5, 0.5, "no cells", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
    return _png(fig)


def figure_tile_counts(counts: np.ndarray) -> bytes:
    """Cells per tile as a heat map, as PNG.

    Parameters
    ----------
    counts : ndarray of int, (tiles along y, tiles along x)
        As :func:`~cellseg.report.numbers.tile_counts` returns them.

    Returns
    -------
    bytes
        A PNG file.
    """
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
    """Relative density and size against the distance to the nearest tile seam, as PNG.

    Parameters
    ----------
    seam : dict
        As :func:`~cellseg.report.numbers.seam_score` returns it.

    Returns
    -------
    bytes
        A PNG file.
    """
    plt = _pyplot()
    prof = seam["profile"]
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 2.8))
    _frame(fig, left=0.6, right=0.1, bottom=0.5, top=0.1, wspace=0.3)
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


def figure_thresholds(rules: Sequence[dict[str, Any]]) -> bytes:
    """Histograms of the values each class rule compared, with its thresholds, as PNG.

    Parameters
    ----------
    rules : sequence of dict
        As ``cellseg.classes.apply_rules`` records them: ``name``, ``column``,
        ``method``, ``threshold``, ``bins``, ``values``.

    Returns
    -------
    bytes
        A PNG file: one panel per rule, the threshold (and the 2+ / 3+ bins) as lines.
    """
    plt = _pyplot()
    n = max(len(rules), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 2.8), layout="constrained", squeeze=False)
    for ax, rule in zip(axes[0], rules):
        values = np.asarray(rule.get("values") or [], dtype=np.float64)
        if values.size:
            ax.hist(values, bins=60, color="#0077bb", alpha=0.8)
        lines = [rule.get("threshold")] + list((rule.get("bins") or [])[1:])
        for k, x in enumerate(v for v in lines if v is not None):
            ax.axvline(x, color="#cc3311", lw=1.2, ls="-" if k == 0 else "--")
        method = rule.get("method", "fixed")
        ax.set_title(f"{rule.get('name')}: threshold {method}", fontsize=9)
        ax.set_xlabel(str(rule.get("column")))
        ax.set_ylabel("cells")
    return _png(fig)


def figure_run(tables: dict[str, pd.DataFrame], counts: dict[str, int]) -> bytes:
    """Cells per scan and the distributions of diameter compared across scans, as PNG.

    Parameters
    ----------
    tables : dict of str to pandas.DataFrame
        Per scan, its cells' ``equivalent_diameter_um``.
    counts : dict of str to int
        Cells per scan.

    Returns
    -------
    bytes
        A PNG file.
    """
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
