"""Corrections of a label image: region edits, the edit log, flags and re-measuring.

A reviewer fixes cells in a full-resolution *region* (a box of the scan): the
region is read from the label image, edited as an ordinary array (delete,
merge, split, paint, erase), and applied with :func:`apply_edit`. Edits never
touch ``labels/cells``: the first one copies it to ``labels/cells_corrected``
and every edit goes there, together with

* the pyramid of ``cells_corrected``, updated for the edited region only;
* one line in the append-only edit log ``OUTDIR/review/edits.jsonl`` saying
  who, when, what and which ids (see :func:`apply_edit`).

Ids: a cell keeps its id wherever it is unchanged; a new cell always gets a
fresh id, larger than any id the label image has ever held (the counter
``next_id`` is kept in the attributes of ``cells_corrected`` and in the log),
so an id is never reused for a different cell.

Flags (a reviewer's "look at this cell again", with a reason) go to
``OUTDIR/review/flags.jsonl``; the last line for a cell wins.

Every function here works on arrays and paths; none needs napari or Qt. The
napari widget (:mod:`cellseg.napari`) and the command line call them.

Boxes are tuples of ``(start, stop)`` pairs in pixel (voxel) indices of the
full-resolution label image, one pair per spatial axis, as in
:mod:`cellseg.tiling`.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellseg.errors import CellsegError, InputError

if TYPE_CHECKING:
    import pandas as pd
    import zarr

__all__ = [
    "CORRECTED",
    "ORIGINAL",
    "EditConflict",
    "apply_edit",
    "box_around_cells",
    "cell_box",
    "changed_ids",
    "delete_cells",
    "edit_log_path",
    "ensure_corrected",
    "erase",
    "find_image",
    "flag_cell",
    "grow_box",
    "merge_boxes",
    "merge_cells",
    "paint_cell",
    "pyramid_boxes",
    "read_edits",
    "read_flags",
    "read_region",
    "remeasure",
    "review_labels",
    "split_cell",
    "table_path",
]

#: Name of the original label image, never modified by corrections.
ORIGINAL = "cells"
#: Name of the corrected label image.
CORRECTED = "cells_corrected"
#: Folder, next to the OME-Zarr image, holding the edit log and the flags.
REVIEW_DIR = "review"
EDIT_LOG = "edits.jsonl"
FLAG_LOG = "flags.jsonl"
ATTRS_KEY = "cellseg"

Box = tuple[tuple[int, int], ...]


class EditConflict(CellsegError):
    """The region changed on disk since it was read for editing."""


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------


def table_path(outdir: Path, labels: str = ORIGINAL) -> Path:
    """Path of the cell table measured from label image `labels`.

    ``cells`` → ``OUTDIR/cells.parquet``; any other name, e.g.
    ``cells_corrected`` → ``OUTDIR/cells_corrected.parquet``, so the table of
    the original labels is never overwritten by the corrected one.

    Examples
    --------
    >>> table_path(Path("out"), "cells_corrected").name
    'cells_corrected.parquet'
    """
    return Path(outdir) / ("cells.parquet" if labels == ORIGINAL else f"{labels}.parquet")


def review_dir(image_path: Path) -> Path:
    """Folder of the edit log and the flags of an image: ``OUTDIR/review``."""
    return Path(image_path).parent / REVIEW_DIR


def edit_log_path(image_path: Path) -> Path:
    """The append-only edit log, ``OUTDIR/review/edits.jsonl``."""
    return review_dir(image_path) / EDIT_LOG


def flag_log_path(image_path: Path) -> Path:
    """The append-only flag log, ``OUTDIR/review/flags.jsonl``."""
    return review_dir(image_path) / FLAG_LOG


def _labels_dir(image_path: Path, name: str) -> Path:
    return Path(image_path) / "labels" / name


def has_labels(image_path: Path, name: str) -> bool:
    """Whether a finished label image `name` exists under the image."""
    return (_labels_dir(image_path, name) / "zarr.json").exists()


def find_image(path: str | Path) -> Path | None:
    """The cellseg OME-Zarr image a path refers to, or None.

    Cheap: reads a few small metadata files, never pixels.

    Parameters
    ----------
    path : str or Path
        ``<scan>.ome.zarr`` written by cellseg, or its output folder (holding
        ``work/ingest.json`` or exactly one cellseg OME-Zarr image).
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if _is_cellseg_image(path):
        return path
    ingest = path / "work" / "ingest.json"
    if ingest.is_file():
        try:
            image = path / json.loads(ingest.read_text())["image"]
        except (ValueError, KeyError, TypeError):
            image = None
        if image is not None and _is_cellseg_image(image):
            return image
    found = [p for p in sorted(path.glob("*.zarr")) if _is_cellseg_image(p)]
    return found[0] if len(found) == 1 else None


def _is_cellseg_image(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except ValueError:
        return False
    return ATTRS_KEY in attrs and "multiscales" in attrs.get("ome", {})


def review_labels(image_path: Path) -> str:
    """The label image a reviewer sees and edits: the corrected one once it exists."""
    return CORRECTED if has_labels(image_path, CORRECTED) else ORIGINAL


# --------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------


def box_slices(box: Box) -> tuple[slice, ...]:
    """Slices of a box.

    Examples
    --------
    >>> box_slices(((1, 3), (0, 5)))
    (slice(1, 3, None), slice(0, 5, None))
    """
    return tuple(slice(int(a), int(b)) for a, b in box)


def clip_box(box: Box, shape: Sequence[int]) -> Box:
    """Clip a box to ``[0, shape)`` per axis."""
    return tuple(
        (min(max(int(a), 0), int(n)), min(max(int(b), 0), int(n))) for (a, b), n in zip(box, shape)
    )


def grow_box(box: Box, margin: int | Sequence[int], shape: Sequence[int]) -> Box:
    """Grow a box by `margin` pixels on every side (one value or one per axis), clipped."""
    margins = [int(margin)] * len(box) if np.isscalar(margin) else [int(m) for m in margin]
    return clip_box(tuple((a - m, b + m) for (a, b), m in zip(box, margins)), shape)


def union_box(a: Box, b: Box) -> Box:
    """The smallest box holding both boxes."""
    return tuple((min(a0, b0), max(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))


def boxes_intersect(a: Box, b: Box) -> bool:
    """Whether two boxes share at least one pixel."""
    return all(a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in zip(a, b))


def box_from_json(value: Sequence[Sequence[int]]) -> Box:
    """A box from its JSON form ``[[start, stop], ...]``."""
    return tuple((int(a), int(b)) for a, b in value)


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


def pyramid_boxes(box: Box, shapes: Sequence[Sequence[int]]) -> list[Box]:
    """The box of each pyramid level that depends on `box` of level 0.

    Level ``k`` is level ``k - 1`` subsampled as ``[..., ::2, ::2]`` (the label
    pyramid of :func:`cellseg.io.finalize_labels`), so pixel ``j`` of level
    ``k`` is pixel ``2 j`` of level ``k - 1`` in the last two axes; other axes
    are not subsampled.

    Parameters
    ----------
    box : tuple of (start, stop)
        Region of level 0, one pair per axis of the label arrays.
    shapes : sequence of tuple of int
        Shape of each level, level 0 first.

    Returns
    -------
    list of box
        One box per level; an empty box (start == stop) where nothing changes.

    Examples
    --------
    >>> pyramid_boxes(((3, 9), (0, 4)), [(10, 10), (5, 5), (3, 3)])
    [((3, 9), (0, 4)), ((2, 5), (0, 2)), ((1, 3), (0, 1))]
    """
    out = [clip_box(box, shapes[0])]
    for shape in shapes[1:]:
        prev = out[-1]
        level = list(prev)
        for ax in range(len(prev) - 2, len(prev)):
            a, b = prev[ax]
            level[ax] = ((a + 1) // 2, (b + 1) // 2)
        out.append(clip_box(tuple(level), shape))
    return out


# --------------------------------------------------------------------------------------
# Edits of a region: arrays in, arrays out
# --------------------------------------------------------------------------------------


def delete_cells(region: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """Return a copy of `region` with the cells `ids` set to background (0).

    Examples
    --------
    >>> delete_cells(np.array([[1, 2], [2, 3]]), [2])
    array([[1, 0],
           [0, 3]])
    """
    out = np.array(region, copy=True)
    out[np.isin(out, list(ids))] = 0
    return out


def merge_cells(region: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """Return a copy of `region` with the cells `ids` merged into one.

    The merged cell keeps the smallest of the ids; the others are retired.

    Examples
    --------
    >>> merge_cells(np.array([[4, 2], [0, 3]]), [4, 2])
    array([[2, 2],
           [0, 3]])
    """
    ids = sorted(int(i) for i in ids)
    if len(ids) < 2:
        raise ValueError(f"merging needs at least two cells, got {ids}")
    out = np.array(region, copy=True)
    out[np.isin(out, ids)] = ids[0]
    return out


def split_cell(region: np.ndarray, cell_id: int, cut: np.ndarray, new_id: int) -> np.ndarray:
    """Split one cell along a drawn cut.

    The cell's pixels off the cut fall into connected pieces (face
    connectivity); the largest piece keeps `cell_id`, the others get
    ``new_id``, ``new_id + 1``, ... (largest first). Pixels of the cell on the
    cut go to the nearest piece, so the cell's pixels are shared out, none lost.

    Parameters
    ----------
    region : ndarray of int
        Labels of the region.
    cell_id : int
        The cell to split.
    cut : ndarray of bool, same shape
        The drawn line (or surface in 3D) separating the pieces.
    new_id : int
        First id for the new pieces; in the corrections workflow any id not yet
        in the region will do, :func:`apply_edit` gives it a fresh one.

    Returns
    -------
    ndarray
        A copy of `region` with the cell split.

    Raises
    ------
    ValueError
        If the cut does not separate the cell into at least two pieces.

    Examples
    --------
    >>> r = np.zeros((3, 5), np.uint32); r[:, :] = 7
    >>> cut = np.zeros((3, 5), bool); cut[:, 2] = True
    >>> split_cell(r, 7, cut, 9)
    array([[7, 7, 7, 9, 9],
           [7, 7, 7, 9, 9],
           [7, 7, 7, 9, 9]], dtype=uint32)
    """
    from scipy import ndimage as ndi

    cell = np.asarray(region) == cell_id
    cut = np.asarray(cut, bool)
    pieces, n = ndi.label(cell & ~cut)
    if n < 2:
        raise ValueError(f"the cut does not split cell {cell_id} into two or more pieces")
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")  # largest first, ties by first pixel
    ids = np.zeros(n + 1, dtype=np.asarray(region).dtype)
    ids[order[0] + 1] = cell_id
    for k, piece in enumerate(order[1:]):
        ids[piece + 1] = new_id + k
    # cut pixels of the cell take the id of the nearest piece
    _, nearest = ndi.distance_transform_edt(pieces == 0, return_indices=True)
    owner = pieces[tuple(nearest)]
    out = np.array(region, copy=True)
    out[cell] = ids[owner[cell]]
    return out


def paint_cell(
    region: np.ndarray, mask: np.ndarray, new_id: int, *, overwrite: bool = False
) -> np.ndarray:
    """Paint a missed cell.

    Parameters
    ----------
    region : ndarray of int
        Labels of the region.
    mask : ndarray of bool, same shape
        The pixels of the new cell.
    new_id : int
        Its id (:func:`apply_edit` replaces an id new to the region by a fresh one).
    overwrite : bool
        Paint over other cells too; by default only background is painted.

    Examples
    --------
    >>> paint_cell(np.array([[0, 1], [0, 0]]), np.ones((2, 2), bool), 5)
    array([[5, 1],
           [5, 5]])
    """
    out = np.array(region, copy=True)
    mask = np.asarray(mask, bool)
    if not overwrite:
        mask = mask & (out == 0)
    out[mask] = new_id
    return out


def erase(region: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return a copy of `region` with the pixels of `mask` set to background."""
    out = np.array(region, copy=True)
    out[np.asarray(mask, bool)] = 0
    return out


# --------------------------------------------------------------------------------------
# What an edit changed
# --------------------------------------------------------------------------------------


def changed_ids(before: np.ndarray, after: np.ndarray) -> dict[str, list[int]]:
    """The ids an edit of a region touched.

    Parameters
    ----------
    before, after : ndarray of int
        The region before and after the edit.

    Returns
    -------
    dict
        ``removed``: ids no longer in the region; ``added``: ids new to the
        region; ``modified``: ids still there whose pixels changed. Each a
        sorted list; background (0) is never listed.

    Examples
    --------
    >>> changed_ids(np.array([1, 1, 2, 3]), np.array([1, 1, 1, 4]))
    {'removed': [2, 3], 'added': [4], 'modified': [1]}
    """
    before = np.asarray(before)
    after = np.asarray(after)
    diff = before != after
    touched_before = set(np.unique(before[diff]).tolist()) - {0}
    touched_after = set(np.unique(after[diff]).tolist()) - {0}
    present_before = set(np.unique(before).tolist())
    present_after = set(np.unique(after).tolist())
    removed = {i for i in touched_before if i not in present_after}
    added = {i for i in touched_after if i not in present_before}
    modified = (touched_before | touched_after) - removed - added
    return {
        "removed": sorted(int(i) for i in removed),
        "added": sorted(int(i) for i in added),
        "modified": sorted(int(i) for i in modified),
    }


def infer_action(ids: dict[str, list[int]]) -> str:
    """Name an edit from the ids it touched: delete, paint, merge, split, reshape or edit.

    Examples
    --------
    >>> infer_action({"removed": [3], "added": [], "modified": [1]})
    'merge'
    """
    removed, added, modified = (bool(ids[k]) for k in ("removed", "added", "modified"))
    if removed and not added and not modified:
        return "delete"
    if added and not removed and not modified:
        return "paint"
    if removed and modified and not added and len(ids["modified"]) == 1:
        return "merge"
    if added and modified and not removed:
        return "split"
    if modified and not removed and not added:
        return "reshape"
    return "edit"


def canonicalize_edit(
    before: np.ndarray, after: np.ndarray, next_id: int
) -> tuple[np.ndarray, dict[int, int], int]:
    """Give fresh ids to new cells of an edited region.

    * An id in `after` that is not in `before` (a painted cell, whatever value
      the reviewer painted it with) becomes a fresh id ``next_id, next_id + 1, ...``.
    * A cell that was cut in pieces (it only lost pixels, and has more
      connected pieces than before) is split: its largest piece keeps the id,
      each other piece gets a fresh id. Drawing a line with the eraser across a
      cell thus splits it.

    Parameters
    ----------
    before, after : ndarray of int
        The region before and after the edit.
    next_id : int
        The first id never used in the label image.

    Returns
    -------
    after : ndarray
        The region with the fresh ids (a copy).
    id_map : dict of int to list of int
        For each painted id the fresh id it became, and for each split id the
        fresh ids of its other pieces (keys as painted, values in the result).
    next_id : int
        The first id still unused.
    """
    from scipy import ndimage as ndi

    before = np.asarray(before)
    out = np.array(after, dtype=before.dtype, copy=True)
    present_before = set(np.unique(before).tolist())
    id_map: dict[int, list[int]] = {}
    source = np.asarray(after)
    for value in np.unique(source).tolist():
        if value == 0 or value in present_before:
            continue
        out[source == value] = next_id
        id_map[int(value)] = [next_id]
        next_id += 1
    diff = before != out
    for value in sorted(set(np.unique(before[diff]).tolist()) - {0}):
        mine_after = out == value
        if not mine_after.any() or (mine_after & (before != value)).any():
            continue  # removed, or it gained pixels (a merge or a reshape)
        pieces, n = ndi.label(mine_after)
        _, n_before = ndi.label(before == value)
        if n <= max(n_before, 1):
            continue
        sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
        order = np.argsort(-sizes, kind="stable")
        fresh = []
        for piece in order[1:]:
            out[pieces == piece + 1] = next_id
            fresh.append(next_id)
            next_id += 1
        id_map[int(value)] = fresh
    return out, id_map, next_id


def touching_border(region: np.ndarray, ids: Iterable[int], box: Box, shape: Sequence[int]):
    """Ids among `ids` on a face of the region that is not a face of the image.

    Such a cell may go on outside the region; an edit saw only part of it.
    """
    ids = set(int(i) for i in ids)
    found: set[int] = set()
    for ax, ((a, b), n) in enumerate(zip(box, shape)):
        for index, inner in ((0, a > 0), (-1, b < n)):
            if not inner:
                continue
            face = np.take(region, index, axis=ax)
            found |= ids & set(np.unique(face).tolist())
    return sorted(found)


# --------------------------------------------------------------------------------------
# The corrected label image
# --------------------------------------------------------------------------------------


def _open_label_group(image_path: Path, name: str, mode: str = "r") -> zarr.Group:
    import zarr

    path = _labels_dir(image_path, name)
    if not (path / "zarr.json").exists():
        raise InputError(f"{image_path}: has no label image {name!r}; run the stitch stage first")
    return zarr.open_group(str(path), mode=mode)


def label_levels(group: zarr.Group) -> list[zarr.Array]:
    """The arrays of a label group's pyramid, full resolution first."""
    multiscales = dict(group.attrs.get("ome", group.attrs)).get("multiscales") or [{}]
    return [group[d["path"]] for d in multiscales[0].get("datasets", [])]


def max_label_id(image_path: Path, name: str = ORIGINAL) -> int:
    """The largest id the label image may hold, read cheaply where possible.

    For ``cells`` in a cellseg output folder the stitch summary
    (``work/stitch.json``, ``max_id``: every id the stitch gave) bounds the ids
    without reading pixels; otherwise the full-resolution labels are read
    chunk by chunk.
    """
    import dask.array as da

    image_path = Path(image_path)
    outdir = image_path.parent
    stitch = outdir / "work" / "stitch.json"
    if name == ORIGINAL and stitch.exists():
        try:
            return int(json.loads(stitch.read_text())["max_id"])
        except (KeyError, ValueError, TypeError):
            pass
    level0 = label_levels(_open_label_group(image_path, name))[0]
    return int(da.from_zarr(level0).max().compute())


def ensure_corrected(image_path: Path) -> zarr.Group:
    """Open ``labels/cells_corrected`` for writing, creating it from ``labels/cells``.

    On first use the original label group (every pyramid level) is copied to a
    temporary name and moved into place when whole; ``labels/cells`` itself is
    only read. The copy records ``source`` (``"cells"``), a ``uid`` naming this
    corrected label image in the edit log, and ``next_id``, the first id never
    used.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group.

    Returns
    -------
    zarr.Group
        The corrected label group, writable.
    """
    import zarr

    from cellseg.io import _replace_path

    image_path = Path(image_path)
    target = _labels_dir(image_path, CORRECTED)
    if not (target / "zarr.json").exists():
        source = _open_label_group(image_path, ORIGINAL)
        source_attrs = dict(source.attrs.get(ATTRS_KEY, {}))
        first_id = max_label_id(image_path) + 1
        tmp = target.with_name(f".{CORRECTED}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(_labels_dir(image_path, ORIGINAL), tmp)
        group = zarr.open_group(str(tmp), mode="r+")
        ome = dict(group.attrs["ome"])
        multiscales = [dict(m) for m in ome["multiscales"]]
        multiscales[0]["name"] = CORRECTED
        ome["multiscales"] = multiscales
        group.attrs.update(
            {
                "ome": ome,
                ATTRS_KEY: {
                    "source": ORIGINAL,
                    "source_attrs": source_attrs,
                    "uid": uuid.uuid4().hex,
                    "created": now(),
                    "next_id": first_id,
                },
            }
        )
        _replace_path(tmp, target)
        _list_label(image_path, CORRECTED)
    return zarr.open_group(str(target), mode="r+")


def _list_label(image_path: Path, name: str) -> None:
    import zarr

    group = zarr.open_group(str(Path(image_path) / "labels"), mode="r+")
    ome = dict(group.attrs.get("ome", {}))
    listed = list(ome.get("labels", []))
    if name not in listed:
        listed.append(name)
    ome["labels"] = listed
    group.attrs.update({"ome": ome})


def corrected_state(image_path: Path) -> dict:
    """``uid`` and ``next_id`` of the corrected labels, and how many edits the log holds.

    Returns an empty dict when there is no corrected label image yet.
    """
    if not has_labels(image_path, CORRECTED):
        return {}
    attrs = dict(_open_label_group(image_path, CORRECTED).attrs.get(ATTRS_KEY, {}))
    edits = read_edits(image_path, uid=attrs.get("uid"))
    next_id = max([int(attrs.get("next_id", 1))] + [int(e.get("next_id", 1)) for e in edits])
    return {"uid": attrs.get("uid"), "next_id": next_id, "n_edits": len(edits)}


def next_free_id(image_path: Path) -> int:
    """The id a new cell would get now (the corrected labels need not exist yet)."""
    state = corrected_state(image_path)
    return state["next_id"] if state else max_label_id(image_path) + 1


def read_region(image_path: Path, box: Box, labels: str | None = None) -> np.ndarray:
    """Read a full-resolution region of a label image into memory.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group.
    box : tuple of (start, stop)
        The region, in pixels.
    labels : str, optional
        Label image name; default the one under review
        (:func:`review_labels`: ``cells_corrected`` once it exists, else ``cells``).

    Returns
    -------
    ndarray of uint32
    """
    labels = labels or review_labels(image_path)
    level0 = label_levels(_open_label_group(image_path, labels))[0]
    return np.asarray(level0[box_slices(box)])


def update_pyramid(group: zarr.Group, box: Box) -> None:
    """Recompute the coarser levels of a label group where level 0's `box` changed."""
    levels = label_levels(group)
    boxes = pyramid_boxes(box, [lv.shape for lv in levels])
    for k in range(1, len(levels)):
        target = boxes[k]
        if any(a >= b for a, b in target):
            break
        ndim = len(target)
        src = tuple(
            slice(2 * a, 2 * b, 2) if ax >= ndim - 2 else slice(a, b)
            for ax, (a, b) in enumerate(target)
        )
        levels[k][box_slices(target)] = levels[k - 1][src]


def apply_edit(
    image_path: Path,
    box: Box,
    after: np.ndarray,
    *,
    before: np.ndarray | None = None,
    user: str | None = None,
    action: str | None = None,
    note: str = "",
) -> dict | None:
    """Write an edited region to ``labels/cells_corrected`` and log it.

    This is the one path by which corrections reach the disk; the napari
    widget calls it with the region the reviewer edited.

    Steps: create ``cells_corrected`` from ``cells`` if needed
    (:func:`ensure_corrected`); check that the region on disk still equals
    `before`; give new cells fresh ids and split cells cut in pieces
    (:func:`canonicalize_edit`); write level 0 of the region and the pyramid
    levels above it (:func:`update_pyramid`); store the new ``next_id``; and
    append one line to the edit log:

    ``edit`` (1, 2, ... per corrected label image), ``time`` (UTC, ISO 8601),
    ``user``, ``image``, ``labels``, ``labels_uid``, ``action``, ``note``,
    ``region`` (``[[start, stop], ...]`` in pixels), ``removed``, ``added``,
    ``modified`` (ids, see :func:`changed_ids`), ``id_map`` (painted id → fresh
    ids), ``partial`` (changed ids that reach the region's border and may go
    on outside it), ``changed_pixels`` and ``next_id``.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group.
    box : tuple of (start, stop)
        The region, in full-resolution pixels.
    after : ndarray of int
        The edited region, shape of the box.
    before : ndarray of int, optional
        The region as it was read for editing (:func:`read_region`); when given
        and the region on disk differs (another edit was applied meanwhile),
        nothing is written and :class:`EditConflict` is raised.
    user : str, optional
        Who made the edit; default ``$CELLSEG_USER``, else the login name.
    action : str, optional
        What was done (``delete``, ``merge``, ``split``, ``paint``, ``erase``,
        ...); default inferred from the ids (:func:`infer_action`).
    note : str
        Free text kept in the log.

    Returns
    -------
    dict or None
        The log record, or None when the edit changed nothing.

    Raises
    ------
    ValueError
        If `after` does not have the box's shape.
    EditConflict
        If the region on disk is not `before`.
    """
    image_path = Path(image_path)
    after = np.asarray(after)
    shape = tuple(b - a for a, b in box)
    if after.shape != shape:
        raise ValueError(f"edited region has shape {after.shape}, the box {box} has {shape}")
    if before is not None:
        current = read_region(image_path, box)
        if not np.array_equal(current, before):
            raise EditConflict(
                f"{image_path}: region {list(map(list, box))} changed since it was read for "
                "editing; read it again and redo the edit"
            )
    if before is not None and np.array_equal(np.asarray(before), after):
        return None
    group = ensure_corrected(image_path)
    state = corrected_state(image_path)
    levels = label_levels(group)
    current = np.asarray(levels[0][box_slices(box)])
    if before is None and np.array_equal(current, after):
        return None
    new, id_map, next_id = canonicalize_edit(current, after, state["next_id"])
    ids = changed_ids(current, new)
    if not any(ids.values()):
        return None
    levels[0][box_slices(box)] = new
    update_pyramid(group, box)
    attrs = dict(group.attrs.get(ATTRS_KEY, {}))
    attrs["next_id"] = next_id
    group.attrs.update({ATTRS_KEY: attrs})
    touched = ids["removed"] + ids["added"] + ids["modified"]
    record = {
        "edit": state["n_edits"] + 1,
        "time": now(),
        "user": user or default_user(),
        "image": image_path.name,
        "labels": CORRECTED,
        "labels_uid": state["uid"],
        "action": action or infer_action(ids),
        "note": str(note),
        "region": [[int(a), int(b)] for a, b in box],
        **ids,
        "id_map": {str(k): v for k, v in id_map.items()},
        "partial": sorted(
            set(touching_border(current, touched, box, levels[0].shape))
            | set(touching_border(new, touched, box, levels[0].shape))
        ),
        "changed_pixels": int(np.count_nonzero(current != new)),
        "next_id": next_id,
    }
    _append_jsonl(edit_log_path(image_path), record)
    return record


def read_edits(image_path: Path, uid: str | None = None) -> list[dict]:
    """The edit log records of an image, oldest first.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group.
    uid : str, optional
        Only the records of the corrected label image with this uid; default the
        current one (records of a corrected label image that was since deleted
        stay in the log but are not returned).
    """
    image_path = Path(image_path)
    if uid is None:
        if not has_labels(image_path, CORRECTED):
            return []
        attrs = _open_label_group(image_path, CORRECTED).attrs.get(ATTRS_KEY, {})
        uid = dict(attrs).get("uid")
    return [
        r
        for r in _read_jsonl(edit_log_path(image_path))
        if r.get("image") == image_path.name and r.get("labels_uid") == uid
    ]


def edited_ids(edits: Iterable[dict]) -> set[int]:
    """Every id that the given edits removed, added or modified."""
    out: set[int] = set()
    for e in edits:
        for key in ("removed", "added", "modified"):
            out.update(int(i) for i in e.get(key, []))
    return out


# --------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------


def flag_cell(
    image_path: Path,
    cell_id: int,
    reason: str = "",
    *,
    flagged: bool = True,
    user: str | None = None,
    labels: str | None = None,
) -> dict:
    """Flag a cell (or clear its flag) in ``OUTDIR/review/flags.jsonl``.

    Returns
    -------
    dict
        The record written: ``time``, ``user``, ``image``, ``labels``,
        ``cell_id``, ``flagged``, ``reason``.
    """
    image_path = Path(image_path)
    record = {
        "time": now(),
        "user": user or default_user(),
        "image": image_path.name,
        "labels": labels or review_labels(image_path),
        "cell_id": int(cell_id),
        "flagged": bool(flagged),
        "reason": str(reason),
    }
    _append_jsonl(flag_log_path(image_path), record)
    return record


def read_flags(image_path: Path) -> pd.DataFrame:
    """Current flags of an image: ``cell_id``, ``flagged``, ``flag_reason`` (last record wins).

    Only cells whose latest record flags them are returned.
    """
    import pandas as pd

    image_path = Path(image_path)
    latest: dict[int, dict] = {}
    for r in _read_jsonl(flag_log_path(image_path)):
        if r.get("image") == image_path.name and "cell_id" in r:
            latest[int(r["cell_id"])] = r
    rows = [
        (cid, True, str(r.get("reason", ""))) for cid, r in sorted(latest.items()) if r["flagged"]
    ]
    return pd.DataFrame(
        {
            "cell_id": pd.Series([r[0] for r in rows], dtype="uint32"),
            "flagged": pd.Series([r[1] for r in rows], dtype=bool),
            "flag_reason": pd.Series([r[2] for r in rows], dtype=object),
        }
    )


# --------------------------------------------------------------------------------------
# Re-measuring the cells an edit touched
# --------------------------------------------------------------------------------------


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
    import pandas as pd

    from cellseg import measure as measure_module

    ids = edited_ids(edits)
    if not ids:
        return previous.copy()
    shape = tuple(int(n) for n in label_image.shape)
    spacing = tuple(float(s) for s in spacing)
    options = {k: v for k, v in options.items() if k not in ("chunks", "show_progress")}
    ring_um = float(
        options.get("ring_width_um", getattr(measure_module, "DEFAULT_RING_WIDTH_UM", 0.0))
    )
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
        part = measure_module.measure_cells(
            labels, intensity, spacing=spacing, axes=axes, **options
        )
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
    if "n_neighbors" in table and hasattr(measure_module, "neighbor_features"):
        radius = float(
            options.get(
                "neighbor_radius_um", getattr(measure_module, "DEFAULT_NEIGHBOR_RADIUS_UM", 0.0)
            )
        )
        centroids = np.stack([table[f"centroid_{a}_um"].to_numpy() for a in axes], axis=1)
        count, dist, nearest = measure_module.neighbor_features(
            centroids, table["cell_id"].to_numpy(), radius
        )
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


def merge_boxes(boxes: dict[Any, Box]) -> list[tuple[Box, list[Any]]]:
    """Join overlapping boxes until none overlap.

    Parameters
    ----------
    boxes : dict
        Boxes by key.

    Returns
    -------
    list of (box, keys)
        Each joined box (the union of its members) with the keys it holds, sorted.

    Examples
    --------
    >>> merge_boxes({1: ((0, 4), (0, 4)), 2: ((3, 6), (3, 6)), 3: ((9, 10), (0, 1))})
    [(((0, 6), (0, 6)), [1, 2]), (((9, 10), (0, 1)), [3])]
    """
    clusters: list[tuple[Box, list[Any]]] = []
    for cid, box in sorted(boxes.items()):
        members = [cid]
        merged = True
        while merged:
            merged = False
            for k, (other, ids) in enumerate(clusters):
                if boxes_intersect(box, other):
                    box = union_box(box, other)
                    members += ids
                    del clusters[k]
                    merged = True
                    break
        clusters.append((box, sorted(members)))
    return sorted(clusters)


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
        see :func:`cellseg.pipeline.measure`). A previous table is used only
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
    import pandas as pd

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
    import pyarrow.parquet as pq

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


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def default_user() -> str:
    """Who is editing: ``$CELLSEG_USER``, else the login name, else ``"unknown"``."""
    name = os.environ.get("CELLSEG_USER")
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def now() -> str:
    """The current time, UTC, ISO 8601 with milliseconds (``2026-01-01T12:00:00.000Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line in a single write, flushed to disk (the log is append-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (an interrupted write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
