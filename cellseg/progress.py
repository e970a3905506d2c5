"""Progress of long work: a bar on a terminal, periodic log lines in a batch job."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("cellseg")


class LogProgress:
    """Progress for batch jobs: a plain log line at most every ``interval`` seconds."""

    def __init__(self, iterable=None, *, total=None, desc: str = "", interval: float = 30.0):
        self.iterable = iterable
        self.total = (
            total
            if total is not None
            else (len(iterable) if hasattr(iterable, "__len__") else None)
        )
        self.desc = desc
        self.n = 0
        self.interval = interval
        self._start = self._last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, k: int = 1) -> None:
        """Count ``k`` more items done."""
        self.n += k
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._log()

    def _log(self) -> None:
        total = f"/{self.total}" if self.total is not None else ""
        log.info("%s: %d%s done (%.0f s)", self.desc, self.n, total, time.monotonic() - self._start)

    def close(self) -> None:
        """Log the final count."""
        if self.n and self._last != -1:
            self._log()
            self._last = -1


class _NoProgress(LogProgress):
    def _log(self) -> None:
        pass


def progress(iterable=None, *, total=None, desc: str = "", enabled: bool = True):
    """A progress bar on a terminal (tqdm), periodic log lines in a batch job."""
    if not enabled:
        return _NoProgress(iterable, total=total, desc=desc)
    if not sys.stderr.isatty():
        return LogProgress(iterable, total=total, desc=desc)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, mininterval=0.5, dynamic_ncols=True)
