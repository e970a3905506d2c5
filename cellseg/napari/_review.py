"""What the review widget computes, as pure functions (no napari, no Qt).

Tables in, tables out; camera and region geometry as plain numbers, in the
world coordinates napari uses for a layer scaled by the pixel size (µm, the
centre of pixel ``i`` at ``i * spacing``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellseg.review import box_around_cells, cell_box
from cellseg.tiling import Box, clip_box, grow_box

#: Columns shown first in the cell list, when the table has them.
LEADING_COLUMNS = (
    "cell_id",
    "flagged",
    "flag_reason",
    "area_um2",
    "volume_um3",
    "intensity_mean_c0",
    "mean_intensity",
)
#: Smallest field of view when zooming on a cell, in µm.
MIN_VIEW_UM = 10.0
#: Field of view around a cell, in cell sizes.
CONTEXT = 4.0


def with_flags(table: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """The table with ``flagged`` (bool) and ``flag_reason`` (str) columns from the flags.

    Examples
    --------
    >>> t = pd.DataFrame({"cell_id": [1, 2]})
    >>> f = pd.DataFrame({"cell_id": [2], "flagged": [True], "flag_reason": ["merged?"]})
    >>> with_flags(t, f)[["flagged", "flag_reason"]].values.tolist()
    [[False, ''], [True, 'merged?']]
    """
    out = table.drop(columns=["flagged", "flag_reason"], errors="ignore").copy()
    reasons = dict(zip(flags["cell_id"].astype(np.int64), flags["flag_reason"].astype(str)))
    ids = out["cell_id"].astype(np.int64)
    out["flagged"] = ids.isin(list(reasons)).to_numpy()
    out["flag_reason"] = [reasons.get(int(i), "") for i in ids]
    return out


def display_columns(table: pd.DataFrame) -> list[str]:
    """Column order of the cell list: the leading columns, then the rest as in the table."""
    first = [c for c in LEADING_COLUMNS if c in table.columns]
    return first + [c for c in table.columns if c not in first]


def filter_cells(table: pd.DataFrame, query: str = "", *, flagged_only: bool = False):
    """Rows of the table matching a pandas query, e.g. ``area_um2 < 20 and n_neighbors > 3``.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table (with ``flagged`` if `flagged_only`).
    query : str
        A :meth:`pandas.DataFrame.query` expression over the columns; empty: all rows.
    flagged_only : bool
        Keep only flagged cells.

    Raises
    ------
    ValueError
        If the query is not valid for this table; the message says why.

    Examples
    --------
    >>> t = pd.DataFrame({"cell_id": [1, 2, 3], "area_um2": [5.0, 50.0, 12.0]})
    >>> filter_cells(t, "area_um2 < 20")["cell_id"].tolist()
    [1, 3]
    """
    out = table
    if query and query.strip():
        try:
            out = out.query(query)
        except Exception as exc:
            raise ValueError(f"filter {query!r} is not valid: {exc}") from exc
        if not isinstance(out, pd.DataFrame) or len(out.columns) != len(table.columns):
            raise ValueError(f"filter {query!r} does not select rows")
    if flagged_only and "flagged" in out:
        out = out.loc[out["flagged"].astype(bool)]
    return out


def sort_cells(table: pd.DataFrame, column: str, ascending: bool = True) -> pd.DataFrame:
    """The table sorted by one column (stable, ties by ``cell_id``), missing values last."""
    if column not in table:
        raise ValueError(f"the table has no column {column!r}")
    return table.sort_values(
        [column, "cell_id"] if column != "cell_id" else ["cell_id"],
        ascending=ascending,
        kind="stable",
        na_position="last",
    )


def cell_view(
    row: pd.Series | dict,
    axes: str,
    spacing: Sequence[float],
    canvas_size: Sequence[int],
) -> tuple[dict[int, float], float]:
    """Where the camera goes to show one cell.

    Parameters
    ----------
    row : mapping
        The cell's table row (``centroid_<ax>_um``, ``bbox_<ax>_start_px/stop_px``).
    axes : str
        ``"yx"`` or ``"zyx"``.
    spacing : sequence of float
        µm per axis.
    canvas_size : (height, width)
        The canvas in screen pixels.

    Returns
    -------
    point : dict of int to float
        World coordinate (µm) of the cell's centroid per axis.
    zoom : float
        Screen pixels per µm so that about ``CONTEXT`` cell sizes (at least
        ``MIN_VIEW_UM``) fill the smaller side of the canvas.

    Examples
    --------
    >>> row = {"centroid_y_um": 10.0, "centroid_x_um": 20.0, "bbox_y_start_px": 10,
    ...        "bbox_y_stop_px": 30, "bbox_x_start_px": 30, "bbox_x_stop_px": 50}
    >>> cell_view(row, "yx", (0.5, 0.5), (400, 600))
    ({0: 10.0, 1: 20.0}, 10.0)
    """
    point = {i: float(row[f"centroid_{ax}_um"]) for i, ax in enumerate(axes)}
    plane = axes[-2:]
    size = max(
        (float(row[f"bbox_{ax}_stop_px"]) - float(row[f"bbox_{ax}_start_px"]))
        * float(spacing[axes.index(ax)])
        for ax in plane
    )
    extent = max(CONTEXT * size, MIN_VIEW_UM)
    return point, float(min(canvas_size)) / extent


def view_box(
    center: Sequence[float],
    zoom: float,
    canvas_size: Sequence[int],
    point: Sequence[float],
    spacing: Sequence[float],
    shape: Sequence[int],
) -> Box:
    """The full-resolution pixel box on screen in a 2D view.

    Parameters
    ----------
    center : (y, x)
        Camera centre in world units (µm) of the two displayed (last) axes.
    zoom : float
        Screen pixels per µm.
    canvas_size : (height, width)
        The canvas in screen pixels.
    point : sequence of float
        Current world position of every axis (the plane shown for Z).
    spacing : sequence of float
        µm per axis.
    shape : sequence of int
        Shape of the label image.

    Returns
    -------
    tuple of (start, stop)
        The box, clipped to the image; Z (if any) is the one plane shown.

    Examples
    --------
    >>> view_box((50.0, 50.0), 2.0, (100, 200), (50.0, 50.0), (0.5, 0.5), (400, 400))
    ((50, 151), (0, 201))
    """
    nd = len(shape)
    box = []
    for ax in range(nd - 2):
        k = int(round(float(point[ax]) / float(spacing[ax])))
        box.append((k, k + 1))
    for i, ax in enumerate(range(nd - 2, nd)):
        half = float(canvas_size[i]) / (2.0 * float(zoom))
        lo = (float(center[i]) - half) / float(spacing[ax])
        hi = (float(center[i]) + half) / float(spacing[ax])
        box.append((int(math.floor(lo)), int(math.ceil(hi)) + 1))
    return clip_box(tuple(box), shape)


def edit_box(
    box: Box, table: pd.DataFrame | None, axes: str, shape: Sequence[int], max_pixels: int
) -> Box:
    """The region to edit: `box` grown to hold whole every cell it reaches.

    Raises
    ------
    ValueError
        If the region is empty or has more than `max_pixels` pixels (zoom in).
    """
    if table is not None and len(table):
        box = box_around_cells(box, table, axes, shape)
    size = math.prod(b - a for a, b in box)
    if size == 0:
        raise ValueError("the region to edit is empty: the view is outside the image")
    if size > max_pixels:
        raise ValueError(
            f"the region to edit has {size:,} pixels, more than {max_pixels:,}; zoom in"
        )
    return box


def cell_neighbourhood(table: pd.DataFrame, cell_id: int, axes: str, shape: Sequence[int]) -> Box:
    """A cell's box grown by its own size on every side (in-plane; whole cell in Z)."""
    box = cell_box(table, cell_id, axes)
    margin = [0] * (len(axes) - 2) + [max(b - a for a, b in box[-2:])] * 2
    return grow_box(box, margin, shape)


def colors_by_column(
    table: pd.DataFrame, column: str, colormap: Any = "viridis"
) -> tuple[dict[int | None, np.ndarray], tuple[float, float]]:
    """Colours of cells by the value of one column, scaled between its 1st and 99th percentiles.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table.
    column : str
        A numeric or boolean column.
    colormap : str or callable
        A napari colormap name, or ``f(values in [0, 1]) -> (n, 4) RGBA``.

    Returns
    -------
    colors : dict
        ``{cell_id: RGBA}``, ``None`` (any other id) transparent, 0 transparent.
    limits : (low, high)
        The values mapped to the two ends of the colormap.
    """
    values = pd.to_numeric(table[column], errors="coerce").astype(float).to_numpy()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError(f"column {column!r} has no numeric values")
    low, high = (float(v) for v in np.percentile(finite, [1, 99]))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    scaled = np.clip((values - low) / (high - low), 0, 1) if high > low else np.zeros_like(values)
    scaled = np.where(np.isfinite(scaled), scaled, 0.0)
    if callable(colormap):
        rgba = np.asarray(colormap(scaled), float)
    else:
        from napari.utils.colormaps import ensure_colormap

        rgba = np.asarray(ensure_colormap(colormap).map(scaled), float)
    colors: dict[int | None, np.ndarray] = {
        int(cid): rgba[k] for k, cid in enumerate(table["cell_id"].to_numpy())
    }
    colors[None] = np.zeros(4)
    colors[0] = np.zeros(4)
    return colors, (low, high)
