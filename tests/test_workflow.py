"""The Snakemake workflow: config validation, lint, and a tiny real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from workflow_helpers import REPO, snakemake_cmd, tool_env, write_config

TINY_CONFIG = {
    "scans": {
        "tiny2d": {
            "path": "data/tiny2d.ome.tif",
            "tile_size": 128,
            "synth": {"shape": [300, 300], "spacing": [0.5, 0.5], "seed": 3},
        },
        "tiny3d": {
            "path": "data/tiny3d.ome.tif",
            "tile_size": 48,
            "synth": {"shape": [16, 96, 96], "spacing": [2.0, 0.5, 0.5], "seed": 4},
        },
    },
    "tiles_per_batch": 3,
    "device": "cpu",
    "threads": 1,
}


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir` with this interpreter's snakemake."""
    return subprocess.run(
        snakemake_cmd(workdir, *args),
        cwd=workdir,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output_of(proc: subprocess.CompletedProcess) -> str:
    return f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def test_one_config_schema():
    """The workflow validates against the package's schema; there is no copy of it."""
    schemas = [
        path.relative_to(REPO).as_posix()
        for folder in ("workflow", "configs", "cellseg")
        for path in (REPO / folder).rglob("config.schema.*")
    ]
    assert schemas == ["cellseg/data/config.schema.yaml"]
    assert not (REPO / "workflow" / "schemas").exists()


def test_template_lists_no_scans():
    """configs/config.yaml is a template: valid, every key but scans/inputs commented out."""
    template = yaml.safe_load((REPO / "configs" / "config.yaml").read_text())
    assert template == {"scans": {}, "inputs": []}
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert sorted(demo["scans"]) == ["demo2d", "demo3d", "demo_he"]


def _with_template(workdir: Path) -> None:
    """Put configs/config.yaml into `workdir`, as in a checkout of the repository."""
    (workdir / "configs").mkdir(parents=True, exist_ok=True)
    (workdir / "configs" / "config.yaml").write_bytes(
        (REPO / "configs" / "config.yaml").read_bytes()
    )


def test_run_without_scans_says_what_to_do(tmp_path):
    _with_template(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile")],
        cwd=tmp_path,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, output_of(proc)
    lines = [line for line in text.splitlines() if "No scans to segment" in line]
    assert len(lines) == 1, output_of(proc)
    assert "scans:" in lines[0] and "inputs:" in lines[0] and "--configfile" in lines[0]
    assert "Traceback" not in text, output_of(proc)
    assert not (tmp_path / "results").exists()


def test_user_config_gets_only_its_own_scans(tmp_path):
    """A user's --configfile is merged over the template, which has no demo scans."""
    _with_template(tmp_path)
    config = write_config(tmp_path, TINY_CONFIG)
    proc = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert proc.returncode == 0, output_of(proc)
    text = proc.stdout + proc.stderr
    assert "synth_tiny2d" in text and "synth_tiny3d" in text
    assert "demo2d" not in text and "demo3d" not in text


@pytest.mark.parametrize("flips", [False, True])
def test_flips_reach_the_plan_command(tmp_path, flips):
    """`flips: true` puts --flips on each scan's plan command (and only then)."""
    _with_template(tmp_path)
    config = write_config(tmp_path, {**TINY_CONFIG, "flips": flips})
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(config))
    assert proc.returncode == 0, output_of(proc)
    plans = [line for line in proc.stdout.splitlines() if "cellseg" in line and " plan " in line]
    assert plans, output_of(proc)
    assert all(("--flips" in line) == flips for line in plans), plans


def test_every_config_key_is_documented():
    schema = yaml.safe_load((REPO / "cellseg" / "data" / "config.schema.yaml").read_text())

    def walk(node, where):
        assert node.get("additionalProperties") is False, where
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{where}.{key} has no description"
            # Required keys have no default, nor do optional sections (`synth`)
            # whose absence is the default.
            optional_section = sub.get("type") == "object" and key not in ("scans",)
            if key not in node.get("required", []) and not optional_section:
                assert "default" in sub, f"{where}.{key} has no default"
            if "properties" in sub or "patternProperties" in sub:
                walk(sub, f"{where}.{key}")
        for pattern, sub in node.get("patternProperties", {}).items():
            walk(sub, f"{where}[{pattern}]")

    walk(schema, "config")


def test_lint():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", "configs/demo.yaml"],
        cwd=REPO,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, output_of(proc)


def test_demo_config_dry_run(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "configs" / "demo.yaml"))
    assert proc.returncode == 0, output_of(proc)
    text = proc.stdout + proc.stderr
    for rule in ("synth_demo2d", "synth_demo3d", "ingest", "plan", "stitch", "measure"):
        assert rule in text


def test_rules_declare_outputs_benchmarks_and_resources(tmp_path):
    """Every rule writes only what it declares, records a benchmark, and asks for resources."""
    proc = snakemake(
        tmp_path,
        "--list-rules",
        "--configfile",
        str(write_config(tmp_path, TINY_CONFIG)),
    )
    assert proc.returncode == 0, output_of(proc)
    rules = set(proc.stdout.split())
    assert {"ingest", "plan", "segment_tiles", "stitch", "measure", "report"} <= rules
    text = "\n".join(
        path.read_text() for path in sorted((REPO / "workflow" / "rules").glob("*.smk"))
    )
    n_rules = text.count("\nrule ") + text.count("\ncheckpoint ") + text.count("    rule:\n")
    assert text.count("benchmark:") == n_rules
    assert text.count("mem_mb=") == n_rules and text.count("runtime=") == n_rules
    assert "threads: 2" not in text
    # ingest and stitch declare what they write into the scan's OME-Zarr.
    assert "{{scan}}.ome.zarr/zarr.json" in text
    assert "{{scan}}.ome.zarr/labels/zarr.json" in text


def test_profile_dry_run(tmp_path):
    config = write_config(tmp_path, TINY_CONFIG)
    proc = snakemake(
        tmp_path,
        "-n",
        "--profile",
        str(REPO / "configs" / "profiles" / "local"),
        "--configfile",
        str(config),
    )
    assert proc.returncode == 0, output_of(proc)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tile_sise": 128}, "tile_sise"),
        ({"scans": {"tiny2d": {"path": "x.tif", "pixel_sise": [1, 1]}}}, "pixel_sise"),
        ({"scans": {"bad name": {"path": "x.tif"}}}, "bad name"),
        ({"scans": {"tiny2d": {"path": "x.tif", "synth": {"shape": [8, 8], "sead": 1}}}}, "sead"),
        ({"device": "gpu"}, "gpu"),
        ({"tile_size": "big"}, "big"),
        ({"scans": {"tiny2d": {"pixel_size": [1, 1]}}}, "path"),
    ],
)
def test_bad_config_is_rejected(tmp_path, change, expected):
    config = {"scans": {"tiny2d": {"path": "x.tif"}}, **change}
    proc = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path, config)))
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, output_of(proc)
    assert "Invalid config" in text, output_of(proc)
    assert expected in text, output_of(proc)
    assert "Traceback" not in text, output_of(proc)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_run(tmp_path):
    config = write_config(tmp_path, TINY_CONFIG)
    proc = snakemake(tmp_path, "--cores", "2", "--configfile", str(config), timeout=900)
    assert proc.returncode == 0, output_of(proc)

    zarr = pytest.importorskip("zarr")
    pd = pytest.importorskip("pandas")
    for scan, ndim in (("tiny2d", 2), ("tiny3d", 3)):
        out = tmp_path / "results" / scan
        assert (out / "work" / "ingest.json").is_file()
        assert (out / "work" / "stitch.json").is_file()
        assert (out / f"{scan}.ome.zarr" / "zarr.json").is_file()
        cells = out / f"{scan}.ome.zarr" / "labels" / "cells"
        assert (cells / "zarr.json").is_file()
        assert not [p.name for p in cells.iterdir() if p.name.startswith(".")]
        for stage in ("synth", "ingest", "plan", "stitch", "measure", "report"):
            assert (out / "benchmarks" / f"{stage}.tsv").is_file(), stage
        assert (out / "cells.parquet").is_file()
        assert (out / "report.html").is_file()
        for stage in ("synth", "ingest", "plan", "stitch", "measure", "report"):
            assert (out / "logs" / f"{stage}.log").is_file(), stage

        batches = json.loads((out / "work" / "tiles.json").read_text())["batches"]
        assert len(batches) >= 2, "the tiny scans are planned as several batches"
        for batch in batches:
            assert (out / "work" / "tiles" / f"{batch}.npz").is_file(), batch
            assert (out / "logs" / "segment_tiles" / f"{batch}.log").is_file(), batch
            assert (out / "benchmarks" / "segment_tiles" / f"{batch}.tsv").is_file(), batch

        labels = zarr.open_array(str(out / f"{scan}.ome.zarr" / "labels" / "cells" / "0"), mode="r")
        labels = np.asarray(labels[...])
        assert labels.ndim == ndim
        assert labels.dtype == np.uint32
        ids = np.unique(labels)
        ids = ids[ids != 0]
        assert ids.size > 0, f"{scan}: no cells found"

        table = pd.read_parquet(out / "cells.parquet")
        assert sorted(table["cell_id"].tolist()) == ids.tolist()

    # The run's combined table (a scan column first) and its report.
    combined = pd.read_parquet(tmp_path / "results" / "cells.parquet")
    assert combined.columns[0] == "scan"
    assert set(combined["scan"].astype(str)) == {"tiny2d", "tiny3d"}
    run_report = (tmp_path / "results" / "report.html").read_text()
    assert "tiny2d/report.html" in run_report and "tiny3d/report.html" in run_report
    for rule in ("export", "report_run"):
        assert (tmp_path / "results" / "benchmarks" / f"{rule}.tsv").is_file(), rule

    # Everything is up to date: a second run has nothing to do.
    proc = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert proc.returncode == 0, output_of(proc)
    assert "Nothing to be done" in proc.stdout + proc.stderr, output_of(proc)
