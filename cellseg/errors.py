"""Errors that cellseg reports to its users."""

from __future__ import annotations

import errno


class CellsegError(Exception):
    """An error caused by the user's input or configuration.

    The message names the offending file or option and says how to fix it. The
    command line prints it without a traceback and exits with status 2.
    """


class InputError(CellsegError):
    """An input scan cannot be used (unreadable, wrong dimensions, empty, ...)."""


class ConfigError(CellsegError):
    """A configuration value or command-line option is invalid."""


class DiskFullError(CellsegError):
    """The disk (or the user's quota) filled up while an output was written."""


#: ``errno`` values that mean the disk or a quota is full.
DISK_FULL_ERRNOS = frozenset(
    {getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name)}
)


def disk_full_error(exc: BaseException, where: object = None) -> DiskFullError | None:
    """A :class:`DiskFullError` for an ``OSError`` (or its cause) that means a full disk, else None.

    The message names the file of the error, else ``where`` (e.g. the output
    folder being written).

    Examples
    --------
    >>> print(disk_full_error(OSError(errno.ENOSPC, "No space left on device", "out/a.npz")))
    out/a.npz: No space left on device; free some space (or raise the quota) or write to another \
folder with -o, then rerun: outputs written before are kept, and finished stages are skipped.
    >>> disk_full_error(OSError(errno.ENOENT, "No such file")) is None
    True
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            name = exc.filename or (f"an output in {where}" if where else "an output")
            return DiskFullError(
                f"{name}: {exc.strerror or 'the disk is full'}; free some space (or raise the "
                "quota) or write to another folder with -o, then rerun: outputs written before "
                "are kept, and finished stages are skipped."
            )
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
