"""Corrections without a viewer: region edits, the edit log, pyramid, flags, re-measure, export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

import cellseg.measure
from cellseg import review as C
from cellseg.cli import main
from cellseg.io import open_labels, read_scan
from cellseg.review import tables
from cellseg.review.tables import _table_metadata
from cellseg.stages import measure
from cellseg.tiling import box_from_json, box_slices, boxes_intersect, grow_box

NEIGHBOUR_COLUMNS = {"n_neighbors", "nearest_neighbor_distance_um", "nearest_neighbor_id"}


# ----------------------------------------------------------------------------- pure edits
def test_edits_on_arrays():
    r = np.array([[1, 1, 0, 2], [1, 1, 0, 2], [0, 3, 3, 0]], np.uint32)
    assert C.delete_cells(r, [1, 3]).tolist() == [[0, 0, 0, 2], [0, 0, 0, 2], [0, 0, 0, 0]]
    assert C.merge_cells(r, [3, 2]).tolist() == [[1, 1, 0, 2], [1, 1, 0, 2], [0, 2, 2, 0]]
    mask = np.zeros(r.shape, bool)
    mask[:, 2] = True
    assert C.paint_cell(r, mask, 9)[:, 2].tolist() == [9, 9, 3]
    assert C.paint_cell(r, mask, 9, overwrite=True)[:, 2].tolist() == [9, 9, 9]
    assert C.erase(r, mask)[:, 2].tolist() == [0, 0, 0]
    assert r[2, 2] == 3  # inputs are never modified
    with pytest.raises(ValueError, match="two cells"):
        C.merge_cells(r, [1])


def test_split_cell_shares_out_the_cut():
    r = np.zeros((5, 9), np.uint32)
    r[1:4, 1:8] = 4
    cut = np.zeros(r.shape, bool)
    cut[:, 3] = True
    out = C.split_cell(r, 4, cut, 20)
    assert set(np.unique(out)) == {0, 4, 20}
    assert np.count_nonzero(out) == np.count_nonzero(r)  # the cut's pixels are shared out
    assert (out[1:4, 4:8] == 4).all() and (out[1:4, 1:3] == 20).all()  # largest keeps the id
    with pytest.raises(ValueError, match="does not split"):
        C.split_cell(r, 4, np.zeros(r.shape, bool), 20)


def test_canonicalize_gives_fresh_ids_and_splits_cut_cells():
    before = np.zeros((6, 12), np.uint32)
    before[1:5, 1:11] = 7
    after = before.copy()
    after[:, 5] = 0  # an erased line across cell 7
    after[0, 0] = 3  # painted with an id used elsewhere in the scan
    out, id_map, next_id = C.canonicalize_edit(before, after, 100)
    assert out[0, 0] == 100 and id_map[3] == [100]
    assert (out[1:5, 6:11] == 7).all() and (out[1:5, 1:5] == 101).all()
    assert id_map[7] == [101] and next_id == 102
    ids = C.changed_ids(before, out)
    assert ids == {"removed": [], "added": [100, 101], "modified": [7]}
    # a merge (the cell gains pixels) is never split again, even if disconnected
    b = np.array([[1, 0, 2]], np.uint32)
    out, id_map, next_id = C.canonicalize_edit(b, np.array([[1, 0, 1]], np.uint32), 50)
    assert out.tolist() == [[1, 0, 1]] and id_map == {} and next_id == 50


def test_pyramid_boxes_follow_the_subsampling():
    shapes = [(200, 200), (100, 100), (50, 50)]
    box = ((37, 90), (0, 11))
    level = np.arange(200 * 200).reshape(200, 200)
    for k, b in enumerate(C.pyramid_boxes(box, shapes)):
        coarse = level[:: 2**k, :: 2**k]
        changed = np.zeros(level.shape, bool)
        changed[box_slices(box)] = True
        expected = np.argwhere(changed[:: 2**k, :: 2**k])
        assert tuple((int(a), int(c) + 1) for a, c in zip(expected.min(0), expected.max(0))) == b
        assert coarse.shape == shapes[k]


# ----------------------------------------------------------------------------- helpers
def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _labels(image: Path, name: str, level: int = 0) -> np.ndarray:
    return np.asarray(open_labels(image, name, level)[...])


def _whole_inside(table: pd.DataFrame, box, axes: str) -> list[int]:
    """Ids of the cells whose bounding box lies inside `box`."""
    keep = np.ones(len(table), bool)
    for (a, b), ax in zip(box, axes):
        keep &= (table[f"bbox_{ax}_start_px"] >= a).to_numpy()
        keep &= (table[f"bbox_{ax}_stop_px"] <= b).to_numpy()
    return sorted(int(i) for i in table["cell_id"].to_numpy()[keep])


def _touching_pair(region: np.ndarray, exclude: set[int], allowed: list[int]) -> tuple[int, int]:
    """Two different cells that touch (face neighbours), smallest ids first."""
    pairs = set()
    for ax in range(region.ndim):
        a = np.moveaxis(region, ax, 0)
        x, y = a[:-1].ravel(), a[1:].ravel()
        keep = (x != y) & (x > 0) & (y > 0)
        pairs |= {tuple(sorted(p)) for p in zip(x[keep].tolist(), y[keep].tolist())}
    pairs = sorted(p for p in pairs if not set(p) & exclude and set(p) <= set(allowed))
    assert pairs, "the synthetic scan has no touching cells"
    return pairs[0]


def _background_square(region: np.ndarray, size: int) -> tuple[slice, slice]:
    for y in range(2, region.shape[0] - size - 2):
        for x in range(2, region.shape[1] - size - 2):
            if not region[y - 2 : y + size + 2, x - 2 : x + size + 2].any():
                return slice(y, y + size), slice(x, x + size)
    raise AssertionError("no empty square for a missed cell")


def _session(image: Path, table: pd.DataFrame, box):
    """Delete one cell, merge two, split one, paint one: through apply_edit, one edit each.

    Returns the expected full label image (same functions on the whole array,
    with the fresh ids the edits must get) and the ids used.
    """
    first_new = C.max_label_id(image) + 1
    expected = _labels(image, "cells").copy()
    inside = _whole_inside(table, box, "yx")
    sizes = table.set_index("cell_id")["n_pixels"]
    whole = [i for i in inside if ndi.label(expected[box_slices(box)] == i)[1] == 1]
    split_id = int(max(whole, key=lambda i: (sizes[i], -i)))
    delete_id = int(min(i for i in inside if i != split_id))
    merge = _touching_pair(expected[box_slices(box)], {split_id, delete_id}, inside)
    rows, cols = np.nonzero(expected[box_slices(box)] == split_id)
    cut = np.zeros(expected[box_slices(box)].shape, bool)
    cut[:, int(round(cols.mean()))] = True
    square = _background_square(expected[box_slices(box)], 5)
    paint = np.zeros(cut.shape, bool)
    paint[square] = True
    steps = [
        ("delete", lambda r: C.delete_cells(r, [delete_id])),
        ("merge", lambda r: C.merge_cells(r, merge)),
        ("split", lambda r: C.split_cell(r, split_id, cut, first_new)),
        ("paint", lambda r: C.paint_cell(r, paint, first_new + 1)),
    ]
    records = []
    for action, edit in steps:
        before = C.read_region(image, box)
        records.append(
            C.apply_edit(image, box, edit(before), before=before, user="tester", action=action)
        )
        expected[box_slices(box)] = edit(expected[box_slices(box)])
    ids = {"delete": delete_id, "merge": merge, "split": split_id, "new": first_new}
    return expected, records, ids


# ----------------------------------------------------------------------------- the session
def test_scripted_correction_session(result2d, copy_result):
    outdir = copy_result(result2d)
    image = outdir / "slide.ome.zarr"
    table = pd.read_parquet(outdir / "cells.parquet")
    shape = _labels(image, "cells").shape
    box = C.box_around_cells(((60, 140), (60, 140)), table, "yx", shape)
    original = _digest(image / "labels" / "cells")
    original_table = (outdir / "cells.parquet").read_bytes()

    expected, records, ids = _session(image, table, box)

    # the corrected labels hold exactly those changes; the original is byte-identical
    assert np.array_equal(_labels(image, C.CORRECTED), expected)
    assert _digest(image / "labels" / "cells") == original
    assert (outdir / "cells.parquet").read_bytes() == original_table
    levels = len(C.label_levels(C.ensure_corrected(image)))
    assert levels == 3
    for k in range(levels):
        assert np.array_equal(_labels(image, C.CORRECTED, k), expected[:: 2**k, :: 2**k]), k
    listed = json.loads((image / "labels" / "zarr.json").read_text())["attributes"]["ome"]
    assert listed["labels"] == ["cells", C.CORRECTED]

    # the edit log: one line per edit, who / when / what / which ids
    log = C.read_edits(image)
    assert log == records
    lines = C.edit_log_path(image).read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    a, b = ids["merge"]
    new = ids["new"]
    assert [r["action"] for r in log] == ["delete", "merge", "split", "paint"]
    assert [r["edit"] for r in log] == [1, 2, 3, 4]
    assert [(r["removed"], r["added"], r["modified"]) for r in log] == [
        ([ids["delete"]], [], []),
        ([b], [], [a]),
        ([], [new], [ids["split"]]),
        ([], [new + 1], []),
    ]
    assert all(r["user"] == "tester" and r["region"] == [list(x) for x in box] for r in log)
    assert [r["time"] for r in log] == sorted(r["time"] for r in log)
    assert len({r["labels_uid"] for r in log}) == 1
    assert [r["next_id"] for r in log] == [new, new, new + 1, new + 2]

    # re-measure: only the affected rows change, and the table is what a full measure gives
    path = measure(outdir, labels=C.CORRECTED, show_progress=False)
    assert path == outdir / "cells_corrected.parquet"
    assert (outdir / "cells.parquet").read_bytes() == original_table
    meta = _table_metadata(path)
    assert meta["cellseg.labels"] == C.CORRECTED
    assert meta["cellseg.base_table"] == "cells.parquet" and meta["cellseg.edits"] == "4"
    corrected = pd.read_parquet(path)
    edited = {ids["delete"], a, b, ids["split"], new, new + 1}
    assert set(corrected["cell_id"]) == set(table["cell_id"]) - {ids["delete"], b} | {new, new + 1}
    old = table.set_index("cell_id")
    now = corrected.set_index("cell_id")
    ring = grow_box(box, 4, shape)  # ring width 2 µm = 4 px
    near = set(C.cells_in_box(table, ring, "yx").tolist())
    for cid in sorted(set(old.index) & set(now.index)):
        differ = {c for c in old.columns if not _same(old.at[cid, c], now.at[cid, c])}
        if cid in edited:
            assert differ, cid
        elif cid not in near:
            assert differ <= NEIGHBOUR_COLUMNS, (cid, differ)

    (outdir / "cells_corrected.parquet").rename(outdir / "incremental.parquet")
    (outdir / "cells.parquet").rename(outdir / "original.parquet")
    measure(outdir, labels=C.CORRECTED, show_progress=False)  # no table to start from: all
    full = pd.read_parquet(outdir / "cells_corrected.parquet")
    assert _table_metadata(outdir / "cells_corrected.parquet")["cellseg.base_table"] == ""
    pd.testing.assert_frame_equal(pd.read_parquet(outdir / "incremental.parquet"), full)


def _same(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y):
        return True
    return x == y


def test_remeasure_reads_only_the_affected_crops(result2d, copy_result, monkeypatch):
    outdir = copy_result(result2d)
    image = outdir / "slide.ome.zarr"
    table = pd.read_parquet(outdir / "cells.parquet")
    box = C.box_around_cells(((20, 60), (20, 60)), table, "yx", (200, 200))
    before = C.read_region(image, box)
    cid = int(np.unique(before[before > 0])[0])
    C.apply_edit(image, box, C.delete_cells(before, [cid]), before=before)
    shapes = []
    real = tables.measure_cells
    # a full measurement (the measure stage) and a re-measurement (review) both counted
    for module in (cellseg.measure, tables):
        monkeypatch.setattr(
            module,
            "measure_cells",
            lambda labels, *a, **k: shapes.append(labels.shape) or real(labels, *a, **k),
        )
    measure(outdir, labels=C.CORRECTED, show_progress=False)
    assert shapes and all(np.prod(s) < 200 * 200 / 2 for s in shapes), shapes
    # a second edit starts from the corrected table, and only its cells are measured again
    shapes.clear()
    box2 = C.box_around_cells(((140, 180), (140, 180)), table, "yx", (200, 200))
    before = C.read_region(image, box2)
    other = _whole_inside(table, box2, "yx")[-1]
    C.apply_edit(image, box2, C.delete_cells(before, [other]), before=before)
    path = measure(outdir, labels=C.CORRECTED, show_progress=False)
    assert _table_metadata(path)["cellseg.base_table"] == "cells_corrected.parquet"
    assert _table_metadata(path)["cellseg.edited_cells"] == "1"
    assert other not in set(pd.read_parquet(path)["cell_id"])
    assert shapes and all(np.prod(s) < 200 * 200 / 2 for s in shapes)
    # up to date: nothing is measured
    shapes.clear()
    measure(outdir, labels=C.CORRECTED, show_progress=False)
    assert shapes == []
    # measured another way (ring width): no previous table fits, all is measured again
    path = measure(outdir, labels=C.CORRECTED, ring_width_um=3.0, show_progress=False)
    assert _table_metadata(path)["cellseg.base_table"] == ""
    assert shapes == [(200, 200)]


def test_pyramid_is_updated_for_the_edited_region_only(result2d, copy_result):
    outdir = copy_result(result2d)
    image = outdir / "slide.ome.zarr"
    box = ((0, 30), (0, 30))
    before = C.read_region(image, box)
    C.apply_edit(image, box, np.zeros_like(before), before=before)
    corrected = image / "labels" / C.CORRECTED
    stamps = {p: p.stat().st_mtime_ns for p in corrected.rglob("c/*/*")}
    box2 = ((150, 200), (150, 200))
    before = C.read_region(image, box2)
    after = before.copy()
    after[-10:, -10:] = 0
    after[:5, :5] = 0
    assert C.apply_edit(image, box2, after, before=before) is not None
    group = C.ensure_corrected(image)
    levels = C.label_levels(group)
    touched = C.pyramid_boxes(box2, [lv.shape for lv in levels])
    rewritten = {p for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert rewritten
    for path in stamps:
        k, _, i, j = path.relative_to(corrected).parts
        chunk = levels[int(k)].chunks
        block = tuple((int(n) * c, (int(n) + 1) * c) for n, c in zip((i, j), chunk))
        if path in rewritten:
            assert boxes_intersect(block, touched[int(k)]), path
    full = _labels(image, C.CORRECTED)
    for k in range(len(levels)):
        assert np.array_equal(_labels(image, C.CORRECTED, k), full[:: 2**k, :: 2**k])


def test_ids_are_never_reused_and_stale_edits_are_refused(result2d, copy_result):
    outdir = copy_result(result2d)
    image = outdir / "slide.ome.zarr"
    first = C.max_label_id(image) + 1
    stitch = outdir / "work" / "stitch.json"
    stitch.rename(outdir / "stitch.json")  # without it, the labels are read
    assert C.max_label_id(image) + 1 == first == _labels(image, "cells").max() + 1
    (outdir / "stitch.json").rename(stitch)
    box = ((0, 40), (0, 40))
    before = C.read_region(image, box)
    square = np.zeros(before.shape, bool)
    square[_background_square(before, 4)] = True
    elsewhere = first - 1  # a cell of the scan, outside this region
    assert elsewhere in _labels(image, "cells") and elsewhere not in before
    r1 = C.apply_edit(image, box, C.paint_cell(before, square, elsewhere), before=before)
    assert r1["added"] == [first] and r1["id_map"] == {str(elsewhere): [first]}
    before = C.read_region(image, box)
    r2 = C.apply_edit(image, box, C.delete_cells(before, [first]), before=before)
    assert r2["removed"] == [first]
    before = C.read_region(image, box)
    r3 = C.apply_edit(image, box, C.paint_cell(before, square, 77777), before=before)
    assert r3["added"] == [first + 1]  # the deleted cell's id is not given again
    # an edit made on a region that changed since it was read is refused, nothing written
    stale = before
    current = _labels(image, C.CORRECTED).copy()
    with pytest.raises(C.EditConflict, match="changed since it was read"):
        C.apply_edit(image, box, C.delete_cells(stale, [first + 1]), before=stale)
    assert np.array_equal(_labels(image, C.CORRECTED), current)
    assert len(C.read_edits(image)) == 3
    # an edit that changes nothing writes nothing
    before = C.read_region(image, box)
    assert C.apply_edit(image, box, before.copy(), before=before) is None
    assert len(C.read_edits(image)) == 3
    with pytest.raises(ValueError, match="shape"):
        C.apply_edit(image, box, before[1:], before=before)


def test_correction_session_3d(result3d, copy_result):
    outdir = copy_result(result3d)
    image = outdir / "stack.ome.zarr"
    table = pd.read_parquet(outdir / "cells.parquet")
    full = _labels(image, "cells")
    box = C.box_around_cells(((4, 8), (16, 48), (16, 48)), table, "zyx", full.shape)
    before = C.read_region(image, box)
    victim = _whole_inside(table, box, "zyx")[0]
    after = C.delete_cells(before, [victim])
    blob = np.zeros(after.shape, bool)
    free = np.argwhere(
        ndi.minimum_filter((after == 0).astype(np.uint8), size=(2, 3, 3), origin=(-1, -1, -1))
    )
    z, y, x = free[len(free) // 2]
    blob[z : z + 2, y : y + 3, x : x + 3] = True
    assert not after[blob].any()
    after = C.paint_cell(after, blob, int(before.max()) + 1)
    record = C.apply_edit(image, box, after, before=before, user="tester")
    new = C.max_label_id(image) + 1
    assert record["removed"] == [victim] and record["added"] == [new]
    expected = full.copy()
    expected[expected == victim] = 0
    region = expected[box_slices(box)]
    region[blob & (region == 0)] = new
    assert np.array_equal(_labels(image, C.CORRECTED), expected)
    assert np.array_equal(_labels(image, C.CORRECTED, 1), expected[:, ::2, ::2])
    path = measure(outdir, labels=C.CORRECTED, show_progress=False)
    incremental = pd.read_parquet(path)
    assert victim not in set(incremental["cell_id"]) and new in set(incremental["cell_id"])
    row = incremental.set_index("cell_id").loc[new]
    assert row["n_pixels"] == np.count_nonzero(expected == new)
    assert row["volume_um3"] == pytest.approx(row["n_pixels"] * 2.0 * 0.5 * 0.5)
    (outdir / "cells.parquet").unlink()
    path.unlink()
    measure(outdir, labels=C.CORRECTED, show_progress=False)
    pd.testing.assert_frame_equal(incremental, pd.read_parquet(path))


def test_flags_are_appended_and_the_last_one_wins(result2d, copy_result):
    image = copy_result(result2d) / "slide.ome.zarr"
    C.flag_cell(image, 5, "two nuclei?", user="a")
    C.flag_cell(image, 7, "dim", user="a")
    C.flag_cell(image, 5, flagged=False, user="b")
    flags = C.read_flags(image)
    assert flags["cell_id"].tolist() == [7] and flags["flag_reason"].tolist() == ["dim"]
    lines = [json.loads(x) for x in C.flag_log_path(image).read_text().splitlines()]
    assert [(r["cell_id"], r["flagged"], r["user"]) for r in lines] == [
        (5, True, "a"),
        (7, True, "a"),
        (5, False, "b"),
    ]
    # a torn last line (an interrupted write) is skipped
    with open(C.flag_log_path(image), "a") as f:
        f.write('{"cell_id": 9, "flagg')
    assert C.read_flags(image)["cell_id"].tolist() == [7]


# ----------------------------------------------------------------------------- command line
def test_cli_measure_corrected_and_export_training(result2d, copy_result, tmp_path, capsys):
    outdir = copy_result(result2d)
    assert main(["-q", "measure", str(outdir), "--labels", "cells_corrected"]) == 2
    assert "no corrected labels yet" in capsys.readouterr().err
    assert main(["-q", "export-training", str(outdir)]) == 2
    assert "has no corrected labels" in capsys.readouterr().err

    image = outdir / "slide.ome.zarr"
    table = pd.read_parquet(outdir / "cells.parquet")
    boxes = [((10, 50), (10, 50)), ((30, 70), (30, 70)), ((150, 190), (140, 190))]
    for box in boxes:
        box = C.box_around_cells(box, table, "yx", (200, 200))
        before = C.read_region(image, box)
        C.apply_edit(image, box, C.delete_cells(before, [int(before.max())]), before=before)
    assert main(["-q", "measure", str(outdir), "--labels", "cells_corrected"]) == 0
    assert capsys.readouterr().out.strip() == str(outdir / "cells_corrected.parquet")

    dest = tmp_path / "training"
    assert main(["-q", "export-training", str(outdir), "-o", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == f"2 samples -> {dest / 'index.json'}"
    index = json.loads((dest / "index.json").read_text())
    assert index["format"] == "cellseg-training" and index["version"] == 1
    first, second = index["samples"]
    assert first["edits"] == [1, 2] and second["edits"] == [3]
    corrected = _labels(image, C.CORRECTED)
    pixels = np.asarray(read_scan(image).data[0])
    for sample in index["samples"]:
        img = read_scan(dest / sample["image"])
        lab = read_scan(dest / sample["labels"])
        region = box_slices(box_from_json(sample["region"]))
        assert img.spacing == lab.spacing == (0.5, 0.5) and img.axes == "yx"
        assert np.array_equal(np.asarray(img.data[0]), pixels[region])
        assert np.array_equal(np.asarray(lab.data[0]), corrected[region])
        assert np.asarray(lab.data[0]).dtype == np.uint32
        assert sample["n_cells"] == len(np.unique(corrected[region])) - 1
        assert sample["source"] == str(image.resolve()) and sample["scan"] == "slide"
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["slide_000.tif", "slide_001.tif"]
    assert sorted(p.name for p in (dest / "labels").iterdir()) == ["slide_000.tif", "slide_001.tif"]

    # exporting again replaces this scan's samples, keeps other scans'
    other = dict(first, source="/elsewhere/other.ome.zarr", scan="other")
    index["samples"].append(other)
    (dest / "index.json").write_text(json.dumps(index))
    assert main(["-q", "export-training", str(image), "-o", str(dest), "--pad", "300"]) == 0
    samples = json.loads((dest / "index.json").read_text())["samples"]
    assert [s["scan"] for s in samples] == ["other", "slide"]
    assert samples[1]["region"] == [[0, 200], [0, 200]] and samples[1]["edits"] == [1, 2, 3]
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["slide_000.tif"]

    from cellseg.segmentation.training import folder_pairs

    assert [p.name for p, _ in folder_pairs(dest)] == ["slide_000.tif"]
