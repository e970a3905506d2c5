"""Atomic files and folders: every output is written whole or not at all.

A file is written to a temporary sibling and renamed into place; a folder
(an OME-Zarr group, a label image) is built under a temporary name and swapped
in with :func:`replace_path`. Temporaries carry the writer's process id, so
:func:`remove_stale_siblings` can clear what an interrupted run left behind.
This is the one place that knows how; every writer in the package uses it.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
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
    "json_default",
    "jsonable",
    "remove_path",
    "remove_stale_siblings",
    "replace_path",
    "temp_sibling",
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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


def temp_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def remove_stale_siblings(path: Path) -> None:
    """Remove temporaries of `path` left by processes that no longer run.

    Recognises ``<name>.tmp-<pid>`` and ``<name>.old-<pid>`` (folders) and
    ``.<name>.tmp-<pid>[-<thread>]`` (files of :func:`atomic_write_bytes`).
    """
    if not path.parent.is_dir():
        return
    for hidden in ("", "."):
        name = hidden + path.name
        for marker in (".tmp-", ".old-"):
            for stale in path.parent.glob(glob.escape(name) + marker + "*"):
                pid = stale.name[len(name) + len(marker) :].split("-", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
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
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
