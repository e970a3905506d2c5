"""Whole-slide images: scanner pyramids read lazily, tile by tile.

Brightfield slide scanners write gigapixel RGB pyramids: Aperio SVS, Hamamatsu
NDPI, Leica SCN, Ventana BIF, Philips TIFF and generic tiled pyramidal TIFF /
OME-TIFF are TIFF files; MIRAX (``.mrxs``), Hamamatsu VMS and DICOM WSI are
not. :func:`open_slide` opens one pyramid level as a lazy dask array chunked
by the file's tiles, with the pixel size (µm per pixel), the objective power
and the pyramid levels (shapes and downsample factors) the file states.

Readers
-------
* TIFF-based slides are read with `tiffslide
  <https://github.com/Bayer-Group/tiffslide>`_: pure Python on top of
  tifffile (which cellseg reads TIFF with already) and imagecodecs (JPEG and
  JPEG 2000 tiles), installed from a wheel with no native library to build or
  find, and it reads a region by decoding only the tiles under it. It parses
  the scanners' metadata the way OpenSlide does (Aperio ``MPP`` and
  ``AppMag``, the NDPI ``SourceLens``, Leica and Philips XML).
* Other formats (MIRAX, VMS, DICOM; and a TIFF slide tiffslide cannot parse)
  are read through OpenSlide (``openslide-python`` with the ``openslide-bin``
  wheel: ``pip install 'cellseg[openslide]'``) when it is installed; otherwise
  the error says how to install it.

A slide's RGB(A) samples are the trailing ``S`` axis (``YXS``);
:func:`cellseg.io.read_scan` turns them into the channel axis. The pixel size
comes from the vendor's metadata (Aperio ``MPP``, Leica, Philips), else from
OME-XML ``PhysicalSizeX/Y``, else from the resolution tags when their unit is a
length (centimetre, millimetre, µm; an inch unit is a screen resolution, not
a pixel size).
"""

from __future__ import annotations

import math
import threading
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
from dask.base import tokenize

from cellseg.errors import InputError
from cellseg.io.metadata import ome_xml_metadata, tiff_tag_spacing

__all__ = [
    "OPENSLIDE_SUFFIXES",
    "SLIDE_SUFFIXES",
    "Slide",
    "SlideLevel",
    "is_slide_tiff",
    "open_slide",
    "slide_info",
]

#: File-name endings of whole-slide formats (pyramidal ``.tif`` / ``.tiff`` are
#: recognised by their content, :func:`is_slide_tiff`).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".dcm")
#: Endings of the formats only OpenSlide reads.
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".dcm")
#: Region edge of the chunks of a slide read through OpenSlide.
OPENSLIDE_CHUNK = 512
#: What to install for the formats read through OpenSlide.
OPENSLIDE_HINT = "pip install 'cellseg[openslide]' (openslide-python and openslide-bin)"


@dataclass(frozen=True)
class SlideLevel:
    """One level of a slide's pyramid.

    Attributes
    ----------
    shape : tuple of int
        ``(Y, X)`` in pixels.
    downsample : tuple of float
        Level-0 pixels per pixel of this level, ``(Y, X)``.
    tile : tuple of int or None
        The file's tile shape ``(Y, X)`` at this level, if tiled.
    """

    shape: tuple[int, int]
    downsample: tuple[float, float]
    tile: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        """JSON-able form (``ingest.json``)."""
        return {
            "shape": list(self.shape),
            "downsample": [round(d, 6) for d in self.downsample],
            "tile": list(self.tile) if self.tile else None,
        }


@dataclass(frozen=True, eq=False)
class Slide:
    """One level of a whole-slide image, opened lazily.

    Attributes
    ----------
    path : Path
        The file.
    data : dask.array.Array
        The pixels of the level, chunked by the file's tiles.
    axes : str
        The axes of `data`: ``"YXS"`` for RGB, ``"YX"`` for grey.
    spacing : dict
        ``"Y"`` / ``"X"`` → µm per pixel of *level 0*; empty when the file states none.
    objective_power : float or None
        The scanner objective's magnification, e.g. 40.
    levels : tuple of SlideLevel
        The pyramid, level 0 first.
    level : int
        The level `data` holds.
    vendor : str
        The format as the reader names it (``"aperio"``, ``"hamamatsu"``, ``"generic-tiff"``, ...).
    reader : str
        ``"tiffslide"`` or ``"openslide"``.
    background : tuple of int or None
        The slide's background (glass) colour, if the file states it.
    """

    path: Path
    data: Any
    axes: str
    spacing: dict[str, float]
    objective_power: float | None
    levels: tuple[SlideLevel, ...]
    level: int = 0
    vendor: str = ""
    reader: str = "tiffslide"
    background: tuple[int, ...] | None = None
    channel_names: list[str] | None = field(default=None)

    def info(self) -> dict:
        """What ingest records about the slide (JSON-able)."""
        return {
            "vendor": self.vendor,
            "reader": self.reader,
            "mpp": [self.spacing.get("Y"), self.spacing.get("X")],
            "objective_power": self.objective_power,
            "levels": [lvl.to_dict() for lvl in self.levels],
            "background": list(self.background) if self.background else None,
        }


def is_slide_tiff(path: Path) -> bool:
    """Whether a ``.tif`` / ``.tiff`` file is a whole-slide image (read by :func:`open_slide`).

    A slide is a TIFF a scanner's format flags (Aperio SVS, Hamamatsu NDPI,
    Leica SCN, Ventana BIF, Philips) or whose first image series is an 8-bit
    RGB pyramid (more than one level). Every other TIFF, fluorescence
    pyramids included, is read by :func:`cellseg.io.readers.read_tiff`.

    Parameters
    ----------
    path : Path
        A TIFF file.

    Returns
    -------
    bool
        False too for a file tifffile cannot open (the TIFF reader reports it).
    """
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_svs or tif.is_ndpi or tif.is_scn or tif.is_bif or tif.is_philips:
                return True
            if not tif.series:
                return False
            series = tif.series[0]
            return (
                len(series.levels) > 1
                and series.get_axes(True) == "YXS"
                and series.shape[-1] in (3, 4)
                and np.dtype(series.dtype) == np.uint8
            )
    except Exception:
        return False


def open_slide(path: str | Path, level: int = 0) -> Slide:
    """Open a whole-slide image lazily: one level of its pyramid and its metadata.

    Parameters
    ----------
    path : str or Path
        The slide file (``.svs``, ``.ndpi``, ``.scn``, ``.bif``, a pyramidal
        ``.tif`` / ``.tiff`` / ``.ome.tif``; ``.mrxs``, ``.vms``, ``.dcm``
        through OpenSlide).
    level : int
        The pyramid level to read, 0 being full resolution.

    Returns
    -------
    Slide
        The level as a dask array chunked by the file's tiles (nothing is
        read until a chunk is computed), with the slide's metadata.

    Raises
    ------
    InputError
        If the file cannot be read as a slide (truncated, corrupt, not a slide
        format), the level does not exist, or the format needs OpenSlide and it
        is not installed.

    Examples
    --------
    >>> import tempfile
    >>> from cellseg.synth.slide import write_slide
    >>> rgb = np.full((300, 500, 3), 240, np.uint8)
    >>> f = write_slide(Path(tempfile.mkdtemp()) / "s.svs", rgb, 0.5, tile=64)
    >>> slide = open_slide(f)
    >>> slide.data.shape, slide.spacing, slide.objective_power
    ((300, 500, 3), {'Y': 0.5, 'X': 0.5}, 20.0)
    >>> [(lvl.shape, lvl.downsample) for lvl in slide.levels]
    [((300, 500), (1.0, 1.0)), ((75, 125), (4.0, 4.0))]
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the slide path")
    if path.name.lower().endswith(OPENSLIDE_SUFFIXES):
        return _open_with_openslide(path, level, why="")
    try:
        return _open_with_tiffslide(path, level)
    except InputError:
        raise
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        if _openslide_module() is None:
            raise InputError(
                f"{path}: cannot be read as a whole-slide image ({why}); check that the "
                "file is complete and not corrupt (copy it again), or install OpenSlide "
                f"for more formats: {OPENSLIDE_HINT}"
            ) from exc
        return _open_with_openslide(path, level, why=why)


def slide_info(path: str | Path) -> dict | None:
    """The pyramid and metadata of a whole-slide or pyramidal TIFF file, else None.

    Cheap: reads the file's metadata, no pixels.

    Parameters
    ----------
    path : str or Path
        Any scan.

    Returns
    -------
    dict or None
        :meth:`Slide.info` for a slide format or a pyramidal RGB TIFF; for
        another TIFF with a pyramid, its levels (``{"levels": [...]}``); None
        for everything else.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_file() and name.endswith(SLIDE_SUFFIXES):
        return open_slide(path).info()
    if not (path.is_file() and name.endswith((".tif", ".tiff"))):
        return None
    if is_slide_tiff(path):
        return open_slide(path).info()
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if len(series.levels) < 2:
                return None
            axes = series.get_axes(False).upper()
            y, x = axes.index("Y"), axes.index("X")
            shapes = [(int(s.shape[y]), int(s.shape[x])) for s in series.levels]
    except Exception:
        return None
    return {"levels": [_level(shapes[0], s, None).to_dict() for s in shapes]}


# --------------------------------------------------------------------------------------
# tiffslide
# --------------------------------------------------------------------------------------


def _open_with_tiffslide(path: Path, level: int) -> Slide:
    # tiffslide imports fsspec and PIL: loaded when a slide is opened
    import tiffslide

    with warnings.catch_warnings():
        # tiffslide warns that its NDPI / BIF metadata parsing is partial;
        # cellseg reads the fields it needs (size, levels, pixel size, objective)
        warnings.simplefilter("ignore", UserWarning)
        slide = tiffslide.TiffSlide(path)
        props = slide.properties
        group = slide.zarr_group
    tif = slide.ts_tifffile
    series = tif.series[int(props.get("tiffslide.series-index") or 0)]
    axes = str(props.get("tiffslide.series-axes") or series.get_axes(True))
    if axes not in ("YXS", "YX"):
        raise InputError(
            f"{path}: is a slide with axes {axes}; cellseg reads RGB (YXS) or grey (YX) "
            "slides; read a fluorescence pyramid as OME-TIFF"
        )
    n = int(slide.level_count)
    _check_level(path, level, n)
    _check_complete(path, series)
    keys = sorted(group.array_keys(), key=int)
    array = group[keys[level]]
    levels = _levels(props, "tiffslide", slide.level_dimensions)
    vendor = str(props.get("tiffslide.vendor") or tiffslide.TiffSlide.detect_format(path) or "")
    if tif.is_ome and vendor in ("", "generic-tiff"):
        vendor = "ome-tiff"
    spacing = _tiff_spacing(tif, props, vendor, path)
    power = _number(props.get("tiffslide.objective-power"))
    if power is None and tif.is_ome and tif.ome_metadata:
        power = _ome_objective(tif.ome_metadata)
    background = _colour(props.get("tiffslide.background-color"))
    stat = path.stat()
    name = "read-slide-" + tokenize(str(path.resolve()), level, stat.st_mtime_ns, stat.st_size)
    chunks = getattr(array, "chunks", None) or "auto"
    data = da.from_zarr(array, chunks=chunks, name=name)  # the store keeps the file open
    names = ["red", "green", "blue", "alpha"][: data.shape[-1]] if axes == "YXS" else None
    return Slide(
        path=path,
        data=data,
        axes=axes,
        spacing=spacing,
        objective_power=power,
        levels=levels,
        level=level,
        vendor=vendor or "generic-tiff",
        reader="tiffslide",
        background=background,
        channel_names=names,
    )


def _tiff_spacing(tif: Any, props: dict, vendor: str, path: Path) -> dict[str, float]:
    """µm per level-0 pixel: the vendor's metadata, else OME-XML, else length-unit tags."""
    mpp_x = _number(props.get("tiffslide.mpp-x"))
    mpp_y = _number(props.get("tiffslide.mpp-y"))
    if vendor not in ("", "generic-tiff", "ome-tiff") and mpp_x and mpp_y:
        return {"Y": mpp_y, "X": mpp_x}
    if tif.is_ome and tif.ome_metadata:
        spacing, _ = ome_xml_metadata(tif.ome_metadata, path)
        spacing = {k: v for k, v in spacing.items() if k in "YX"}
        if spacing:
            return spacing
    return tiff_tag_spacing(tif.pages[0])


def _ome_objective(xml: str) -> float | None:
    """``NominalMagnification`` of the first ``Objective`` of an OME-XML document."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("Objective") and "NominalMagnification" in element.attrib:
            return _number(element.attrib["NominalMagnification"])
    return None


# --------------------------------------------------------------------------------------
# OpenSlide
# --------------------------------------------------------------------------------------


def _openslide_module() -> Any:
    try:
        # a native library in a wheel, needed only for the formats tiffslide cannot read
        import openslide
    except Exception:  # ImportError, or OSError when the library fails to load
        return None
    return openslide


def _open_with_openslide(path: Path, level: int, *, why: str) -> Slide:
    openslide = _openslide_module()
    if openslide is None:
        raise InputError(
            f"{path}: this whole-slide format is read through OpenSlide, which is not "
            f"installed; {OPENSLIDE_HINT}"
        )
    try:
        handle = openslide.OpenSlide(str(path))
    except Exception as exc:
        before = f" ({why})" if why else ""
        raise InputError(
            f"{path}: cannot be read as a whole-slide image{before}; OpenSlide says "
            f"{type(exc).__name__}: {exc}; check that the file (and, for MIRAX / VMS / "
            "DICOM, the files beside it) is complete and not corrupt"
        ) from exc
    props = dict(handle.properties)
    n = int(handle.level_count)
    _check_level(path, level, n)
    levels = _levels(props, "openslide", handle.level_dimensions)
    spacing = {}
    mpp_x, mpp_y = _number(props.get("openslide.mpp-x")), _number(props.get("openslide.mpp-y"))
    if mpp_x and mpp_y:
        spacing = {"Y": mpp_y, "X": mpp_x}
    background = _colour(props.get("openslide.background-color")) or (255, 255, 255)
    handle.close()
    regions = _OpenSlideRegions(path, level, levels[level], background)
    stat = path.stat()
    name = "read-openslide-" + tokenize(str(path.resolve()), level, stat.st_mtime_ns)
    edge = OPENSLIDE_CHUNK
    data = da.from_array(regions, chunks=(edge, edge, 3), name=name, asarray=False)
    return Slide(
        path=path,
        data=data,
        axes="YXS",
        spacing=spacing,
        objective_power=_number(props.get("openslide.objective-power")),
        levels=levels,
        level=level,
        vendor=str(props.get("openslide.vendor") or ""),
        reader="openslide",
        background=background,
        channel_names=["red", "green", "blue"],
    )


class _OpenSlideRegions:
    """Regions of one level of a slide, read through OpenSlide on demand.

    Each thread opens the slide once. Pixels OpenSlide reports transparent
    (outside the scanned area) become the slide's background colour.
    """

    def __init__(
        self, path: Path, level: int, info: SlideLevel, background: tuple[int, ...]
    ) -> None:
        self.path, self.level, self.info = path, level, info
        self.background = np.asarray(background[:3], np.float32)
        self.shape = (*info.shape, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _handle(self) -> Any:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = _openslide_module().OpenSlide(str(self.path))
        return handle

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (3 - len(index))
        (y0, y1, ys), (x0, x1, xs) = (s.indices(n) for s, n in zip(index[:2], self.shape))
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        out = np.empty((h, w, 3), np.uint8)
        if h and w:
            dy, dx = self.info.downsample
            location = (int(round(x0 * dx)), int(round(y0 * dy)))
            rgba = np.asarray(self._handle().read_region(location, self.level, (w, h)))
            alpha = rgba[..., 3:4].astype(np.float32) / 255.0
            rgb = rgba[..., :3] * alpha + self.background * (1.0 - alpha)
            out[:] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return out[::ys, ::xs][(slice(None), slice(None), index[2])]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _levels(props: dict, prefix: str, dimensions: Any) -> tuple:
    """Every level's shape, downsample and tile from a reader's properties (``prefix``:
    ``tiffslide`` or ``openslide``, which name them alike) and its ``(w, h)`` dimensions."""
    shapes = [(int(h), int(w)) for w, h in dimensions]
    tiles = []
    for k in range(len(shapes)):
        th = props.get(f"{prefix}.level[{k}].tile-height")
        tw = props.get(f"{prefix}.level[{k}].tile-width")
        tiles.append((int(th), int(tw)) if th and tw else None)
    return tuple(_level(shapes[0], s, t) for s, t in zip(shapes, tiles))


def _level(base: tuple[int, int], shape: tuple[int, int], tile: Any) -> SlideLevel:
    return SlideLevel(
        shape=(int(shape[0]), int(shape[1])),
        downsample=(base[0] / shape[0], base[1] / shape[1]),
        tile=tile,
    )


def _check_complete(path: Path, series: Any) -> None:
    """Raise InputError when a level's tiles reach past the end of the file (a cut copy)."""
    size = path.stat().st_size
    for level in series.levels:
        for page in level.pages:
            if page is None or not hasattr(page, "dataoffsets"):
                continue
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
            if not ends or max(ends) > size or not all(page.databytecounts):
                raise InputError(
                    f"{path}: is truncated or incomplete (image data of a "
                    f"{page.shape[1]}x{page.shape[0]} level is missing past byte {size}); "
                    "copy the slide again from the scanner or archive"
                )


def _check_level(path: Path, level: int, n: int) -> None:
    if not 0 <= int(level) < n:
        raise InputError(
            f"{path}: has {n} pyramid level(s) (0 to {n - 1}); level {level} does not exist"
        )


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _colour(value: Any) -> tuple[int, int, int] | None:
    """An ``RRGGBB`` hex colour as a tuple, else None."""
    text = str(value or "").lstrip("#")
    if len(text) != 6:
        return None
    try:
        return tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    except ValueError:
        return None
