"""The review dock widget: a cell list to filter, sort and jump through, flags,
colouring by a column, cell classes (:mod:`cellseg.napari._classes`), and
corrections of a full-resolution region.

The widget only wires Qt to functions: the table logic is in
:mod:`cellseg.napari._review`, everything that writes to disk in
:mod:`cellseg.corrections` (edits, flags) and :func:`cellseg.pipeline.measure`
(re-measure). Its public methods (``set_filter``, ``go_to_cell``,
``flag_current``, ``start_edit``, ``apply_edits``, ...) are what the buttons
call, so scripts and tests drive the same code path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from cellseg import review as corrections
from cellseg.errors import CellsegError
from cellseg.napari import _review
from cellseg.napari._classes import CellClassesBox
from cellseg.napari._reader import (
    features_from_table,
    label_pyramid,
    labels_layer,
    load_table,
    table_from_features,
)

if TYPE_CHECKING:
    import napari

#: Name of the paintable layer holding the region being edited.
EDIT_LAYER = "cells edit"


class DataFrameModel(QAbstractTableModel):
    """A read-only Qt table over a pandas DataFrame; sorting is delegated."""

    sort_requested = Signal(str, bool)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._frame = pd.DataFrame()
        self._columns: list[str] = []

    def set_frame(self, frame: pd.DataFrame, columns: list[str]) -> None:
        """Show `columns` of `frame`, in that order."""
        self.beginResetModel()
        self._frame = frame
        self._columns = [c for c in columns if c in frame.columns]
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._frame)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._columns)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or role != Qt.ItemDataRole.DisplayRole:
            return None
        value = self._frame[self._columns[index.column()]].iat[index.row()]
        return _format(value)

    def headerData(  # noqa: N802
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self._columns[section] if section < len(self._columns) else None
        return str(section + 1)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        if 0 <= column < len(self._columns):
            ascending = order == Qt.SortOrder.AscendingOrder
            self.sort_requested.emit(self._columns[column], ascending)


def _format(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.4g}"
    return str(value)


@dataclass
class EditSession:
    """A region loaded into the paintable edit layer."""

    layer: Any
    box: corrections.Box
    before: np.ndarray
    hidden: list[Any] = field(default_factory=list)


class CellReviewWidget(QWidget):
    """Review the cells of a cellseg result open in the viewer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer; its labels layers opened by the cellseg reader are listed.
    """

    #: Largest region (pixels or voxels) loaded for editing.
    MAX_EDIT_PIXELS = 4096 * 4096
    #: Emitted after the table is (re)loaded: the classes box adds the cells' classes.
    table_reloaded = Signal()

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.layer: Any = None
        self.table = pd.DataFrame()
        self.shown = pd.DataFrame()
        self.current_id: int | None = None
        self.edit: EditSession | None = None
        self._sort: tuple[str, bool] = ("cell_id", True)
        self._colormap_backup: Any = None
        self.presence: corrections.ReviewPresence | None = None
        self._told: set[str] = set()
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_sources)
        self.viewer.layers.events.removed.connect(self._refresh_sources)
        self._refresh_sources()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)

        row = QHBoxLayout()
        row.addWidget(QLabel("Labels"))
        self.source_combo = QComboBox()
        self.source_combo.currentIndexChanged.connect(self._on_source)
        row.addWidget(self.source_combo, 1)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter, e.g. area_um2 < 20 or flagged")
        self.filter_edit.returnPressed.connect(lambda: self._guard(self._apply_filter_text))
        row.addWidget(self.filter_edit, 1)
        self.flagged_check = QCheckBox("flagged only")
        self.flagged_check.toggled.connect(lambda _: self._guard(self._apply_filter_text))
        row.addWidget(self.flagged_check)
        layout.addLayout(row)

        self.model = DataFrameModel(self)
        self.model.sort_requested.connect(lambda c, a: self._guard(self.sort_by, c, a))
        self.table_view = QTableView()
        self.table_view.setModel(self.model)
        self.table_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table_view.setSortingEnabled(True)
        self.table_view.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.table_view.selectionModel().currentRowChanged.connect(self._on_row)
        layout.addWidget(self.table_view, 1)

        row = QHBoxLayout()
        self.previous_button = QPushButton("◀ Previous")
        self.previous_button.clicked.connect(lambda: self._guard(self.previous_cell))
        self.next_button = QPushButton("Next ▶")
        self.next_button.clicked.connect(lambda: self._guard(self.next_cell))
        self.count_label = QLabel("")
        row.addWidget(self.previous_button)
        row.addWidget(self.next_button)
        row.addWidget(self.count_label, 1)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.reason_edit = QLineEdit()
        self.reason_edit.setPlaceholderText("reason, e.g. two nuclei")
        row.addWidget(self.reason_edit, 1)
        flag = QPushButton("Flag")
        flag.clicked.connect(lambda: self._guard(self.flag_current, self.reason_edit.text()))
        unflag = QPushButton("Unflag")
        unflag.clicked.connect(lambda: self._guard(self.unflag_current))
        row.addWidget(flag)
        row.addWidget(unflag)
        layout.addLayout(row)

        row = QHBoxLayout()
        row.addWidget(QLabel("Colour by"))
        self.color_combo = QComboBox()
        row.addWidget(self.color_combo, 1)
        color = QPushButton("Colour")
        color.clicked.connect(lambda: self._guard(self.color_by, self.color_combo.currentText()))
        reset = QPushButton("Reset")
        reset.clicked.connect(lambda: self._guard(self.reset_colors))
        row.addWidget(color)
        row.addWidget(reset)
        layout.addLayout(row)

        self.classes = CellClassesBox(self)
        layout.addWidget(self.classes)

        box = QGroupBox("Corrections (full resolution)")
        grid = QGridLayout(box)
        grid.addWidget(QLabel("Reviewer"), 0, 0)
        self.user_edit = QLineEdit(corrections.default_user())
        grid.addWidget(self.user_edit, 0, 1, 1, 2)
        buttons: list[tuple[str, Callable[[], Any], int, int]] = [
            ("Edit view", self.edit_view, 1, 0),
            ("Edit cell", self.edit_cell, 1, 1),
            ("New cell id", self.new_cell_id, 1, 2),
            ("Apply edits", self.apply_edits, 2, 0),
            ("Discard edits", self.discard_edits, 2, 1),
            ("Re-measure", self.remeasure, 2, 2),
        ]
        self.buttons: dict[str, QPushButton] = {}
        for text, slot, r, c in buttons:
            button = QPushButton(text)
            button.clicked.connect(lambda _=False, s=slot: self._guard(s))
            grid.addWidget(button, r, c)
            self.buttons[text] = button
        layout.addWidget(box)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a button's action; a user error is shown in the status line."""
        try:
            return fn(*args)
        except (CellsegError, ValueError, KeyError, RuntimeError) as exc:
            self._say(str(exc).strip("'\""))
            return None

    def _say(self, text: str) -> None:
        self.status.setText(text)

    # ------------------------------------------------------------------ sources
    def _sources(self) -> list[Any]:
        from napari.layers import Labels

        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and (layer.metadata.get("cellseg") or {}).get("labels")
        ]

    def _refresh_sources(self, event: Any = None) -> None:
        sources = self._sources()
        names = [layer.name for layer in sources]
        current = self.layer.name if self.layer is not None and self.layer.name in names else None
        if current is None and sources:
            visible = [s for s in sources if s.visible] or sources
            current = visible[-1].name
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        self.source_combo.addItems(names)
        if current is not None:
            self.source_combo.setCurrentIndex(names.index(current))
        self.source_combo.blockSignals(False)
        if current is None:
            self.layer = None
            self.table = pd.DataFrame()
            self._update_view()
        elif self.layer is None or self.layer.name != current:
            self.set_layer(sources[names.index(current)])

    def _on_source(self, index: int) -> None:
        sources = self._sources()
        if 0 <= index < len(sources):
            self.set_layer(sources[index])

    def set_layer(self, layer: Any) -> None:
        """Review the cells of a labels layer opened by the cellseg reader."""
        self.layer = layer
        self._colormap_backup = None
        names = [s.name for s in self._sources()]
        if layer.name in names and self.source_combo.currentText() != layer.name:
            self.source_combo.blockSignals(True)
            self.source_combo.setCurrentIndex(names.index(layer.name))
            self.source_combo.blockSignals(False)
        self._join_review()
        self.reload_table()

    # ------------------------------------------------------------------ reviewers
    def _join_review(self) -> None:
        """Announce this review of the layer's result; tell the reviewer who else is on it."""
        image = self.image
        if self.presence is not None and self.presence.image_path == image:
            return
        self.leave_review()
        presence = corrections.ReviewPresence(image, self.user_edit.text() or None)
        try:
            others = presence.join()
        except OSError as exc:  # a read-only result can be looked at, not announced
            self._say(f"this review is not announced to others ({exc.strerror}: {exc.filename})")
            return
        self.presence = presence
        # the file goes when the widget does (a crashed napari's is stale by its process)
        self.destroyed.connect(presence.leave)
        self._tell_others(others)

    def _tell_others(self, others: list) -> str:
        """Say (once per reviewer) who else reviews this result; the message, '' if none."""
        new = [h for h in others if h.token not in self._told]
        if not new:
            return ""
        self._told.update(h.token for h in new)
        text = corrections.describe_others(new)
        self._say(text)
        with contextlib.suppress(Exception):  # a notification is a courtesy only
            from napari.utils.notifications import show_warning

            show_warning(f"cellseg: {text}")
        return text

    def leave_review(self) -> None:
        """End this widget's review of its result (others are no longer told of it)."""
        if self.presence is not None:
            self.presence.leave()
            self.presence = None

    @property
    def info(self) -> dict:
        """``image``, ``outdir`` and ``labels`` of the layer under review."""
        return dict(self.layer.metadata["cellseg"])

    @property
    def image(self) -> Path:
        """The OME-Zarr image of the layer under review."""
        return Path(self.info["image"])

    @property
    def axes(self) -> str:
        return "yx" if self.layer.ndim == 2 else "zyx"

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.layer.scale)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.layer.level_shapes[0])

    # ------------------------------------------------------------------ table
    def reload_table(self) -> None:
        """Read the layer's features (or its table) and the flags again."""
        if self.layer is None:
            return
        features = self.layer.features
        if features is not None and "cell_id" in features.columns:
            table = table_from_features(features)
        else:
            table = load_table(self.image, self.info["labels"])
            table = pd.DataFrame({"cell_id": []}) if table is None else table
        self.table = _review.with_flags(table, corrections.read_flags(self.image))
        numeric = [
            c
            for c in self.table.columns
            if c != "cell_id"
            and (
                pd.api.types.is_numeric_dtype(self.table[c])
                or pd.api.types.is_bool_dtype(self.table[c])
            )
        ]
        selected = self.color_combo.currentText()
        self.color_combo.clear()
        self.color_combo.addItems(numeric)
        preferred = [selected, "area_um2", "volume_um3"]
        for column in preferred:
            if column in numeric:
                self.color_combo.setCurrentText(column)
                break
        self._update_view()
        self.table_reloaded.emit()

    def _apply_filter_text(self) -> None:
        self.set_filter(self.filter_edit.text(), self.flagged_check.isChecked())

    def set_filter(self, query: str = "", flagged_only: bool | None = None) -> pd.DataFrame:
        """Show only the cells matching a pandas query (and flagged ones, if asked).

        Returns the rows shown. An invalid query raises ValueError and keeps the list.
        """
        if flagged_only is None:
            flagged_only = self.flagged_check.isChecked()
        _review.filter_cells(self.table, query, flagged_only=flagged_only)  # validate first
        for widget, value in ((self.filter_edit, query), (self.flagged_check, flagged_only)):
            widget.blockSignals(True)
            if isinstance(widget, QLineEdit):
                widget.setText(query)
            else:
                widget.setChecked(bool(value))
            widget.blockSignals(False)
        self._update_view()
        return self.shown

    def sort_by(self, column: str, ascending: bool = True) -> pd.DataFrame:
        """Sort the cell list by a column; returns the rows shown."""
        if column not in self.table.columns:
            raise ValueError(f"the table has no column {column!r}")
        self._sort = (column, bool(ascending))
        self._update_view()
        if column in self.model._columns:
            order = Qt.SortOrder.AscendingOrder if ascending else Qt.SortOrder.DescendingOrder
            header = self.table_view.horizontalHeader()
            header.blockSignals(True)
            header.setSortIndicator(self.model._columns.index(column), order)
            header.blockSignals(False)
        return self.shown

    def _update_view(self) -> None:
        if self.table.empty or "cell_id" not in self.table:
            self.shown = self.table
        else:
            shown = _review.filter_cells(
                self.table, self.filter_edit.text(), flagged_only=self.flagged_check.isChecked()
            )
            column, ascending = self._sort
            if column not in shown.columns:
                column, ascending = "cell_id", True
            self.shown = _review.sort_cells(shown, column, ascending).reset_index(drop=True)
        self.model.set_frame(self.shown, _review.display_columns(self.shown))
        self.count_label.setText(f"{len(self.shown)} of {len(self.table)} cells")
        if self.current_id is not None and "cell_id" in self.shown:
            rows = np.flatnonzero(self.shown["cell_id"].to_numpy() == self.current_id)
            if rows.size:
                self._select_quietly(int(rows[0]))

    def _select_quietly(self, row: int) -> None:
        selection = self.table_view.selectionModel()
        selection.blockSignals(True)
        self.table_view.selectRow(row)
        selection.blockSignals(False)

    # ------------------------------------------------------------------ navigation
    def _on_row(self, current: QModelIndex, previous: QModelIndex) -> None:
        if current.isValid() and current.row() < len(self.shown):
            self._guard(self.go_to_cell, int(self.shown["cell_id"].iat[current.row()]))

    def select_row(self, row: int) -> int:
        """Select a row of the list (as a click does) and go to its cell; returns the id."""
        if not 0 <= row < len(self.shown):
            raise ValueError(f"row {row} is not in the list of {len(self.shown)} cells")
        self.table_view.selectRow(row)
        cell_id = int(self.shown["cell_id"].iat[row])
        if self.current_id != cell_id:
            self.go_to_cell(cell_id)
        return cell_id

    def current_row(self) -> int | None:
        """Row of the current cell in the list, or None."""
        if self.current_id is None or self.shown.empty:
            return None
        rows = np.flatnonzero(self.shown["cell_id"].to_numpy() == self.current_id)
        return int(rows[0]) if rows.size else None

    def next_cell(self) -> int:
        """Go to the next cell of the list (the first if none is current)."""
        row = self.current_row()
        return self.select_row(0 if row is None else min(row + 1, len(self.shown) - 1))

    def previous_cell(self) -> int:
        """Go to the previous cell of the list (the first if none is current)."""
        row = self.current_row()
        return self.select_row(0 if row is None else max(row - 1, 0))

    def go_to_cell(self, cell_id: int) -> None:
        """Centre the camera on a cell, zoom so it fills a quarter of the view, select it."""
        rows = self.table.loc[self.table["cell_id"] == cell_id]
        if rows.empty:
            raise KeyError(f"cell {cell_id} is not in the table")
        point, zoom = _review.cell_view(
            rows.iloc[0], self.axes, self.spacing, _canvas_size(self.viewer)
        )
        offset = self.viewer.dims.ndim - self.layer.ndim
        displayed = list(self.viewer.dims.displayed)
        for axis, value in point.items():
            if axis + offset not in displayed:
                self.viewer.dims.set_point(axis + offset, value)
        camera(self.viewer).center = tuple(point[a - offset] for a in displayed if a >= offset)
        camera(self.viewer).zoom = zoom
        self.layer.selected_label = int(cell_id)
        self.current_id = int(cell_id)
        self._say(f"cell {cell_id}")

    # ------------------------------------------------------------------ flags
    def flag_current(self, reason: str = "") -> dict:
        """Flag the current cell with a reason (written to ``OUTDIR/review/flags.jsonl``)."""
        return self._flag(True, reason)

    def unflag_current(self) -> dict:
        """Clear the current cell's flag."""
        return self._flag(False, "")

    def _flag(self, flagged: bool, reason: str) -> dict:
        if self.current_id is None:
            raise ValueError("select a cell first")
        record = corrections.flag_cell(
            self.image,
            self.current_id,
            reason,
            flagged=flagged,
            user=self.user_edit.text() or None,
            labels=self.info["labels"],
        )
        self.table = _review.with_flags(self.table, corrections.read_flags(self.image))
        self._update_view()
        self._say(f"cell {self.current_id} {'flagged' if flagged else 'unflagged'}")
        return record

    # ------------------------------------------------------------------ colours
    def color_by(self, column: str) -> tuple[float, float]:
        """Colour the cells by a column (viridis, 1st to 99th percentile); returns the range."""
        from napari.utils.colormaps import DirectLabelColormap

        if column not in self.table.columns:
            raise ValueError(f"the table has no column {column!r}")
        colors, limits = _review.colors_by_column(self.table, column)
        if self._colormap_backup is None:
            self._colormap_backup = self.layer.colormap
        self.layer.colormap = DirectLabelColormap(color_dict=colors)
        self._say(f"colour: {column} from {limits[0]:.4g} (purple) to {limits[1]:.4g} (yellow)")
        return limits

    def reset_colors(self) -> None:
        """Back to the layer's own label colours."""
        if self._colormap_backup is not None:
            self.layer.colormap = self._colormap_backup
            self._colormap_backup = None

    # ------------------------------------------------------------------ corrections
    def edit_view(self) -> corrections.Box:
        """Load the region on screen (grown to whole cells) into the edit layer."""
        ndim = self.layer.ndim
        point = list(self.viewer.dims.point)[-ndim:]
        box = _review.view_box(
            list(camera(self.viewer).center)[-2:],
            camera(self.viewer).zoom,
            _canvas_size(self.viewer),
            point,
            self.spacing,
            self.shape,
        )
        return self.start_edit(box)

    def edit_cell(self, cell_id: int | None = None) -> corrections.Box:
        """Load a cell's neighbourhood (default the current cell) into the edit layer."""
        cell_id = self.current_id if cell_id is None else int(cell_id)
        if cell_id is None:
            raise ValueError("select a cell first")
        box = _review.cell_neighbourhood(self.table, cell_id, self.axes, self.shape)
        return self.start_edit(box)

    def start_edit(self, box: corrections.Box, *, whole_cells: bool = True) -> corrections.Box:
        """Load a full-resolution region into the paintable layer ``cells edit``.

        The region is grown to hold whole every cell it reaches (unless
        `whole_cells` is False). Edit it with napari's label tools: fill with
        0 or erase to delete, fill one cell with another's id to merge, erase a
        line across a cell to split it, paint with a new id (``New cell id``)
        for a missed cell. Then ``Apply edits``.
        """
        if self.edit is not None:
            raise RuntimeError("an edit is open: apply or discard it first")
        box = tuple((int(a), int(b)) for a, b in box)
        table = self.table if whole_cells else None
        box = _review.edit_box(box, table, self.axes, self.shape, self.MAX_EDIT_PIXELS)
        before = corrections.read_region(self.image, box)
        layer = self.viewer.add_labels(
            before.copy(),
            name=EDIT_LAYER,
            scale=self.spacing,
            translate=[a * s for (a, _), s in zip(box, self.spacing)],
            opacity=0.7,
            metadata={"cellseg_edit": {"image": str(self.image), "region": box}},
        )
        hidden = [
            s
            for s in self._sources()
            if s.visible and Path(s.metadata["cellseg"]["image"]) == self.image
        ]
        for source in hidden:
            source.visible = False
        layer.selected_label = self._fresh_id(before)
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.edit = EditSession(layer=layer, box=box, before=before, hidden=hidden)
        size = " × ".join(str(b - a) for a, b in box)
        told = self._tell_others(self.presence.others()) if self.presence else ""
        self._say(
            f"editing region {list(map(list, box))} ({size} px); apply or discard"
            + (f". {told}" if told else "")
        )
        return box

    def _fresh_id(self, region: np.ndarray) -> int:
        return max(corrections.next_free_id(self.image), int(region.max(initial=0)) + 1)

    def new_cell_id(self) -> int:
        """Set the edit layer's paint label to an id no cell has (for a missed cell)."""
        if self.edit is None:
            raise RuntimeError("no edit is open: use Edit view or Edit cell first")
        label = self._fresh_id(np.asarray(self.edit.layer.data))
        self.edit.layer.selected_label = label
        self.edit.layer.mode = "paint"
        return label

    def apply_edits(self, note: str = "", action: str | None = None) -> dict | None:
        """Write the edited region to ``labels/cells_corrected`` and the edit log.

        Calls :func:`cellseg.corrections.apply_edit` (the one path to disk),
        then shows the corrected labels. Returns the log record (None: nothing
        changed).
        """
        if self.edit is None:
            raise RuntimeError("no edit is open")
        session = self.edit
        record = corrections.apply_edit(
            self.image,
            session.box,
            np.asarray(session.layer.data),
            before=session.before,
            user=self.user_edit.text() or None,
            action=action,
            note=note,
        )
        self._close_edit()
        if record is None:
            self._say("nothing changed")
            return None
        self._show_corrected()
        ids = ", ".join(f"{k} {record[k]}" for k in ("removed", "added", "modified") if record[k])
        self._say(f"edit {record['edit']} ({record['action']}): {ids}; re-measure to update")
        return record

    def discard_edits(self) -> None:
        """Drop the edit layer without writing anything."""
        if self.edit is not None:
            self._close_edit()
            self._say("edits discarded")

    def _close_edit(self) -> None:
        session, self.edit = self.edit, None
        if session is None:
            return
        if session.layer in self.viewer.layers:
            self.viewer.layers.remove(session.layer)
        for source in session.hidden:
            if source in self.viewer.layers:
                source.visible = True

    def _corrected_layer(self) -> Any:
        for layer in self._sources():
            info = layer.metadata["cellseg"]
            if info["labels"] == corrections.CORRECTED and Path(info["image"]) == self.image:
                return layer
        return None

    def _show_corrected(self) -> None:
        """Show the corrected labels as they are on disk now (a new layer on first edit)."""
        layer = self._corrected_layer()
        if layer is not None:
            levels = label_pyramid(self.image, corrections.CORRECTED)
            layer.data = levels if layer.multiscale else levels[0]
            layer.refresh()
        else:
            table = self.table.drop(columns=["flagged", "flag_reason"], errors="ignore")
            data, meta, _ = labels_layer(self.image, corrections.CORRECTED, table=table)
            original = self.layer
            layer = self.viewer.add_labels(data, **meta)
            if original is not None and original is not layer:
                original.visible = False
        self.set_layer(layer)

    def remeasure(self) -> Path:
        """Re-measure the corrected labels (only the cells edits touched) and reload the table."""
        from cellseg.stages import measure

        layer = self._corrected_layer()
        if layer is None:
            raise ValueError("no corrections yet: apply an edit first")
        path = measure(Path(self.info["outdir"]), labels=corrections.CORRECTED, show_progress=False)
        layer.features = features_from_table(pd.read_parquet(path))
        self.set_layer(layer)
        self._say(f"re-measured: {path.name} ({len(self.table)} cells)")
        return path


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9 on, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _canvas_size(viewer: Any) -> tuple[int, int]:
    """The canvas (height, width) in screen pixels."""
    size = None
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None:
        size = getattr(canvas, "size", None)
    if size is None:
        size = getattr(viewer, "_canvas_size", None)
    if size is None or min(size) <= 0:
        return (600, 800)
    return (int(size[0]), int(size[1]))
