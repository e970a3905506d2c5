"""GeoJSON for QuPath: pixel-edge outlines, holes, pieces, measurements, classes, 3D refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cellseg import review as C
from cellseg.cli import main
from cellseg.errors import InputError
from cellseg.geojson import (
    cell_features,
    class_color,
    mask_polygons,
    polygon_area,
    write_geojson,
)
from cellseg.io import open_labels
from cellseg.measure import measure_cells
from cellseg.stages import measure


def polygons_of(geometry: dict) -> list:
    """The polygons of a GeoJSON Polygon or MultiPolygon, as lists of rings."""
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    assert geometry["type"] == "MultiPolygon"
    return geometry["coordinates"]


def rasterize(polygons: list, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the polygons (even-odd rule), from their vertical edges.

    Exact for rings along pixel edges: a horizontal ray through the centres of
    row r crosses the vertical edges that span row r.
    """
    toggles = np.zeros((shape[0], shape[1] + 1), np.int64)
    for polygon in polygons:
        for ring in polygon:
            ring = np.asarray(ring)
            assert (ring[0] == ring[-1]).all(), "rings are closed"
            for (xa, ya), (xb, yb) in zip(ring[:-1], ring[1:]):
                assert xa == xb or ya == yb, "edges follow pixel sides"
                if xa == xb:
                    lo, hi = sorted((ya, yb))
                    toggles[lo:hi, xa] += 1
    return (np.cumsum(toggles, axis=1)[:, :-1] % 2).astype(bool)


def no_collinear_vertices(ring) -> bool:
    steps = np.sign(np.diff(np.asarray(ring), axis=0))
    return not (steps == np.roll(steps, 1, axis=0)).all(axis=1).any()


# ----------------------------------------------------------------------------- outlines
def test_outlines_follow_pixel_edges_exactly():
    rng = np.random.default_rng(0)
    for _ in range(300):
        mask = rng.random(tuple(rng.integers(1, 12, 2))) < rng.uniform(0.2, 0.9)
        polygons = mask_polygons(mask, offset=(3, 5))
        assert sum(polygon_area(p) for p in polygons) == mask.sum()
        big = rasterize(polygons, (mask.shape[0] + 3, mask.shape[1] + 5))
        assert np.array_equal(big[3:, 5:], mask) and big.sum() == mask.sum()
        for polygon in polygons:
            for ring in polygon:
                assert no_collinear_vertices(ring)
                assert len({tuple(v) for v in ring[:-1]}) == len(ring) - 1  # no self-touching


def test_square_ring_and_pieces_by_hand():
    square = np.ones((2, 3), bool)
    [[shell]] = mask_polygons(square)
    assert shell.tolist() == [[0, 0], [3, 0], [3, 2], [0, 2], [0, 0]]  # 4 corners, merged sides
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    [[shell, hole]] = mask_polygons(ring)
    assert polygon_area([shell]) == 25 and polygon_area([hole]) == 9
    assert polygon_area([shell, hole]) == 16
    diagonal = np.eye(2, dtype=bool)  # two pixels touching at a corner: two pieces
    assert [polygon_area(p) for p in mask_polygons(diagonal)] == [1, 1]


def synthetic_labels():
    """Labels with a ring (and a cell in its hole), a two-piece cell and ordinary cells."""
    labels = np.zeros((40, 48), np.uint32)
    labels[2:14, 2:14] = 1
    labels[6:10, 6:10] = 0  # the hole of cell 1 ...
    labels[7:9, 7:9] = 4  # ... holding cell 4
    labels[20:24, 3:7] = 2
    labels[30:35, 10:13] = 2  # cell 2 in two pieces
    labels[5:25, 20:30] = 3  # crosses the 8-px tiles
    labels[30, 30] = labels[31, 31] = 5  # touching at a corner only
    labels[28:39, 38:47] = 6
    labels[30:33, 40:43] = 0  # a hole
    labels[35:37, 44:46] = 0  # another hole
    image = np.random.default_rng(3).uniform(0, 100, (1, *labels.shape))
    table = measure_cells(labels, image, spacing=(0.5, 0.5), channel_names=["DAPI"])
    return labels, table


class CountingReads:
    """An array that records the shape of every region read from it."""

    def __init__(self, array):
        self.array, self.shape, self.ndim, self.reads = array, array.shape, array.ndim, []

    def __getitem__(self, key):
        out = self.array[key]
        self.reads.append(out.shape)
        return out


def test_features_match_the_label_image_cell_by_cell():
    labels, table = synthetic_labels()
    source = CountingReads(labels)
    features = list(cell_features(source, table, tile=8))
    assert len(features) == len(table) == 6
    assert sorted(f["id"] for f in features) == table["cell_id"].tolist()
    by_id = {f["id"]: f for f in features}
    for cid in table["cell_id"]:
        polygons = polygons_of(by_id[cid]["geometry"])
        assert sum(polygon_area(p) for p in polygons) == (labels == cid).sum()
        assert np.array_equal(rasterize(polygons, labels.shape), labels == cid)
    assert by_id[1]["geometry"]["type"] == "Polygon"
    assert len(by_id[1]["geometry"]["coordinates"]) == 2  # shell + the hole around cell 4
    assert by_id[2]["geometry"]["type"] == by_id[5]["geometry"]["type"] == "MultiPolygon"
    assert len(by_id[2]["geometry"]["coordinates"]) == 2
    assert len(by_id[6]["geometry"]["coordinates"]) == 3  # shell + two holes
    # the label image is read a tile's cells at a time, never whole
    assert max(h * w for h, w in source.reads) < labels.size / 2
    # measurements: the table's numbers, by name
    row = table.set_index("cell_id").loc[3]
    m = by_id[3]["properties"]["measurements"]
    assert m["cell_id"] == 3 and m["n_pixels"] == 200
    assert m["area_um2"] == pytest.approx(row["area_um2"]) == 50.0
    assert m["touches_border"] == 0
    assert by_id[3]["properties"]["objectType"] == "detection"
    assert "classification" not in by_id[3]["properties"]


def test_stale_table_and_3d_labels_are_refused():
    labels, table = synthetic_labels()
    moved = labels.copy()
    moved[moved == 3] = 0
    with pytest.raises(InputError, match="older than the labels"):
        list(cell_features(moved, table))
    with pytest.raises(InputError, match="2D"):
        list(cell_features(np.zeros((2, 4, 4), np.uint32), table))


def test_nan_measurements_are_left_out(tmp_path):
    labels, table = synthetic_labels()
    table["area_um2"] = table["area_um2"].astype(float)
    table.loc[table["cell_id"] == 2, "area_um2"] = np.nan
    out = write_geojson(labels, table, tmp_path / "cells.geojson", show_progress=False)
    doc = json.loads(out.read_text())  # strict JSON: no NaN
    by_id = {f["id"]: f["properties"]["measurements"] for f in doc["features"]}
    assert "area_um2" not in by_id[2] and "area_um2" in by_id[1]


# ----------------------------------------------------------------------------- the command
def check_collection(path, table, label_image):
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    features = doc["features"]
    assert len(features) == len(table)
    assert sorted(f["id"] for f in features) == sorted(table["cell_id"].tolist())
    rows = table.set_index("cell_id")
    painted = np.zeros(label_image.shape, np.uint32)
    for f in features:
        assert f["type"] == "Feature"
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = f["properties"]
        assert props["objectType"] == "detection"
        polygons = polygons_of(f["geometry"])
        assert sum(polygon_area(p) for p in polygons) == rows.loc[f["id"], "n_pixels"]
        assert props["measurements"]["area_um2"] == pytest.approx(rows.loc[f["id"], "area_um2"])
        inside = rasterize(polygons, label_image.shape)
        assert not painted[inside].any()
        painted[inside] = f["id"]
    assert np.array_equal(painted, label_image)  # every cell's outline, exactly
    return features


def test_export_geojson_of_a_segmented_scan(result2d, tmp_path, capsys):
    out = tmp_path / "slide.geojson"
    assert main(["export", str(result2d), "--format", "geojson", "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    table = pd.read_parquet(result2d / "cells.parquet")
    labels = np.asarray(open_labels(result2d / "slide.ome.zarr", "cells")[:])
    features = check_collection(out, table, labels)
    assert not any("classification" in f["properties"] for f in features)
    assert not list(tmp_path.glob(".*tmp*"))
    # the format from the suffix, a table path as input
    out2 = tmp_path / "again.geojson"
    assert main(["export", str(result2d / "cells.parquet"), "-o", str(out2)]) == 0
    assert json.loads(out2.read_text()) == json.loads(out.read_text())


def test_classes_and_corrections(result2d, copy_result, capsys):
    outdir = copy_result(result2d)
    image = outdir / "slide.ome.zarr"
    table = pd.read_parquet(outdir / "cells.parquet")
    ids = table["cell_id"].to_numpy()
    classes = pd.DataFrame(
        {
            "cell_id": ids[:4],
            "class": ["Positive", "Negative", "my class", None],
            "color": [None, None, "#0a141e", None],
        }
    )
    classes.to_parquet(outdir / "classes.parquet")
    assert main(["export", str(outdir), "--format", "geojson"]) == 0
    features = json.loads((outdir / "cells.geojson").read_text())["features"]
    by_id = {f["id"]: f["properties"] for f in features}
    assert by_id[ids[0]]["classification"] == {"name": "Positive", "color": [200, 50, 50]}
    assert by_id[ids[1]]["classification"] == {"name": "Negative", "color": class_color("Negative")}
    assert by_id[ids[2]]["classification"] == {"name": "my class", "color": [10, 20, 30]}
    assert "classification" not in by_id[ids[3]] and "classification" not in by_id[ids[5]]
    # a correction: the corrected labels are exported once their table is measured
    region = ((20, 60), (20, 60))
    gone = int(C.cells_in_box(table, region, "yx")[0])
    box = C.box_around_cells(region, table, "yx", (200, 200))
    before = C.read_region(image, box)
    C.apply_edit(image, box, C.delete_cells(before, [gone]), before=before)
    capsys.readouterr()
    assert main(["export", str(outdir), "--format", "geojson"]) == 2
    assert "cellseg measure" in capsys.readouterr().err
    measure(outdir, labels=C.CORRECTED, show_progress=False)
    assert main(["export", str(outdir), "--format", "geojson"]) == 0
    corrected = pd.read_parquet(outdir / "cells_corrected.parquet")
    labels = np.asarray(open_labels(image, C.CORRECTED)[:])
    features = check_collection(outdir / "cells_corrected.geojson", corrected, labels)
    assert len(features) == len(table) - 1 and gone not in {f["id"] for f in features}


def test_3d_scan_is_refused(result3d, tmp_path, capsys):
    out = tmp_path / "stack.geojson"
    assert main(["export", str(result3d), "--format", "geojson", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "3D" in err and "Traceback" not in err
    assert not out.exists()


def test_one_scan_at_a_time(result2d, tmp_path, capsys):
    code = main(["export", str(result2d), str(result2d), "--format", "geojson", "-o", "x.geojson"])
    assert code == 2 and "one OUTDIR" in capsys.readouterr().err
