"""Edits of a region of a label image: arrays in, arrays out.

A reviewer's region (a box of the scan) is edited as an ordinary array:
delete, merge, split, paint, erase. :func:`changed_ids` and
:func:`infer_action` say what an edit did; :func:`canonicalize_edit` gives new
cells fresh ids. Nothing here reads or writes files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from cellseg.tiling import Box


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
