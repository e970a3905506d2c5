"""The stages of one scan's run, each a function on an output folder.

``ingest`` → ``plan`` → ``segment_tiles`` (per batch) → ``stitch`` → ``measure``
→ ``report``, one module each. Each stage reads what the previous ones wrote
under ``OUTDIR`` (:mod:`cellseg.layout`, docs/ARCHITECTURE.md), writes its own
outputs atomically, and can be rerun: a stage whose outputs are already there
for the same inputs and options is skipped unless ``force`` is given.
:func:`segment` (:mod:`cellseg.stages.run`) runs them all in one process;
:func:`segment_array` and :func:`array_candidates` (:mod:`cellseg.stages.arrays`)
do the same on an image in memory. Options default to the config schema's
defaults (:data:`cellseg.config.DEFAULTS`).

The functions are imported from here (``from cellseg.stages import stitch``);
a stage's module has the stage's name, so ``import cellseg.stages.stitch as m``
would give the function: import a module's other names with ``from``.
"""

from __future__ import annotations

from cellseg.stages.arrays import array_candidates, segment_array
from cellseg.stages.classify import classify
from cellseg.stages.ingest import ingest
from cellseg.stages.measure import measure
from cellseg.stages.plan import load_plan, plan, tile_geometry
from cellseg.stages.report import report
from cellseg.stages.run import segment
from cellseg.stages.segment_tiles import segment_tiles
from cellseg.stages.stitch import stitch

__all__ = [
    "array_candidates",
    "classify",
    "ingest",
    "load_plan",
    "measure",
    "plan",
    "report",
    "segment",
    "segment_array",
    "segment_tiles",
    "stitch",
    "tile_geometry",
]
