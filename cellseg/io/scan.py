"""A scan opened for reading: :class:`Scan`, :func:`read_scan`, :func:`open_image`.

Every scan is presented the same way, whatever the file format: a lazy dask
array with the channel axis first, ``(C, Y, X)`` or ``(C, Z, Y, X)``, plus the
physical pixel size (spacing) of each spatial axis in micrometres. The format
is read by a reader of :mod:`cellseg.io.readers`; the axes and the spacing are
then resolved by :mod:`cellseg.io.metadata`.

Axes
----
Files that name their axes (OME-TIFF, ImageJ TIFF, OME-Zarr) are read as named.
Arrays that do not (plain TIFF, plain Zarr, ``.npy``) are named by their number
of dimensions: 2D is ``YX``, 3D is ``ZYX``, 4D is ``CZYX`` and 5D is ``TCZYX``.
Singleton axes other than Y and X are then dropped, so a single plane is 2D, a
single channel gets ``C = 1`` and a single time point is not a time series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from cellseg.errors import InputError
from cellseg.io.metadata import resolve_spacing, to_channel_first
from cellseg.io.readers import Raw, check_dtype, find_reader, read_zarr

__all__ = ["Scan", "channel_index", "open_image", "read_scan"]


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
    data: da.Array
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
    raw = find_reader(path).read(path)
    check_chunks(path, raw.data)
    return _make_scan(path, raw, pixel_size)


#: Most chunks a scan may have (more make the task graph alone outgrow memory).
MAX_CHUNKS = 1 << 22
#: Largest chunk in bytes (one chunk is read whole; also bounds decompression bombs).
MAX_CHUNK_BYTES = 256 << 20


def check_chunks(path: Path, data: Any) -> None:
    """Refuse a scan whose chunk grid would not fit in memory (a size or chunk-count bomb).

    Raises
    ------
    InputError
        If it has more than :data:`MAX_CHUNKS` chunks or a chunk above :data:`MAX_CHUNK_BYTES`.
    """
    count = math.prod(len(c) for c in data.chunks)
    largest = math.prod(max(c, default=0) for c in data.chunks) * data.dtype.itemsize
    shape = " × ".join(map(str, data.shape))
    if count > MAX_CHUNKS:
        raise InputError(
            f"{path}: {shape} pixels in {count} chunks, more than cellseg handles "
            f"({MAX_CHUNKS}); if the size is real, store it in larger chunks "
            "(e.g. 1024 × 1024), else the file's header is corrupt"
        )
    if largest > MAX_CHUNK_BYTES:
        raise InputError(
            f"{path}: a chunk of {largest / 2**20:.0f} MiB ({shape} pixels), more than "
            f"cellseg reads at once ({MAX_CHUNK_BYTES >> 20} MiB); if the size is real, save the "
            "scan tiled or chunked (e.g. 1024 × 1024 tiles), else its header is corrupt"
        )


def open_image(path: Path, level: int = 0) -> Scan:
    """Open a level (default 0: full resolution) of an OME-Zarr image from :func:`write_image`.

    Parameters
    ----------
    path : Path
        The OME-Zarr image group, e.g. ``OUTDIR/<scan>.ome.zarr``.
    level : int
        Pyramid level (each halves the in-plane axes; the coarsest when there
        are fewer), with its own pixel sizes.

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
    raw = read_zarr(path, require_ngff=True, level=level)
    return _make_scan(path, raw, None)


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


def _make_scan(path: Path, raw: Raw, pixel_size: Sequence[float] | None) -> Scan:
    check_dtype(path, raw.data.dtype)
    if raw.data.size == 0:
        raise InputError(
            f"{path}: is empty (shape {tuple(raw.data.shape)}); give a scan with pixels"
        )
    data, axes = to_channel_first(path, raw.data, raw.axes)
    spacing, source = resolve_spacing(path, axes, raw.spacing, pixel_size)
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
