"""The analyst's notebook runs on a small run the test makes, and finds the demo by default."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cellseg.cli import main
from cellseg.synth import write_synthetic_scan

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A run of two small 2D scans, with the combined table, as the workflow writes it."""
    d = tmp_path_factory.mktemp("run")
    out = d / "results"
    for name, seed, density in (("sparse", 7, 0.5), ("dense", 8, 1.0)):
        image, _ = write_synthetic_scan(
            d / f"{name}.ome.tif", shape=(160, 170), seed=seed, density=density
        )
        args = ["-q", "segment", str(image), "-o", str(out / name), "--tile-size", "96"]
        assert main([*args, "--backend", "classical"]) == 0
    assert (
        main(
            [
                "-q",
                "export",
                str(out / "sparse"),
                str(out / "dense"),
                "-o",
                str(out / "cells.parquet"),
            ]
        )
        == 0
    )
    return out


def execute(env: dict[str, str]):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def outputs(nb):
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            text.append(out.get("text", "") + json.dumps(out.get("data", {}).get("text/plain", "")))
            images += "image/png" in out.get("data", {})
    return "\n".join(text), images


@pytest.mark.timeout(900)
def test_notebook_runs_on_a_run(results):
    inline = "module://matplotlib_inline.backend_inline"
    nb = execute({"CELLSEG_RESULTS": str(results), "MPLBACKEND": inline})
    text, images = outputs(nb)
    assert "2 scan(s): sparse, dense" in text or "2 scan(s): dense, sparse" in text
    assert "Mann-Whitney U" in text
    assert "not touching the border" in text
    # distributions, scatter, comparison, largest cells with their crops
    assert images >= 4


def test_notebook_reads_the_demo_results_by_default(tmp_path, monkeypatch):
    """The first code cell finds results/ from the repository root or from notebooks/."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c.source for c in nb.cells if c.cell_type == "code")
    monkeypatch.delenv("CELLSEG_RESULTS", raising=False)
    (tmp_path / "results").mkdir()
    (tmp_path / "notebooks").mkdir()
    for cwd in (tmp_path, tmp_path / "notebooks"):
        monkeypatch.chdir(cwd)
        scope: dict = {}
        exec(first, scope)
        assert scope["RESULTS"] == (tmp_path / "results").resolve()
    monkeypatch.setenv("CELLSEG_RESULTS", str(tmp_path / "elsewhere"))
    scope = {}
    exec(first, scope)
    assert scope["RESULTS"] == (tmp_path / "elsewhere").resolve()
