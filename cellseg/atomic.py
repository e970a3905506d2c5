"""Atomic files and folders: every output is written whole or not at all.

A file is written to a temporary sibling and renamed into place; a folder
(an OME-Zarr group, a label image) is built under a temporary name and swapped
in with :func:`replace_path`. Temporaries carry the writer's process id and
host (:func:`temp_tag`, ``<pid>@<host>``), so :func:`remove_stale_siblings`
can clear what an interrupted run left behind, and only that: a temporary is
removed when its owner is provably gone, i.e. it ran on this host and its
process no longer runs, or it ran on another host and its lock's heartbeat
stopped (:mod:`cellseg.lock` then calls :func:`declare_gone`). A fixed age
alone never counts: on a cluster's shared filesystem a long job on another
node may still be writing. This is the one place that knows how; every
writer in the package uses it.

:func:`read_at` and :func:`write_at` are positional reads and writes of a file
descriptor (``os.preadv`` / ``os.pwrite``, with a seek-and-read fallback where
those are missing).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "declare_gone",
    "host_name",
    "read_at",
    "json_default",
    "jsonable",
    "remove_path",
    "remove_stale_siblings",
    "replace_path",
    "temp_sibling",
    "temp_tag",
    "write_at",
]

logger = logging.getLogger("cellseg.io")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary sibling, flushed, then renamed.

    Readers see either the old file or the complete new one, never a partial
    write. Parent directories are created.

    Parameters
    ----------
    path : Path
        Destination file.
    data : bytes
        File content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    tmp = path.with_name(f".{path.name}.tmp-{temp_tag()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write names no file: name the one written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented UTF-8 JSON, atomically.

    NumPy scalars and arrays, tuples and paths are converted to plain JSON values.

    Parameters
    ----------
    path : Path
        Destination file.
    obj : object
        A JSON-serialisable object.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=json_default)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=json_default))


def host_name() -> str:
    """This machine's name as temporaries and locks carry it (letters, digits, ``_`` only)."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "localhost"


def temp_tag() -> str:
    """The owner part of this process's temporary names: ``<pid>@<host>``."""
    return f"{os.getpid()}@{host_name()}"


def temp_sibling(path: Path) -> Path:
    """A temporary name beside `path` owned by this process (``<name>.tmp-<pid>@<host>``)."""
    return path.with_name(f"{path.name}.tmp-{temp_tag()}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


# Owners (host, pid) of other hosts known to be gone (their lock's heartbeat stopped).
_GONE: set[tuple[str, int]] = set()


def declare_gone(host: str, pid: int) -> None:
    """Record that process `pid` of `host` is gone, so its temporaries may be removed."""
    _GONE.add((str(host), int(pid)))


def owner_gone(owner: str) -> bool:
    """Whether the owner part of a temporary's name (``<pid>[@<host>]``) is provably gone.

    Names without a host (older versions) count as this host's; one with this
    process's id was left by an earlier process (this one names its own with a host).
    """
    pid_text, _, host = owner.partition("@")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if not host:
        return pid == os.getpid() or not pid_alive(pid)
    if host != host_name():
        return (host, pid) in _GONE
    return pid != os.getpid() and not pid_alive(pid)


def remove_stale_siblings(path: Path) -> None:
    """Remove temporaries of `path` whose owner is provably gone (see the module notes).

    Recognises ``<name>.tmp-<owner>`` and ``<name>.old-<owner>`` (folders) and
    ``.<name>.tmp-<owner>[-<thread>]`` (files of :func:`atomic_write_bytes`),
    where the owner is ``<pid>@<host>`` (or ``<pid>`` alone, from older versions).
    """
    if not path.parent.is_dir():
        return
    for hidden in ("", "."):
        name = hidden + path.name
        for marker in (".tmp-", ".old-"):
            for stale in path.parent.glob(glob.escape(name) + marker + "*"):
                owner = stale.name[len(name) + len(marker) :].split("-", 1)[0]
                if owner_gone(owner):
                    logger.info("removing %s left by an interrupted run", stale)
                    remove_path(stale)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(src: Path, dst: Path) -> None:
    """Move the complete `src` to `dst`, replacing what is there."""
    if not (dst.exists() or dst.is_symlink()):
        os.replace(src, dst)
        return
    old = dst.with_name(f"{dst.name}.old-{temp_tag()}")
    remove_path(old)
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    remove_path(old)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` (same suffix), renamed to `path` when the block ends.

    For writers that need a file name of their own (TIFF, safetensors, AnnData):
    write to the yielded path; it replaces `path` only when the block finishes
    without an error, and is removed otherwise.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("whole")
    >>> target.read_text()
    'whole'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    tmp = path.with_name(f".{path.name}.tmp-{temp_tag()}-{threading.get_ident()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# Serialises the seek-and-read fallback of read_at / write_at (one file offset per descriptor).
_SEEK_LOCK = threading.Lock()


def read_at(fd: int, buffer: memoryview, offset: int) -> int:
    """Read into `buffer` from byte `offset` of `fd`; the number of bytes read (0 at the end).

    ``os.preadv`` where the platform has it, else a seek and a read under a lock.
    """
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return preadv(fd, [buffer], offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(buffer))
    buffer[: len(data)] = data
    return len(data)


def write_at(fd: int, data: memoryview | bytes, offset: int) -> int:
    """Write `data` at byte `offset` of `fd`; the number of bytes written.

    ``os.pwrite`` where the platform has it, else a seek and a write under a lock.
    """
    pwrite = getattr(os, "pwrite", None)
    if pwrite is not None:
        return pwrite(fd, data, offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)
