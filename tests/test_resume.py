"""Kill and resume: kill -9 a run in the middle of a stage, rerun, get the same bytes.

Runs are slowed down in one stage with ``CELLSEG_DEBUG_STAGE_DELAY`` (a sleep
per progress step, added by tests/sitecustomize/sitecustomize.py, which these
tests put on the runs' ``PYTHONPATH``) so that each kill lands while that stage
is writing its output; the stage's log says when it is slowed down, and the
tests wait for that line before killing. After each kill
nothing may look complete that is not, and the final outputs must be byte for
byte those of an uninterrupted run (``tiny_reference`` in conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from workflow_helpers import (
    SCAN,
    TILE_SIZE,
    TILES_PER_BATCH,
    assert_same_outputs,
    leftovers,
    output_of,
    run,
    snakemake_cmd,
    tiny_config,
    tool_env,
    wait_for,
    write_config,
)

DELAY_S = "0.4"  # per tile (segment, stitch) or label chunk (measure)
SLOWED = "slowed down by CELLSEG_DEBUG_STAGE_DELAY"
# Imported at start-up by every Python process of a run (it reads the variable).
HOOK = Path(__file__).resolve().parent / "sitecustomize"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _start(cmd: list[str], cwd: Path, stage: str, log: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group, slowed down in `stage`."""
    path = os.pathsep.join(p for p in (str(HOOK), os.environ.get("PYTHONPATH")) if p)
    env = tool_env(CELLSEG_DEBUG_STAGE_DELAY=f"{stage}={DELAY_S}", PYTHONPATH=path)
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _kill_group(proc: subprocess.Popen) -> None:
    """kill -9 the whole process group of `proc` (the workflow and every job)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(0.2)  # let the kernel reap the group's children


def _slowed(*logs: Path) -> bool:
    return any(p.is_file() and SLOWED in p.read_text(errors="replace") for p in logs)


def _check_outputs_are_whole(outdir: Path) -> None:
    """Every output that exists under its final name is complete and readable."""
    import pandas as pd
    import zarr

    work = outdir / "work"
    for name in ("ingest.json", "tiles.json", "stitch.json"):
        if (work / name).exists():
            json.loads((work / name).read_text())
    tiles = work / "tiles.json"
    plan = json.loads(tiles.read_text())["fingerprint"] if tiles.exists() else None
    for npz in (work / "tiles").glob("*.npz") if (work / "tiles").is_dir() else []:
        with np.load(npz) as f:
            assert str(f["plan"]) == plan, npz
            for key in f.files:
                f[key]  # noqa: B018  (reads every array: a truncated file raises)
    labels = outdir / f"{SCAN}.ome.zarr" / "labels" / "cells"
    if (work / "stitch.json").exists():
        assert labels.is_dir(), "stitch.json written before labels/cells"
    if labels.is_dir():
        group = zarr.open_group(str(labels), mode="r")
        np.asarray(group["0"][...])
    if (outdir / "cells.parquet").exists():
        pd.read_parquet(outdir / "cells.parquet")


# ----------------------------------------------------------------------------- workflow
def test_workflow_resumes_after_kills(tmp_path, tiny_scan, tiny_reference):
    """kill -9 the workflow while segmenting, stitching and measuring; rerun each time."""
    write_config(tmp_path, tiny_config(tiny_scan))
    outdir = tmp_path / "results" / SCAN
    logs = outdir / "logs"
    target = f"results/{SCAN}/cells.parquet"
    cmd = snakemake_cmd(tmp_path, "--cores", "2", "--rerun-incomplete", target)
    unlock = snakemake_cmd(tmp_path, "--unlock", target)
    n_batches = 16 // TILES_PER_BATCH

    def segmenting() -> bool:
        return _slowed(*(logs / "segment_tiles").glob("*.log")) and len(
            list((outdir / "work" / "tiles").glob("*.npz"))
        ) in range(1, n_batches)

    def stitching() -> bool:
        return (
            _slowed(logs / "stitch.log")
            and (outdir / f"{SCAN}.ome.zarr" / "labels" / ".cells.tmp" / "0").is_dir()
        )

    def measuring() -> bool:
        return _slowed(logs / "measure.log")

    steps = [("segment", segmenting), ("stitch", stitching), ("measure", measuring)]
    for k, (stage, running) in enumerate(steps):
        proc = _start(cmd, tmp_path, stage, tmp_path / f"run{k}.log")
        try:
            wait_for(running, proc, f"the {stage} stage to run")
            time.sleep(0.5)
        finally:
            _kill_group(proc)
        text = (tmp_path / f"run{k}.log").read_text()
        assert proc.returncode == -signal.SIGKILL, text
        _check_outputs_are_whole(outdir)
        if stage == "segment":
            assert len(list((outdir / "work" / "tiles").glob("*.npz"))) < n_batches
        if stage in ("segment", "stitch"):
            assert not (outdir / "work" / "stitch.json").exists()
        assert not (outdir / "cells.parquet").exists(), f"cells.parquet after a kill in {stage}"
        proc = run(unlock, tmp_path)
        assert proc.returncode == 0, output_of(proc)

    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, output_of(proc)
    assert_same_outputs(outdir, tiny_reference)
    assert not leftovers(outdir), leftovers(outdir)
    # Nothing is left to do.
    proc = run(snakemake_cmd(tmp_path, "-n", target), tmp_path)
    assert "Nothing to be done" in proc.stdout + proc.stderr, output_of(proc)


# ----------------------------------------------------------------------------- cellseg segment
def test_segment_command_resumes_after_kills(tmp_path, tiny_scan, tiny_reference):
    """kill -9 `cellseg segment` while segmenting, stitching and measuring; rerun each time."""
    import sys

    outdir = tmp_path / SCAN
    cmd = [
        sys.executable,
        "-m",
        "cellseg.cli",
        "-q",
        "segment",
        str(tiny_scan),
        "-o",
        str(outdir),
        "--tile-size",
        str(TILE_SIZE),
        "--tiles-per-batch",
        str(TILES_PER_BATCH),
        "--backend",
        "classical",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    work = outdir / "work"

    def started(stage: str):
        log = tmp_path / f"{stage}.log"
        extra = {
            "segment": lambda: any((work / "tiles").glob("*.npz")),
            "stitch": lambda: (outdir / f"{SCAN}.ome.zarr" / "labels" / ".cells.tmp").is_dir(),
            "measure": lambda: True,
        }[stage]
        return lambda: _slowed(log) and extra()

    for stage in ("segment", "stitch", "measure"):
        proc = _start(cmd, tmp_path, stage, tmp_path / f"{stage}.log")
        try:
            wait_for(started(stage), proc, f"the {stage} stage to run")
            time.sleep(0.5)
        finally:
            _kill_group(proc)
        assert proc.returncode == -signal.SIGKILL
        _check_outputs_are_whole(outdir)
        assert not (outdir / "cells.parquet").exists(), f"cells.parquet after a kill in {stage}"

    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, output_of(proc)
    assert_same_outputs(outdir, tiny_reference)
    assert not leftovers(outdir), leftovers(outdir)
