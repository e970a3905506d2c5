"""benchmarks/compare_outputs.py: two results folders, label images and tables equal?"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from workflow_helpers import REPO, tool_env

SCRIPT = REPO / "benchmarks" / "compare_outputs.py"


def compare(old: Path, new: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(old), str(new), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results folder with one scan: `cellseg segment` of a 256 × 256 `cellseg synth` scan."""
    root = tmp_path_factory.mktemp("compare")
    scan = root / "scan.ome.tif"
    for cmd in (
        ["synth", str(scan), "--shape", "256", "256", "--seed", "3"],
        ["segment", str(scan), "-o", str(root / "results" / "scan"), "--backend", "classical"],
        ["segment", str(scan), "-o", str(root / "again" / "scan"), "--backend", "classical"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "cellseg.cli", "-q", *cmd],
            env=tool_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.slow
def test_two_runs_are_equal(results):
    proc = compare(results / "results", results / "again")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("equal   scan: labels cells (1 level); cells.parquet (")


@pytest.mark.slow
def test_a_changed_label_or_value_is_a_difference(results, tmp_path):
    new = tmp_path / "new"
    shutil.copytree(results / "results", new)
    level0 = new / "scan" / "scan.ome.zarr" / "labels" / "cells" / "0"
    labels = zarr.open_array(str(level0), mode="r+")
    labels[0, :3] = np.uint32(12345)
    table_path = new / "scan" / "cells.parquet"
    table = pd.read_parquet(table_path)
    table.loc[0, "area_um2"] *= 1 + 1e-9
    table.to_parquet(table_path)

    proc = compare(results / "results", new)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DIFFER  scan:" in proc.stdout
    assert "level 0: 3 of 65536 values differ" in proc.stdout
    assert "column area_um2: 1 of" in proc.stdout

    # Within a relative tolerance the table is equal; the labels still differ.
    proc = compare(results / "results", new, "--rtol", "1e-6")
    assert proc.returncode == 1
    assert "area_um2" not in proc.stdout and "level 0: 3 of" in proc.stdout


def test_a_missing_output_or_column_is_a_difference(results, tmp_path):
    new = tmp_path / "new"
    shutil.copytree(results / "results", new)
    table_path = new / "scan" / "cells.parquet"
    pd.read_parquet(table_path).drop(columns=["area_um2"]).to_parquet(table_path)
    shutil.rmtree(new / "scan" / "scan.ome.zarr" / "labels" / "cells")

    proc = compare(results / "results", new)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "missing in NEW" in proc.stdout
    assert "only in OLD: ['area_um2']" in proc.stdout
