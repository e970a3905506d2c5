"""The corrected label image in the OME-Zarr: created on the first edit, edited region by region.

Edits never touch ``labels/cells``: the first one copies it to
``labels/cells_corrected`` (:func:`ensure_corrected`) and every edit goes
there (:func:`apply_edit`), together with the pyramid of ``cells_corrected``,
updated for the edited region only, and one line in the edit log.

Ids: a cell keeps its id wherever it is unchanged; a new cell always gets a
fresh id, larger than any id the label image has ever held (the counter
``next_id`` is kept in the attributes of ``cells_corrected`` and in the log),
so an id is never reused for a different cell.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from cellseg.atomic import replace_path, temp_tag
from cellseg.errors import CellsegError
from cellseg.review.edits import canonicalize_edit, changed_ids, infer_action, touching_border
from cellseg.review.logs import append_jsonl, default_user, now, read_edits
from cellseg.review.paths import (
    ATTRS_KEY,
    CORRECTED,
    ORIGINAL,
    edit_log_path,
    has_labels,
    labels_dir,
    open_label_group,
    review_labels,
)
from cellseg.review.presence import edit_lock
from cellseg.tiling import Box, box_slices, clip_box


class EditConflict(CellsegError):
    """The region changed on disk since it was read for editing."""


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
    image_path = Path(image_path)
    outdir = image_path.parent
    stitch = outdir / "work" / "stitch.json"
    if name == ORIGINAL and stitch.exists():
        try:
            return int(json.loads(stitch.read_text())["max_id"])
        except (KeyError, ValueError, TypeError):
            pass
    level0 = label_levels(open_label_group(image_path, name))[0]
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
    image_path = Path(image_path)
    target = labels_dir(image_path, CORRECTED)
    if not (target / "zarr.json").exists():
        source = open_label_group(image_path, ORIGINAL)
        source_attrs = dict(source.attrs.get(ATTRS_KEY, {}))
        first_id = max_label_id(image_path) + 1
        tmp = target.with_name(f".{CORRECTED}.tmp-{temp_tag()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(labels_dir(image_path, ORIGINAL), tmp)
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
        replace_path(tmp, target)
        _list_label(image_path, CORRECTED)
    return zarr.open_group(str(target), mode="r+")


def _list_label(image_path: Path, name: str) -> None:
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
    attrs = dict(open_label_group(image_path, CORRECTED).attrs.get(ATTRS_KEY, {}))
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
    level0 = label_levels(open_label_group(image_path, labels))[0]
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
    cellseg.lock.LockedError
        If another reviewer's edit held the edit lock for more than a minute.
    """
    image_path = Path(image_path)
    after = np.asarray(after)
    shape = tuple(b - a for a, b in box)
    if after.shape != shape:
        raise ValueError(f"edited region has shape {after.shape}, the box {box} has {shape}")
    with edit_lock(image_path):  # another reviewer's edit is not written in between
        return _apply_locked(image_path, box, after, before, user, action, note)


def _apply_locked(image_path, box, after, before, user, action, note) -> dict | None:
    """:func:`apply_edit` once the edit lock is held."""
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
    append_jsonl(edit_log_path(image_path), record)
    return record
