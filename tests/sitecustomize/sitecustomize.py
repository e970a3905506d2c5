"""Testing aid of tests/test_resume.py: slow one stage down so that a kill lands mid-write.

tests/test_resume.py puts this folder on ``PYTHONPATH`` of the runs it starts,
so that Python imports this module at start-up in every process of the run
(Snakemake and each job's ``cellseg``). With
``CELLSEG_DEBUG_STAGE_DELAY="stage=seconds,..."`` set, each progress step of
those stages (the first word of a progress description: ``segment``,
``stitch``, ``measure``) sleeps that long, and the stage's log says so once;
progress is reported by :class:`cellseg.progress.LogProgress` (log lines, no
terminal bar). Without the variable nothing is changed.
"""

from __future__ import annotations

import os
import time

STAGE_DELAY_ENV = "CELLSEG_DEBUG_STAGE_DELAY"


def stage_delay(desc: str, spec: str) -> float:
    """Seconds to wait per progress step of stage `desc`, from a ``stage=seconds,...`` spec.

    Examples
    --------
    >>> stage_delay("measure cells", "stitch=0.5,measure=2")
    2.0
    >>> stage_delay("segment b0000", "stitch=0.5,measure=2")
    0.0
    """
    stage = desc.split(" ", 1)[0]
    for item in spec.split(","):
        name, _, seconds = item.partition("=")
        if name.strip() == stage and seconds:
            try:
                return max(0.0, float(seconds))
            except ValueError:
                return 0.0
    return 0.0


def install(spec: str) -> None:
    """Slow down the stages named in `spec` (see :func:`stage_delay`)."""
    from cellseg import progress as module

    update = module.LogProgress.update
    make_progress = module.progress

    def slowed_update(self, k: int = 1) -> None:
        if k and not hasattr(self, "_test_delay"):
            self._test_delay = stage_delay(self.desc, spec)
            if self._test_delay:
                module.log.info("%s: slowed down by %s", self.desc, STAGE_DELAY_ENV)
        if k and self._test_delay:
            time.sleep(self._test_delay * k)
        update(self, k)

    def log_progress(iterable=None, *, total=None, desc: str = "", enabled: bool = True):
        if not enabled:
            return make_progress(iterable, total=total, desc=desc, enabled=False)
        return module.LogProgress(iterable, total=total, desc=desc)

    module.LogProgress.update = slowed_update
    module.progress = log_progress


if os.environ.get(STAGE_DELAY_ENV):
    install(os.environ[STAGE_DELAY_ENV])
