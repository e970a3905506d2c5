"""Reading scans, writing OME-Zarr images and label images, atomic file helpers.

Every scan is presented the same way, whatever the file format: a lazy dask
array with the channel axis first, ``(C, Y, X)`` or ``(C, Z, Y, X)``, plus the
physical pixel size (spacing) of each spatial axis in micrometres.

Supported inputs
----------------
* TIFF, OME-TIFF and ImageJ TIFF (``.tif``, ``.tiff``), read lazily chunk by chunk.
* Zarr (a directory): a plain array, a group holding a single array, or an
  OME-Zarr image (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3; level 0 is read).
* NumPy ``.npy`` files, memory-mapped.

Axes
----
Files that name their axes (OME-TIFF, ImageJ TIFF, OME-Zarr) are read as named.
Arrays that do not (plain TIFF, plain Zarr, ``.npy``) are named by their number
of dimensions: 2D is ``YX``, 3D is ``ZYX``, 4D is ``CZYX`` and 5D is ``TCZYX``.
Singleton axes other than Y and X are then dropped, so a single plane is 2D, a
single channel gets ``C = 1`` and a single time point is not a time series.

Outputs
-------
Images are written as OME-Zarr (NGFF 0.5, Zarr v3) with a multiscale pyramid,
label images as NGFF labels under the image group. Every output is written
under a temporary name and moved into place when whole.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import logging
import math
import os
import shutil
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellseg.errors import InputError
from cellseg.parallel import local_threads

if TYPE_CHECKING:
    import dask.array
    import zarr

__all__ = [
    "Scan",
    "atomic_write_bytes",
    "atomic_write_json",
    "channel_index",
    "create_labels",
    "finalize_labels",
    "open_image",
    "open_labels",
    "read_image_attrs",
    "read_scan",
    "write_image",
]

logger = logging.getLogger(__name__)

#: Pyramid levels are added until the largest in-plane edge is at most this many pixels.
PYRAMID_MAX_EDGE = 1024
#: NGFF version written by :func:`write_image` and :func:`finalize_labels`.
NGFF_VERSION = "0.5"
#: Key under which cellseg keeps its own attributes in a Zarr group.
ATTRS_KEY = "cellseg"
#: Data type of label images.
LABEL_DTYPE = np.dtype(np.uint32)

TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
ZARR_SUFFIXES = (".zarr",)
_SUPPORTED = "TIFF / OME-TIFF / ImageJ TIFF (.tif, .tiff), Zarr / OME-Zarr (.zarr), NumPy (.npy)"

# Length units as written by OME-XML, ImageJ and NGFF, in micrometres.
_LENGTH_UNITS_UM = {
    "pm": 1e-6,
    "picometer": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "µm": 1.0,  # micro sign
    "μm": 1.0,  # greek mu
    "um": 1.0,
    "\\u00b5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
}

# TIFF ResolutionUnit values that describe a physical pixel size (INCH is left
# out on purpose: it is nearly always a screen DPI, not a microscope calibration).
_TIFF_RESUNIT_UM = {3: 1e4, 4: 1e3, 5: 1.0}

_CHANNEL_COLORS = ("0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FFFFFF")


@dataclass(frozen=True, eq=False)
class Scan:
    """A scan opened for reading.

    Scans compare by identity (`data` is a lazy array, not a value).

    Attributes
    ----------
    path : Path
        The file or directory the scan was read from.
    data : dask.array.Array
        The pixels, shape ``(C, *spatial)``: channel axis first (``C = 1`` when the
        file has no channel axis), then the spatial axes named by `axes`. Lazy:
        nothing is read until a chunk is computed.
    axes : str
        The spatial axes, ``"yx"`` or ``"zyx"``.
    spacing : tuple of float
        Physical pixel size in µm per spatial axis, in `axes` order.
    channel_names : tuple of str
        One name per channel: from the file's metadata, else ``"c0"``, ``"c1"``, ...
    spacing_source : str
        Where `spacing` came from: ``"metadata"``, ``"override"`` or ``"default"``.
    """

    path: Path
    data: dask.array.Array
    axes: str
    spacing: tuple[float, ...]
    channel_names: tuple[str, ...]
    spacing_source: str

    @property
    def n_channels(self) -> int:
        """Number of channels (the length of the first axis of `data`)."""
        return int(self.data.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of one channel: ``(Y, X)`` or ``(Z, Y, X)``."""
        return tuple(int(n) for n in self.data.shape[1:])


@dataclass
class _Raw:
    """What a format reader found, before axes are normalised."""

    data: Any  # dask array in the file's own axis order
    axes: str  # one letter per axis of `data`: T C Z Y X S, or "?" when unnamed
    spacing: dict[str, float]  # "Z" / "Y" / "X" -> µm, for the axes the file states
    channel_names: list[str] | None


# --------------------------------------------------------------------------------------
# Reading scans
# --------------------------------------------------------------------------------------


def read_scan(path: str | Path, *, pixel_size: Sequence[float] | None = None) -> Scan:
    """Open a microscopy scan lazily.

    Parameters
    ----------
    path : str or Path
        A TIFF / OME-TIFF / ImageJ TIFF file, a Zarr or OME-Zarr directory, or a
        ``.npy`` file.
    pixel_size : sequence of float, optional
        Physical pixel size in µm, one value per spatial axis in the scan's axis
        order (``(Y, X)`` or ``(Z, Y, X)``). Overrides the file's metadata.

    Returns
    -------
    Scan
        The scan, with `data` of shape ``(C, *spatial)``. Without `pixel_size` and
        without metadata the spacing is 1 µm per axis (``spacing_source="default"``).

    Raises
    ------
    InputError
        If the file is missing, unreadable, of an unsupported format, has the
        wrong number of dimensions, is empty, has a non-numeric data type, or if
        a pixel size is not positive or `pixel_size` has the wrong length.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "scan.npy"
    >>> np.save(f, np.zeros((3, 64, 64), np.uint16))
    >>> scan = read_scan(f, pixel_size=(2.0, 0.5, 0.5))
    >>> scan.data.shape, scan.axes, scan.spacing, scan.spacing_source
    ((1, 3, 64, 64), 'zyx', (2.0, 0.5, 0.5), 'override')
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(
            f"{path}: no such file or directory; check the scan path in your config "
            "or on the command line"
        )
    kind = _detect_format(path)
    if kind == "tiff":
        raw = _read_tiff(path)
    elif kind == "npy":
        raw = _read_npy(path)
    else:
        raw = _read_zarr(path, require_ngff=False)
    return _make_scan(path, raw, pixel_size)


def open_image(path: Path) -> Scan:
    """Open level 0 of an OME-Zarr image written by :func:`write_image`.

    Parameters
    ----------
    path : Path
        The OME-Zarr image group, e.g. ``OUTDIR/<scan>.ome.zarr``.

    Returns
    -------
    Scan
        The image with the spacing and channel names stored in its metadata.

    Raises
    ------
    InputError
        If `path` does not exist or is not an OME-Zarr image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such OME-Zarr image; run the ingest stage first")
    raw = _read_zarr(path, require_ngff=True)
    return _make_scan(path, raw, None)


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


def channel_index(scan: Scan, channel: int | str | None) -> int:
    """Resolve a channel given by index or name.

    Parameters
    ----------
    scan : Scan
        The scan whose channels are meant.
    channel : int, str or None
        A 0-based index, a channel name, or a string of digits (an index given on
        the command line). None picks the first channel.

    Returns
    -------
    int
        Index into the first axis of ``scan.data``.

    Raises
    ------
    InputError
        If the index is out of range or the name is unknown; the message lists the
        available channels.
    """
    names = scan.channel_names
    available = ", ".join(f"{i}={name!r}" for i, name in enumerate(names))
    if channel is None:
        return 0
    if isinstance(channel, str):
        if channel in names:
            return names.index(channel)
        if not channel.strip().isdigit():
            raise InputError(
                f"{scan.path}: has no channel named {channel!r}; choose one of "
                f"{available} (by index or name)"
            )
        channel = int(channel)
    if isinstance(channel, (bool, np.bool_)) or not isinstance(channel, (int, np.integer)):
        raise InputError(
            f"{scan.path}: channel must be an index or a name, got {channel!r}; choose one "
            f"of {available}"
        )
    if not 0 <= int(channel) < len(names):
        raise InputError(
            f"{scan.path}: channel index {int(channel)} is out of range, the scan has "
            f"{len(names)} channel(s); choose one of {available}"
        )
    return int(channel)


def _detect_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        if any((path / meta).exists() for meta in ("zarr.json", ".zgroup", ".zarray")):
            return "zarr"
        raise InputError(
            f"{path}: is a directory but not a Zarr store (no zarr.json, .zgroup or "
            f".zarray inside); give a scan file or a Zarr directory ({_SUPPORTED})"
        )
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(NPY_SUFFIXES):
        return "npy"
    if name.endswith(ZARR_SUFFIXES):
        raise InputError(f"{path}: a Zarr store must be a directory; this is a file")
    raise InputError(
        f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; cellseg reads "
        f"{_SUPPORTED}. Convert the scan, e.g. to OME-TIFF with bfconvert"
    )


def _read_tiff(path: Path) -> _Raw:
    import dask.array as da
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("no image series in file")
            series = tif.series[0]
            axes = series.get_axes(False)
            store = series.aszarr(level=0, squeeze=False)
            contiguous = _contiguous_layout(tif, series)
            spacing: dict[str, float] = {}
            names: list[str] | None = None
            if tif.is_ome and tif.ome_metadata:
                spacing, names = _ome_xml_metadata(tif.ome_metadata, path)
            elif tif.is_imagej:
                spacing = _imagej_spacing(tif.pages[0], tif.imagej_metadata or {})
            else:
                spacing = _tiff_tag_spacing(tif.pages[0])
        array = zarr.open_array(store, mode="r", zarr_format=2)
    except Exception as exc:
        raise InputError(
            f"{path}: cannot be read as a TIFF file ({type(exc).__name__}: {exc}); check "
            "that the file is complete and not corrupt, or export it again"
        ) from exc
    if contiguous is not None:
        # Uncompressed, untiled pixels (often one strip per plane): read chunk by
        # chunk, never a whole plane.
        pixels = _ContiguousPixels(path, *contiguous)
        chunks = tuple(
            CONTIGUOUS_CHUNK if a in "YX" else n if a == "S" else 1
            for a, n in zip(axes.upper(), pixels.shape)
        )
        data = da.from_array(pixels, chunks=chunks, name=_dask_name(path, "tiff"), asarray=False)
    else:
        data = da.from_zarr(array, name=_dask_name(path, "tiff"))
    letters = "".join(a if a in "TCZYXS" else "?" for a in axes.upper())
    if set(letters) <= set("?YXS"):
        letters = _positional_letters(letters)
    return _Raw(data, letters, spacing, names)


# Rows and columns of a chunk read from an uncompressed, untiled TIFF.
CONTIGUOUS_CHUNK = 512


def _contiguous_layout(tif: Any, series: Any) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """(offset, shape, dtype) of a series stored uncompressed in one block, else None."""
    page = series.keyframe
    offset = series.dataoffset
    if offset is None or page.compression != 1 or page.is_tiled or page.fillorder != 1:
        return None
    dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
    shape = tuple(int(n) for n in series.get_shape(False))
    if dtype.itemsize * 8 != page.bitspersample:
        return None
    size = tif.filehandle.size
    if offset + dtype.itemsize * math.prod(shape) > size:
        return None
    return int(offset), shape, dtype


class _ContiguousPixels:
    """Regions of pixels stored uncompressed in one block of a file, read on demand.

    A region given as integers and slices (what dask's chunk reads give) is
    read row by row with positioned reads of each row's span, so that memory
    holds the region being read, never the whole image, nor the file pages
    around it that a memory map would bring in (for a wide image, many times
    the region). Other indexes map the file, copy the region and unmap it.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = str(path), offset, shape, dtype
        self.ndim = len(shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        simple = (slice, int, np.integer)
        if (
            self.ndim == 0
            or len(index) > self.ndim
            or not all(isinstance(i, simple) for i in index)
        ):
            pixels = np.memmap(
                self.path, self.dtype, mode="r", offset=self.offset, shape=self.shape
            )
            return np.array(pixels[index], dtype=self.dtype.newbyteorder("="))
        index = index + (slice(None),) * (self.ndim - len(index))
        ranges, dropped = [], []
        for axis, (i, n) in enumerate(zip(index, self.shape)):
            if isinstance(i, slice):
                ranges.append(range(*i.indices(n)))
                continue
            k = int(i) + (n if int(i) < 0 else 0)
            if not 0 <= k < n:
                raise IndexError(f"index {int(i)} is out of bounds for axis {axis} with size {n}")
            ranges.append(range(k, k + 1))
            dropped.append(axis)
        out = np.empty([len(r) for r in ranges], self.dtype.newbyteorder("="))
        if out.size:
            self._read_rows(ranges, out)
        return out.reshape([len(r) for a, r in enumerate(ranges) if a not in dropped])

    def _read_rows(self, ranges: list[range], out: np.ndarray) -> None:
        """Fill `out` with the pixels at `ranges` (one per axis), one read per row.

        A row is the span of the innermost axis that is not read whole, with
        the whole axes inside it (e.g. a TIFF's trailing samples axis).
        """
        axis = self.ndim - 1
        while axis > 0 and ranges[axis] == range(self.shape[axis]):
            axis -= 1
        inner = math.prod(self.shape[axis + 1 :])
        cols = ranges[axis]
        first = min(cols[0], cols[-1])
        span = np.empty((abs(cols[-1] - cols[0]) + 1, inner), self.dtype)  # file byte order
        raw = memoryview(span.reshape(-1).view(np.uint8))
        pick = slice(cols[0] - first, None, cols.step)
        strides = [math.prod(self.shape[a + 1 :]) for a in range(self.ndim)]
        rows = out.reshape(-1, len(cols), inner)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for k, pos in enumerate(itertools.product(*ranges[:axis])):
                start = sum(p * s for p, s in zip(pos, strides)) + first * strides[axis]
                start = self.offset + self.dtype.itemsize * start
                done = 0
                while done < len(raw):
                    got = os.preadv(fd, [raw[done:]], start + done)
                    if got <= 0:
                        raise OSError(f"{self.path}: the file ends before its pixels do")
                    done += got
                rows[k] = span[pick]
        finally:
            os.close(fd)


def _read_npy(path: Path) -> _Raw:
    import dask.array as da

    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise InputError(f"{path}: cannot be opened ({exc}); check its permissions") from exc
    if magic != b"\x93NUMPY":
        raise InputError(
            f"{path}: is not a NumPy .npy file (no .npy header); save the scan with "
            "numpy.save, or give it the extension of its real format"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        if "pickle" in str(exc) or "object" in str(exc).lower():
            raise InputError(
                f"{path}: holds Python objects, not pixels; cellseg never loads pickled "
                "data; save a numeric array with numpy.save"
            ) from exc
        raise InputError(
            f"{path}: cannot be read as a NumPy .npy file ({type(exc).__name__}: {exc}); "
            "save it again with numpy.save"
        ) from exc
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: does not hold a single array; save one with numpy.save")
    _check_dtype(path, array.dtype)
    letters = _plain_axes(path, array.shape)
    data = da.from_array(array, chunks="auto", name=_dask_name(path, "npy"))
    return _Raw(data, letters, {}, None)


def _read_zarr(path: Path, *, require_ngff: bool) -> _Raw:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:
        raise InputError(
            f"{path}: cannot be read as Zarr ({type(exc).__name__}: {exc}); check that "
            "the store is complete and not corrupt"
        ) from exc
    component = ""
    if isinstance(node, zarr.Group):
        ome = _ome_attrs(node)
        if "multiscales" not in ome and "bioformats2raw.layout" in ome and "0" in node:
            node = node["0"]
            component = "0"
            ome = _ome_attrs(node)
        if "multiscales" in ome:
            return _read_ngff(path, node, ome, component)
        if require_ngff:
            raise InputError(
                f"{path}: is a Zarr group without OME-Zarr multiscales metadata; give an "
                "OME-Zarr image written by cellseg (run the ingest stage again)"
            )
        keys = sorted(node.array_keys())
        if len(keys) != 1:
            found = ", ".join(repr(k) for k in keys) or "none"
            raise InputError(
                f"{path}: Zarr group holds {len(keys)} arrays ({found}) and no OME-Zarr "
                "metadata; give the path of the one array to read, e.g. "
                f"{path / (keys[0] if keys else 'ARRAY')}"
            )
        component = keys[0]
        node = node[component]
    elif require_ngff:
        raise InputError(f"{path}: is a plain Zarr array, not an OME-Zarr image")
    array = node
    _check_dtype(path, array.dtype)
    letters = _plain_axes(path, array.shape)
    data = _from_zarr(da, array, path, component)
    return _Raw(data, letters, {}, None)


def _read_ngff(path: Path, group: zarr.Group, ome: dict, component: str) -> _Raw:
    import dask.array as da

    try:
        multiscale = ome["multiscales"][0]
        dataset = multiscale["datasets"][0]
        array = group[dataset["path"]]
        ndim = array.ndim
        axes = multiscale.get("axes") or list("tczyx"[-ndim:])
        axes = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]
        if len(axes) != ndim:
            raise ValueError(f"{len(axes)} axes in metadata for a {ndim}D array")
        scale = [1.0] * ndim
        for transforms in (
            dataset.get("coordinateTransformations") or [],
            multiscale.get("coordinateTransformations") or [],
        ):
            for transform in transforms:
                if transform.get("type") == "scale" and "scale" in transform:
                    scale = [s * float(f) for s, f in zip(scale, transform["scale"])]
    except Exception as exc:
        raise InputError(
            f"{path}: OME-Zarr metadata cannot be read ({type(exc).__name__}: {exc}); "
            "check that the store is a valid OME-Zarr image"
        ) from exc
    _check_dtype(path, array.dtype)
    letters = ""
    spacing: dict[str, float] = {}
    for axis, value in zip(axes, scale):
        kind = str(axis.get("type", "")).lower()
        name = str(axis.get("name", "")).lower()
        if kind == "channel" or name == "c":
            letters += "C"
        elif kind == "time" or name == "t":
            letters += "T"
        elif name in ("z", "y", "x"):
            letters += name.upper()
            unit = axis.get("unit")
            if unit is None:
                # Unitless scale: taken as µm, unless it is the placeholder 1.0.
                if value != 1.0:
                    spacing[name.upper()] = value
            elif str(unit).lower() in _LENGTH_UNITS_UM:
                spacing[name.upper()] = value * _LENGTH_UNITS_UM[str(unit).lower()]
        else:
            letters += "?"
    names = None
    channels = (ome.get("omero") or {}).get("channels")
    if isinstance(channels, list):
        names = [str(c.get("label", "")) if isinstance(c, dict) else "" for c in channels]
    sub = "/".join(p for p in (component, str(dataset["path"])) if p)
    data = _from_zarr(da, array, path, sub)
    return _Raw(data, letters, spacing, names)


def _from_zarr(da: Any, array: Any, path: Path, component: str) -> Any:
    chunks = getattr(array, "shards", None) or array.chunks
    return da.from_zarr(array, chunks=chunks, name=_dask_name(path, "zarr", component))


def _dask_name(path: Path, kind: str, component: str = "") -> str:
    from dask.base import tokenize

    stat = path.stat()
    return f"read-{kind}-" + tokenize(str(path.resolve()), component, stat.st_mtime_ns)


def _ome_attrs(group: zarr.Group) -> dict:
    attrs = group.attrs.asdict()
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else attrs


def _plain_axes(path: Path, shape: tuple[int, ...]) -> str:
    if len(shape) < 2:
        raise InputError(
            f"{path}: has {len(shape)} dimension(s) (shape {tuple(shape)}); cellseg reads "
            "2D (YX) or 3D (ZYX) scans with an optional channel axis (CYX, CZYX). Save "
            "the scan with those axes"
        )
    return _positional_letters("?" * (len(shape) - 2) + "YX")


def _positional_letters(letters: str) -> str:
    """Name unnamed leading axes by their count: Z, CZ, TCZ (plain arrays).

    With more than three, they stay unnamed; the ones left after dropping
    singletons are named later the same way.
    """
    n = letters.count("?")
    if n == 0 or n > 3:
        return letters
    names = iter("TCZ"[-n:])
    return "".join(next(names) if a == "?" else a for a in letters)


def _make_scan(path: Path, raw: _Raw, pixel_size: Sequence[float] | None) -> Scan:
    _check_dtype(path, raw.data.dtype)
    if raw.data.size == 0:
        raise InputError(
            f"{path}: is empty (shape {tuple(raw.data.shape)}); give a scan with pixels"
        )
    data, axes = _to_channel_first(path, raw.data, raw.axes)
    spacing, source = _resolve_spacing(path, axes, raw.spacing, pixel_size)
    n_channels = int(data.shape[0])
    names = raw.channel_names
    if names is None or len(names) != n_channels or len(set(names)) != n_channels:
        names = [f"c{i}" for i in range(n_channels)]
    names = [name if name else f"c{i}" for i, name in enumerate(names)]
    return Scan(
        path=path,
        data=data,
        axes=axes,
        spacing=spacing,
        channel_names=tuple(names),
        spacing_source=source,
    )


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(
            f"{path}: has data type {dtype}, but cellseg needs integer or floating-point "
            "pixels; convert the scan to e.g. uint16 or float32"
        )


def _to_channel_first(path: Path, data: Any, letters: str) -> tuple[Any, str]:
    """Drop singleton axes, name the rest and reorder to (C, [Z,] Y, X)."""
    shape = tuple(int(n) for n in data.shape)
    described = f"shape {shape}, axes {letters.replace('?', 'Q')}"
    if len(letters) != len(shape):
        raise InputError(f"{path}: axis metadata does not match the data ({described})")
    keep = [i for i, (a, n) in enumerate(zip(letters, shape)) if n != 1 or a in "YX"]
    data = data[tuple(slice(None) if i in keep else 0 for i in range(len(shape)))]
    letters = "".join(letters[i] for i in keep)
    shape = tuple(shape[i] for i in keep)
    if "S" in letters:
        if "C" in letters:
            raise InputError(
                f"{path}: has both channels and samples per pixel ({described}); save "
                "the channels as one channel axis"
            )
        letters = letters.replace("S", "C")
    if "?" in letters:
        free = [a for a in "TCZ" if a not in letters]
        n = letters.count("?")
        if n > len(free):
            raise InputError(
                f"{path}: has {len(shape)} non-singleton dimensions ({described}); cellseg "
                "reads YX or ZYX scans with an optional channel axis"
            )
        names = iter(free[-n:])
        letters = "".join(next(names) if a == "?" else a for a in letters)
    if "T" in letters:
        raise InputError(
            f"{path}: is a time series with {shape[letters.index('T')]} time points "
            f"({described}); cellseg segments one time point at a time; save the time "
            "point you want as its own file"
        )
    if len(shape) > 4 or len(set(letters)) != len(letters) or not {"Y", "X"} <= set(letters):
        raise InputError(
            f"{path}: has {len(shape)} non-singleton dimensions ({described}); cellseg "
            "reads YX or ZYX scans with an optional channel axis (CYX, CZYX, ZCYX). Save "
            "the scan with those axes"
        )
    order = [letters.index(a) for a in "CZYX" if a in letters]
    data = data.transpose(order)
    if "C" not in letters:
        data = data[None]
    axes = "zyx" if "Z" in letters else "yx"
    return data, axes


def _resolve_spacing(
    path: Path,
    axes: str,
    found: dict[str, float],
    pixel_size: Sequence[float] | None,
) -> tuple[tuple[float, ...], str]:
    expected = " ".join(axes.upper())
    if pixel_size is not None:
        try:
            values = tuple(float(v) for v in pixel_size)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{path}: pixel size {pixel_size!r} is not a list of numbers; give "
                f"{len(axes)} values in µm ({expected})"
            ) from exc
        if len(values) != len(axes):
            raise InputError(
                f"{path}: pixel size has {len(values)} value(s) but the scan has "
                f"{len(axes)} spatial axes; give {len(axes)} values in µm, in the order "
                f"{expected}"
            )
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            raise InputError(
                f"{path}: pixel size {values} µm ({expected}) is not positive; give "
                "positive sizes in µm"
            )
        return values, "override"
    stated = {a: found[a.upper()] for a in axes if a.upper() in found}
    if not stated:
        return tuple(1.0 for _ in axes), "default"
    bad = {a: v for a, v in stated.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise InputError(
            f"{path}: the file's metadata gives a pixel size that is not positive "
            f"({', '.join(f'{a.upper()}={v}' for a, v in bad.items())}); give the pixel size "
            f"yourself ({len(axes)} values in µm, {expected}) with --pixel-size"
        )
    missing = [a for a in axes if a not in stated]
    if missing:
        logger.warning(
            "%s: metadata gives no pixel size for axis %s; using 1 µm (override with --pixel-size)",
            path,
            ", ".join(a.upper() for a in missing),
        )
    return tuple(float(stated.get(a, 1.0)) for a in axes), "metadata"


def _ome_xml_metadata(xml: str, path: Path) -> tuple[dict[str, float], list[str] | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        logger.warning("%s: OME-XML metadata cannot be parsed; ignoring it", path)
        return {}, None
    pixels = None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            pixels = element
            break
    if pixels is None:
        return {}, None
    spacing: dict[str, float] = {}
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            continue
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm").lower()
        if unit not in _LENGTH_UNITS_UM:
            logger.warning("%s: unknown length unit %r for axis %s; ignoring it", path, unit, axis)
            continue
        try:
            spacing[axis] = float(value) * _LENGTH_UNITS_UM[unit]
        except ValueError:
            continue
    channels = [c for c in pixels if c.tag.rsplit("}", 1)[-1] == "Channel"]
    names = [c.get("Name", "") for c in channels] or None
    return spacing, names


def _imagej_spacing(page: Any, meta: dict) -> dict[str, float]:
    unit = str(meta.get("unit", "")).strip().lower()
    factor = _LENGTH_UNITS_UM.get(unit)
    if factor is None:
        return {}
    spacing = _resolution_spacing(page, factor)
    if "spacing" in meta:
        try:
            spacing["Z"] = float(meta["spacing"]) * factor
        except (TypeError, ValueError):
            pass
    return spacing


def _tiff_tag_spacing(page: Any) -> dict[str, float]:
    tag = page.tags.get("ResolutionUnit")
    factor = _TIFF_RESUNIT_UM.get(int(tag.value)) if tag is not None else None
    return {} if factor is None else _resolution_spacing(page, factor)


def _resolution_spacing(page: Any, factor: float) -> dict[str, float]:
    spacing: dict[str, float] = {}
    for axis, name in (("X", "XResolution"), ("Y", "YResolution")):
        tag = page.tags.get(name)
        if tag is None:
            continue
        value = tag.value
        num, den = value if isinstance(value, tuple) else (value, 1)
        # pixels per unit -> unit per pixel; a zero resolution is a zero-size pixel
        spacing[axis] = float(den) / float(num) * factor if num else 0.0
    return spacing


# --------------------------------------------------------------------------------------
# Writing the OME-Zarr image
# --------------------------------------------------------------------------------------


def write_image(
    path: Path,
    data: dask.array.Array,
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
    is first written to ``<name>.tmp-<pid>`` next to `path`, then renamed.
    """
    import dask.array as da
    import zarr
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
    stored_attrs = _jsonable(attrs or {})

    tmp = _temp_sibling(path)
    _remove_stale_siblings(path)
    _remove_path(tmp)
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
        colors = ["FFFFFF"] if len(channel_names) == 1 else list(_CHANNEL_COLORS)
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
        _replace_path(tmp, path)
    except BaseException:
        _remove_path(tmp)
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
    import dask.array as da

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
    import zarr

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
    _remove_path(tmp)
    _remove_stale_siblings(image_path / "labels" / name)
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
    import dask.array as da

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
    import dask.array as da
    import zarr

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
    stored_attrs = _jsonable(attrs or {})
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
    _replace_path(tmp, labels_dir / name)
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
    import zarr

    image_path = Path(image_path)
    path = image_path / "labels" / name
    if not (path / "zarr.json").exists():
        raise InputError(
            f"{image_path}: has no finished label image {name!r}; run the stitch stage first"
        )
    group = zarr.open_group(str(path), mode="r")
    datasets = _ome_attrs(group).get("multiscales", [{}])[0].get("datasets", [])
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
    import zarr

    if not path.exists():
        raise InputError(f"{path}: no such OME-Zarr image; run the ingest stage first")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise InputError(
            f"{path}: cannot be read as a Zarr group ({type(exc).__name__}: {exc}); run "
            "the ingest stage again"
        ) from exc


def _multiscale_info(image_path: Path) -> dict:
    """Axes, per-level scales and level count of an image written by write_image."""
    group = _open_group(image_path)
    multiscales = _ome_attrs(group).get("multiscales")
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
    import zarr

    labels_dir = image_path / "labels"
    group = zarr.open_group(str(labels_dir), mode="a", zarr_format=3)
    if "ome" not in group.attrs:
        group.attrs.update({"ome": {"version": NGFF_VERSION, "labels": []}})
    return group


# --------------------------------------------------------------------------------------
# Atomic files and directories
# --------------------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary sibling, flushed, then renamed.

    Readers see either the old file or the complete new one, never a partial
    write. Parent directories are created.

    Parameters
    ----------
    path : Path
        Destination file.
    data : bytes
        File content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented UTF-8 JSON, atomically.

    NumPy scalars and arrays, tuples and paths are converted to plain JSON values.

    Parameters
    ----------
    path : Path
        Destination file.
    obj : object
        A JSON-serialisable object.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Remove temporaries of `path` left by processes that no longer run.

    Recognises ``<name>.tmp-<pid>`` and ``<name>.old-<pid>`` (folders) and
    ``.<name>.tmp-<pid>[-<thread>]`` (files of :func:`atomic_write_bytes`).
    """
    if not path.parent.is_dir():
        return
    for hidden in ("", "."):
        name = hidden + path.name
        for marker in (".tmp-", ".old-"):
            for stale in path.parent.glob(glob.escape(name) + marker + "*"):
                pid = stale.name[len(name) + len(marker) :].split("-", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                    logger.info("removing %s left by an interrupted run", stale)
                    _remove_path(stale)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _replace_path(src: Path, dst: Path) -> None:
    """Move the complete `src` to `dst`, replacing what is there."""
    if not (dst.exists() or dst.is_symlink()):
        os.replace(src, dst)
        return
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    _remove_path(old)
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    _remove_path(old)
