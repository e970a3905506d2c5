"""Input formats: one reader per format, and the registry that picks one by file name.

To add an input format, write a function ``read_<format>(path) -> Raw`` here
(lazy: a dask array, nothing read yet) and add one :class:`Reader` to
:data:`READERS`; :func:`find_reader`, :func:`cellseg.io.read_scan` and the
list of supported formats in error messages follow from the registry. Add the
format's file-name endings to :data:`cellseg.layout.SCAN_SUFFIXES` too, so
that scans are named without them.

Formats
-------
* TIFF, OME-TIFF and ImageJ TIFF (``.tif``, ``.tiff``), read lazily chunk by
  chunk; uncompressed, untiled pixels are read row span by row span.
* Zarr (a directory): a plain array, a group holding a single array, or an
  OME-Zarr image (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3; level 0 is read).
* NumPy ``.npy`` files, memory-mapped.
* Whole-slide images (``.svs``, ``.ndpi``, ``.scn``, ``.bif``, ``.mrxs``,
  ``.vms``, ``.dcm``, and ``.tif`` / ``.tiff`` files that are 8-bit RGB
  pyramids or carry a scanner's metadata): :mod:`cellseg.io.slide`, level 0
  tile by tile.

A reader returns the pixels in the file's own axis order with what the file
says about its axes, pixel sizes and channels (:class:`Raw`);
:func:`cellseg.io.read_scan` turns that into a :class:`cellseg.io.Scan`.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr
from dask.base import tokenize

from cellseg.atomic import read_at
from cellseg.errors import InputError
from cellseg.io.metadata import (
    imagej_spacing,
    ngff_axes,
    ome_attrs,
    ome_xml_metadata,
    plain_axes,
    positional_letters,
    tiff_tag_spacing,
)
from cellseg.io.slide import SLIDE_SUFFIXES, is_slide_tiff, open_slide

__all__ = [
    "CONTIGUOUS_CHUNK",
    "READERS",
    "Raw",
    "Reader",
    "check_dtype",
    "find_reader",
    "read_npy",
    "read_slide",
    "read_tiff",
    "read_zarr",
    "supported_formats",
]

#: Rows and columns of a chunk read from an uncompressed, untiled TIFF.
CONTIGUOUS_CHUNK = 512


@dataclass
class Raw:
    """What a format reader found, before axes are normalised.

    Attributes
    ----------
    data : dask.array.Array
        The pixels in the file's own axis order.
    axes : str
        One letter per axis of `data`: ``T C Z Y X S``, or ``?`` when unnamed.
    spacing : dict
        ``"Z"`` / ``"Y"`` / ``"X"`` → µm, for the axes the file states.
    channel_names : list of str or None
        The channel names the file states, if any.
    """

    data: Any
    axes: str
    spacing: dict[str, float]
    channel_names: list[str] | None


@dataclass(frozen=True)
class Reader:
    """An input format: the file names it claims and the function that reads it.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"tiff"``.
    description : str
        What the format is called in messages, e.g. ``"NumPy"``.
    suffixes : tuple of str
        File-name endings of the format, lower case, e.g. ``(".npy",)``.
    read : callable
        ``read(path) -> Raw``: opens a scan of this format lazily; raises
        :class:`~cellseg.errors.InputError` for a file it cannot read.
    store : str
        For a format stored as a directory, its name in messages (``"Zarr"``);
        empty for a format stored as one file.
    markers : tuple of str
        For a directory format, the files one of which marks a directory as a
        store of this format.
    """

    name: str
    description: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], Raw]
    store: str = ""
    markers: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------
# The readers
# --------------------------------------------------------------------------------------


def read_tiff(path: Path) -> Raw:
    """Open a TIFF, OME-TIFF or ImageJ TIFF lazily (its first series, level 0).

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    Raw
        The pixels chunk by chunk, the axes the file names (or named by their
        count when it names only Y and X), and the pixel sizes and channel names
        of its OME-XML, ImageJ metadata or resolution tags.

    Raises
    ------
    InputError
        If the file cannot be read as a TIFF.
    """
    if is_slide_tiff(path):  # a whole-slide pyramid: its levels, MPP, objective power
        return read_slide(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("no image series in file")
            series = tif.series[0]
            axes = series.get_axes(False)
            _check_tiff_layout(path, series)
            store = series.aszarr(level=0, squeeze=False)
            contiguous = _contiguous_layout(tif, series)
            spacing: dict[str, float] = {}
            names: list[str] | None = None
            if tif.is_ome and tif.ome_metadata:
                spacing, names = ome_xml_metadata(tif.ome_metadata, path)
            elif tif.is_imagej:
                spacing = imagej_spacing(tif.pages[0], tif.imagej_metadata or {})
            else:
                spacing = tiff_tag_spacing(tif.pages[0])
        array = zarr.open_array(store, mode="r", zarr_format=2)
    except InputError:
        raise
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
        data = da.from_array(
            _Guarded(array, path), chunks=array.chunks, name=_dask_name(path, "tiff"), asarray=False
        )
    letters = "".join(a if a in "TCZYXS" else "?" for a in axes.upper())
    if set(letters) <= set("?YXS"):
        letters = positional_letters(letters)
    return Raw(data, letters, spacing, names)


def _check_tiff_layout(path: Path, series: Any) -> None:
    """Refuse a TIFF whose header claims more pixels than the file holds (header bomb, cut file).

    The first and last page of the series must have the strips or tiles
    that their size needs, inside the file.
    """
    size = path.stat().st_size
    for page in (series.keyframe, series.pages[-1]):
        if page is None:
            continue
        key = getattr(page, "keyframe", None) or page
        offsets, counts = page.dataoffsets, page.databytecounts
        needed = math.prod(key.chunked) if key.chunked else len(offsets)
        ends = [o + c for o, c in zip(offsets, counts) if o]
        if needed != len(offsets) or (ends and max(ends) > size):
            raise InputError(
                f"{path}: its header claims {' × '.join(map(str, key.shape))} pixels but the "
                f"file does not hold them ({len(offsets)} of {needed} strips/tiles, "
                f"{size} bytes); the file is cut short or corrupt: copy or export it again"
            )


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
                    got = read_at(fd, raw[done:], start + done)
                    if got <= 0:
                        raise OSError(f"{self.path}: the file ends before its pixels do")
                    done += got
                rows[k] = span[pick]
        finally:
            os.close(fd)


def read_slide(path: Path) -> Raw:
    """Open level 0 of a whole-slide image lazily, tile by tile (:mod:`cellseg.io.slide`).

    Parameters
    ----------
    path : Path
        The slide file.

    Returns
    -------
    Raw
        RGB pixels as ``YXS`` (grey slides ``YX``), chunked by the file's
        tiles, and the pixel size the file states (µm per pixel).

    Raises
    ------
    InputError
        If the file cannot be read as a slide.
    """
    slide = open_slide(path)
    return Raw(slide.data, slide.axes, dict(slide.spacing), slide.channel_names)


def read_npy(path: Path) -> Raw:
    """Open a NumPy ``.npy`` file, memory-mapped; pickled objects are never loaded.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    Raw
        The pixels, axes named by their count, no pixel sizes.

    Raises
    ------
    InputError
        If the file is not a ``.npy`` file, holds Python objects or is not numeric.
    """
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
    check_dtype(path, array.dtype)
    letters = plain_axes(path, array.shape)
    data = da.from_array(array, chunks="auto", name=_dask_name(path, "npy"))
    return Raw(data, letters, {}, None)


def read_zarr(path: Path, *, require_ngff: bool, level: int = 0) -> Raw:
    """Open a Zarr store lazily: an OME-Zarr image (a level of it), a plain array or a group of one.

    Parameters
    ----------
    path : Path
        The store's directory.
    require_ngff : bool
        Accept only an OME-Zarr image (NGFF ``multiscales`` metadata).
    level : int
        The pyramid level of an OME-Zarr image (0: full resolution; the
        coarsest when it has fewer levels), with its own pixel sizes.

    Returns
    -------
    Raw
        The pixels in the store's chunks (its shards, if sharded); an OME-Zarr
        image's axes, pixel sizes and channel names.

    Raises
    ------
    InputError
        If the store cannot be read, or holds no single image to read.
    """
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:
        raise InputError(
            f"{path}: cannot be read as Zarr ({type(exc).__name__}: {exc}); check that "
            "the store is complete and not corrupt"
        ) from exc
    component = ""
    if isinstance(node, zarr.Group):
        ome = ome_attrs(node)
        if "multiscales" not in ome and "bioformats2raw.layout" in ome and "0" in node:
            node = node["0"]
            component = "0"
            ome = ome_attrs(node)
        if "multiscales" in ome:
            return _read_ngff(path, node, ome, component, level)
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
    check_dtype(path, array.dtype)
    letters = plain_axes(path, array.shape)
    data = _from_zarr(array, path, component)
    return Raw(data, letters, {}, None)


def _read_ngff(path: Path, group: zarr.Group, ome: dict, component: str, level: int = 0) -> Raw:
    try:
        multiscale = ome["multiscales"][0]
        dataset = multiscale["datasets"][min(level, len(multiscale["datasets"]) - 1)]
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
    check_dtype(path, array.dtype)
    letters, spacing = ngff_axes(axes, scale)
    names = None
    channels = (ome.get("omero") or {}).get("channels")
    if isinstance(channels, list):
        names = [str(c.get("label", "")) if isinstance(c, dict) else "" for c in channels]
    sub = "/".join(p for p in (component, str(dataset["path"])) if p)
    data = _from_zarr(array, path, sub)
    return Raw(data, letters, spacing, names)


def _from_zarr(array: Any, path: Path, component: str) -> Any:
    chunks = getattr(array, "shards", None) or array.chunks
    name = _dask_name(path, "zarr", component)
    return da.from_array(_Guarded(array, path), chunks=chunks, name=name, asarray=False)


class _Guarded:
    """A stored array whose read errors (a corrupt or missing chunk) become one clear error."""

    def __init__(self, array: Any, path: Path) -> None:
        self.array, self.path = array, path
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, len(array.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self.array[key]
        except Exception as exc:
            raise InputError(
                f"{self.path}: a block of its pixels cannot be read ({type(exc).__name__}: "
                f"{exc}); the file is corrupt or cut short: copy or export it again"
            ) from None


def _dask_name(path: Path, kind: str, component: str = "") -> str:
    stat = path.stat()
    return f"read-{kind}-" + tokenize(str(path.resolve()), component, stat.st_mtime_ns)


def check_dtype(path: Path, dtype: np.dtype) -> None:
    """Raise InputError unless `dtype` is an integer or floating-point type.

    Parameters
    ----------
    path : Path
        The file, named in the error.
    dtype : numpy.dtype
        The pixels' data type.
    """
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(
            f"{path}: has data type {dtype}, but cellseg needs integer or floating-point "
            "pixels; convert the scan to e.g. uint16 or float32"
        )


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------


#: The input formats, in the order error messages list them.
READERS: tuple[Reader, ...] = (
    Reader("tiff", "TIFF / OME-TIFF / ImageJ TIFF", (".tif", ".tiff"), read_tiff),
    Reader(
        "zarr",
        "Zarr / OME-Zarr",
        (".zarr",),
        functools.partial(read_zarr, require_ngff=False),
        store="Zarr",
        markers=("zarr.json", ".zgroup", ".zarray"),
    ),
    Reader("npy", "NumPy", (".npy",), read_npy),
    Reader("slide", "whole-slide image", SLIDE_SUFFIXES, read_slide),
)


def supported_formats() -> str:
    """The input formats and their file-name endings, as error messages list them.

    Returns
    -------
    str
        One phrase naming every format of :data:`READERS`.

    Examples
    --------
    >>> print(supported_formats().replace("), ", "),\\n"))
    TIFF / OME-TIFF / ImageJ TIFF (.tif, .tiff),
    Zarr / OME-Zarr (.zarr),
    NumPy (.npy),
    whole-slide image (.svs, .ndpi, .scn, .bif, .mrxs, .vms, .dcm)
    """
    return ", ".join(f"{r.description} ({', '.join(r.suffixes)})" for r in READERS)


def find_reader(path: Path) -> Reader:
    """The reader of a scan, chosen by its file name (a directory: by the files inside).

    Parameters
    ----------
    path : Path
        An existing file or directory.

    Returns
    -------
    Reader
        The entry of :data:`READERS` that reads `path`.

    Raises
    ------
    InputError
        If no reader claims `path`: an unsupported file type, a directory that
        is no store, or a store format given as a file. The message lists the
        supported formats.

    Examples
    --------
    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "scan.OME.TIF"
    >>> _ = f.write_bytes(b"")
    >>> find_reader(f).name
    'tiff'
    """
    name = path.name.lower()
    if path.is_dir():
        stores = [r for r in READERS if r.markers]
        for reader in stores:
            if any((path / marker).exists() for marker in reader.markers):
                return reader
        markers = [m for r in stores for m in r.markers]
        raise InputError(
            f"{path}: is a directory but not {_either(f'a {r.store} store' for r in stores)} "
            f"(no {_either(markers)} inside); give a scan file or "
            f"{_either(f'a {r.store} directory' for r in stores)} ({supported_formats()})"
        )
    for reader in READERS:
        if name.endswith(reader.suffixes):
            if reader.markers:
                raise InputError(
                    f"{path}: a {reader.store} store must be a directory; this is a file"
                )
            return reader
    raise InputError(
        f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; cellseg reads "
        f"{supported_formats()}. Convert the scan, e.g. to OME-TIFF with bfconvert"
    )


def _either(words: Any) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    words = list(words)
    return " or ".join(w for w in (", ".join(words[:-1]), words[-1]) if w)
