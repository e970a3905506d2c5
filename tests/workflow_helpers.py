"""Running the workflow and comparing its outputs, for the SLURM and kill/resume tests.

Every run segments the same tiny 2D scan (one file, shared by absolute path, so
that the outputs of runs in different folders are byte for byte comparable)
with the classical backend: 4 tile batches, a few seconds per stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SCAN = "tiny"
# 256 × 256 px in tiles of 64: 16 tiles, 4 batches of 4.
TINY_SCAN = {"shape": (256, 256), "spacing": (0.5, 0.5), "seed": 7}
TILE_SIZE = 64
TILES_PER_BATCH = 4


def make_scan(folder: Path) -> Path:
    """Write the tiny scan into `folder` and return its path."""
    from cellseg.synth import write_synthetic_scan

    path, _ = write_synthetic_scan(
        folder / f"{SCAN}.ome.tif",
        None,
        shape=TINY_SCAN["shape"],
        spacing=TINY_SCAN["spacing"],
        seed=TINY_SCAN["seed"],
    )
    return path.resolve()


def tiny_config(scan: Path, **changes) -> dict:
    """Workflow config of the tiny scan (absolute path)."""
    return {
        "scans": {SCAN: {"path": str(scan)}},
        "tile_size": TILE_SIZE,
        "tiles_per_batch": TILES_PER_BATCH,
        "backend": "classical",
        "device": "cpu",
        "threads": 1,
        **changes,
    }


def write_config(workdir: Path, config: dict) -> Path:
    """Write `config` as ``workdir/config.yaml``."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tool_env(**extra: str) -> dict[str, str]:
    """This environment with the interpreter's bin folder first on PATH (for `cellseg`)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("CELLSEG_DEBUG_STAGE_DELAY", None)
    env.update(extra)
    return env


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """Command line of the repository's workflow run in `workdir`."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600):
    """Run a command to its end; its output is in the result."""
    return subprocess.run(
        cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout
    )


def output_of(proc) -> str:
    return f"--- exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def table_path(outdir: Path) -> Path:
    return outdir / "cells.parquet"


def labels_path(outdir: Path, name: str = SCAN) -> Path:
    return outdir / f"{name}.ome.zarr" / "labels"


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative path → content)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def assert_same_outputs(outdir: Path, reference: Path, name: str = SCAN) -> None:
    """Labels (every file of the label group) and cell table byte-identical to `reference`."""
    got, want = tree_bytes(labels_path(outdir, name)), tree_bytes(labels_path(reference, name))
    assert sorted(got) == sorted(want), "the label image has other files than the reference"
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"label files differ from the reference: {differ[:5]}"
    assert table_path(outdir).read_bytes() == table_path(reference).read_bytes(), (
        "cells.parquet differs from the reference"
    )


def leftovers(folder: Path) -> list[str]:
    """Temporaries of interrupted writes still under `folder`."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if ".tmp" in p.name or ".old-" in p.name
    )


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 300
) -> None:
    """Poll `condition` until it holds; fail if `proc` ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
