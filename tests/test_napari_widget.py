"""The review widget in a real napari viewer: list, jump, flag, colour, correct, re-measure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cellseg import review as C
from cellseg.io import open_labels
from cellseg.napari import _review

pytestmark = pytest.mark.usefixtures("qt_display")


def _open(viewer, result):
    layers = viewer.open(result, plugin="cellseg")
    _, widget = viewer.window.add_plugin_dock_widget("cellseg", "Review cells")
    return layers, widget


def camera(viewer):
    from cellseg.napari._widget import camera

    return camera(viewer)


def _row(table, cell_id):
    return table.loc[table["cell_id"] == cell_id].iloc[0]


def test_filter_sort_and_jump_move_the_camera_to_the_cell(make_napari_viewer, result2d):
    viewer = make_napari_viewer()
    (_, labels), widget = _open(viewer, result2d)
    table = pd.read_parquet(result2d / "cells.parquet")
    assert widget.layer.name == labels.name and len(widget.table) == len(table)
    assert widget.count_label.text() == f"{len(table)} of {len(table)} cells"

    shown = widget.set_filter("area_um2 < 40")
    assert len(shown) == (table["area_um2"] < 40).sum() > 0
    assert widget.model.rowCount() == len(shown)
    shown = widget.sort_by("area_um2", ascending=False)
    assert shown["area_um2"].is_monotonic_decreasing
    assert shown["area_um2"].max() < 40
    with pytest.raises(ValueError, match="not valid"):
        widget.set_filter("no_such_column > 3")
    assert len(widget.shown) == len(shown)  # a bad filter keeps the list

    zoom0 = camera(viewer).zoom
    cell = widget.select_row(0)
    row = _row(table, cell)
    assert cell == shown["cell_id"].iat[0]
    np.testing.assert_allclose(camera(viewer).center[-2:], (row.centroid_y_um, row.centroid_x_um))
    _, zoom = _review.cell_view(row, "yx", (0.5, 0.5), tuple(viewer.canvas.size))
    assert camera(viewer).zoom == pytest.approx(zoom) and zoom != pytest.approx(zoom0)
    assert labels.selected_label == cell

    following = widget.next_cell()
    assert following == shown["cell_id"].iat[1]
    row = _row(table, following)
    np.testing.assert_allclose(camera(viewer).center[-2:], (row.centroid_y_um, row.centroid_x_um))
    assert widget.previous_cell() == cell
    # a click on a row of the list does the same
    widget.table_view.selectRow(2)
    row = _row(table, shown["cell_id"].iat[2])
    np.testing.assert_allclose(camera(viewer).center[-2:], (row.centroid_y_um, row.centroid_x_um))
    # the header sorts too (Qt calls the model's sort)
    widget.model.sort(widget.model._columns.index("n_pixels"), _descending())
    assert widget.shown["n_pixels"].is_monotonic_decreasing


def _descending():
    from qtpy.QtCore import Qt

    return Qt.SortOrder.DescendingOrder


def test_jump_in_3d_moves_to_the_cells_plane(make_napari_viewer, result3d):
    viewer = make_napari_viewer()
    (_, labels), widget = _open(viewer, result3d)
    table = pd.read_parquet(result3d / "cells.parquet")
    row = table.iloc[len(table) // 2]
    widget.go_to_cell(int(row.cell_id))
    assert abs(viewer.dims.point[0] - row.centroid_z_um) <= 1.0 + 1e-9  # nearest plane, 2 µm
    np.testing.assert_allclose(camera(viewer).center[-2:], (row.centroid_y_um, row.centroid_x_um))


def test_flagging_writes_the_flag(make_napari_viewer, result2d, copy_result):
    outdir = copy_result(result2d)
    viewer = make_napari_viewer()
    _, widget = _open(viewer, outdir)
    widget.user_edit.setText("dr. who")
    cell = widget.select_row(3)
    record = widget.flag_current("two nuclei?")
    lines = [json.loads(x) for x in (outdir / "review" / "flags.jsonl").read_text().splitlines()]
    assert lines == [record]
    assert (record["cell_id"], record["reason"], record["user"]) == (cell, "two nuclei?", "dr. who")
    assert record["flagged"] and record["labels"] == "cells"
    assert widget.set_filter("", flagged_only=True)["cell_id"].tolist() == [cell]
    assert widget.set_filter("flag_reason == 'two nuclei?'", False)["cell_id"].tolist() == [cell]
    widget.unflag_current()
    assert widget.set_filter("", flagged_only=True).empty
    assert C.read_flags(outdir / "slide.ome.zarr").empty


def test_colour_by_a_column(make_napari_viewer, result2d):
    from napari.utils.colormaps import DirectLabelColormap, ensure_colormap

    viewer = make_napari_viewer()
    (_, labels), widget = _open(viewer, result2d)
    original = labels.colormap
    low, high = widget.color_by("area_um2")
    assert isinstance(labels.colormap, DirectLabelColormap)
    table = widget.table
    big = int(table.loc[table["area_um2"].idxmax(), "cell_id"])
    small = int(table.loc[table["area_um2"].idxmin(), "cell_id"])
    viridis = ensure_colormap("viridis")
    np.testing.assert_allclose(labels.colormap.map(big), viridis.map(np.array([1.0]))[0])
    np.testing.assert_allclose(labels.colormap.map(small), viridis.map(np.array([0.0]))[0])
    assert labels.colormap.map(0)[3] == 0
    widget.reset_colors()
    assert labels.colormap is original


def test_correction_round_trip_through_the_widget(make_napari_viewer, result2d, copy_result):
    outdir = copy_result(result2d)
    image = outdir / "slide.ome.zarr"
    original = open_labels(image, "cells")[...].copy()
    viewer = make_napari_viewer()
    (_, cells), widget = _open(viewer, outdir)
    table = widget.table
    target = int(table.loc[table["n_pixels"].idxmax(), "cell_id"])
    widget.go_to_cell(target)
    box = widget.edit_cell()
    edit = widget.edit.layer
    assert edit.name == "cells edit" and not cells.visible
    assert np.array_equal(edit.data, original[C.box_slices(box)])
    np.testing.assert_allclose(edit.translate, [box[0][0] * 0.5, box[1][0] * 0.5])
    # delete the cell, paint a missed one with a fresh id, as with napari's tools
    data = C.delete_cells(edit.data, [target])
    free = np.argwhere(data == 0)
    y, x = free[len(free) // 2]
    label = widget.new_cell_id()
    assert label == C.max_label_id(image) + 1 == edit.selected_label
    data[y, x] = label
    edit.data = data
    record = widget.apply_edits(note="scripted")
    assert record["removed"] == [target] and record["added"] == [label]
    assert record["note"] == "scripted" and record["action"] == "edit"
    assert [layer.name for layer in viewer.layers][-2:] == ["cells", "cells_corrected"]
    corrected = viewer.layers["cells_corrected"]
    assert widget.layer.name == "cells_corrected"
    assert corrected.visible
    assert not cells.visible
    expected = original.copy()
    expected[C.box_slices(box)] = data
    assert np.array_equal(np.asarray(corrected.data[0]), expected)
    assert np.array_equal(open_labels(image, "cells")[...], original)
    assert C.read_edits(image) == [record]
    # re-measure (the button): the table of the corrected labels, shown in the widget
    path = widget.remeasure()
    assert path == outdir / "cells_corrected.parquet"
    ids = set(widget.table["cell_id"])
    assert target not in ids and label in ids
    assert _row(widget.table, label)["n_pixels"] == 1
    pd.testing.assert_frame_equal(corrected.features.drop(columns="index"), pd.read_parquet(path))
    # a second edit, of the region on screen around the new cell
    gy, gx = box[0][0] + int(y), box[1][0] + int(x)
    widget.go_to_cell(label)
    view = widget.edit_view()
    assert view[0][0] <= gy < view[0][1] and view[1][0] <= gx < view[1][1]
    assert widget.edit.layer.data[gy - view[0][0], gx - view[1][0]] == label
    widget.discard_edits()
    assert "cells edit" not in viewer.layers and corrected.visible
    assert len(C.read_edits(image)) == 1


def test_screenshot_shows_image_and_labels(make_napari_viewer, result2d, tmp_path, qtbot):
    import imageio.v3 as iio

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1300, 800)
    (image, cells), widget = _open(viewer, result2d)
    widget.set_filter("area_um2 > 20")
    qtbot.wait(100)
    viewer.reset_view()
    window = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(tmp_path / "review.png", window)
    assert (tmp_path / "review.png").stat().st_size > 10_000
    with_labels = viewer.screenshot(canvas_only=True, flash=False).astype(int)
    assert widget.isVisible() and window.shape[1] > with_labels.shape[1] + 200  # widget shown

    cells.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False).astype(int)
    cells.visible = True
    # screen pixel of each label pixel: the camera maps world (µm) to the canvas
    height, width = with_labels.shape[:2]
    scale = height / viewer.canvas.size[0]
    labels = np.asarray(cells.data[0])
    yy, xx = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
    cy, cx = camera(viewer).center[-2:]
    rows = np.round(((yy * 0.5 - cy) * camera(viewer).zoom) * scale + height / 2).astype(int)
    cols = np.round(((xx * 0.5 - cx) * camera(viewer).zoom) * scale + width / 2).astype(int)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    assert inside.mean() > 0.95
    from scipy import ndimage as ndi

    core = ndi.binary_erosion(labels > 0, iterations=2) & inside
    empty = ~ndi.binary_dilation(labels > 0, iterations=2) & inside
    change = np.abs(with_labels - without)[..., :3].sum(axis=-1)
    colour = with_labels[..., :3].max(axis=-1) - with_labels[..., :3].min(axis=-1)
    assert (change[rows[core], cols[core]] > 30).mean() > 0.9  # label colours where cells are
    assert (change[rows[empty], cols[empty]] <= 3).mean() > 0.95  # and nowhere else
    assert (colour[rows[empty], cols[empty]] <= 3).mean() > 0.95  # the grey image shows there
    assert without[rows[core], cols[core], :3].mean() > without[rows[empty], cols[empty], :3].mean()


_OTHER_REVIEWER = """
import ast
import sys
from pathlib import Path
from cellseg import review as C

image = Path(sys.argv[1])
presence = C.ReviewPresence(image, "ann")
presence.join()
print("ready", flush=True)
for line in sys.stdin:
    box, target = ast.literal_eval(line)  # ((y0, y1), (x0, x1)), cell id: delete it there
    region = C.read_region(image, box)
    C.apply_edit(image, box, C.delete_cells(region, [target]), before=region, user="ann")
    print("done", flush=True)
presence.leave()
"""


def test_two_reviewers_are_told_and_no_edit_is_lost(make_napari_viewer, result2d, copy_result):
    """Another reviewer (another process) on the same result: told; both edits kept or redone."""
    import subprocess
    import sys

    from cellseg.review.presence import reviewers_dir

    outdir = copy_result(result2d)
    image = outdir / "slide.ome.zarr"
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER_REVIEWER, str(image)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "ready"
        viewer = make_napari_viewer()
        _, widget = _open(viewer, outdir)
        assert "also reviewing this result: ann" in widget.status.text()
        table = widget.table.sort_values("n_pixels", ascending=False)
        first, second = (int(c) for c in table["cell_id"].iloc[:2])
        widget.go_to_cell(first)
        box = widget.edit_cell()
        # meanwhile ann deletes the same cell and writes it
        other.stdin.write(f"{box!r}, {first}\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "done"
        widget.edit.layer.data = C.delete_cells(widget.edit.layer.data, [first])
        assert widget._guard(widget.apply_edits) is None  # as the Apply button runs it
        assert "changed since it was read" in widget.status.text()
        assert widget.edit is not None  # the refused edit stays open to redo
        widget.discard_edits()
        # an edit of another cell, elsewhere, is written beside ann's
        widget.go_to_cell(second)
        widget.edit_cell()
        widget.edit.layer.data = C.delete_cells(widget.edit.layer.data, [second])
        record = widget.apply_edits()
        edits = C.read_edits(image)
        assert [e["user"] for e in edits][0] == "ann" and edits[-1] == record
        assert edits[0]["removed"] == [first] and record["removed"] == [second]
        labels = open_labels(image, "cells_corrected")[...]
        assert not np.isin([first, second], labels).any()
    finally:
        other.stdin.close()
        other.wait(timeout=60)
    assert widget.presence.others() == []
    widget.leave_review()
    assert not list(reviewers_dir(image).glob("*.lock"))
