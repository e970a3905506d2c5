"""Review of a label image: region edits, the edit log, flags, re-measuring, training data.

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
full-resolution label image, one pair per spatial axis; their geometry
(:data:`~cellseg.tiling.Box`, :func:`~cellseg.tiling.box_slices`, ...) is
that of :mod:`cellseg.tiling`.

Where things are:

====================================  ==================================================
:mod:`~cellseg.review.paths`          label image names, the review folder, the image
:mod:`~cellseg.review.edits`          region edits on arrays; what an edit changed
:mod:`~cellseg.review.logs`           the edit and flag logs (append-only JSON lines)
:mod:`~cellseg.review.store`          ``labels/cells_corrected``: created, read, edited
:mod:`~cellseg.review.presence`       who else reviews a result; one edit written at a time
:mod:`~cellseg.review.tables`         cells by box; re-measuring the edited cells
:mod:`~cellseg.review.training`       ``cellseg export-training``: image / label pairs
====================================  ==================================================
"""

from cellseg.review.edits import (
    canonicalize_edit,
    changed_ids,
    delete_cells,
    erase,
    infer_action,
    merge_cells,
    paint_cell,
    split_cell,
    touching_border,
)
from cellseg.review.logs import (
    default_user,
    edited_ids,
    flag_cell,
    now,
    read_edits,
    read_flags,
)
from cellseg.review.paths import (
    CORRECTED,
    ORIGINAL,
    edit_log_path,
    find_image,
    flag_log_path,
    has_labels,
    review_dir,
    review_labels,
    table_path,
)
from cellseg.review.presence import ReviewPresence, describe_others, edit_lock
from cellseg.review.store import (
    EditConflict,
    apply_edit,
    corrected_state,
    ensure_corrected,
    label_levels,
    max_label_id,
    next_free_id,
    pyramid_boxes,
    read_region,
    update_pyramid,
)
from cellseg.review.tables import (
    box_around_cells,
    cell_box,
    cells_in_box,
    measure_base,
    remeasure,
)
from cellseg.review.training import export_training, read_training_index, training_regions

# The box type and slicing that review's functions take, for the napari widget.
from cellseg.tiling import Box, box_slices

__all__ = [
    "CORRECTED",
    "ORIGINAL",
    "Box",
    "EditConflict",
    "ReviewPresence",
    "apply_edit",
    "box_around_cells",
    "box_slices",
    "canonicalize_edit",
    "cell_box",
    "cells_in_box",
    "changed_ids",
    "corrected_state",
    "default_user",
    "delete_cells",
    "describe_others",
    "edit_lock",
    "edit_log_path",
    "edited_ids",
    "ensure_corrected",
    "erase",
    "export_training",
    "find_image",
    "flag_cell",
    "flag_log_path",
    "has_labels",
    "infer_action",
    "label_levels",
    "max_label_id",
    "measure_base",
    "merge_cells",
    "next_free_id",
    "now",
    "paint_cell",
    "pyramid_boxes",
    "read_edits",
    "read_flags",
    "read_region",
    "read_training_index",
    "remeasure",
    "review_dir",
    "review_labels",
    "split_cell",
    "table_path",
    "touching_border",
    "training_regions",
    "update_pyramid",
]
