"""Cell classes in a real napari viewer: keys label cells, the log keeps them, colours follow."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cellseg.geojson import class_color
from cellseg.io import open_labels
from cellseg.napari._reader import UNCLASSIFIED_RGBA, class_palette
from cellseg.review.class_labels import class_log_path, read_class_labels

pytestmark = pytest.mark.usefixtures("qt_display")


def _open(viewer, result):
    layers = viewer.open(result, plugin="cellseg")
    _, widget = viewer.window.add_plugin_dock_widget("cellseg", "Review cells")
    return layers, widget


def _press(viewer, key):
    """A key press as the canvas delivers it: through napari's keymap of the active layer."""
    assert viewer.window._qt_viewer._key_map_handler.press_key(key)


def _rgb(name):
    return np.array(class_color(name)) / 255.0


def _log(outdir):
    return [json.loads(line) for line in class_log_path(outdir).read_text().splitlines()]


def test_keys_label_cells_the_log_keeps_them_and_a_reload_shows_them(
    make_napari_viewer, result2d, copy_result
):
    outdir = copy_result(result2d)
    viewer = make_napari_viewer()
    (_, labels), widget = _open(viewer, outdir)
    box = widget.classes
    assert box.class_names == ["Positive", "Negative", "Other"]
    widget.user_edit.setText("dr. who")
    viewer.layers.selection.active = labels

    cells = []
    for row, key in ((0, "1"), (1, "2"), (2, "1")):
        cells.append(widget.select_row(row))
        _press(viewer, key)
    # the keys went to the classes, not to napari's label modes (1: erase, 2: paint)
    assert labels.mode == "pan_zoom"
    lines = _log(outdir)
    assert [(r["cell_id"], r["class"]) for r in lines] == [
        (cells[0], "Positive"),
        (cells[1], "Negative"),
        (cells[2], "Positive"),
    ]
    assert {r["user"] for r in lines} == {"dr. who"} and {r["labels"] for r in lines} == {"cells"}
    counts = box.counts()
    assert counts.loc["Positive", "labelled"] == 2 and counts.loc["Negative", "labelled"] == 1
    assert "2 labelled" in box.class_list.item(0).text()
    table = widget.table.set_index("cell_id")
    assert table.loc[cells, "class"].tolist() == ["Positive", "Negative", "Positive"]
    assert (table.loc[cells, "class_source"] == "reviewer").all()
    assert widget.set_filter("`class` == 'Positive'")["cell_id"].tolist() == sorted(
        [cells[0], cells[2]]
    )
    widget.set_filter("")
    # the cells show their class's colour at once (QuPath's colours for its classes)
    np.testing.assert_allclose(labels.colormap.map(cells[0])[:3], _rgb("Positive"), atol=1e-6)
    np.testing.assert_allclose(labels.colormap.map(cells[1])[:3], _rgb("Negative"), atol=1e-6)
    other = int(widget.table.loc[~widget.table["cell_id"].isin(cells), "cell_id"].iat[0])
    np.testing.assert_allclose(labels.colormap.map(other), UNCLASSIFIED_RGBA, atol=1e-6)
    # hovering a cell shows its class: it is in the layer's features
    features = labels.features.set_index("index")
    assert features.loc[cells[1], "class"] == "Negative"

    # key 0 clears the current cell's class: a null line appended, nothing rewritten
    widget.select_row(1)
    _press(viewer, "0")
    lines = _log(outdir)
    assert len(lines) == 4 and lines[-1]["cell_id"] == cells[1] and lines[-1]["class"] is None
    assert read_class_labels(outdir) == {cells[0]: "Positive", cells[2]: "Positive"}
    np.testing.assert_allclose(labels.colormap.map(cells[1]), UNCLASSIFIED_RGBA, atol=1e-6)
    # a class the reviewer adds gets the next key
    assert box.add_class("Lymphocyte") == 4
    widget.select_row(3)
    _press(viewer, "4")
    lymphocyte = widget.current_id
    assert read_class_labels(outdir)[lymphocyte] == "Lymphocyte"
    # a key without a class says so and writes nothing
    _press(viewer, "9")
    assert "no class has key 9" in widget.status.text() and len(_log(outdir)) == 5

    # a new viewer on the same result: the reader colours by class, the widget lists them
    viewer.close()
    viewer = make_napari_viewer()
    (_, labels), widget = _open(viewer, outdir)
    np.testing.assert_allclose(labels.colormap.map(cells[2])[:3], _rgb("Positive"), atol=1e-6)
    np.testing.assert_allclose(labels.colormap.map(lymphocyte)[:3], _rgb("Lymphocyte"), atol=1e-6)
    table = widget.table.set_index("cell_id")
    assert table.loc[[cells[0], cells[1], lymphocyte], "class"].tolist() == [
        "Positive",
        "",
        "Lymphocyte",
    ]
    assert widget.classes.class_names == ["Positive", "Negative", "Other", "Lymphocyte"]
    assert widget.classes.counts()["labelled"].to_dict() == {
        "Positive": 2,
        "Negative": 0,
        "Other": 0,
        "Lymphocyte": 1,
    }
    # colouring by class can be switched off (napari's own label colours) and on
    widget.classes.color_check.setChecked(False)
    assert type(labels.colormap).__name__ == "CyclicLabelColormap"
    assert not np.allclose(labels.colormap.map(cells[0])[:3], _rgb("Positive"), atol=0.02)
    widget.classes.color_check.setChecked(True)
    np.testing.assert_allclose(labels.colormap.map(cells[0])[:3], _rgb("Positive"), atol=1e-6)


def _click(layer, position):
    """A click (press and release, no drag) at a world position, through the layer's callbacks."""
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    for kind in ("mouse_press", "mouse_release"):
        event = SimpleNamespace(type=kind, position=tuple(position), modifiers=[], handled=False)
        (mouse_press_callbacks if kind == "mouse_press" else mouse_release_callbacks)(layer, event)


def test_a_click_on_a_cell_makes_it_current_and_a_key_labels_it(
    make_napari_viewer, result2d, copy_result
):
    outdir = copy_result(result2d)
    truth = open_labels(outdir / "slide.ome.zarr", "cells")[...]
    viewer = make_napari_viewer()
    (image, labels), widget = _open(viewer, outdir)
    viewer.layers.selection.active = labels
    cell = int(widget.table["cell_id"].iat[len(widget.table) // 2])
    y, x = np.argwhere(truth == cell)[0]
    _click(labels, (y * 0.5, x * 0.5))  # world coordinates: 0.5 µm pixels
    assert widget.current_id == cell and labels.selected_label == cell
    viewer.layers.selection.active = image  # the keys work with the image selected too
    _press(viewer, "3")
    assert read_class_labels(outdir) == {cell: "Other"}
    # a click on the background changes nothing
    y, x = np.argwhere(truth == 0)[0]
    _click(labels, (y * 0.5, x * 0.5))
    assert widget.current_id == cell


def test_colours_follow_classes_parquet_and_labels_win(make_napari_viewer, result2d, copy_result):
    from cellseg.review.class_labels import append_class_label

    outdir = copy_result(result2d)
    table = pd.read_parquet(outdir / "cells.parquet")
    big = table["area_um2"] > table["area_um2"].median()
    classes = pd.DataFrame(
        {
            "cell_id": table["cell_id"],
            "class": np.where(big, "Large", "Small"),
            "probability": np.linspace(0.5, 1.0, len(table)),
            "color": np.where(big, "#00ff00", None),
        }
    )
    classes.to_parquet(outdir / "classes.parquet")
    relabelled = int(table.loc[big, "cell_id"].iat[0])
    append_class_label(outdir, relabelled, "Small", labels="cells")

    viewer = make_napari_viewer()
    (_, labels), widget = _open(viewer, outdir)
    ids = table["cell_id"].to_numpy()
    for cid, is_big in zip(ids, big):
        if cid == relabelled:
            continue
        expected = [0.0, 1.0, 0.0] if is_big else _rgb("Small")
        np.testing.assert_allclose(labels.colormap.map(int(cid))[:3], expected, atol=1e-6)
    # the reviewer's label wins over the prediction, in the class's colour
    np.testing.assert_allclose(labels.colormap.map(relabelled)[:3], _rgb("Small"), atol=1e-6)
    features = labels.features.set_index("index")
    assert features.loc[relabelled, "class_source"] == "reviewer"
    assert np.isnan(features.loc[relabelled, "class_probability"])
    first = int(ids[0])
    if first != relabelled:
        assert features.loc[first, "class_probability"] == pytest.approx(0.5)
        assert features.loc[first, "class_source"] == "predicted"
    counts = widget.classes.counts()
    assert counts.loc["Large", "predicted"] == big.sum() - 1
    assert counts.loc["Small", "predicted"] == (~big).sum()
    assert counts.loc["Small", "labelled"] == 1


def test_train_button_classifies_every_cell(make_napari_viewer, result2d, copy_result, qtbot):
    outdir = copy_result(result2d)
    viewer = make_napari_viewer()
    (_, labels), widget = _open(viewer, outdir)
    table = widget.table
    order = table.sort_values("area_um2")["cell_id"].to_numpy()
    small, large = order[: len(order) // 3], order[-(len(order) // 3) :]
    box = widget.classes
    for cid in small[:8]:
        box.assign("Small", int(cid))
    for cid in large[:8]:
        box.assign("Large", int(cid))

    worker = box.train()
    assert box.busy and not box.train_button.isEnabled()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert not box.busy and box.train_button.isEnabled()
    # the accuracy shown is the one the saved classifier records
    from cellseg.classifier import CLASSIFIER_FILE, load_classifier

    metrics = load_classifier(outdir / CLASSIFIER_FILE).metrics
    assert box.accuracy == pytest.approx(metrics["cv_accuracy"])
    text = box.train_label.text()
    assert f"cross-validated accuracy {metrics['cv_accuracy']:.1%} on 16 labelled cells" in text
    assert "predicted:" in box.train_label.toolTip()  # the confusion matrix
    predicted = pd.read_parquet(outdir / "classes.parquet")
    assert set(predicted["cell_id"]) == set(table["cell_id"])
    shown = widget.table.set_index("cell_id")
    assert (shown["class"] != "").all()
    # labelled cells keep the reviewer's class; the rest are coloured by prediction
    assert (shown.loc[small[:8], "class"] == "Small").all()
    assert (shown.loc[small[:8], "class_source"] == "reviewer").all()
    other = int(large[-1])
    color = class_palette(box.classes)[shown.loc[other, "class"]]
    np.testing.assert_allclose(labels.colormap.map(other), color, atol=1e-6)
