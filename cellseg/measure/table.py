"""The cell table on disk: Parquet written row group by row group, read back in parts.

Written to a file (:class:`TableWriter`, as the measure stage does), the
table is never whole in memory: rows go to the Parquet file in ``cell_id``
order, one row group (:data:`ROW_GROUP_ROWS` rows) at a time, with the
columns' units and descriptions (:class:`cellseg.measure.columns.Column`) in
the schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cellseg.atomic import remove_stale_siblings, temp_tag
from cellseg.measure.columns import Column

#: Rows per row group of a cell table's Parquet file. The measure stage holds
#: about one row group of the table at a time.
ROW_GROUP_ROWS = 8_192


class TableWriter:
    """A cell table written to Parquet in row groups as its rows come, atomically.

    Rows go to a temporary file beside `path` (``.<name>.tmp-<pid>@<host>``), which
    replaces `path` when the writer is closed; on an error it is removed, and
    temporaries of killed processes are removed when the next writer opens.
    Row groups hold :data:`ROW_GROUP_ROWS` rows (every :meth:`write` but the
    last should give a multiple of it), so the file does not depend on how the
    rows were divided into writes.

    Use as a context manager::

        with TableWriter(path, metadata, columns) as writer:
            writer.write(first_rows)
            writer.write(more_rows)

    Parameters
    ----------
    path : Path
        Destination ``.parquet`` file.
    metadata : dict, optional
        Key/value metadata of the file (scan, config, model, version, ...).
    columns : iterable of Column, optional
        Units and descriptions: stored per field (``unit``, ``description``)
        and as the JSON list ``cellseg.columns``.
    """

    def __init__(
        self,
        path: Path,
        metadata: dict[str, str] | None = None,
        columns: Iterable[Column] | None = None,
    ) -> None:
        self.path = Path(path)
        self.metadata = dict(metadata or {})
        self.docs = {c.name: c for c in columns or ()}
        self.n_rows = 0
        self._writer: Any = None
        self._schema: Any = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{temp_tag()}")

    def scratch_path(self, what: str) -> Path:
        """A scratch file beside the table, removed with the writer's temporaries."""
        return self.tmp.with_name(f"{self.tmp.name}-{what}")

    def _documented_schema(self, schema: Any, names: Sequence[str]) -> Any:
        meta = dict(schema.metadata or {})
        meta.update({k.encode(): str(v).encode() for k, v in self.metadata.items()})
        if self.docs:
            listed = [asdict(self.docs[n]) for n in names if n in self.docs]
            meta[b"cellseg.columns"] = json.dumps(listed, ensure_ascii=False).encode()
        fields = []
        for field in schema:
            col = self.docs.get(field.name)
            if col is not None:
                field = field.with_metadata({"unit": col.unit, "description": col.description})
            fields.append(field)
        return pa.schema(fields, metadata=meta)

    def write(self, table: pd.DataFrame) -> None:
        """Append rows (the same columns and dtypes every time)."""
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        if self._writer is None:
            self._schema = self._documented_schema(arrow.schema, list(table.columns))
            self._writer = pq.ParquetWriter(self.tmp, self._schema)
        arrow = pa.Table.from_arrays(arrow.columns, schema=self._schema)
        self._writer.write_table(arrow, row_group_size=ROW_GROUP_ROWS)
        self.n_rows += len(table)

    def close(self) -> None:
        """Finish the file and move it to `path`."""
        if self._writer is None:
            raise ValueError(f"{self.path}: no rows were given, not even an empty table")
        self._writer.close()
        self._writer = None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Remove what was written."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def write_table(
    table: pd.DataFrame,
    path: Path,
    metadata: dict[str, str] | None = None,
    columns: Iterable[Column] | None = None,
) -> None:
    """Write a cell table to Parquet atomically, with its documentation in the schema.

    The same file as :class:`TableWriter` given the rows in parts.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table.
    path : Path
        Destination ``.parquet`` file; written to a temporary name, then renamed.
    metadata : dict, optional
        Key/value metadata of the file (scan, config, model, version, ...).
    columns : iterable of Column, optional
        Units and descriptions: stored per field (``unit``, ``description``)
        and as the JSON list ``cellseg.columns``.
    """
    with TableWriter(path, metadata, columns) as writer:
        writer.write(table)


def read_table_metadata(path: Path) -> dict[str, Any]:
    """The ``cellseg.*`` metadata of a cell table, JSON values decoded.

    Returns
    -------
    dict
        Keys without the ``cellseg.`` prefix (``scan``, ``version``, ``columns``, ...).
    """
    raw = pq.read_schema(path).metadata or {}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        if not key.startswith("cellseg."):
            continue
        text = v.decode()
        try:
            out[key[len("cellseg.") :]] = json.loads(text)
        except ValueError:
            out[key[len("cellseg.") :]] = text
    return out


def read_table_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Some columns of a cell table, read a row group at a time into numpy arrays.

    The same frame as ``pandas.read_parquet(path, columns=columns)``, with
    under half of its memory: that holds the Arrow table and its pandas copy
    at once, and Arrow buffers every row group's bytes and keeps what it
    freed; here memory holds the columns and one row group.

    Parameters
    ----------
    path : Path
        A Parquet table (``cells.parquet``).
    columns : sequence of str
        Columns to read, in this order.

    Returns
    -------
    pandas.DataFrame
        With a RangeIndex. Integer columns with missing values become
        float64 with NaN, as in pandas (boolean ones too, where pandas gives
        objects; a cell table has none).
    """
    columns = list(columns)
    table = pq.ParquetFile(path, pre_buffer=False)  # not every row group's bytes at once
    n = table.metadata.num_rows
    dtypes = table.schema_arrow.empty_table().select(columns).to_pandas().dtypes
    out = {c: np.empty(n, dtypes[c]) for c in columns}
    at = 0
    for batch in table.iter_batches(columns=columns, batch_size=ROW_GROUP_ROWS, use_threads=False):
        k = batch.num_rows
        for c in columns:
            values = batch.column(c)
            if values.null_count and out[c].dtype.kind not in "fO":
                out[c] = out[c].astype(np.float64)  # as pandas: missing values are NaN
            if values.null_count and out[c].dtype.kind == "f":
                values = values.cast("float64").fill_null(float("nan"))
            out[c][at : at + k] = values.to_numpy(zero_copy_only=False)
        at += k
    pa.default_memory_pool().release_unused()
    return pd.DataFrame(out, copy=False)
