"""Stage ``report``: the scan's QC report ``OUTDIR/report.html``."""

from __future__ import annotations

import logging
from pathlib import Path

from cellseg.lock import locked
from cellseg.report import write_report

log = logging.getLogger("cellseg")


@locked("report")
def report(outdir: str | Path) -> Path:
    """Write the scan's QC report ``OUTDIR/report.html`` (see :mod:`cellseg.report`).

    The report is cheap next to the other stages and is always rewritten.

    Returns
    -------
    Path
        The report's path.
    """
    out = write_report(outdir)
    log.info("report: %s", out)
    return out
