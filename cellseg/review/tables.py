"""The cell tables of a reviewed image: cells by box, and re-measuring after edits.

The measure stage of ``cells_corrected`` starts from a previous table
(:func:`measure_base`) and measures again only the cells the edits touched
(:func:`remeasure`), with :func:`cellseg.measure.measure_cells` on small
crops.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cellseg.errors import InputError
from cellseg.measure import (
    DEFAULT_NEIGHBOR_RADIUS_UM,
    DEFAULT_RING_WIDTH_UM,
    measure_cells,
    neighbor_features,
)
from cellseg.review.logs import edited_ids, read_edits
from cellseg.review.paths import CORRECTED, ORIGINAL, has_labels, table_path
from cellseg.review.store import corrected_state
from cellseg.tiling import (
    Box,
    box_from_json,
    box_slices,
    clip_box,
    grow_box,
    merge_boxes,
    union_box,
)


def cell_box(table: pd.DataFrame, cell_id: int, axes: str) -> Box:
    """Bounding box of one cell from the table's ``bbox_<ax>_start_px/stop_px`` columns.

    Raises
    ------
    KeyError
        If the table has no row for `cell_id`.
    """
    rows = table.loc[table["cell_id"] == cell_id]
    if rows.empty:
        raise KeyError(f"cell {cell_id} is not in the table")
    row = rows.iloc[0]
    return tuple((int(row[f"bbox_{a}_start_px"]), int(row[f"bbox_{a}_stop_px"])) for a in axes)


def cells_in_box(table: pd.DataFrame, box: Box, axes: str) -> np.ndarray:
    """Ids of the cells whose bounding box intersects `box`."""
    hit = np.ones(len(table), bool)
    for (a, b), ax in zip(box, axes):
        start = table[f"bbox_{ax}_start_px"].to_numpy()
        stop = table[f"bbox_{ax}_stop_px"].to_numpy()
        hit &= (start < b) & (a < stop)
    return table["cell_id"].to_numpy()[hit]


def box_around_cells(box: Box, table: pd.DataFrame, axes: str, shape: Sequence[int]) -> Box:
    """Grow `box` to hold every cell whose bounding box intersects it.

    An edit of a region grown this way sees each cell it touches whole, so a
    deleted or merged cell leaves no remnant outside the region.

    Parameters
    ----------
    box : tuple of (start, stop)
        The region asked for, in pixels.
    table : pandas.DataFrame
        The cell table (``bbox_<ax>_start_px`` / ``bbox_<ax>_stop_px`` columns).
    axes : str
        ``"yx"`` or ``"zyx"``.
    shape : sequence of int
        The label image's shape; the result is clipped to it.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"cell_id": [1, 2], "bbox_y_start_px": [0, 50],
    ...     "bbox_y_stop_px": [12, 60], "bbox_x_start_px": [8, 50], "bbox_x_stop_px": [20, 60]})
    >>> box_around_cells(((10, 30), (10, 30)), t, "yx", (100, 100))
    ((0, 30), (8, 30))
    """
    ids = cells_in_box(table, box, axes)
    rows = table.loc[table["cell_id"].isin(ids)]
    out = list(box)
    for i, ax in enumerate(axes):
        if len(rows):
            out[i] = (
                min(out[i][0], int(rows[f"bbox_{ax}_start_px"].min())),
                max(out[i][1], int(rows[f"bbox_{ax}_stop_px"].max())),
            )
    return clip_box(tuple(out), shape)


def remeasure(
    previous: pd.DataFrame,
    label_image: Any,
    intensity_image: Any,
    edits: Sequence[dict],
    *,
    spacing: Sequence[float],
    axes: str,
    **options: Any,
) -> pd.DataFrame:
    """Update a cell table for edits, measuring only the cells the edits affect.

    The affected cells are those the edits touched (:func:`edited_ids`) and
    those whose ring (the background within ``ring_width_um`` of a cell, see
    :mod:`cellseg.measure`) may reach an edited region. They are measured with
    :func:`cellseg.measure.measure_cells` on small crops of the label image
    that hold each of them whole, plus the ring width, with all the cells
    around them. Then the columns that depend on more than a crop are made
    whole-scan again: positions are shifted to the crop's place in the scan
    (``centroid_<ax>_px``, ``centroid_<ax>_um``, ``bbox_<ax>_start_px``,
    ``bbox_<ax>_stop_px``), ``touches_border`` is taken against the scan's
    shape, and the neighbour columns (``n_neighbors``,
    ``nearest_neighbor_distance_um``, ``nearest_neighbor_id``) are recomputed
    from all centroids, which changes them only near the edits. Every other
    row is kept as it was; rows of removed cells are dropped.

    Parameters
    ----------
    previous : pandas.DataFrame
        The table before the edits, one row per ``cell_id``.
    label_image : array-like
        The corrected labels, full resolution (zarr, dask or numpy); only the
        crops are read.
    intensity_image : array-like or None
        What :func:`~cellseg.measure.measure_cells` takes: one channel of the
        label image's shape, or all channels ``(C, *shape)``.
    edits : sequence of dict
        Edit log records (:func:`read_edits`) not yet in `previous`.
    spacing : sequence of float
        µm per axis.
    axes : str
        ``"yx"`` or ``"zyx"``.
    **options
        Further arguments of :func:`~cellseg.measure.measure_cells`
        (``channel_names``, ``ring_width_um``, ``neighbor_radius_um``, ...),
        the same as for a full measurement.

    Returns
    -------
    pandas.DataFrame
        The table a full measurement of `label_image` gives, sorted by
        ``cell_id``, with the columns and dtypes of `previous`.
    """
    ids = edited_ids(edits)
    if not ids:
        return previous.copy()
    shape = tuple(int(n) for n in label_image.shape)
    spacing = tuple(float(s) for s in spacing)
    options = {k: v for k, v in options.items() if k not in ("chunks", "show_progress")}
    ring_um = float(options.get("ring_width_um", DEFAULT_RING_WIDTH_UM))
    pad = tuple(int(np.ceil(ring_um / s)) if ring_um > 0 else 0 for s in spacing)
    regions = [(edited_ids([e]), box_from_json(e["region"])) for e in edits]
    # cells whose ring may reach an edited region keep their geometry: their old box is exact
    near: set[int] = set()
    for _, region in regions:
        near.update(int(i) for i in cells_in_box(previous, grow_box(region, pad, shape), axes))
    near -= ids
    known = set(previous["cell_id"].astype(np.int64).tolist())
    extents: dict[int, Box] = {}
    for cid in sorted(ids | near):
        box = cell_box(previous, cid, axes) if cid in known else None
        for edit_ids, region in regions:
            if cid in edit_ids:
                box = region if box is None else union_box(box, region)
        extents[cid] = grow_box(box, pad, shape)
    parts = []
    for window, members in merge_boxes(extents):
        labels = np.asarray(label_image[box_slices(window)])
        intensity = None
        if intensity_image is not None:
            lead = (slice(None),) * (len(intensity_image.shape) - len(shape))
            intensity = np.asarray(intensity_image[lead + box_slices(window)])
        part = measure_cells(labels, intensity, spacing=spacing, axes=axes, **options)
        part = part.loc[part["cell_id"].isin(members)]
        parts.append(_translate(part, [a for a, _ in window], spacing, axes))
    kept = previous.loc[~previous["cell_id"].isin(list(ids | near))]
    table = pd.concat([kept, *parts], ignore_index=True) if parts else kept.copy()
    table = table.sort_values("cell_id", kind="stable").reset_index(drop=True)
    if "touches_border" in table:
        touches = np.zeros(len(table), bool)
        for ax, n in zip(axes, shape):
            touches |= (table[f"bbox_{ax}_start_px"].to_numpy() == 0) | (
                table[f"bbox_{ax}_stop_px"].to_numpy() == n
            )
        table["touches_border"] = touches
    if "n_neighbors" in table:
        radius = float(options.get("neighbor_radius_um", DEFAULT_NEIGHBOR_RADIUS_UM))
        centroids = np.stack([table[f"centroid_{a}_um"].to_numpy() for a in axes], axis=1)
        count, dist, nearest = neighbor_features(centroids, table["cell_id"].to_numpy(), radius)
        table["n_neighbors"] = count
        table["nearest_neighbor_distance_um"] = dist
        table["nearest_neighbor_id"] = nearest
    columns = list(previous.columns) + [c for c in table.columns if c not in previous.columns]
    return pd.DataFrame(
        {
            c: table[c].to_numpy().astype(previous[c].dtype)
            if c in previous and len(table)
            else table[c].to_numpy()
            for c in columns
        }
    )


def measure_base(outdir: Path, image_path: Path, labels: str, request: dict) -> dict:
    """What the measure stage starts from for label image `labels`.

    For ``cells_corrected``, the previous table to update and the edits not in
    it yet: the corrected table itself when it was measured from the same
    corrected labels (same ``uid``) at an earlier point of the edit log, else
    the table of ``cells`` when it was measured the same way, else
    nothing (everything is measured).

    Parameters
    ----------
    outdir : Path
        The scan's output folder.
    image_path : Path
        The OME-Zarr image group.
    labels : str
        The label image to measure.
    request : dict
        What the measure stage is asked (stitch, table version, options, ...;
        see :func:`cellseg.stages.measure`). A previous table is used only
        if it was measured with the same request, label image aside.

    Returns
    -------
    dict
        Empty for other label images. Else ``previous`` (a DataFrame or None),
        ``edits`` (log records to apply), ``request`` (what makes the table up
        to date) and ``metadata`` (Parquet key/values: ``cellseg.labels_uid``,
        ``cellseg.edits``, ``cellseg.base_table``, ``cellseg.edited_cells``).

    Raises
    ------
    InputError
        If `labels` is ``cells_corrected`` and no correction was made yet.
    """
    if labels != CORRECTED:
        return {}
    if not has_labels(image_path, CORRECTED):
        raise InputError(
            f"{image_path}: has no corrected labels yet ({CORRECTED}); correct cells in the "
            "napari review widget first, or measure the original labels with --labels cells"
        )
    state = corrected_state(image_path)
    edits = read_edits(image_path, uid=state["uid"])
    previous, todo, base = None, edits, ""
    own = table_path(outdir, CORRECTED)
    meta = _table_metadata(own)
    if (
        meta.get("cellseg.labels_uid") == state["uid"]
        and 0 <= int(meta.get("cellseg.edits", -1)) <= len(edits)
        and _same_request(meta, request)
    ):
        previous, todo, base = own, edits[int(meta["cellseg.edits"]) :], own.name
    else:
        original = table_path(outdir, ORIGINAL)
        meta = _table_metadata(original)
        if meta.get("cellseg.labels") == ORIGINAL and _same_request(meta, request):
            previous, base = original, original.name
    return {
        "previous": None if previous is None else pd.read_parquet(previous),
        "edits": todo,
        "request": {"labels_uid": state["uid"], "edits": len(edits)},
        "metadata": {
            "cellseg.labels_uid": state["uid"],
            "cellseg.edits": str(len(edits)),
            "cellseg.base_table": base,
            "cellseg.edited_cells": str(len(edited_ids(todo))),
        },
    }


def _table_metadata(path: Path) -> dict[str, str]:
    """Key/value metadata of a Parquet table as text; empty if there is no table."""
    if not Path(path).exists():
        return {}
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"cellseg.")}


def _same_request(meta: dict[str, str], request: dict) -> bool:
    """Whether a table's recorded request equals `request`, label image and edits aside."""
    try:
        recorded = json.loads(meta.get("cellseg.request", "null"))
    except json.JSONDecodeError:
        return False
    if not isinstance(recorded, dict):
        return False
    ignore = ("labels", "labels_uid", "edits")
    current = json.loads(json.dumps(request))
    return {k: v for k, v in recorded.items() if k not in ignore} == {
        k: v for k, v in current.items() if k not in ignore
    }


def _translate(table: pd.DataFrame, origin: Sequence[int], spacing, axes: str) -> pd.DataFrame:
    """Shift the positional columns of a table measured in a window to scan coordinates."""
    table = table.copy()
    for o, s, ax in zip(origin, spacing, axes):
        for column, shift in (
            (f"centroid_{ax}_px", o),
            (f"centroid_{ax}_um", o * float(s)),
            (f"bbox_{ax}_start_px", o),
            (f"bbox_{ax}_stop_px", o),
        ):
            if column in table:
                table[column] = table[column] + shift
    return table
