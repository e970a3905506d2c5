"""The review widget's *Cell classes* box: a reviewer names cells' classes, one
button trains the classifier on them and classifies every cell.

A reviewer picks the current cell (a row of the cell list, *Next*, or a click
on the cell in the viewer) and presses a key: ``1`` … ``9`` give it the
class listed with that number, ``0`` clears its class. Each label is one line
appended to ``OUTDIR/review/class_labels.jsonl``
(:func:`cellseg.review.class_labels.append_class_label`; the log is
append-only, so two reviewers labelling one result at once never lose a
label, and the last line for a cell wins). *Train classifier and classify
all* runs ``cellseg classify OUTDIR --train`` (:func:`train_and_classify`) in a
worker thread and shows its cross-validated accuracy; the cells are then
coloured by the predicted class, the reviewer's labels winning over the
predictions (:func:`cellseg.napari._reader.merge_classes`).

The box reads and writes through library functions only; its public methods
(``assign``, ``assign_key``, ``clear``, ``add_class``, ``train``, ...) are
what the keys and buttons call, so tests drive the same code path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from cellseg.geojson import class_color
from cellseg.napari._reader import (
    CLASS_COLORMAP,
    class_colormap,
    class_palette,
    features_from_table,
    label_pyramid,
    load_classes,
    merge_classes,
    with_classes,
)
from cellseg.review.class_labels import append_class_label

#: Class names offered before any cell has a class (QuPath's names, so its colours).
DEFAULT_CLASSES = ("Positive", "Negative", "Other")
#: Number keys that assign a class (the n-th class of the list); ``0`` clears.
CLASS_KEYS = 9
#: Labels layer columns that never go into the layer's features.
_NOT_FEATURES = ("flagged", "flag_reason")


def _label_colors() -> Any:
    """napari's own colours of a labels layer (what a layer has before it is coloured by class)."""
    from napari.utils.colormaps import label_colormap

    return label_colormap(49, 0.5, background_value=0)


def train_and_classify(outdir: Path) -> dict:
    """Train the classifier on the reviewer's labels and classify every cell of `outdir`.

    The same as ``cellseg classify OUTDIR --train``
    (:func:`cellseg.stages.classify`): it saves the classifier
    (``OUTDIR/classifier.skops``), writes ``OUTDIR/classes.parquet`` and
    rewrites the report when the scan has one.

    Parameters
    ----------
    outdir : Path
        The scan's output folder.

    Returns
    -------
    dict
        The stage's result, plus ``accuracy`` (cross-validated, None when too
        few cells were labelled to cross-validate), ``n_labelled`` and
        ``confusion`` (rows true, columns predicted, in ``classes`` order).
    """
    # the stages pull in the whole pipeline (and scikit-learn): loaded only when asked
    from cellseg.stages import classify

    result = dict(classify(Path(outdir), train=True))
    model = result.get("classifier") or {}
    metrics = model.get("metrics") or {}
    result["accuracy"] = metrics.get("cv_accuracy")
    result["n_labelled"] = metrics.get("n_labelled")
    result["confusion"] = metrics.get("confusion")
    result["class_names"] = list(model.get("classes") or [])
    return result


def describe_training(result: dict) -> tuple[str, str]:
    """A line saying how training went, and the confusion matrix as text (for a tooltip).

    Examples
    --------
    >>> line, _ = describe_training({"accuracy": 0.95, "n_labelled": 40, "report": None})
    >>> line
    'cross-validated accuracy 95.0% on 40 labelled cells'
    """
    accuracy, n = result.get("accuracy"), result.get("n_labelled")
    if accuracy is None:
        line = f"trained on {n} labelled cells (too few to cross-validate)"
    else:
        line = f"cross-validated accuracy {float(accuracy):.1%} on {n} labelled cells"
    if result.get("report"):
        line += "; report updated"
    names, confusion = result.get("class_names") or [], result.get("confusion")
    table = ""
    if confusion:
        width = max(len(str(c)) for c in names)
        rows = [" " * width + " | predicted: " + "  ".join(str(c) for c in names)]
        rows += [f"{str(c):>{width}} | " + "  ".join(map(str, r)) for c, r in zip(names, confusion)]
        table = "\n".join(rows)
    return line, table


class CellClassesBox(QGroupBox):
    """Class labels of the cells under review, and the button that classifies them all.

    Parameters
    ----------
    review : cellseg.napari._widget.CellReviewWidget
        The review widget it sits in: its layer, table, current cell, reviewer
        name and status line. The box shows the classes whenever the widget
        (re)loads its table (its ``table_reloaded`` signal).
    """

    def __init__(self, review: Any) -> None:
        super().__init__("Cell classes")
        self.review = review
        self.classes = merge_classes(None, {})
        self.accuracy: float | None = None
        self.worker: Any = None
        self._watched: list[Any] = []
        self._build()
        self._bind_keys(review.viewer)
        review.table_reloaded.connect(self.refresh)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        hint = QLabel("keys 1–9 give the current cell the class of that number, 0 clears it")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(120)
        layout.addWidget(self.class_list)
        for name in DEFAULT_CLASSES:
            self._add_item(name)

        row = QHBoxLayout()
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("new class, e.g. Lymphocyte")
        self.name_edit.returnPressed.connect(self._add_typed)
        row.addWidget(self.name_edit, 1)
        add = QPushButton("Add class")
        add.clicked.connect(self._add_typed)
        row.addWidget(add)
        layout.addLayout(row)

        row = QHBoxLayout()
        assign = QPushButton("Assign")
        assign.setToolTip("give the current cell the class selected in the list")
        assign.clicked.connect(lambda: self._guard(self.assign, self.selected_class()))
        clear = QPushButton("Clear class")
        clear.clicked.connect(lambda: self._guard(self.clear))
        self.color_check = QCheckBox("colour cells by class")
        self.color_check.setChecked(True)
        self.color_check.toggled.connect(lambda on: self._guard(self.show_classes, on))
        row.addWidget(assign)
        row.addWidget(clear)
        row.addWidget(self.color_check, 1)
        layout.addLayout(row)

        self.train_button = QPushButton("Train classifier and classify all")
        self.train_button.clicked.connect(lambda: self._guard(self.train))
        layout.addWidget(self.train_button)
        self.train_label = QLabel("")
        self.train_label.setWordWrap(True)
        layout.addWidget(self.train_label)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.review._guard(fn, *args)

    def _add_item(self, name: str) -> None:
        item = QListWidgetItem(name)
        item.setData(Qt.ItemDataRole.UserRole, name)
        self.class_list.addItem(item)

    def _add_typed(self) -> None:
        if self._guard(self.add_class, self.name_edit.text()) is not None:
            self.name_edit.clear()

    # ------------------------------------------------------------------ class names
    @property
    def class_names(self) -> list[str]:
        """The classes offered, in key order (key ``1`` is the first)."""
        items = (self.class_list.item(i) for i in range(self.class_list.count()))
        return [str(item.data(Qt.ItemDataRole.UserRole)) for item in items]

    def add_class(self, name: str) -> int:
        """Offer one more class; returns its number (its key, if at most 9)."""
        name = str(name).strip()
        if not name:
            raise ValueError("type a class name first")
        if name not in self.class_names:
            self._add_item(name)
            self._update_list()
        return self.class_names.index(name) + 1

    def selected_class(self) -> str:
        """The class selected in the list."""
        item = self.class_list.currentItem()
        if item is None:
            raise ValueError("select a class in the list first")
        return str(item.data(Qt.ItemDataRole.UserRole))

    # ------------------------------------------------------------------ labels
    def _cell(self, cell_id: int | None) -> int:
        cell_id = self.review.current_id if cell_id is None else int(cell_id)
        if cell_id is None:
            raise ValueError("select a cell first (a row of the list, or click it)")
        return int(cell_id)

    def assign(self, klass: str, cell_id: int | None = None) -> dict:
        """Give a cell (default the current one) a class; returns the log record written."""
        name = str(klass).strip()
        self.add_class(name)
        return self._label(self._cell(cell_id), name)

    def clear(self, cell_id: int | None = None) -> dict:
        """Remove the reviewer's class of a cell (default the current one)."""
        return self._label(self._cell(cell_id), None)

    def assign_key(self, key: int) -> dict:
        """What number key `key` does: ``1`` … ``9`` assign that class, ``0`` clears."""
        if key == 0:
            return self.clear()
        names = self.class_names
        if not 1 <= key <= len(names):
            raise ValueError(f"no class has key {key}: add one ({len(names)} classes)")
        return self.assign(names[key - 1])

    def _label(self, cell_id: int, klass: str | None) -> dict:
        review = self.review
        if review.layer is None:
            raise ValueError("open a cellseg result first")
        record = append_class_label(
            Path(review.info["outdir"]),
            cell_id,
            klass,
            labels=review.info["labels"],
            user=review.user_edit.text() or None,
        )
        self.refresh()
        what = f"class {klass}" if klass is not None else "no class"
        review._say(f"cell {cell_id}: {what}")
        return record

    def counts(self) -> pd.DataFrame:
        """Cells per class: ``labelled`` (by the reviewer) and ``predicted``, by class name."""
        table = self.classes
        names = list(dict.fromkeys([*self.class_names, *table["class"]]))
        out = pd.DataFrame(
            0, index=pd.Index(names, name="class"), columns=["labelled", "predicted"]
        )
        for source, column in (("reviewer", "labelled"), ("predicted", "predicted")):
            counted = table.loc[table["class_source"] == source, "class"].value_counts()
            out.loc[counted.index, column] = counted.to_numpy()
        return out

    # ------------------------------------------------------------------ showing
    def refresh(self) -> None:
        """Read the classes again (labels and predictions) and show them on the layer under review.

        Called whenever the review widget (re)loads its table.
        """
        review = self.review
        if review.layer is None:
            return
        self._watch(review.layer)
        self.classes = load_classes(Path(review.info["outdir"]))
        for name in self.classes["class"]:
            if name not in self.class_names:
                self._add_item(str(name))
        if "cell_id" in review.table and (len(self.classes) or "class" in review.table):
            review.table = with_classes(review.table, self.classes)
            features = review.table.drop(columns=list(_NOT_FEATURES), errors="ignore")
            review.layer.features = features_from_table(features)
            review._update_view()
        self.show_classes(self.color_check.isChecked())
        self._update_list()

    def show_classes(self, on: bool = True) -> None:
        """Colour the cells by class (on), or give back the colours they had (off)."""
        review = self.review
        layer = review.layer
        if layer is None:
            return
        showing = getattr(layer.colormap, "name", None) == CLASS_COLORMAP
        if on and len(self.classes):
            if review._colormap_backup is None:
                review._colormap_backup = _label_colors() if showing else layer.colormap
            layer.colormap = class_colormap(self.classes)
        elif showing:
            if review._colormap_backup is None:
                review._colormap_backup = _label_colors()
            review.reset_colors()

    def _update_list(self) -> None:
        counts = self.counts()
        palette = class_palette(self.classes)
        for i in range(self.class_list.count()):
            item = self.class_list.item(i)
            name = str(item.data(Qt.ItemDataRole.UserRole))
            key = f"{i + 1}  " if i < CLASS_KEYS else "    "
            labelled, predicted = (int(v) for v in counts.loc[name])
            item.setText(f"{key}{name}    {labelled} labelled, {predicted} predicted")
            rgba = palette.get(name) or (*(c / 255.0 for c in class_color(name)), 1.0)
            pixmap = QPixmap(12, 12)
            pixmap.fill(QColor.fromRgbF(*(float(c) for c in rgba)))
            item.setIcon(QIcon(pixmap))

    # ------------------------------------------------------------------ keys and clicks
    def _bind_keys(self, target: Any) -> None:
        """Bind ``0`` … ``9`` on the viewer or a layer (a layer's keys come first in napari)."""
        for key in range(CLASS_KEYS + 1):
            target.bind_key(str(key), self._key_action(key), overwrite=True)

    def _watch(self, layer: Any) -> None:
        """Keys and clicks on a reviewed labels layer (its keys win over napari's mode keys)."""
        if any(layer is seen for seen in self._watched):
            return
        self._bind_keys(layer)
        layer.mouse_drag_callbacks.append(self._on_click)
        self._watched.append(layer)

    def _key_action(self, key: int) -> Callable[[Any], None]:
        def action(_target: Any) -> None:
            self._guard(self.assign_key, key)

        action.__doc__ = f"cellseg: class {key} for the current cell" if key else "clear class"
        return action

    def _on_click(self, layer: Any, event: Any) -> Any:
        """A click (press and release without a drag) on a cell makes it the current cell."""
        if layer.mode != "pan_zoom" or layer is not self.review.layer:
            return
        press = tuple(event.position)
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self._guard(self.select_at, press)

    def select_at(self, position: Any) -> int | None:
        """Make the cell at a world position (µm) the current cell; returns its id (None: none).

        The id is read from the full-resolution label image, whatever level is shown.
        """
        review = self.review
        layer = review.layer
        point = np.asarray(layer.world_to_data(np.asarray(position, float)))[-layer.ndim :]
        index = tuple(int(np.floor(p + 0.5)) for p in point)
        level0 = label_pyramid(review.image, review.info["labels"])[0]
        if any(not 0 <= i < n for i, n in zip(index, level0.shape)):
            return None
        cell_id = int(np.asarray(level0[index]))
        if cell_id == 0:
            return None
        review.current_id = cell_id
        layer.selected_label = cell_id
        row = review.current_row()
        if row is not None:
            review._select_quietly(row)
        review._say(f"cell {cell_id}")
        return cell_id

    # ------------------------------------------------------------------ training
    @property
    def busy(self) -> bool:
        """Whether a training run is going on."""
        return self.worker is not None

    def train(self) -> Any:
        """Train on the labels and classify every cell, in a worker thread; returns the worker.

        When it ends, the cells are coloured by their predicted class and the
        cross-validated accuracy is shown.
        """
        # napari's worker threads: imported with the viewer, not with cellseg
        from napari.qt.threading import create_worker

        review = self.review
        if review.layer is None:
            raise ValueError("open a cellseg result first")
        if self.worker is not None:
            raise RuntimeError("the classifier is training already")
        outdir = Path(review.info["outdir"])
        worker = create_worker(train_and_classify, outdir, _start_thread=False)
        worker.returned.connect(self._trained)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._done)
        self.worker = worker
        self.train_button.setEnabled(False)
        self.train_label.setText("training the classifier and classifying every cell …")
        worker.start()
        return worker

    def _trained(self, result: dict) -> None:
        accuracy = result.get("accuracy")
        self.accuracy = None if accuracy is None else float(accuracy)
        self.refresh()
        line, confusion = describe_training(result)
        n = int((self.classes["class_source"] == "predicted").sum())
        text = f"{n} cells classified; {line}"
        self.train_label.setText(text)
        self.train_label.setToolTip(confusion)
        self.review._say(text)

    def _failed(self, exc: BaseException) -> None:
        self.train_label.setText(f"training failed: {str(exc).strip()}")

    def _done(self) -> None:
        self.worker = None
        self.train_button.setEnabled(True)
