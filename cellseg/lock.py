"""Locks on what a command writes, safe on a cluster's shared filesystem.

A lock is a small JSON file (e.g. ``OUTDIR/work/locks/stitch.lock``) naming its
holder: host, process id, start time and a random token. It is created whole
under a unique name and then hard-linked to the lock's name, which fails when
the lock exists; this is atomic on local filesystems and on NFS alike, and
needs no ``fcntl`` locks (which many cluster filesystems do not honour).
Where hard links are not supported, ``O_CREAT | O_EXCL`` is used instead.

While held, a heartbeat thread touches the lock every :data:`HEARTBEAT_S`
seconds. A lock is *stale*, and taken over, when its holder is provably gone:

* it names this host and a process id that no longer runs, or
* its heartbeat stopped: the file did not change for :data:`STALE_S` seconds,
  by this process's own clock while it waits, or by the file's modification
  time (so cluster nodes' clocks must agree to well within :data:`STALE_S`,
  as NTP keeps them).

What is locked (:func:`locked`, on the stage functions): each stage locks the
output it writes, ``work/locks/<stage>.lock`` (``segment_tiles-<batch>`` per
batch, ``measure-<labels>`` per label image), so the workflow's own jobs on
different batches of one scan, on one node or several, run side by side,
while two runs of one stage on one OUTDIR never write at once. ``cellseg
segment`` (all stages in one process) also holds ``work/locks/run.lock``, so
a second ``cellseg segment`` into the same OUTDIR is refused (or waits) as a
whole.

A second command waits for a held lock up to its ``wait`` seconds (default
0: it refuses at once) and then raises :class:`LockedError`, whose message
names the holder. Taking over a stale lock is serialised by a second,
short-lived lock, and records the gone holder so that its temporaries may be
removed (:func:`cellseg.atomic.declare_gone`).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import inspect
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cellseg.atomic import declare_gone, host_name, pid_alive, remove_stale_siblings, temp_tag
from cellseg.errors import CellsegError
from cellseg.layout import work_dir

__all__ = [
    "HEARTBEAT_S",
    "STALE_S",
    "FileLock",
    "LockedError",
    "hold",
    "holder_gone",
    "lock_path",
    "lock_wait",
    "locked",
    "read_holder",
]

log = logging.getLogger("cellseg")

#: Seconds between two refreshes of a held lock.
HEARTBEAT_S = 10.0
#: Seconds without a refresh after which a lock's holder is taken to be gone.
STALE_S = 120.0
#: Seconds between two looks at a lock that another run holds.
POLL_S = 0.5

# Seconds a command waits for a held lock (the command line's --wait-lock).
_WAIT: contextvars.ContextVar[float] = contextvars.ContextVar("cellseg_lock_wait", default=0.0)


class LockedError(CellsegError):
    """Another run holds a lock on what this command would write."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says."""

    host: str
    pid: int
    started: str
    token: str
    command: str = ""

    def describe(self) -> str:
        what = f" ({self.command})" if self.command else ""
        return f"process {self.pid} on host {self.host}{what}, since {self.started}"


@contextlib.contextmanager
def lock_wait(seconds: float) -> Iterator[None]:
    """Locks taken inside the block wait up to `seconds` for a holder to finish."""
    token = _WAIT.set(max(0.0, float(seconds)))
    try:
        yield
    finally:
        _WAIT.reset(token)


def read_holder(path: Path) -> Holder | None:
    """The holder named by the lock file `path`; None when there is none or it is unreadable."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return Holder(
            host=str(record["host"]),
            pid=int(record["pid"]),
            started=str(record["started"]),
            token=str(record["token"]),
            command=str(record.get("command", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holder_gone(
    holder: Holder | None,
    mtime_ns: int,
    *,
    unchanged_s: float = 0.0,
    stale_s: float = STALE_S,
    own_token: str | None = None,
) -> bool:
    """Whether the holder of a lock file is provably gone (see the module notes).

    Gone: it names this host and a process that no longer runs, or the file
    was not refreshed for `stale_s` seconds (by its modification time
    `mtime_ns`, or `unchanged_s` seconds seen unchanged by the caller). A
    holder that is this process under another token (another lock object
    here) is never gone.
    """
    if holder is not None and holder.host == host_name():
        if holder.pid == os.getpid() and holder.token != own_token:
            return False  # another lock object of this process: it waits like others
        if not pid_alive(holder.pid):
            return True
    age = time.time() - mtime_ns / 1e9
    return unchanged_s >= stale_s or age >= stale_s


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a lock is refreshed or replaced: (inode, size, mtime in ns)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileLock:
    """An exclusive lock file with a heartbeat; see the module notes.

    Parameters
    ----------
    path : Path
        The lock file (its folder is created).
    what : str
        What the lock protects, for messages (e.g. ``"stitch of results/a"``).
    command : str
        The holder's command, written into the lock for the messages of others.
    heartbeat_s, stale_s : float
        Refresh interval and staleness limit (defaults :data:`HEARTBEAT_S`, :data:`STALE_S`).

    Examples
    --------
    >>> import tempfile
    >>> lock = FileLock(Path(tempfile.mkdtemp()) / "a.lock")
    >>> with lock:
    ...     read_holder(lock.path).pid == os.getpid()
    True
    >>> lock.path.exists()
    False
    """

    def __init__(
        self,
        path: Path,
        what: str = "",
        *,
        command: str = "",
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
    ) -> None:
        self.path = Path(path)
        self.what = what or str(self.path)
        self.command = command
        self.heartbeat_s = float(heartbeat_s)
        self.stale_s = float(stale_s)
        self.holder = Holder(
            host=host_name(),
            pid=os.getpid(),
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            token=secrets.token_hex(8),
            command=command,
        )
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking and giving back -------------------------------------------------
    def acquire(self, wait: float | None = None) -> None:
        """Take the lock, waiting up to `wait` seconds (default: :func:`lock_wait`'s).

        Raises
        ------
        LockedError
            If another live run still holds it after `wait` seconds.
        """
        wait = _WAIT.get() if wait is None else max(0.0, float(wait))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait
        seen: dict[tuple[int, int, int], float] = {}
        while True:
            if self._create():
                self._start_heartbeat()
                return
            sig = _signature(self.path)
            if sig is None:
                continue  # released just now: try again
            first = seen.setdefault(sig, time.monotonic())
            holder = read_holder(self.path)
            if self._stale(holder, sig, time.monotonic() - first):
                self._take_over(holder, sig)
                continue
            if time.monotonic() >= deadline:
                raise LockedError(self._refusal(holder))
            time.sleep(min(POLL_S, max(0.01, deadline - time.monotonic())))

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still this one's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = read_holder(self.path)
        if holder is not None and holder.token == self.holder.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- internals ----------------------------------------------------------------
    def _record(self) -> bytes:
        h = self.holder
        record = {
            "host": h.host,
            "pid": h.pid,
            "started": h.started,
            "token": h.token,
            "command": h.command,
            "heartbeat_s": self.heartbeat_s,
            "stale_s": self.stale_s,
        }
        return (json.dumps(record) + "\n").encode("utf-8")

    def _create(self) -> bool:
        """Create the lock whole; False when it exists."""
        remove_stale_siblings(self.path)  # what a killed taker left
        tmp = self.path.with_name(f".{self.path.name}.tmp-{temp_tag()}-{self.holder.token}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self._record())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                return self._create_exclusive()
        finally:
            tmp.unlink(missing_ok=True)
        # a retried NFS link can report failure after succeeding, or the reverse:
        # the lock is ours when it names our token
        holder = read_holder(self.path)
        return holder is not None and holder.token == self.holder.token

    def _create_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._record())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _stale(self, holder: Holder | None, sig: tuple[int, int, int], unchanged_s: float) -> bool:
        return holder_gone(
            holder,
            sig[2],
            unchanged_s=unchanged_s,
            stale_s=self.stale_s,
            own_token=self.holder.token,
        )

    def _take_over(self, holder: Holder | None, sig: tuple[int, int, int]) -> None:
        """Remove the stale lock with signature `sig`, one taker at a time."""
        guard = FileLock(
            self.path.with_name(self.path.name + ".takeover"),
            command="take over " + self.path.name,
            heartbeat_s=self.heartbeat_s,
            stale_s=max(self.stale_s, 1.0),
        )
        try:
            guard.acquire(wait=0)
        except LockedError:
            time.sleep(POLL_S / 5)
            return
        try:
            if _signature(self.path) == sig:
                who = holder.describe() if holder else "an unreadable lock"
                log.warning("%s: taking over the lock of %s, which is gone", self.what, who)
                self.path.unlink(missing_ok=True)
                if holder is not None:
                    declare_gone(holder.host, holder.pid)
        finally:
            guard.release()

    def _refusal(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "another run"
        return (
            f"{self.what} is locked by {who} (lock file {self.path}); wait for it to "
            f"finish, or rerun with --wait-lock SECONDS to wait. If that run is gone, "
            f"its lock is taken over once its heartbeat has stopped for {self.stale_s:.0f} s."
        )

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self.lost = False
        self._thread = threading.Thread(
            target=self._beat, name=f"cellseg-lock-{self.path.name}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = read_holder(self.path)
            if holder is None or holder.token != self.holder.token:
                self.lost = True
                log.error("%s: the lock %s was taken over by another run", self.what, self.path)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)


def _held_here() -> dict[str, int]:
    return _HELD.setdefault(os.getpid(), {})


# Locks this process holds through `hold`, by path, with their depth (re-entrant).
_HELD: dict[int, dict[str, int]] = {}
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def hold(path: Path, what: str = "", *, command: str = "") -> Iterator[None]:
    """Hold the lock at `path` for the block; re-entrant within one process.

    Parameters
    ----------
    path : Path
        The lock file.
    what : str
        What it protects, for messages.
    command : str
        The command holding it, for the messages of others (default: this process's arguments).

    Raises
    ------
    LockedError
        If another run holds it (after waiting :func:`lock_wait`'s seconds).
    """
    key = str(Path(path).absolute())
    with _HELD_LOCK:
        held = _held_here()
        if key in held:
            held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _HELD_LOCK:
                _held_here()[key] -= 1
        return
    lock = FileLock(Path(path), what, command=command or _command_line())
    lock.acquire()
    with _HELD_LOCK:
        _held_here()[key] = 1
    try:
        yield
    finally:
        with _HELD_LOCK:
            _held_here().pop(key, None)
        lock.release()


def _command_line() -> str:
    args = [os.path.basename(sys.argv[0] or "python"), *sys.argv[1:4]]
    return " ".join(args)[:200]


def lock_path(outdir: Path, name: str) -> Path:
    """The lock file ``OUTDIR/work/locks/<name>.lock`` (unsafe characters in `name`: ``_``)."""
    return work_dir(outdir) / "locks" / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock")


def locked(stage: str, *, per: str | None = None) -> Callable[[Callable], Callable]:
    """Have a stage function hold the lock of its output while it runs.

    The function must take ``outdir``; the lock is :func:`lock_path` of
    ``outdir`` and `stage` (``<stage>-<value of the argument per>`` when `per`
    names one, e.g. the batch).

    Examples
    --------
    >>> @locked("plan")
    ... def plan(outdir):
    ...     return lock_path(outdir, "plan").exists()
    >>> import tempfile
    >>> plan(tempfile.mkdtemp())
    True
    """

    def wrap(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            outdir = Path(bound.arguments["outdir"])
            name = stage if per is None else f"{stage}-{bound.arguments[per]}"
            with hold(lock_path(outdir, name), f"{name} of {outdir}"):
                return func(*args, **kwargs)

        return run

    return wrap
