"""The QC report: seam score, warnings, and the pages with their figures."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest

from cellseg.cli import main
from cellseg.layout import read_json
from cellseg.measure import column_schema
from cellseg.report import (
    expected_border_fraction,
    figure_histograms,
    qc_warnings,
    render_scan_report,
    scan_summary,
    seam_score,
    tile_counts,
    write_run_report,
)
from cellseg.synth import write_synthetic_scan

SHAPE, CORE = (512, 512), (128, 128)


def uniform_cells(n=6000, seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, shape[0], (n, 2)), np.full(n, 50.0)


def near_seams(points, within):
    d = np.full(len(points), np.inf)
    for ax in range(2):
        seams = np.arange(1, 4) * 128 - 0.5
        d = np.minimum(d, np.abs(points[:, ax, None] - seams[None]).min(axis=1))
    return d <= within


def summary_for(points, sizes, **kwargs):
    n = len(points)
    table = pd.DataFrame(
        {
            "centroid_y_um": points[:, 0],
            "centroid_x_um": points[:, 1],
            "centroid_y_px": points[:, 0],
            "centroid_x_px": points[:, 1],
            "area_um2": sizes,
            "equivalent_diameter_um": np.full(n, 8.0),
            "touches_border": np.zeros(n, bool),
        }
    )
    return scan_summary(
        table, shape=SHAPE, spacing=(1.0, 1.0), core_shape=CORE, axes="yx", **kwargs
    )


def test_seam_score_of_a_good_stitch_is_one():
    points, sizes = uniform_cells()
    s = seam_score(points, sizes, shape=SHAPE, core_shape=CORE, spacing=(1, 1), band_um=4.0)
    assert s["has_seams"]
    # 3 seams per axis, 8 µm wide bands: 1 - (1 - 48/512)² of the area
    share = 1 - (1 - 3 * 8 / 512) ** 2
    assert s["n_near"] == pytest.approx(share * len(points), rel=0.1)
    assert s["density_ratio"] == pytest.approx(1, abs=0.12)
    assert s["size_ratio"] == 1.0
    assert np.nanmax(np.abs(np.array(s["profile"]["density"]) - 1)) < 0.3
    assert qc_warnings(summary_for(points, sizes)) == []


def test_seam_score_flags_lost_and_duplicated_cells():
    points, sizes = uniform_cells()
    lost = ~near_seams(points, 4.0)
    s = summary_for(points[lost], sizes[lost])
    assert s["seam"]["density_ratio"] < 0.2
    warnings = qc_warnings(s)
    assert any("Seam score" in w and "lost or cut" in w for w in warnings), warnings
    twice = near_seams(points, 4.0)
    doubled = np.concatenate([points, points[twice] + 0.5])
    s = summary_for(doubled, np.full(len(doubled), 50.0))
    assert s["seam"]["density_ratio"] == pytest.approx(2, abs=0.25)
    assert any("reported twice" in w for w in qc_warnings(s))
    # cut cells: smaller near seams
    small = np.where(near_seams(points, 4.0), 20.0, 50.0)
    s = summary_for(points, small)
    assert s["seam"]["size_ratio"] == pytest.approx(0.4)
    assert any("smaller" in w for w in qc_warnings(s))


def test_one_tile_has_no_seams():
    points, sizes = uniform_cells(500)
    s = seam_score(points, sizes, shape=SHAPE, core_shape=SHAPE, spacing=(1, 1))
    assert not s["has_seams"] and math.isnan(s["density_ratio"])


def test_tile_counts():
    pts = np.array([[0, 0], [10, 130], [127.9, 127.9], [128, 128], [500, 511]])
    assert tile_counts(pts, SHAPE, CORE).tolist() == [
        [2, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ]
    pts3 = np.array([[0, 0, 0], [20, 0, 0], [20, 100, 0]])
    assert tile_counts(pts3, (32, 128, 128), (16, 64, 64)).tolist() == [[2, 0], [1, 0]]


def test_border_warning():
    # cells of 8 µm in a 512 µm square: 1 - (1 - 16/512)² ≈ 6 % touch the edge by chance
    assert expected_border_fraction((512, 512), (1, 1), 8.0) == pytest.approx(
        1 - (1 - 16 / 512) ** 2
    )
    points, sizes = uniform_cells(1000)
    s = summary_for(points, sizes)
    s["n_border"], s["border_fraction"] = 300, 0.3
    assert any("touch the edge" in w for w in qc_warnings(s))
    s["n_border"], s["border_fraction"] = 60, 0.06
    assert not any("touch the edge" in w for w in qc_warnings(s))


def test_warnings_for_no_cells_and_missing_pixel_size():
    assert "No cells" in qc_warnings({"n_cells": 0})[0]
    points, sizes = uniform_cells(1000)
    assert any(
        "no pixel size" in w
        for w in qc_warnings(summary_for(points, sizes, spacing_source="default"))
    )


def test_empty_table_renders():
    table = pd.DataFrame({c.name: pd.Series(dtype=c.dtype) for c in column_schema("yx", ["c0"])})
    summary = scan_summary(table, shape=SHAPE, spacing=(1, 1), core_shape=CORE, axes="yx")
    warnings = qc_warnings(summary)
    page = render_scan_report(
        name="empty",
        summary=summary,
        warnings=warnings,
        figures={"histograms": figure_histograms(table, ["c0"])},
        config={},
        model={},
        versions={"cellseg": "0"},
        seconds={},
    )
    assert "No cells were found" in page and "data:image/png;base64," in page


# ----------------------------------------------------------------------------- pages
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small 2D scan and a small 3D stack, each run through `cellseg segment`."""
    d = tmp_path_factory.mktemp("report")
    img2, _ = write_synthetic_scan(d / "flat.ome.tif", shape=(200, 190), seed=5)
    img3, _ = write_synthetic_scan(
        d / "stack.ome.tif", shape=(12, 96, 96), spacing=(2.0, 0.5, 0.5), seed=6
    )
    fast = ["--backend", "classical"]
    assert (
        main(["-q", "segment", str(img2), "-o", str(d / "flat"), "--tile-size", "96", *fast]) == 0
    )
    assert (
        main(["-q", "segment", str(img3), "-o", str(d / "stack"), "--tile-size", "48", *fast]) == 0
    )
    return d


def pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    ]


@pytest.mark.parametrize("scan", ["flat", "stack"])
def test_scan_report_is_written_with_its_figures(runs, scan):
    page = (runs / scan / "report.html").read_text()
    images = pngs(page)
    # thumbnail, crops, histograms, cells per tile, seam profile
    assert len(images) == 5
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    for heading in ("Warnings", "Overview", "Zoomed crops", "Distributions", "Cells per tile"):
        assert f"<h2>{heading}</h2>" in page
    assert "Seam score" in page and "density ratio" in page
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    # run times of the stages, config, model and versions
    for stage in ("ingest", "plan", "segment_tiles", "stitch", "measure"):
        assert f"<th>{stage}</th>" in page
    backend = read_json(runs / scan / "work" / "tiles.json", "plan")["backend"]
    assert f"<th>backend</th><td>{backend['name']}</td>" in page
    assert "<th>scikit-image</th>" in page
    summary = read_json(runs / scan / "work" / "report.json", "report")
    table = pd.read_parquet(runs / scan / "cells.parquet")
    assert summary["summary"]["n_cells"] == len(table) > 10
    assert f"{len(table):,}" in page


def test_report_command_rewrites_the_report(runs, capsys):
    path = runs / "flat" / "report.html"
    path.unlink()
    assert main(["-q", "report", str(runs / "flat")]) == 0
    assert path.is_file() and str(path) in capsys.readouterr().out


def test_run_report(runs):
    out = runs / "report.html"
    assert (
        main(["-q", "report", "--run", "-o", str(out), str(runs / "flat"), str(runs / "stack")])
        == 0
    )
    page = out.read_text()
    assert "href='flat/report.html'" in page and "href='stack/report.html'" in page
    assert len(pngs(page)) == 1
    n = sum(len(pd.read_parquet(runs / s / "cells.parquet")) for s in ("flat", "stack"))
    assert f"{n:,} cells" in page
    # without per-scan report.json files the numbers are computed from the tables
    (runs / "stack" / "work" / "report.json").unlink()
    write_run_report([runs / "flat", runs / "stack"], out)
    assert "stack/report.html" in out.read_text()


def test_report_errors(runs, tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "ingest" in capsys.readouterr().err
    assert main(["report", "--run", str(runs / "flat")]) == 2
    assert "--output" in capsys.readouterr().err
