"""napari reader: a cellseg result folder or ``<scan>.ome.zarr`` as layers.

Layers, all lazy (dask arrays over the Zarr chunks, one per pyramid level, so
napari reads only the chunks on screen at the level it shows):

* the image, one layer per channel (``channel_axis``), in µm;
* ``cells``, the label image, with the rows of ``cells.parquet`` as the
  layer's ``features`` (hovering a cell shows its id and measurements);
* ``cells_corrected`` with ``cells_corrected.parquet`` when corrections exist
  (``cells`` is then hidden).

Each layer's ``metadata["cellseg"]`` names the image, the output folder and
the label image, for the review widget.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.review import CORRECTED, ORIGINAL, find_image, has_labels, table_path

LayerData = tuple[Any, dict, str]

#: Opacity of label layers over the image.
LABELS_OPACITY = 0.5


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_result` if `path` is a cellseg result, else None.

    Cheap: looks at a few small metadata files, never at pixels, and never raises.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return read_result if find_image(path) is not None else None
    except Exception:
        return None


def read_result(path: str | Path | list) -> list[LayerData]:
    """Layers of a cellseg result: the image, ``cells`` and, if any, ``cells_corrected``.

    Parameters
    ----------
    path : str or Path
        A result folder or its ``<scan>.ome.zarr``.

    Returns
    -------
    list of (data, metadata, layer_type)
        napari layer data tuples.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    image = find_image(path)
    if image is None:
        raise ValueError(f"{path}: is not a cellseg result folder or OME-Zarr image")
    layers = [image_layer(image)]
    corrected = has_labels(image, CORRECTED)
    if has_labels(image, ORIGINAL):
        layers.append(labels_layer(image, ORIGINAL, visible=not corrected))
    if corrected:
        layers.append(labels_layer(image, CORRECTED))
    return layers


# --------------------------------------------------------------------------------------
# Image
# --------------------------------------------------------------------------------------


def image_layer(image_path: Path) -> LayerData:
    """The image pyramid as an image layer tuple, one napari layer per channel.

    The scale is the physical pixel size (µm) of the full-resolution level;
    napari derives the coarser levels' scales from their shapes. The
    segmented channel's contrast comes from the scan statistics of the ingest
    stage; other channels' from the coarsest level.
    """
    import zarr

    image_path = Path(image_path)
    group = zarr.open_group(str(image_path), mode="r")
    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)
    multiscale = ome["multiscales"][0]
    own = dict(attrs.get("cellseg", {}))
    levels = [_lazy(group[d["path"]], image_path.name) for d in multiscale["datasets"]]
    spacing = _spatial_scale(multiscale)
    channels = (ome.get("omero") or {}).get("channels") or []
    n = int(levels[0].shape[0])
    names = [str(c.get("label") or f"c{i}") for i, c in enumerate(channels)][:n]
    names += [f"c{i}" for i in range(len(names), n)]
    segmented = int(own.get("channel", 0))
    limits = [_contrast_limits(levels[-1][c]) for c in range(n)]
    stats = own.get("stats") or {}
    if "low" in stats and "high" in stats and segmented < n:
        limits[segmented] = [float(stats["low"]), float(stats["high"])]
    scan = str(own.get("name") or image_path.name.split(".")[0])
    meta: dict[str, Any] = {
        "scale": spacing,
        "metadata": {"cellseg": _layer_info(image_path, None, segmented_channel=segmented)},
    }
    multiscale_data = len(levels) > 1
    if n == 1:
        data = [lv[0] for lv in levels]
        meta.update(name=scan, contrast_limits=limits[0], colormap="gray")
    else:
        data = levels
        colors = [str(c.get("color", "FFFFFF")) for c in channels][:n]
        colors += ["FFFFFF"] * (n - len(colors))
        meta.update(
            channel_axis=0,
            name=[f"{scan} [{name}]" for name in names],
            contrast_limits=limits,
            colormap=[_colormap(color) for color in colors],
            blending="additive",
        )
    meta["multiscale"] = multiscale_data
    return (data if multiscale_data else data[0], meta, "image")


def _contrast_limits(level: Any) -> list[float]:
    """1st and 99.8th percentiles of a coarse level (read whole; it is small)."""
    values = np.asarray(level[..., ::2, ::2] if level.ndim > 2 else level)
    lo, hi = np.percentile(values, [1.0, 99.8]) if values.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(values.min(initial=0)), float(values.max(initial=1))
    if hi <= lo:
        hi = lo + 1
    return [float(lo), float(hi)]


def _colormap(hex_color: str) -> Any:
    """A napari colormap from black to an OMERO hex colour."""
    from napari.utils.colormaps import Colormap

    color = hex_color.lstrip("#")[:6].ljust(6, "F")
    rgb = [int(color[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    return Colormap([[0, 0, 0, 1], [*rgb, 1]], name=f"cellseg-{color.lower()}")


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------


def labels_layer(
    image_path: Path, name: str = ORIGINAL, *, visible: bool = True, table: Any = None
) -> LayerData:
    """A label image as a labels layer tuple, its cell table as ``features``.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group.
    name : str
        ``cells`` or ``cells_corrected``.
    visible : bool
        Whether the layer is shown.
    table : pandas.DataFrame, optional
        The features; default the label image's table (:func:`load_table`).
    """
    import zarr

    image_path = Path(image_path)
    levels = label_pyramid(image_path, name)
    group = zarr.open_group(str(image_path / "labels" / name), mode="r")
    attrs = group.attrs.asdict()
    spacing = _spatial_scale(attrs.get("ome", attrs)["multiscales"][0])
    if table is None:
        table = load_table(image_path, name)
    meta = {
        "name": name,
        "scale": spacing,
        "opacity": LABELS_OPACITY,
        "visible": visible,
        "multiscale": len(levels) > 1,
        "metadata": {"cellseg": _layer_info(image_path, name)},
    }
    if table is not None:
        meta["features"] = features_from_table(table)
    return (levels if len(levels) > 1 else levels[0], meta, "labels")


def label_pyramid(image_path: Path, name: str) -> list[Any]:
    """The levels of a label image as new lazy dask arrays (full resolution first).

    Each call gives arrays with new dask names, so data written since the
    last call is read again rather than served from a cache.
    """
    import zarr

    group = zarr.open_group(str(Path(image_path) / "labels" / name), mode="r")
    attrs = group.attrs.asdict()
    datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
    return [_lazy(group[d["path"]], f"{name}-{uuid.uuid4().hex[:8]}") for d in datasets]


def load_table(image_path: Path, name: str) -> Any:
    """The cell table of a label image, or None if it has none yet.

    ``cells_corrected`` without its own table yet falls back to the table of
    ``cells`` (same ids where unchanged).
    """
    import pandas as pd

    outdir = Path(image_path).parent
    for labels in (name, ORIGINAL):
        path = table_path(outdir, labels)
        if path.exists():
            return pd.read_parquet(path)
    return None


def features_from_table(table: Any) -> Any:
    """The table as labels-layer features: napari maps label values to rows by ``index``."""
    features = table.reset_index(drop=True).copy()
    features.insert(0, "index", features["cell_id"].to_numpy().astype(np.int64))
    return features


def table_from_features(features: Any) -> Any:
    """Inverse of :func:`features_from_table`."""
    return features.drop(columns=["index"], errors="ignore").reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _lazy(array: Any, name: str) -> Any:
    import dask.array as da

    return da.from_zarr(array, chunks=array.chunks, name=f"cellseg-{name}-{uuid.uuid4().hex[:8]}")


def _spatial_scale(multiscale: dict) -> list[float]:
    """Scale of the spatial axes of level 0, from the NGFF axes and transforms."""
    axes = multiscale.get("axes") or []
    scale = [1.0] * len(axes)
    for transform in multiscale["datasets"][0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(s) for s in transform["scale"]]
    kinds = [str(a.get("type", "")) if isinstance(a, dict) else "" for a in axes]
    return [s for s, kind in zip(scale, kinds) if kind == "space"] or scale


def _layer_info(image_path: Path, labels: str | None, **extra: Any) -> dict:
    image_path = Path(image_path)
    return {
        "image": str(image_path),
        "outdir": str(image_path.parent),
        "labels": labels,
        **extra,
    }
