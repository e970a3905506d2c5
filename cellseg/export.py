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
  combined ``results/cells.parquet``), their column documentation kept;
- ``geojson``: one scan's cell outlines with their measurements and classes,
  for QuPath (:func:`export_geojson`, :mod:`cellseg.geojson`);
- ``spatialdata``: several scans' images, labels, outlines and one table
  annotating the labels in a SpatialData store (:func:`export_spatialdata`,
  :mod:`cellseg.spatial`);
- ``ome-zarr``: one scan's OME-Zarr image and labels copied into NGFF 0.4
  (Zarr v2) or 0.5 (:func:`export_omezarr`, :mod:`cellseg.ngff`).

Every output is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cellseg.atomic import atomic_path
from cellseg.classes import join_classes
from cellseg.errors import InputError
from cellseg.geojson import read_classes, write_geojson
from cellseg.io import open_labels
from cellseg.measure import Column, read_table_metadata, write_table
from cellseg.ngff import write_omezarr
from cellseg.review import CORRECTED, ORIGINAL, corrected_state, find_image, has_labels, table_path
from cellseg.spatial import write_spatialdata

FORMATS = ("csv", "anndata", "parquet", "geojson", "spatialdata", "ome-zarr")
SUFFIX = {"csv": ".csv", "anndata": ".h5ad", "parquet": ".parquet", "geojson": ".geojson"}

#: Columns that go to ``obs`` rather than ``X`` in AnnData: identifiers, flags, boxes.
_OBS_PREFIXES = ("bbox_", "centroid_")
_OBS_COLUMNS = ("scan", "cell_id", "touches_border", "nearest_neighbor_id", "class")


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
    # each scan's cell classes (cellseg classify) joined as a categorical `class` column
    tables = [join_classes(pd.read_parquet(f), f) for f in files]
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
    if "class" in obs:
        obs["class"] = obs["class"].astype("category")
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
    ome_zarr_version: str = "0.4",
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
    fmt : {"csv", "anndata", "parquet", "geojson"}, optional
        Default from the output's suffix, else ``csv``. ``geojson`` takes one
        scan (:func:`export_geojson`).

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
    if fmt == "geojson":
        if len(inputs) != 1:
            raise InputError("GeoJSON holds one scan's outlines: give one OUTDIR")
        return export_geojson(inputs[0], output)
    if fmt == "spatialdata":
        return export_spatialdata(inputs, output)
    if fmt == "ome-zarr":
        if len(inputs) != 1:
            raise InputError("an OME-Zarr copy holds one scan: give one OUTDIR")
        return export_omezarr(inputs[0], output, version=ome_zarr_version)
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


def labels_source(path: str | Path) -> tuple[Path, str, Path]:
    """The OME-Zarr image, label image name and cell table of a scan's result.

    Parameters
    ----------
    path : path
        A scan's output folder or its ``<scan>.ome.zarr`` (the corrected
        labels and their table once corrections exist, else ``cells``), or a
        cell table (``cells.parquet``, ``cells_corrected.parquet``: the label
        image it was measured from).

    Returns
    -------
    image : Path
    labels : str
    table : Path

    Raises
    ------
    InputError
        If `path` is no cellseg result, or the corrected labels have edits
        that their table does not have yet.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        image, table = find_image(path.parent), path
        meta = pq.read_schema(path).metadata or {}
        labels = meta.get(b"cellseg.labels", ORIGINAL.encode()).decode()
    else:
        image = find_image(path)
        labels = CORRECTED if image is not None and has_labels(image, CORRECTED) else ORIGINAL
        table = table_path(image.parent, labels) if image is not None else path
    if image is None:
        raise InputError(
            f"{path}: not a cellseg result; give a scan's output folder (cellseg segment -o)"
        )
    if not has_labels(image, labels):
        raise InputError(f"{image}: has no label image {labels!r}; run the stitch stage first")
    if labels == CORRECTED:
        state = corrected_state(image)
        meta = (pq.read_schema(table).metadata or {}) if table.exists() else {}
        fresh = (
            meta.get(b"cellseg.labels_uid") == str(state.get("uid")).encode()
            and meta.get(b"cellseg.edits") == str(state.get("n_edits")).encode()
        )
        if not fresh:
            raise InputError(
                f"{table}: missing or older than the corrected labels; run "
                f"`cellseg measure {image.parent} --labels {CORRECTED}` first"
            )
    elif not table.exists():
        raise InputError(f"{table}: no cell table; run `cellseg measure {image.parent}` first")
    return image, labels, table


def export_geojson(
    path: str | Path, output: str | Path | None = None, *, show_progress: bool = True
) -> Path:
    """Write a scan's cells as a QuPath-importable GeoJSON FeatureCollection.

    One feature per cell of the corrected labels once a review saved
    corrections (their table must be measured), else of ``labels/cells``;
    classes from ``OUTDIR/classes.parquet`` where it exists
    (:mod:`cellseg.geojson`).

    Parameters
    ----------
    path : path
        A scan's output folder, its OME-Zarr image or one of its cell tables
        (:func:`labels_source`).
    output : path, optional
        The GeoJSON file; default the table's name with ``.geojson``
        (``OUTDIR/cells.geojson``, ``OUTDIR/cells_corrected.geojson``).
    show_progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        For a 3D scan, or a missing or outdated table.
    """
    image, labels, table_file = labels_source(path)
    label_image = open_labels(image, labels)
    if label_image.ndim != 2:
        raise InputError(
            f"{image}: a 3D scan {tuple(label_image.shape)}; GeoJSON (QuPath) outlines are 2D: "
            "export the cell table with --format csv or anndata instead"
        )
    output = Path(output) if output is not None else table_file.with_suffix(".geojson")
    return write_geojson(
        label_image,
        pd.read_parquet(table_file),
        output,
        classes=read_classes(image.parent),
        show_progress=show_progress,
    )


def export_spatialdata(inputs: Sequence[str | Path], output: str | Path | None) -> Path:
    """Write scans' images, labels, outlines and cell tables as one SpatialData store.

    Each scan's labels and table are those of :func:`labels_source` (the
    corrected ones once a review saved and measured corrections); the tables
    are joined with a ``scan`` column (:func:`to_anndata`). See :mod:`cellseg.spatial`.

    Parameters
    ----------
    inputs : sequence of path
        Scan output folders (or their OME-Zarr images or cell tables).
    output : path
        The store (``.zarr``).

    Returns
    -------
    Path
        The written store.
    """
    if output is None:
        raise InputError("give the SpatialData store's path (-o NAME.zarr)")
    sources = [labels_source(p) for p in inputs]
    table, metas = read_tables([t for _, _, t in sources], add_scan=True)
    names = [str(m.get("scan") or t.parent.name) for m, (_, _, t) in zip(metas, sources)]
    scans = [
        (name, image, labels, table[table["scan"] == name].drop(columns="scan"))
        for name, (image, labels, _) in zip(names, sources)
    ]
    return write_spatialdata(scans, to_anndata(table, metas), output)


def export_omezarr(path: str | Path, output: str | Path | None, *, version: str = "0.4") -> Path:
    """Copy a scan's OME-Zarr image and labels into NGFF `version` (:mod:`cellseg.ngff`).

    Parameters
    ----------
    path : path
        A scan's output folder or its OME-Zarr image.
    output : path
        The copy (``.ome.zarr``).
    version : {"0.4", "0.5"}
        NGFF version; 0.4 is written on Zarr v2.

    Returns
    -------
    Path
        The written copy.
    """
    if output is None:
        raise InputError("give the copy's path (-o NAME.ome.zarr)")
    image = find_image(Path(path))
    if image is None:
        raise InputError(f"{path}: not a cellseg result; give a scan's output folder")
    return write_omezarr(image, output, version=version)
