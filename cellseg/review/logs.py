"""The append-only logs of a review: edits and flags, one JSON record a line.

Every edit applied (:func:`cellseg.review.store.apply_edit`) appends one line
to ``OUTDIR/review/edits.jsonl``; flags (a reviewer's "look at this cell
again", with a reason) go to ``OUTDIR/review/flags.jsonl``, where the last
line for a cell wins. A line is written in a single flushed write, and a torn
last line (an interrupted write) is skipped when reading.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cellseg.review.paths import (
    ATTRS_KEY,
    CORRECTED,
    edit_log_path,
    flag_log_path,
    has_labels,
    open_label_group,
    review_labels,
)


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


def append_jsonl(path: Path, record: dict) -> None:
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


def read_jsonl(path: Path) -> list[dict]:
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
        attrs = open_label_group(image_path, CORRECTED).attrs.get(ATTRS_KEY, {})
        uid = dict(attrs).get("uid")
    return [
        r
        for r in read_jsonl(edit_log_path(image_path))
        if r.get("image") == image_path.name and r.get("labels_uid") == uid
    ]


def edited_ids(edits: Iterable[dict]) -> set[int]:
    """Every id that the given edits removed, added or modified."""
    out: set[int] = set()
    for e in edits:
        for key in ("removed", "added", "modified"):
            out.update(int(i) for i in e.get(key, []))
    return out


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
    append_jsonl(flag_log_path(image_path), record)
    return record


def read_flags(image_path: Path) -> pd.DataFrame:
    """Current flags of an image: ``cell_id``, ``flagged``, ``flag_reason`` (last record wins).

    Only cells whose latest record flags them are returned.
    """
    image_path = Path(image_path)
    latest: dict[int, dict] = {}
    for r in read_jsonl(flag_log_path(image_path)):
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
