"""Classes a reviewer gives to cells: the append-only log ``OUTDIR/review/class_labels.jsonl``.

One JSON object a line::

    {"cell_id": 12, "class": "tumour", "labels": "cells_corrected",
     "time": "2026-01-01T12:00:00.000Z", "user": "ana"}

A later line for the same cell overrides an earlier one, and ``"class": null``
removes the cell's label. Lines are appended in a single flushed write; when
reading, a torn last line (a write interrupted before its newline) is skipped
and cut off before the next append, and any other damage is an error naming
the line (the rules of :mod:`cellseg.review.logs`).

The napari widget writes these labels (:func:`append_class_label`);
``cellseg classify OUTDIR --train`` reads them (:func:`read_class_labels`) to
fit a classifier on the labelled cells.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cellseg.errors import InputError
from cellseg.review.logs import append_jsonl, default_user, now, read_jsonl
from cellseg.review.paths import CORRECTED, ORIGINAL, REVIEW_DIR, find_image, review_labels

#: File name of the class label log under ``OUTDIR/review``.
CLASS_LOG = "class_labels.jsonl"
#: Label images a class label may refer to.
LABEL_IMAGES = (ORIGINAL, CORRECTED)


def class_log_path(outdir: Path) -> Path:
    """The class label log of an output folder: ``OUTDIR/review/class_labels.jsonl``.

    Examples
    --------
    >>> class_log_path(Path("out")).as_posix()
    'out/review/class_labels.jsonl'
    """
    return Path(outdir) / REVIEW_DIR / CLASS_LOG


def _default_labels(outdir: Path) -> str:
    """The label image a reviewer sees: the corrected one once it exists."""
    image = find_image(outdir)
    return review_labels(image) if image is not None else ORIGINAL


def append_class_label(
    outdir: Path,
    cell_id: int,
    klass: str | None,
    *,
    labels: str | None = None,
    user: str | None = None,
) -> dict:
    """Give a cell a class (or remove its class) in the class label log.

    Parameters
    ----------
    outdir : Path
        The scan's output folder.
    cell_id : int
        The cell's id (its label value).
    klass : str or None
        The class name; None removes the cell's label.
    labels : {"cells", "cells_corrected"}, optional
        The label image the id refers to; default the one a reviewer sees (the
        corrected one once it exists).
    user : str, optional
        Who labelled; default :func:`cellseg.review.logs.default_user`.

    Returns
    -------
    dict
        The record written: ``cell_id``, ``class``, ``labels``, ``time``, ``user``.

    Raises
    ------
    InputError
        If the class is an empty string or not a string, the id is not a
        positive integer, or `labels` is not a known label image.
    """
    outdir = Path(outdir)
    if klass is not None and (not isinstance(klass, str) or not klass.strip()):
        raise InputError(f"class label {klass!r}: a class is a non-empty string (or None)")
    try:
        cid = int(cell_id)
    except (TypeError, ValueError):
        raise InputError(f"cell id {cell_id!r}: not an integer") from None
    if cid <= 0 or cid != cell_id:
        raise InputError(f"cell id {cell_id!r}: a cell id is a positive integer")
    labels = labels or _default_labels(outdir)
    if labels not in LABEL_IMAGES:
        raise InputError(f"labels {labels!r}: must be one of {', '.join(LABEL_IMAGES)}")
    record = {
        "cell_id": cid,
        "class": klass.strip() if klass is not None else None,
        "labels": labels,
        "time": now(),
        "user": user or default_user(),
    }
    append_jsonl(class_log_path(outdir), record)
    return record


def read_class_label_records(outdir: Path) -> list[dict]:
    """Every record of the class label log, oldest first, checked.

    Raises
    ------
    InputError
        If a line is not a JSON record (except a torn last line, skipped), or a
        record lacks an integer ``cell_id`` or has a ``class`` that is neither a
        string nor null: the message names the file and line.
    """
    path = class_log_path(outdir)
    records = read_jsonl(path)
    if not records:
        return []
    # read_jsonl returns one record per non-blank line (a torn last line aside),
    # so the i-th record came from the i-th non-blank line.
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    numbers = [n for n, line in enumerate(lines, start=1) if line.strip()]
    for number, record in zip(numbers, records):
        cid = record.get("cell_id")
        klass = record.get("class")
        problem = None
        if isinstance(cid, bool) or not isinstance(cid, int) or cid <= 0:
            problem = f"cell_id {cid!r} is not a positive integer"
        elif "class" not in record:
            problem = "the record has no class"
        elif klass is not None and not isinstance(klass, str):
            problem = f"class {klass!r} is neither a string nor null"
        elif "labels" in record and record["labels"] not in LABEL_IMAGES:
            problem = f"labels {record['labels']!r} is not one of {', '.join(LABEL_IMAGES)}"
        if problem:
            raise InputError(
                f"{path}, line {number}: {problem}; the class label log is damaged. Fix or "
                "delete that line."
            )
    return records


def read_class_labels(outdir: Path, *, labels: str | None = None) -> dict[int, str]:
    """The current class of every labelled cell: ``{cell_id: class}``.

    The last line for a cell wins; a ``null`` class removes the label.

    Parameters
    ----------
    outdir : Path
        The scan's output folder.
    labels : str, optional
        Only the records of this label image (``cells`` or ``cells_corrected``);
        default every record (ids of unchanged cells are the same in both).

    Raises
    ------
    InputError
        If the log is damaged (see :func:`read_class_label_records`).
    """
    current: dict[int, str] = {}
    for record in read_class_label_records(outdir):
        if labels is not None and record.get("labels", ORIGINAL) != labels:
            continue
        cid = int(record["cell_id"])
        if record.get("class") is None:
            current.pop(cid, None)
        else:
            current[cid] = str(record["class"])
    return dict(sorted(current.items()))


def class_label_table(outdir: Path, *, labels: str | None = None) -> pd.DataFrame:
    """The current class labels as a table: ``cell_id`` (uint32) and ``class``, by id."""
    current = read_class_labels(outdir, labels=labels)
    return pd.DataFrame(
        {
            "cell_id": pd.Series(list(current), dtype="uint32"),
            "class": pd.Series(list(current.values()), dtype=object),
        }
    )
