"""The output folder of a run: where each stage's files live, and its small JSON files.

``OUTDIR/<scan>.ome.zarr`` holds the image and ``labels/cells``;
``OUTDIR/cells.parquet`` and ``OUTDIR/report.html`` are the results;
``OUTDIR/work/`` the intermediate files of the stages (``scan.json``,
``tiles.json``, ``tiles/<batch>.npz``, ``stitch.json``, ``times/``).
Every module that reads or writes a run's files takes their paths from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cellseg.atomic import atomic_write_json
from cellseg.errors import InputError

WORK = "work"

#: File-name endings of the scan formats, longest first (``.ome.tif`` before ``.tif``).
SCAN_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".npy")
SCAN_SUFFIXES += (".svs", ".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".dcm")  # whole-slide images


def work_dir(outdir: Path) -> Path:
    """The folder of intermediate files of a run."""
    return Path(outdir) / WORK


def read_json(path: Path, what: str) -> dict:
    """Read a stage's JSON output, or raise a clear error naming the missing stage."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; run `cellseg {what}` for this folder first.")
    with open(path) as f:
        return json.load(f)


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def image_path(outdir: Path, info: dict) -> Path:
    """Path of the run's OME-Zarr image."""
    return Path(outdir) / info["image"]


def record_seconds(outdir: Path, stage: str, seconds: float) -> None:
    """Write a stage's run time to ``work/times/<stage>.json`` (for the QC report).

    One file per stage (per batch for ``segment_tiles-<batch>``), so parallel
    jobs never write the same file. A stage skipped as up to date keeps its time.
    """
    path = work_dir(outdir) / "times" / f"{stage}.json"
    atomic_write_json(path, {"stage": stage, "seconds": round(float(seconds), 3)})


def stage_seconds(outdir: Path) -> dict[str, float]:
    """Run time per stage from ``work/times/`` (batches of a stage added up)."""
    total: dict[str, float] = {}
    for path in sorted((work_dir(outdir) / "times").glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        stage = str(entry.get("stage", path.stem)).split("-")[0]
        total[stage] = total.get(stage, 0.0) + float(entry.get("seconds", 0.0))
    return total


def scan_name(path: Path) -> str:
    """Scan name from a file name: ``a/b/scan1.ome.tif`` → ``scan1``."""
    name = Path(path).name
    for ext in SCAN_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def batch_path(outdir: Path, batch: str) -> Path:
    """Candidate file of one batch."""
    return work_dir(outdir) / "tiles" / f"{batch}.npz"
