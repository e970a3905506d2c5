"""napari reader: a cellseg result folder or ``<scan>.ome.zarr`` as layers.

Layers, all lazy (dask arrays over the Zarr chunks, one per pyramid level, so
napari reads only the chunks on screen at the level it shows):

* the image, one layer per channel (``channel_axis``), in µm; a brightfield
  scan (H&E, IHC: RGB) as one RGB layer;
* ``cells``, the label image, with the rows of ``cells.parquet`` as the
  layer's ``features`` (hovering a cell shows its id and measurements);
* ``cells_corrected`` with ``cells_corrected.parquet`` when corrections exist
  (``cells`` is then hidden);
* once cells have classes (``classes.parquet`` of ``cellseg classify``, or a
  reviewer's labels in ``review/class_labels.jsonl``, which win), each labels
  layer is coloured by class (:func:`class_colormap`: one colour per class
  name, the colour the GeoJSON export gives QuPath) and its features carry
  ``class``, ``class_source`` and ``class_probability``.

Each layer's ``metadata["cellseg"]`` names the image, the output folder and
the label image, for the review widget.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.errors import CellsegError
from cellseg.geojson import CLASSES_FILE, class_color, read_classes
from cellseg.review import CORRECTED, ORIGINAL, find_image, has_labels, table_path
from cellseg.review.class_labels import read_class_labels

LayerData = tuple[Any, dict, str]

log = logging.getLogger("cellseg")

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
    stage; other channels' from the coarsest level. A brightfield scan
    (:func:`is_brightfield`) is one RGB layer, channels last, its full range shown.
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
    scan = str(own.get("name") or image_path.name.split(".")[0])
    if is_brightfield(image_path, own, levels[0].dtype, names):
        return _rgb_layer(levels, scan, spacing, _layer_info(image_path, None, rgb=True))
    limits = [_contrast_limits(levels[-1][c]) for c in range(n)]
    stats = own.get("stats") or {}
    if "low" in stats and "high" in stats and segmented < n:
        limits[segmented] = [float(stats["low"]), float(stats["high"])]
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


#: Channel names that make an 8-bit 3-channel scan of unknown modality RGB.
RGB_NAMES = (("r", "g", "b"), ("red", "green", "blue"))


def is_brightfield(image_path: Path, own: dict, dtype: Any, names: list[str]) -> bool:
    """Whether the image is a brightfield (RGB) scan, shown as one RGB layer.

    The modality recorded by the ingest stage (the image's ``cellseg``
    attributes, else ``work/ingest.json``) decides; without one, an 8-bit
    scan of 3 channels named R, G, B (or red, green, blue) is RGB.
    """
    modality = own.get("modality")
    if modality is None:
        ingest = Path(image_path).parent / "work" / "ingest.json"
        try:
            modality = json.loads(ingest.read_text()).get("modality")
        except (OSError, ValueError, AttributeError):
            modality = None
    if modality in ("brightfield", "fluorescence"):
        return modality == "brightfield" and len(names) in (3, 4)
    lowered = tuple(name.strip().lower() for name in names)
    return np.dtype(dtype) == np.uint8 and lowered in RGB_NAMES


def _rgb_layer(levels: list[Any], name: str, spacing: list[float], info: dict) -> LayerData:
    """The channel-first levels of a brightfield scan as one RGB image layer (channels last)."""
    import dask.array as da  # as in _lazy: the reader module stays quick to import

    data = [da.moveaxis(level, 0, -1) for level in levels]
    dtype = np.dtype(data[0].dtype)
    meta: dict[str, Any] = {
        "name": name,
        "rgb": True,
        "scale": spacing,
        "multiscale": len(data) > 1,
        "metadata": {"cellseg": info},
    }
    if dtype.kind in "ui":
        meta["contrast_limits"] = [0, int(np.iinfo(dtype).max)]
    elif dtype.kind == "f":
        meta["contrast_limits"] = [0.0, 1.0]
    return (data if len(data) > 1 else data[0], meta, "image")


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
    classes = load_classes(image_path.parent)
    if table is not None:
        meta["features"] = features_from_table(
            with_classes(table, classes) if len(classes) else table
        )
    if len(classes):
        meta["colormap"] = class_colormap(classes)
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
# Classes
# --------------------------------------------------------------------------------------

#: Columns a cell's class adds to the table and the layer's features.
CLASS_COLUMNS = ("class", "class_source", "class_probability")
#: RGBA of cells without a class while cells are coloured by class (faint grey).
UNCLASSIFIED_RGBA = (0.6, 0.6, 0.6, 0.3)
#: Name of the colormaps of :func:`class_colormap`.
CLASS_COLORMAP = "cellseg classes"


def merge_classes(predicted: Any, labels: dict[int, str]) -> Any:
    """Every cell's class: the reviewer's label where there is one, else the predicted class.

    Parameters
    ----------
    predicted : pandas.DataFrame or None
        :func:`cellseg.geojson.read_classes` of ``classes.parquet`` (indexed by
        ``cell_id``: ``name``, ``color``), with an optional ``probability``.
    labels : dict of int to str
        The reviewer's labels (:func:`cellseg.review.class_labels.read_class_labels`).

    Returns
    -------
    pandas.DataFrame
        ``cell_id``, ``class``, ``class_source`` (``"reviewer"`` or
        ``"predicted"``), ``class_probability`` (NaN for the reviewer's) and
        ``color`` (``[r, g, b]``, 0–255: the predictions' colour of that class
        name, else :func:`cellseg.geojson.class_color`), sorted by ``cell_id``.

    Examples
    --------
    >>> merge_classes(None, {3: "Positive"})[["cell_id", "class", "class_source"]].values.tolist()
    [[3, 'Positive', 'reviewer']]
    """
    import pandas as pd

    if predicted is None or not len(predicted):
        out = pd.DataFrame({"cell_id": [], "class": [], "color": []})
        out["probability"] = []
    else:
        out = predicted.reset_index().rename(columns={"name": "class"})
        if "probability" not in out:
            out["probability"] = np.nan
    out = out[["cell_id", "class", "color", "probability"]].copy()
    out["cell_id"] = out["cell_id"].astype(np.int64)
    out["class_source"] = "predicted"
    palette = {name: color for name, color in zip(out["class"], out["color"])}
    if labels:
        reviewed = pd.DataFrame(
            {
                "cell_id": np.fromiter(labels, np.int64, len(labels)),
                "class": list(labels.values()),
                "probability": np.nan,
                "class_source": "reviewer",
            }
        )
        reviewed["color"] = [palette.get(n) or class_color(n) for n in reviewed["class"]]
        out = out.loc[~out["cell_id"].isin(reviewed["cell_id"])]
        out = pd.concat([out, reviewed], ignore_index=True) if len(out) else reviewed
    out = out.rename(columns={"probability": "class_probability"})
    out["class_probability"] = out["class_probability"].astype(float)
    columns = ["cell_id", "class", "class_source", "class_probability", "color"]
    return out[columns].sort_values("cell_id", kind="stable").reset_index(drop=True)


def load_classes(outdir: Path) -> Any:
    """The classes of a result's cells (:func:`merge_classes`; empty when it has none).

    A damaged ``classes.parquet`` or class label log is logged and left out:
    the reader shows the cells without classes rather than fail.
    """
    outdir = Path(outdir)
    try:
        predicted = read_classes(outdir)
        if predicted is not None and len(predicted):
            predicted = predicted.assign(probability=_probabilities(outdir, predicted.index))
        labels = read_class_labels(outdir)
    except (CellsegError, OSError, ValueError) as exc:
        log.warning("cell classes not shown: %s", exc)
        return merge_classes(None, {})
    return merge_classes(predicted, labels)


def _probabilities(outdir: Path, ids: Any) -> Any:
    """The ``probability`` column of ``classes.parquet`` for `ids` (NaN without one)."""
    import pandas as pd
    import pyarrow.parquet as pq  # the pandas Parquet engine, here for the schema only

    path = Path(outdir) / CLASSES_FILE
    if "probability" not in pq.read_schema(path).names:
        return np.full(len(ids), np.nan)
    table = pd.read_parquet(path, columns=["cell_id", "probability"])
    table = table.drop_duplicates("cell_id", keep="last").set_index("cell_id")["probability"]
    return pd.to_numeric(table.reindex(np.asarray(ids)), errors="coerce").to_numpy(float)


def with_classes(table: Any, classes: Any) -> Any:
    """The cell table with the cells' classes (:data:`CLASS_COLUMNS`); ``""`` where none.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"cell_id": [1, 2]})
    >>> with_classes(t, merge_classes(None, {2: "Other"}))["class"].tolist()
    ['', 'Other']
    """
    out = table.drop(columns=list(CLASS_COLUMNS), errors="ignore").copy()
    ids = out["cell_id"].to_numpy().astype(np.int64)
    lookup = classes.set_index("cell_id").reindex(ids)
    out["class"] = lookup["class"].fillna("").astype(object).to_numpy()
    out["class_source"] = lookup["class_source"].fillna("").astype(object).to_numpy()
    out["class_probability"] = lookup["class_probability"].astype(float).to_numpy()
    return out


def class_palette(classes: Any) -> dict[str, tuple[float, ...]]:
    """Each class name's RGBA (0–1), from the ``color`` column of :func:`merge_classes`."""
    palette: dict[str, tuple[float, ...]] = {}
    for name, color in zip(classes["class"], classes["color"]):
        if name not in palette:
            palette[name] = (*(float(c) / 255.0 for c in color), 1.0)
    return palette


def class_colormap(classes: Any) -> Any:
    """A labels colormap of cells by class: one colour per class name, unclassified faint grey.

    Returns
    -------
    napari.utils.colormaps.DirectLabelColormap
        Cell id → its class's RGBA (:func:`class_palette`); background
        transparent; any other id :data:`UNCLASSIFIED_RGBA`.
    """
    from napari.utils.colormaps import DirectLabelColormap

    palette = class_palette(classes)
    colors: dict[int | None, Any] = {
        int(cid): palette[name] for cid, name in zip(classes["cell_id"], classes["class"])
    }
    colors[None] = UNCLASSIFIED_RGBA
    colors[0] = (0.0, 0.0, 0.0, 0.0)
    return DirectLabelColormap(color_dict=colors, name=CLASS_COLORMAP)


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
