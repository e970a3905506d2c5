"""What a scan's metadata says: axes, physical pixel sizes and their units.

The readers in :mod:`cellseg.io.readers` hand the metadata they find to the
functions here:

* length units of OME-XML, ImageJ and NGFF (:data:`LENGTH_UNITS_UM`), and the
  pixel sizes stated by OME-XML (:func:`ome_xml_metadata`), ImageJ
  (:func:`imagej_spacing`), plain TIFF resolution tags
  (:func:`tiff_tag_spacing`) and NGFF axes (:func:`ngff_axes`);
* axis names: files that name their axes are read as named, arrays that do not
  are named by their number of dimensions (:func:`plain_axes`,
  :func:`positional_letters`); :func:`to_channel_first` drops singleton axes
  and orders the rest ``(C, [Z,] Y, X)``;
* :func:`resolve_spacing` chooses between a pixel size given by the user, the
  file's metadata and the default of 1 µm.

Axis letters are ``T C Z Y X S`` (``S``: samples per pixel, e.g. RGB) and
``?`` for an axis the file does not name.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zarr

from cellseg.errors import InputError

__all__ = [
    "LENGTH_UNITS_UM",
    "TIFF_RESUNIT_UM",
    "imagej_spacing",
    "ngff_axes",
    "ome_attrs",
    "ome_xml_metadata",
    "plain_axes",
    "positional_letters",
    "resolve_spacing",
    "tiff_tag_spacing",
    "to_channel_first",
]

logger = logging.getLogger("cellseg.io")

#: Length units as written by OME-XML, ImageJ and NGFF, in micrometres.
LENGTH_UNITS_UM = {
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

#: TIFF ResolutionUnit values that describe a physical pixel size, in µm. INCH
#: is left out on purpose: it is nearly always a screen DPI, not a microscope
#: calibration.
TIFF_RESUNIT_UM = {3: 1e4, 4: 1e3, 5: 1.0}


# --------------------------------------------------------------------------------------
# Pixel sizes stated by the file
# --------------------------------------------------------------------------------------


def ome_attrs(group: zarr.Group) -> dict:
    """The OME metadata of a Zarr group: ``attrs["ome"]`` (NGFF 0.5) or the attributes (0.4).

    Parameters
    ----------
    group : zarr.Group
        An OME-Zarr group, or any Zarr group.

    Returns
    -------
    dict
        The dict that holds ``multiscales``, ``omero``, ``labels``, ... when the
        group is an OME-Zarr image.
    """
    attrs = group.attrs.asdict()
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else attrs


def ome_xml_metadata(xml: str, path: Path) -> tuple[dict[str, float], list[str] | None]:
    """Pixel sizes and channel names stated by OME-XML.

    Parameters
    ----------
    xml : str
        The OME-XML document of an OME-TIFF.
    path : Path
        The file, named in warnings.

    Returns
    -------
    spacing : dict
        ``"X"`` / ``"Y"`` / ``"Z"`` → µm, for the axes the first ``Pixels`` element states.
    names : list of str or None
        The ``Name`` of each ``Channel``, or None when there are no channels.

    Examples
    --------
    >>> xml = '<OME><Image><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm">'
    >>> xml += '<Channel Name="DAPI"/></Pixels></Image></OME>'
    >>> ome_xml_metadata(xml, Path("scan.ome.tif"))
    ({'X': 0.25}, ['DAPI'])
    """
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
        if unit not in LENGTH_UNITS_UM:
            logger.warning("%s: unknown length unit %r for axis %s; ignoring it", path, unit, axis)
            continue
        try:
            spacing[axis] = float(value) * LENGTH_UNITS_UM[unit]
        except ValueError:
            continue
    channels = [c for c in pixels if c.tag.rsplit("}", 1)[-1] == "Channel"]
    names = [c.get("Name", "") for c in channels] or None
    return spacing, names


def imagej_spacing(page: Any, meta: dict) -> dict[str, float]:
    """Pixel sizes stated by an ImageJ TIFF: resolution tags in ``unit``, ``spacing`` for Z.

    Parameters
    ----------
    page : tifffile.TiffPage
        The first page of the file.
    meta : dict
        The ImageJ metadata (``TiffFile.imagej_metadata``).

    Returns
    -------
    dict
        ``"X"`` / ``"Y"`` / ``"Z"`` → µm; empty when the unit is not a length.
    """
    unit = str(meta.get("unit", "")).strip().lower()
    factor = LENGTH_UNITS_UM.get(unit)
    if factor is None:
        return {}
    spacing = _resolution_spacing(page, factor)
    if "spacing" in meta:
        try:
            spacing["Z"] = float(meta["spacing"]) * factor
        except (TypeError, ValueError):
            pass
    return spacing


def tiff_tag_spacing(page: Any) -> dict[str, float]:
    """Pixel sizes stated by a plain TIFF's resolution tags (centimetre, millimetre, µm units).

    Parameters
    ----------
    page : tifffile.TiffPage
        The first page of the file.

    Returns
    -------
    dict
        ``"X"`` / ``"Y"`` → µm; empty when the resolution unit is not a length.
    """
    tag = page.tags.get("ResolutionUnit")
    factor = TIFF_RESUNIT_UM.get(int(tag.value)) if tag is not None else None
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


def ngff_axes(axes: Sequence[dict], scale: Sequence[float]) -> tuple[str, dict[str, float]]:
    """Axis letters and pixel sizes of an NGFF multiscale's level.

    Parameters
    ----------
    axes : sequence of dict
        The multiscale's ``axes`` (``name``, optional ``type`` and ``unit``).
    scale : sequence of float
        The level's scale, one value per axis.

    Returns
    -------
    letters : str
        One letter per axis: ``C``, ``T``, ``Z``, ``Y``, ``X`` or ``?``.
    spacing : dict
        ``"Z"`` / ``"Y"`` / ``"X"`` → µm for the spatial axes with a length unit; a
        unitless scale is taken as µm, unless it is the placeholder 1.0.

    Examples
    --------
    >>> ngff_axes(
    ...     [{"name": "c", "type": "channel"}, {"name": "y", "unit": "nanometer"}, {"name": "x"}],
    ...     [1.0, 500.0, 0.5],
    ... )
    ('CYX', {'Y': 0.5, 'X': 0.5})
    """
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
            elif str(unit).lower() in LENGTH_UNITS_UM:
                spacing[name.upper()] = value * LENGTH_UNITS_UM[str(unit).lower()]
        else:
            letters += "?"
    return letters, spacing


# --------------------------------------------------------------------------------------
# Axes
# --------------------------------------------------------------------------------------


def plain_axes(path: Path, shape: tuple[int, ...]) -> str:
    """Axis letters of an array that does not name its axes, from its number of dimensions.

    Parameters
    ----------
    path : Path
        The file, named in the error.
    shape : tuple of int
        The array's shape.

    Returns
    -------
    str
        ``YX``, ``ZYX``, ``CZYX``, ``TCZYX``; ``?`` for further leading axes.

    Raises
    ------
    InputError
        If the array has fewer than two dimensions.

    Examples
    --------
    >>> plain_axes(Path("scan.npy"), (2, 5, 64, 64))
    'CZYX'
    """
    if len(shape) < 2:
        raise InputError(
            f"{path}: has {len(shape)} dimension(s) (shape {tuple(shape)}); cellseg reads "
            "2D (YX) or 3D (ZYX) scans with an optional channel axis (CYX, CZYX). Save "
            "the scan with those axes"
        )
    return positional_letters("?" * (len(shape) - 2) + "YX")


def positional_letters(letters: str) -> str:
    """Name unnamed leading axes by their count: Z, CZ, TCZ (plain arrays).

    With more than three, they stay unnamed; the ones left after dropping
    singletons are named later the same way.

    Parameters
    ----------
    letters : str
        Axis letters, ``?`` for an unnamed axis.

    Returns
    -------
    str
        The letters with the unnamed axes named.

    Examples
    --------
    >>> positional_letters("??YX"), positional_letters("????YX")
    ('CZYX', '????YX')
    """
    n = letters.count("?")
    if n == 0 or n > 3:
        return letters
    names = iter("TCZ"[-n:])
    return "".join(next(names) if a == "?" else a for a in letters)


def to_channel_first(path: Path, data: Any, letters: str) -> tuple[Any, str]:
    """Drop singleton axes, name the rest and reorder to (C, [Z,] Y, X).

    Parameters
    ----------
    path : Path
        The file, named in errors.
    data : array
        The pixels in the file's axis order (a dask or NumPy array).
    letters : str
        One letter per axis of `data` (``T C Z Y X S`` or ``?``).

    Returns
    -------
    data : array
        Shape ``(C, *spatial)``: ``C = 1`` when there is no channel axis.
    axes : str
        The spatial axes, ``"yx"`` or ``"zyx"``.

    Raises
    ------
    InputError
        If the axes cannot be read as a YX or ZYX scan with an optional channel
        axis (too many axes, a time series, channels and samples together).

    Examples
    --------
    >>> import numpy as np
    >>> data, axes = to_channel_first(Path("scan.tif"), np.zeros((1, 3, 8, 9)), "TZYX")
    >>> data.shape, axes
    ((1, 3, 8, 9), 'zyx')
    """
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


# --------------------------------------------------------------------------------------
# The pixel size used
# --------------------------------------------------------------------------------------


def resolve_spacing(
    path: Path,
    axes: str,
    found: dict[str, float],
    pixel_size: Sequence[float] | None,
) -> tuple[tuple[float, ...], str]:
    """The pixel size of a scan: the user's, else the file's metadata, else 1 µm per axis.

    Parameters
    ----------
    path : Path
        The file, named in errors and warnings.
    axes : str
        The spatial axes, ``"yx"`` or ``"zyx"``.
    found : dict
        ``"Z"`` / ``"Y"`` / ``"X"`` → µm, as stated by the file.
    pixel_size : sequence of float or None
        The user's pixel size in µm, one value per spatial axis in `axes` order.

    Returns
    -------
    spacing : tuple of float
        µm per spatial axis, in `axes` order. An axis the metadata leaves out
        gets 1 µm (with a warning).
    source : str
        ``"override"``, ``"metadata"`` or ``"default"``.

    Raises
    ------
    InputError
        If `pixel_size` has the wrong length or a size (given or stated) is not positive.

    Examples
    --------
    >>> resolve_spacing(Path("scan.tif"), "yx", {"Y": 0.5, "X": 0.5}, None)
    ((0.5, 0.5), 'metadata')
    >>> resolve_spacing(Path("scan.tif"), "yx", {}, [2, 2])
    ((2.0, 2.0), 'override')
    """
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
