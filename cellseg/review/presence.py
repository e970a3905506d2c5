"""Who else is reviewing a result, and one edit at a time on disk.

Each open review (the napari widget on a result) keeps a small file
``OUTDIR/review/reviewers/<host>-<pid>-<token>.lock`` naming its reviewer,
host, process and start time, refreshed by a heartbeat
(:class:`cellseg.lock.FileLock`). A second reviewer who opens the same result
is told who else is there (:meth:`ReviewPresence.join`). A reviewer counts as
gone when their process on this host no longer runs or their file was not
refreshed for :data:`cellseg.lock.STALE_S` seconds.

Both may edit: :func:`edit_lock` makes the check "is the region on disk
still what I read?" and the write one step, so of two edits of one region
the second is refused (:class:`~cellseg.review.store.EditConflict`) and stays
open to redo, and edits of different regions are both kept.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from cellseg.atomic import host_name
from cellseg.lock import FileLock, Holder, hold, holder_gone, lock_wait, read_holder
from cellseg.review.logs import default_user
from cellseg.review.paths import review_dir

#: Seconds an edit waits for another reviewer's edit being written.
EDIT_WAIT_S = 60.0
_PREFIX = "napari review by "


def reviewers_dir(image_path: Path) -> Path:
    """Folder of the open reviews' files: ``OUTDIR/review/reviewers``."""
    return review_dir(image_path) / "reviewers"


@contextlib.contextmanager
def edit_lock(image_path: Path) -> Iterator[None]:
    """Hold ``OUTDIR/review/locks/edit.lock`` while one edit is checked and written."""
    path = review_dir(image_path) / "locks" / "edit.lock"
    with lock_wait(EDIT_WAIT_S), hold(path, f"edits of {image_path}", command="edit"):
        yield


def reviewer_name(holder: Holder) -> str:
    """The reviewer a presence file names (its user), else its process."""
    if holder.command.startswith(_PREFIX):
        return holder.command[len(_PREFIX) :]
    return f"process {holder.pid}"


class ReviewPresence:
    """This process's open review of a result.

    Parameters
    ----------
    image_path : Path
        The result's OME-Zarr image.
    user : str, optional
        The reviewer (default :func:`cellseg.review.logs.default_user`).

    Examples
    --------
    >>> import tempfile
    >>> image = Path(tempfile.mkdtemp()) / "s.ome.zarr"
    >>> first, second = ReviewPresence(image, "ann"), ReviewPresence(image, "bo")
    >>> first.join(), [reviewer_name(h) for h in second.join()]
    ([], ['ann'])
    >>> [reviewer_name(h) for h in first.others()]
    ['bo']
    >>> second.leave(); first.others()
    []
    >>> first.leave()
    """

    def __init__(self, image_path: Path, user: str | None = None) -> None:
        self.image_path = Path(image_path)
        self.user = user or default_user()
        name = f"{host_name()}-{secrets.token_hex(6)}.lock"
        self._lock = FileLock(
            reviewers_dir(self.image_path) / name,
            f"review of {self.image_path}",
            command=_PREFIX + self.user,
        )
        self.joined = False

    def join(self) -> list[Holder]:
        """Announce this review; the other reviewers of the result now (oldest first)."""
        if not self.joined:
            self._lock.acquire(wait=0)
            self.joined = True
        return self.others()

    def others(self) -> list[Holder]:
        """The other live reviews of the result, oldest first."""
        found = []
        folder = reviewers_dir(self.image_path)
        for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
            if path == self._lock.path:
                continue
            holder = read_holder(path)
            try:
                mtime_ns = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue  # left just now
            if holder is not None and not holder_gone(holder, mtime_ns):
                found.append(holder)
        return sorted(found, key=lambda h: h.started)

    def leave(self) -> None:
        """End this review (its file is removed)."""
        if self.joined:
            self._lock.release()
            self.joined = False


def describe_others(others: list[Holder]) -> str:
    """One line for a reviewer about the others reviewing the same result ('' for none)."""
    if not others:
        return ""
    who = "; ".join(f"{reviewer_name(h)} (host {h.host}, since {h.started})" for h in others)
    return (
        f"also reviewing this result: {who}. Edits of both are kept; an edit of a region "
        "the other changed meanwhile is refused and stays open to redo."
    )
