"""Many scans in one run: scans by glob pattern, a bad scan, the summary at the end."""

from __future__ import annotations

import json
import shutil

import pytest
from workflow_helpers import (
    REPO,
    TILE_SIZE,
    TILES_PER_BATCH,
    output_of,
    run,
    snakemake_cmd,
    write_config,
)

from cellseg.errors import ConfigError
from cellseg.scans import (
    ScanOutcome,
    expand_scans,
    format_summary,
    scan_name_of,
    scan_outcome,
    write_summary,
)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_scan_names_come_from_file_names():
    assert scan_name_of("/x/slide7.ome.tif") == "slide7"
    assert scan_name_of("/x/stack.ome.zarr/") == "stack"
    assert scan_name_of("run 2/a(1).tiff") == "a_1_"


def test_globs_add_one_scan_per_match_with_the_pattern_settings(tmp_path):
    for name in ("a.ome.tif", "b.tif", "my scan.tif", "notes.txt"):
        _touch(tmp_path / "data" / name)
    (tmp_path / "data" / "c.zarr").mkdir()
    (tmp_path / "deep" / "x").mkdir(parents=True)
    _touch(tmp_path / "deep" / "x" / "d.npy")
    scans = expand_scans(
        {"named": {"path": "elsewhere/named.tif", "channel": 2}},
        [
            {"glob": "data/*.tif", "pixel_size": [0.5, 0.5], "channel": None},
            {"glob": "data/*.zarr", "channel": "DAPI", "tile_size": 256},
            {"glob": str(tmp_path / "deep" / "**" / "*.npy")},
        ],
        root=tmp_path,
    )
    assert list(scans) == ["a", "b", "c", "d", "my_scan", "named"]
    assert scans["a"] == {"path": "data/a.ome.tif", "pixel_size": [0.5, 0.5]}
    assert scans["my_scan"]["path"] == "data/my scan.tif"
    assert scans["c"] == {"path": "data/c.zarr", "channel": "DAPI", "tile_size": 256}
    assert scans["d"] == {"path": str(tmp_path / "deep" / "x" / "d.npy")}
    assert scans["named"] == {"path": "elsewhere/named.tif", "channel": 2}


def test_two_scans_with_one_name_are_an_error(tmp_path):
    _touch(tmp_path / "a" / "s1.tif")
    _touch(tmp_path / "b" / "s1.ome.tif")
    with pytest.raises(ConfigError, match=r"two scans are named 's1'.*a/s1\.tif.*b/s1\.ome\.tif"):
        expand_scans({}, [{"glob": "*/s1*"}], root=tmp_path)
    with pytest.raises(ConfigError, match=r"scans\.s1"):
        expand_scans({"s1": {"path": "x.tif"}}, [{"glob": "a/*.tif"}], root=tmp_path)


def test_a_pattern_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"inputs\[0\] \(glob 'nothing/\*\.tif'\) matches no"):
        expand_scans({}, [{"glob": "nothing/*.tif"}], root=tmp_path)
    with pytest.raises(ConfigError, match="lists no scan"):
        expand_scans({}, [], root=tmp_path)


def test_outcomes_say_which_scans_succeeded(tmp_path):
    ok = tmp_path / "ok"
    (ok / "work").mkdir(parents=True)
    (ok / "work" / "stitch.json").write_text(json.dumps({"n_cells": 42}))
    (ok / "cells.parquet").write_bytes(b"PAR1")
    bad = tmp_path / "bad"
    (bad / "logs").mkdir(parents=True)
    (bad / "logs" / "ingest.log").write_text(
        "12:00:00 INFO reading\ncellseg ingest: error: data/bad.tif: cannot be read as a TIFF\n"
    )
    half = tmp_path / "half"
    (half / "work").mkdir(parents=True)
    (half / "work" / "ingest.json").write_text("{}")
    (half / "work" / "tiles.json").write_text(json.dumps({"batches": ["b0000"]}))
    # A failed batch of an older plan does not count.
    (half / "logs" / "segment_tiles").mkdir(parents=True)
    (half / "logs" / "segment_tiles" / "b0007.log").write_text("cellseg segment-tiles: error: x\n")

    outcomes = [scan_outcome(n, tmp_path / n) for n in ("bad", "half", "ok")]
    assert [o.status for o in outcomes] == ["failed", "incomplete", "ok"]
    assert outcomes[0].stage == "ingest"
    assert outcomes[0].message.startswith("cellseg ingest: error: data/bad.tif")
    assert outcomes[1].stage == "segment_tiles/stitch"
    assert outcomes[2].n_cells == 42

    text = format_summary(outcomes)
    assert text.splitlines()[0] == "cellseg: 1 of 3 scans done, 1 failed, 1 incomplete"
    assert "FAILED      bad: ingest: cellseg ingest: error: data/bad.tif" in text
    assert "ok          ok: 42 cells" in text

    write_summary(tmp_path / "summary.tsv", outcomes)
    rows = (tmp_path / "summary.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["scan", "status", "n_cells", "stage", "message", "log"]
    assert rows[3].split("\t")[:3] == ["ok", "ok", "42"]
    assert ScanOutcome("x", "ok").n_cells is None


def test_a_glob_that_matches_nothing_stops_the_workflow(tmp_path):
    write_config(tmp_path, {"inputs": [{"glob": "missing/*.tif"}]})
    proc = run(snakemake_cmd(tmp_path, "-n"), tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, output_of(proc)
    assert "Invalid config" in text and "missing/*.tif" in text, output_of(proc)
    assert "Traceback" not in text, output_of(proc)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_bad_scan_fails_only_its_own_jobs(tmp_path, tiny_scan):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_scan, data / "good.ome.tif")
    (data / "bad.ome.tif").write_bytes(b"II*\x00 this is no TIFF, only its first bytes")
    config = {
        "inputs": [{"glob": "data/*.ome.tif", "pixel_size": [0.5, 0.5]}],
        "tile_size": TILE_SIZE,
        "tiles_per_batch": TILES_PER_BATCH,
        "backend": "classical",
        "device": "cpu",
        "threads": 1,
    }
    write_config(tmp_path, config)
    proc = run(
        snakemake_cmd(
            tmp_path,
            "--profile",
            str(REPO / "configs" / "profiles" / "local"),
            "--cores",
            "2",
            "results/good/cells.parquet",
            "results/bad/cells.parquet",
        ),
        tmp_path,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, output_of(proc)
    # The good scan is done, the bad one stopped at ingest with its error.
    assert (tmp_path / "results" / "good" / "cells.parquet").is_file(), output_of(proc)
    assert not (tmp_path / "results" / "bad" / "work" / "ingest.json").exists()
    log = (tmp_path / "results" / "bad" / "logs" / "ingest.log").read_text()
    assert "cellseg ingest: error: data/bad.ome.tif: cannot be read" in log
    assert "Traceback" not in log
    # The summary at the end says so.
    assert "cellseg: 1 of 2 scans done, 1 failed, 0 incomplete" in text, output_of(proc)
    assert "FAILED      bad: ingest: cellseg ingest: error: data/bad.ome.tif" in text
    assert "ok          good: " in text
    rows = (tmp_path / "results" / "summary.tsv").read_text().splitlines()
    assert [r.split("\t")[:2] for r in rows[1:]] == [["bad", "failed"], ["good", "ok"]]
