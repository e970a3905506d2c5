"""Cell tables out of cellseg: CSV, AnnData (``.h5ad``), and one table for many scans.

``cellseg export`` reads one or more cell tables (``cells.parquet`` files or
scan output folders) and writes

- ``csv``: the table as it is (with a ``scan`` column first when several
  tables are joined);
- ``anndata``: an :class:`anndata.AnnData` with the numeric features in ``X``
  (``var`` holds each feature's unit and description), the identifiers, flags
  and boxes in ``obs``, the centroids in µm in ``obsm["spatial"]`` (columns
  ``x, y`` or ``x, y, z``, the order scanpy and squidpy expect) and the tables'
  metadata in ``uns["cellseg"]`` (by scan name);
- ``parquet``: several tables joined with a ``scan`` column (the run's
  combined ``results/cells.parquet``), their column documentation kept.

Every output is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg.atomic import atomic_path
from cellseg.errors import InputError
from cellseg.measure import Column, read_table_metadata, write_table

FORMATS = ("csv", "anndata", "parquet")
SUFFIX = {"csv": ".csv", "anndata": ".h5ad", "parquet": ".parquet"}

#: Columns that go to ``obs`` rather than ``X`` in AnnData: identifiers, flags, boxes.
_OBS_PREFIXES = ("bbox_", "centroid_")
_OBS_COLUMNS = ("scan", "cell_id", "touches_border", "nearest_neighbor_id")


def table_file(path: str | Path) -> Path:
    """A cell table's path from itself or its scan's output folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "cells.parquet"
    if not path.exists():
        raise InputError(
            f"{path}: no cell table; run `cellseg segment` or `cellseg measure` for this "
            "scan first, or give the path of a cells.parquet file"
        )
    return path


def read_tables(
    paths: Sequence[str | Path], *, add_scan: bool | None = None
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Read cell tables; several are joined with a ``scan`` column first.

    Parameters
    ----------
    paths : sequence of path
        ``cells.parquet`` files or scan output folders.
    add_scan : bool, optional
        Put the ``scan`` column first (default: when there are several tables).

    Returns
    -------
    table : pandas.DataFrame
        One table as it is, or several joined (columns missing from a scan's
        table, e.g. ``volume_um3`` of a 2D scan, are empty there).
    metadata : list of dict
        Each table's ``cellseg.*`` metadata (:func:`cellseg.measure.read_table_metadata`).
    """
    files = [table_file(p) for p in paths]
    if not files:
        raise InputError("no cell table given")
    metas = [read_table_metadata(f) for f in files]
    tables = [pd.read_parquet(f) for f in files]
    if add_scan is None:
        add_scan = len(tables) > 1
    if not add_scan:
        if len(tables) > 1:
            raise InputError("several tables are joined with a scan column only")
        return tables[0], metas
    names = [str(m.get("scan") or f.parent.name) for m, f in zip(metas, files)]
    if len(set(names)) != len(names):
        raise InputError(f"scan names repeat among {[str(f) for f in files]}: {names}")
    parts = []
    for name, t in zip(names, tables):
        t = t.copy()
        t.insert(0, "scan", name)
        parts.append(t)
    joined = pd.concat(parts, ignore_index=True, sort=False)
    joined["scan"] = joined["scan"].astype("category")
    return joined, metas


def column_docs(metas: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Unit and description of every column documented in some table's metadata."""
    docs: dict[str, dict[str, str]] = {
        "scan": {"name": "scan", "unit": "", "description": "scan the cell belongs to"}
    }
    for meta in metas:
        for col in meta.get("columns", []) or []:
            docs.setdefault(col["name"], col)
    return docs


def to_anndata(table: pd.DataFrame, metas: Sequence[dict[str, Any]] = ()) -> Any:
    """An AnnData of a cell table: features in ``X``, the rest in ``obs``.

    Parameters
    ----------
    table : pandas.DataFrame
        A cell table (one scan, or several with a ``scan`` column).
    metas : sequence of dict
        The tables' metadata, for units and descriptions and ``uns``.

    Returns
    -------
    anndata.AnnData
        ``X`` float32 (cells × features); ``var`` with ``unit`` and
        ``description``; ``obs`` indexed by ``cell_id`` (``<scan>:<cell_id>``
        when several scans are joined); ``obsm["spatial"]`` the centroids in µm
        as ``x, y[, z]``.
    """
    import anndata as ad  # heavy (h5py, scipy.sparse, ...): only for this format

    docs = column_docs(metas)
    obs_cols = [c for c in table.columns if c in _OBS_COLUMNS or c.startswith(_OBS_PREFIXES)]
    features = [
        c for c in table.columns if c not in obs_cols and pd.api.types.is_numeric_dtype(table[c])
    ]
    obs = table[obs_cols].copy()
    if "scan" in table:
        index = table["scan"].astype(str) + ":" + table["cell_id"].astype(str)
    else:
        index = table["cell_id"].astype(str)
    obs.index = pd.Index(index.to_numpy(), name="cell")
    var = pd.DataFrame(
        {
            "unit": [docs.get(c, {}).get("unit", "") for c in features],
            "description": [docs.get(c, {}).get("description", "") for c in features],
        },
        index=pd.Index(features, name="feature"),
    )
    x = table[features].to_numpy(dtype=np.float32) if features else np.zeros((len(table), 0))
    adata = ad.AnnData(X=x, obs=obs, var=var)
    axes = [a for a in ("x", "y", "z") if f"centroid_{a}_um" in table]
    adata.obsm["spatial"] = table[[f"centroid_{a}_um" for a in axes]].to_numpy(np.float64)
    adata.uns["spatial_axes"] = axes
    adata.uns["cellseg"] = {
        str(m.get("scan") or f"table{i}"): {
            k: v if isinstance(v, str) else json.dumps(v) for k, v in m.items() if k != "columns"
        }
        for i, m in enumerate(metas)
    }
    return adata


def export_tables(
    inputs: Sequence[str | Path],
    output: str | Path | None = None,
    *,
    fmt: str | None = None,
) -> Path:
    """Export one or more cell tables to CSV, AnnData or one joined Parquet table.

    Several tables are joined with a ``scan`` column first; so is a single
    one exported as Parquet (the run's combined table has it for any number
    of scans).

    Parameters
    ----------
    inputs : sequence of path
        ``cells.parquet`` files or scan output folders.
    output : path, optional
        Output file; default ``cells.<csv|h5ad>`` beside the (first) table.
    fmt : {"csv", "anndata", "parquet"}, optional
        Default from the output's suffix, else ``csv``.

    Returns
    -------
    Path
        The written file.
    """
    if fmt is None:
        suffix = Path(output).suffix.lower() if output is not None else ".csv"
        fmt = {v: k for k, v in SUFFIX.items()}.get(suffix, "csv")
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    table, metas = read_tables(inputs, add_scan=True if fmt == "parquet" else None)
    if output is None:
        output = table_file(inputs[0]).with_suffix(SUFFIX[fmt])
        if fmt == "parquet":
            raise InputError("give an output path (-o) for a joined Parquet table")
    output = Path(output)
    with atomic_path(output) as tmp:
        if fmt == "csv":
            table.to_csv(tmp, index=False)
        elif fmt == "anndata":
            to_anndata(table, metas).write_h5ad(tmp)
        else:
            docs = column_docs(metas)
            columns = [
                Column(c, docs[c].get("unit", ""), docs[c].get("description", ""))
                for c in table.columns
                if c in docs
            ]
            meta = {
                "cellseg.scans": json.dumps([m.get("scan") for m in metas]),
                "cellseg.tables": json.dumps(
                    [{k: v for k, v in m.items() if k != "columns"} for m in metas]
                ),
            }
            versions = {m.get("version") for m in metas if m.get("version")}
            if len(versions) == 1:
                meta["cellseg.version"] = str(versions.pop())
            write_table(table, tmp, metadata=meta, columns=columns)
    return output
