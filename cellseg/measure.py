"""Per-cell measurements from a label image, chunk by chunk.

Each chunk of the label image is reduced to per-id partial sums (pixel count,
coordinate sums, bounding box, intensity sum); partials of cells that cross
chunk borders are then combined. Memory is bounded by one chunk plus one row
per cell, whatever the scan's size.

Columns (``ax`` is each spatial axis of the scan, ``z``, ``y``, ``x``):

=========================  =====  ==================================================
column                     unit   meaning
=========================  =====  ==================================================
``cell_id``                       label value of the cell in ``labels/cells``
``centroid_<ax>_um``       µm     centroid, physical coordinates from the scan origin
``centroid_<ax>_px``       px     centroid in pixel (voxel) indices
``bbox_<ax>_start_px``     px     bounding box start (inclusive) in pixel indices
``bbox_<ax>_stop_px``      px     bounding box stop (exclusive) in pixel indices
``area_um2`` (2D)          µm²    area: pixel count × pixel area
``volume_um3`` (3D)        µm³    volume: voxel count × voxel volume
``n_pixels``                      pixel (voxel) count
``mean_intensity``         raw    mean of the segmented channel over the cell
=========================  =====  ==================================================
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _block_partials(labels: np.ndarray, intensity: np.ndarray, origin: Sequence[int]):
    from scipy import ndimage as ndi

    uniq, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if uniq.size == 0 or (uniq.size == 1 and uniq[0] == 0):
        return None
    if uniq[0] != 0:
        inv = inv + 1
        uniq = np.concatenate([[0], uniq])
    n = uniq.size
    flat = inv.ravel()
    counts = np.bincount(flat, minlength=n)
    out = {"cell_id": uniq[1:], "n_pixels": counts[1:]}
    grids = np.indices(labels.shape, sparse=True)
    for ax, g in enumerate(grids):
        coord = np.broadcast_to(g, labels.shape).ravel()
        out[f"sum_{ax}"] = (
            np.bincount(flat, weights=coord, minlength=n)[1:] + origin[ax] * counts[1:]
        )
    out["sum_intensity"] = np.bincount(
        flat, weights=np.asarray(intensity, dtype=np.float64).ravel(), minlength=n
    )[1:]
    slices = ndi.find_objects(inv)
    for ax in range(labels.ndim):
        out[f"start_{ax}"] = np.array([s[ax].start + origin[ax] for s in slices])
        out[f"stop_{ax}"] = np.array([s[ax].stop + origin[ax] for s in slices])
    return pd.DataFrame(out)


def measure_cells(
    label_image,
    intensity_image,
    *,
    spacing: Sequence[float],
    axes: str | None = None,
    chunks: Sequence[int] | None = None,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Measure every cell of a label image.

    Parameters
    ----------
    label_image : array-like of int, (Y, X) or (Z, Y, X)
        Labels (numpy, zarr or dask); 0 is background.
    intensity_image : array-like, same shape
        The segmented channel.
    spacing : sequence of float
        Pixel size in µm per axis.
    axes : str, optional
        Axis names, default ``"yx"`` or ``"zyx"``.
    chunks : sequence of int, optional
        Block shape to process at a time (default the label image's chunks, or
        the whole image).
    show_progress : bool
        Show a progress bar over blocks.

    Returns
    -------
    pandas.DataFrame
        One row per cell id, sorted by id; columns as in the module docstring.

    Examples
    --------
    >>> lab = np.zeros((4, 6), np.uint32); lab[1:3, 1:4] = 7
    >>> t = measure_cells(lab, np.ones((4, 6)), spacing=(0.5, 0.5))
    >>> t[["cell_id", "centroid_y_um", "centroid_x_um", "area_um2"]].values.tolist()
    [[7.0, 0.75, 1.0, 1.5]]
    """
    shape = tuple(label_image.shape)
    nd = len(shape)
    axes = axes or ("yx" if nd == 2 else "zyx")
    spacing = tuple(float(s) for s in spacing)
    if len(axes) != nd or len(spacing) != nd:
        raise ValueError(f"axes {axes!r} and spacing {spacing} do not match a {nd}D image")
    if chunks is None:
        chunks = getattr(label_image, "chunks", None)
        if chunks is not None and isinstance(chunks[0], tuple):
            chunks = tuple(c[0] for c in chunks)
        chunks = chunks or shape
    chunks = tuple(int(c) for c in chunks)
    grid = [range(0, n, c) for n, c in zip(shape, chunks)]
    parts = []
    from cellseg.pipeline import progress

    blocks = list(itertools.product(*grid))
    for origin in progress(blocks, desc="measure", enabled=show_progress):
        sl = tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, chunks, shape))
        lab = np.asarray(label_image[sl])
        if not lab.any():
            continue
        part = _block_partials(lab, np.asarray(intensity_image[sl]), origin)
        if part is not None:
            parts.append(part)
    return _combine(parts, spacing, axes)


def _combine(parts: list[pd.DataFrame], spacing, axes: str) -> pd.DataFrame:
    nd = len(axes)
    agg = {"n_pixels": "sum", "sum_intensity": "sum"}
    for ax in range(nd):
        agg.update({f"sum_{ax}": "sum", f"start_{ax}": "min", f"stop_{ax}": "max"})
    if parts:
        g = pd.concat(parts, ignore_index=True).groupby("cell_id", sort=True).agg(agg)
        ids = g.index.to_numpy()
    else:
        g = pd.DataFrame({k: np.zeros(0) for k in agg})
        ids = np.zeros(0)
    out = {"cell_id": ids.astype(np.uint32)}
    count = g["n_pixels"].to_numpy().astype(np.float64)
    for ax, name in enumerate(axes):
        out[f"centroid_{name}_um"] = g[f"sum_{ax}"].to_numpy() / np.maximum(count, 1) * spacing[ax]
    for ax, name in enumerate(axes):
        out[f"centroid_{name}_px"] = g[f"sum_{ax}"].to_numpy() / np.maximum(count, 1)
    for ax, name in enumerate(axes):
        out[f"bbox_{name}_start_px"] = g[f"start_{ax}"].to_numpy().astype(np.int64)
        out[f"bbox_{name}_stop_px"] = g[f"stop_{ax}"].to_numpy().astype(np.int64)
    size_name = "area_um2" if nd == 2 else "volume_um3"
    out[size_name] = count * math.prod(spacing)
    out["n_pixels"] = count.astype(np.int64)
    out["mean_intensity"] = g["sum_intensity"].to_numpy() / np.maximum(count, 1)
    return pd.DataFrame(out)


def write_table(table: pd.DataFrame, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a cell table to Parquet atomically, with key/value metadata in the schema."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta.update({k.encode(): str(v).encode() for k, v in (metadata or {}).items()})
    arrow = arrow.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(arrow, tmp)
    os.replace(tmp, path)
