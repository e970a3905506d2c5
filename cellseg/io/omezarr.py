"""Writing OME-Zarr: the image pyramid of a scan and its label images.

* :func:`write_image` writes an image as OME-Zarr (NGFF 0.5, Zarr v3) with a
  multiscale pyramid, each level halving Y and X by averaging;
  :func:`read_image_attrs` reads back the attributes stored with it.
* A label image is painted in three steps: :func:`create_labels` makes level 0
  under a temporary name, the caller paints it chunk by chunk (several
  processes at once, if they paint separate chunks), :func:`finalize_labels`
  builds its pyramid (nearest neighbour, the image's levels and scales),
  writes the NGFF ``labels`` metadata and moves it into place;
  :func:`open_labels` opens a level of a finished one.

Every output is written under a temporary name and moved into place when
whole. Reading an image back as a scan is :func:`cellseg.io.open_image`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from cellseg.atomic import jsonable, remove_path, remove_stale_siblings, replace_path, temp_sibling
from cellseg.errors import InputError
from cellseg.io.metadata import ome_attrs
from cellseg.parallel import local_threads

__all__ = [
    "ATTRS_KEY",
    "LABEL_DTYPE",
    "NGFF_VERSION",
    "PYRAMID_MAX_EDGE",
    "create_labels",
    "finalize_labels",
    "image_levels",
    "open_labels",
    "read_image_attrs",
    "write_image",
]

#: Pyramid levels are added until the largest in-plane edge is at most this many pixels.
PYRAMID_MAX_EDGE = 1024
#: NGFF version written by :func:`write_image` and :func:`finalize_labels`.
NGFF_VERSION = "0.5"
#: Key under which cellseg keeps its own attributes in a Zarr group.
ATTRS_KEY = "cellseg"
#: Data type of label images.
LABEL_DTYPE = np.dtype(np.uint32)
#: Display colours of the channels of a multichannel image, in turn.
CHANNEL_COLORS = ("0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FFFFFF")


def read_image_attrs(path: Path) -> dict:
    """Return the attributes stored with :func:`write_image` (``attrs``).

    Parameters
    ----------
    path : Path
        The OME-Zarr image group.

    Returns
    -------
    dict
        The dict stored under the group attribute key ``"cellseg"``; empty if none.
    """
    group = _open_group(Path(path))
    return dict(group.attrs.get(ATTRS_KEY, {}))


# --------------------------------------------------------------------------------------
# Writing the OME-Zarr image
# --------------------------------------------------------------------------------------


def write_image(
    path: Path,
    data: da.Array,
    *,
    axes: str,
    spacing: Sequence[float],
    channel_names: Sequence[str],
    chunks: tuple[int, ...],
    attrs: dict | None = None,
) -> None:
    """Write an OME-Zarr image with a multiscale pyramid, atomically.

    Level 0 is `data`; each further level halves Y and X (not Z, not C) by
    averaging 2×2 pixels (an odd last row or column is averaged with itself), until
    the largest in-plane edge is at most ``PYRAMID_MAX_EDGE`` pixels. Work is
    chunk-wise: memory is bounded by a few chunks, never the whole scan.

    Parameters
    ----------
    path : Path
        The image group to write, e.g. ``OUTDIR/<scan>.ome.zarr``. An existing one
        is replaced only once the new one is complete.
    data : dask.array.Array
        Shape ``(C, *spatial)``; a NumPy array is accepted too. Its dtype is kept.
    axes : str
        The spatial axes, ``"yx"`` or ``"zyx"``.
    spacing : sequence of float
        Pixel size in µm per spatial axis.
    channel_names : sequence of str
        One name per channel.
    chunks : tuple of int
        Zarr chunk shape, either for all axes ``(C, *spatial)`` or for the spatial
        axes only (then one channel per chunk). Clipped to each level's shape.
    attrs : dict, optional
        JSON-serialisable attributes stored under the group key ``"cellseg"``.

    Notes
    -----
    The store is Zarr v3 with NGFF 0.5 metadata: ``multiscales`` (axes typed
    ``channel`` / ``space`` with unit ``micrometer``, a ``scale`` transform per
    level = spacing × 2**level in Y and X) and ``omero`` channel labels. The group
    is first written to ``<name>.tmp-<pid>@<host>`` next to `path`, then renamed.
    """
    # ome-zarr is tens of MB of modules: loaded only when metadata is written
    from ome_zarr.format import FormatV05

    write_multiscales_metadata = _ome_zarr_metadata_writer()

    path = Path(path)
    data = da.asarray(data)
    axes = _check_axes(axes)
    if data.ndim != len(axes) + 1:
        raise ValueError(f"data has shape {data.shape}; expected (C, {', '.join(axes.upper())})")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != len(axes) or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must hold {len(axes)} positive values")
    channel_names = [str(n) for n in channel_names]
    if len(channel_names) != data.shape[0]:
        raise ValueError(f"{len(channel_names)} channel names for {data.shape[0]} channels")
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) == len(axes):
        chunks = (1, *chunks)
    if len(chunks) != data.ndim or min(chunks) < 1:
        raise ValueError(f"chunks {chunks} do not fit data of shape {data.shape}")
    stored_attrs = jsonable(attrs or {})

    tmp = temp_sibling(path)
    remove_stale_siblings(path)
    remove_path(tmp)
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        dimension_names = ["c", *axes]
        level = data
        datasets = []
        factor = 1
        while True:
            index = len(datasets)
            level_chunks = _clip_chunks(chunks, level.shape)
            array = group.create_array(
                str(index),
                shape=level.shape,
                chunks=level_chunks,
                dtype=level.dtype,
                fill_value=0,
                dimension_names=dimension_names,
            )
            # Level 0 reads the input file, which only this process can open.
            with local_threads() if index == 0 else contextlib.nullcontext():
                da.store(level.rechunk(level_chunks), array, lock=False)
            scale = [1.0, *spacing]
            scale[-2] *= factor
            scale[-1] *= factor
            datasets.append(
                {
                    "path": str(index),
                    "coordinateTransformations": [{"type": "scale", "scale": scale}],
                }
            )
            if max(level.shape[-2:]) <= PYRAMID_MAX_EDGE:
                break
            level = _halve_mean(da.from_zarr(array))
            factor *= 2
        axes_meta = [{"name": "c", "type": "channel"}] + [
            {"name": a, "type": "space", "unit": "micrometer"} for a in axes
        ]
        colors = ["FFFFFF"] if len(channel_names) == 1 else list(CHANNEL_COLORS)
        omero = {
            "channels": [
                {"label": name, "color": colors[i % len(colors)], "active": True}
                for i, name in enumerate(channel_names)
            ]
        }
        write_multiscales_metadata(
            group,
            datasets,
            fmt=FormatV05(),
            axes=axes_meta,
            name=_image_name(path),
            metadata={"omero": omero},
        )
        group.attrs.update({ATTRS_KEY: stored_attrs})
        replace_path(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def _ome_zarr_metadata_writer() -> Any:
    # ome_zarr.writer builds a deprecated default argument at import time; the
    # warning concerns an API cellseg does not use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_multiscales_metadata
    return write_multiscales_metadata


def _halve_mean(image: Any) -> Any:
    """Average 2×2 blocks in the last two axes, keeping the dtype (chunk-wise)."""
    pad = [(0, 0)] * (image.ndim - 2) + [(0, n % 2) for n in image.shape[-2:]]
    if any(p for _, p in pad):
        image = da.pad(image, pad, mode="edge")
    axes = {image.ndim - 2: 2, image.ndim - 1: 2}
    return da.coarsen(_mean_keep_dtype, image, axes)


def _mean_keep_dtype(block: np.ndarray, axis: Any = None) -> np.ndarray:
    mean = block.mean(axis=axis, dtype=np.float64)
    if np.issubdtype(block.dtype, np.integer) or block.dtype == np.bool_:
        mean = np.rint(mean)
    return mean.astype(block.dtype)


def _check_axes(axes: str) -> str:
    axes = str(axes).lower()
    if axes not in ("yx", "zyx"):
        raise ValueError(f"axes must be 'yx' or 'zyx', got {axes!r}")
    return axes


def _clip_chunks(chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))


def _image_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------------------
# Label images
# --------------------------------------------------------------------------------------


def create_labels(
    image_path: Path,
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
) -> zarr.Array:
    """Create level 0 of a new label image, to be painted and then finalised.

    The array lives at ``image_path/labels/.<name>.tmp/0`` until
    :func:`finalize_labels` moves it into place; a stale temporary array from an
    interrupted run is removed first. Unwritten chunks read as 0 (background).
    Each chunk is its own file, so several processes may paint chunk-aligned,
    non-overlapping regions at once; the array object can be pickled to them.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group written by :func:`write_image`.
    name : str
        Name of the label image, e.g. ``"cells"``.
    shape : tuple of int
        The image's spatial shape ``(Y, X)`` / ``(Z, Y, X)``, or its full shape
        including the channel axis.
    chunks : tuple of int
        Chunk shape, one value per axis of `shape`.

    Returns
    -------
    zarr.Array
        A writable uint32 array filled with 0.
    """
    image_path = Path(image_path)
    name = _check_label_name(name)
    image = _multiscale_info(image_path)
    shape = tuple(int(n) for n in shape)
    dimension_names = _label_dimension_names(image, shape)
    chunks = _clip_chunks(tuple(int(c) for c in chunks), shape)
    if len(chunks) != len(shape):
        raise ValueError(f"chunks {chunks} do not match shape {shape}")
    _ensure_labels_group(image_path)
    tmp = image_path / "labels" / f".{name}.tmp"
    remove_path(tmp)
    remove_stale_siblings(image_path / "labels" / name)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    return group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=LABEL_DTYPE,
        fill_value=0,
        dimension_names=dimension_names,
    )


def _halved(previous: Any, chunks: Sequence[int]) -> Any:
    """``previous[..., ::2, ::2]`` as a dask array of `chunks` (clipped to it), read chunk by chunk.

    A block of the result is made from the 2 x 2 (or more) chunks of
    `previous` under it, each read and subsampled in turn, so a task holds one
    chunk of `previous` beside its own block, not the whole region under it.

    Examples
    --------
    >>> a = np.arange(30).reshape(5, 6)
    >>> _halved(a, (2, 2)).compute().tolist()
    [[0, 2, 4], [12, 14, 16], [24, 26, 28]]
    """
    shape = (*previous.shape[:-2], *(-(-n // 2) for n in previous.shape[-2:]))
    chunks = _clip_chunks(tuple(chunks), shape)
    source_chunks = getattr(previous, "chunks", previous.shape)  # zarr, or numpy: one chunk
    dtype = np.dtype(previous.dtype)

    def spans(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
        edges = sorted({lo, hi, *range((lo // step + 1) * step, hi, step)})
        return list(zip(edges[:-1], edges[1:]))

    def block(block_info=None) -> np.ndarray:
        where = block_info[None]["array-location"]
        out = np.zeros([b - a for a, b in where], dtype)
        head = tuple(slice(a, b) for a, b in where[:-2])
        (ya, yb), (xa, xb) = where[-2:]
        height, width = previous.shape[-2:]
        for y0, y1 in spans(2 * ya, min(2 * yb, height), max(1, source_chunks[-2])):
            for x0, x1 in spans(2 * xa, min(2 * xb, width), max(1, source_chunks[-1])):
                sy, sx = y0 % 2, x0 % 2  # the first even row and column of the piece
                # a strided read: only the kept pixels are copied out of the chunk
                piece = np.asarray(previous[(*head, slice(y0 + sy, y1, 2), slice(x0 + sx, x1, 2))])
                dy, dx = (y0 + sy) // 2 - ya, (x0 + sx) // 2 - xa
                out[..., dy : dy + piece.shape[-2], dx : dx + piece.shape[-1]] = piece
        return out

    return da.map_blocks(
        block,
        dtype=dtype,
        chunks=da.core.normalize_chunks(chunks, shape),
        meta=np.empty((0,) * len(shape), dtype),
    )


def finalize_labels(image_path: Path, name: str, *, attrs: dict | None = None) -> None:
    """Build the label pyramid, write its metadata and move it into place.

    Level ``k`` is level ``k - 1`` subsampled as ``[..., ::2, ::2]`` (nearest
    neighbour: label values are never mixed), with as many levels and the same
    scales as the image pyramid. Work is chunk-wise. The finished group replaces
    ``labels/<name>`` and ``name`` is listed in the ``labels`` group metadata.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group.
    name : str
        Name given to :func:`create_labels`.
    attrs : dict, optional
        JSON-serialisable attributes stored under the label group key ``"cellseg"``.

    Raises
    ------
    InputError
        If no label image `name` is being written under `image_path`.
    """
    image_path = Path(image_path)
    name = _check_label_name(name)
    image = _multiscale_info(image_path)
    labels_dir = image_path / "labels"
    tmp = labels_dir / f".{name}.tmp"
    if not (tmp / "0").exists():
        raise InputError(
            f"{image_path}: no label image {name!r} is being written (missing {tmp / '0'}); "
            "run the stitch stage again"
        )
    stored_attrs = jsonable(attrs or {})
    group = zarr.open_group(str(tmp), mode="r+", zarr_format=3)
    level0 = group["0"]
    dimension_names = list(level0.metadata.dimension_names or [])
    if not dimension_names:
        dimension_names = _label_dimension_names(image, level0.shape)
    positions = [image["names"].index(n) for n in dimension_names]
    for index in range(1, image["levels"]):
        level = _halved(group[str(index - 1)], level0.chunks)
        array = group.create_array(
            str(index),
            shape=level.shape,
            chunks=level.chunksize,
            dtype=LABEL_DTYPE,
            fill_value=0,
            dimension_names=dimension_names,
            overwrite=True,
        )
        da.store(level, array, lock=False)
    # ome-zarr (tens of MB of modules) is loaded once the levels' chunks are
    # written and freed, so its memory and theirs do not add up
    from ome_zarr.format import FormatV05

    write_multiscales_metadata = _ome_zarr_metadata_writer()
    datasets = [
        {
            "path": str(index),
            "coordinateTransformations": [
                {"type": "scale", "scale": [image["scales"][index][p] for p in positions]}
            ],
        }
        for index in range(image["levels"])
    ]
    axes_meta = [image["axes"][p] for p in positions]
    write_multiscales_metadata(group, datasets, fmt=FormatV05(), axes=axes_meta, name=name)
    ome = dict(group.attrs["ome"])
    ome["image-label"] = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    group.attrs.update({"ome": ome, ATTRS_KEY: stored_attrs})
    replace_path(tmp, labels_dir / name)
    labels_group = _ensure_labels_group(image_path)
    ome = dict(labels_group.attrs.get("ome", {}))
    listed = list(ome.get("labels", []))
    if name not in listed:
        listed.append(name)
    ome.update({"version": NGFF_VERSION, "labels": listed})
    labels_group.attrs.update({"ome": ome})


def open_labels(image_path: Path, name: str = "cells", level: int = 0) -> zarr.Array:
    """Open one level of a finished label image, read-only.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group.
    name : str
        Name of the label image.
    level : int
        Pyramid level, 0 being full resolution.

    Returns
    -------
    zarr.Array
        The uint32 label array of that level.

    Raises
    ------
    InputError
        If the label image or the level does not exist.
    """
    image_path = Path(image_path)
    path = image_path / "labels" / name
    if not (path / "zarr.json").exists():
        raise InputError(
            f"{image_path}: has no finished label image {name!r}; run the stitch stage first"
        )
    group = zarr.open_group(str(path), mode="r")
    datasets = ome_attrs(group).get("multiscales", [{}])[0].get("datasets", [])
    if not 0 <= level < len(datasets):
        raise InputError(
            f"{path}: has {len(datasets)} pyramid level(s); level {level} does not exist"
        )
    return group[datasets[level]["path"]]


def _check_label_name(name: str) -> str:
    name = str(name)
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"invalid label image name {name!r}")
    return name


def _open_group(path: Path) -> zarr.Group:
    if not path.exists():
        raise InputError(f"{path}: no such OME-Zarr image; run the ingest stage first")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise InputError(
            f"{path}: cannot be read as a Zarr group ({type(exc).__name__}: {exc}); run "
            "the ingest stage again"
        ) from exc


def image_levels(image_path: Path) -> int:
    """Number of pyramid levels of an image written by :func:`write_image` (each halves YX)."""
    return int(_multiscale_info(image_path)["levels"])


def _multiscale_info(image_path: Path) -> dict:
    """Axes, per-level scales and level count of an image written by write_image."""
    group = _open_group(image_path)
    multiscales = ome_attrs(group).get("multiscales")
    if not multiscales:
        raise InputError(
            f"{image_path}: is not an OME-Zarr image (no multiscales metadata); run the "
            "ingest stage again"
        )
    multiscale = multiscales[0]
    axes = [dict(a) for a in multiscale["axes"]]
    level0 = group[multiscale["datasets"][0]["path"]]
    scales = []
    for dataset in multiscale["datasets"]:
        scale = [1.0] * len(axes)
        for transform in dataset.get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                scale = [float(s) for s in transform["scale"]]
        scales.append(scale)
    return {
        "axes": axes,
        "names": [a["name"] for a in axes],
        "scales": scales,
        "levels": len(scales),
        "shape": tuple(int(n) for n in level0.shape),
    }


def _label_dimension_names(image: dict, shape: tuple[int, ...]) -> list[str]:
    names = image["names"]
    positions = [i for i, a in enumerate(image["axes"]) if a.get("type") == "space"]
    spatial_shape = tuple(image["shape"][i] for i in positions)
    if tuple(shape) == spatial_shape:
        return [names[i] for i in positions]
    if tuple(shape) == image["shape"]:
        return list(names)
    raise ValueError(
        f"label shape {tuple(shape)} matches neither the image's spatial shape "
        f"{spatial_shape} nor its shape {image['shape']}"
    )


def _ensure_labels_group(image_path: Path) -> zarr.Group:
    labels_dir = image_path / "labels"
    group = zarr.open_group(str(labels_dir), mode="a", zarr_format=3)
    if "ome" not in group.attrs:
        group.attrs.update({"ome": {"version": NGFF_VERSION, "labels": []}})
    return group
