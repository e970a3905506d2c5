"""The append-only logs of a review: edits and flags, one JSON record a line.

Every edit applied (:func:`cellseg.review.store.apply_edit`) appends one line
to ``OUTDIR/review/edits.jsonl``; flags (a reviewer's "look at this cell
again", with a reason) go to ``OUTDIR/review/flags.jsonl``, where the last
line for a cell wins. A line is written in a single flushed write. A torn last
line (a write interrupted before its newline) is skipped when reading and cut
off before the next append, so the log stays whole; any other damage (a line
that is not a JSON record, anywhere but a torn end) is an error naming the line:
edits are never skipped silently.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cellseg.atomic import read_at
from cellseg.errors import InputError
from cellseg.review.paths import (
    ATTRS_KEY,
    CORRECTED,
    edit_log_path,
    flag_log_path,
    has_labels,
    open_label_group,
    review_labels,
)

log = logging.getLogger("cellseg")


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
    """Append one JSON line in a single write, flushed to disk (the log is append-only).

    A torn last line left by an interrupted write is cut off first (it was
    never a whole record), so that the new record starts a line of its own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _cut_torn_tail(fd, path)
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_torn_tail(fd: int, path: Path) -> None:
    """Truncate the file after its last newline when it does not end with one."""
    size = os.fstat(fd).st_size
    if size == 0 or _read(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = _read(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    log.warning("%s: cutting off a torn last line (an interrupted write)", path)
    os.ftruncate(fd, end)


def _read(fd: int, size: int, offset: int) -> bytes:
    buffer = bytearray(size)
    got = read_at(fd, memoryview(buffer), offset)
    return bytes(buffer[:got])


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file, oldest first.

    A torn last line (no newline at its end, and not a whole record) is skipped.

    Raises
    ------
    InputError
        If any other line is not a JSON object: the message names the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)  # the text after the last newline
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn:
                log.warning("%s: skipping a torn last line (an interrupted write)", path)
                continue
            raise InputError(
                f"{path}, line {number}: not a JSON record ({exc.msg}); the log is damaged. "
                "Restore it from a backup, or delete that line if you accept losing its entry."
            ) from None
        if not isinstance(record, dict):
            raise InputError(
                f"{path}, line {number}: a JSON {type(record).__name__}, not a record; the log "
                "is damaged. Restore it from a backup, or delete that line if you accept "
                "losing its entry."
            )
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
