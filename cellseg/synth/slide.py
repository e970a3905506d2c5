"""Whole-slide files with scanner-style metadata, written from an RGB image in memory.

:func:`write_slide` writes a tiled, JPEG-compressed pyramidal TIFF the way
slide scanners lay them out, for the tests, the benchmarks and the demo:

``"svs"``
    Aperio SVS: baseline, a stripped thumbnail, then the reduced levels (each
    a quarter of the previous edge), every page's ImageDescription in Aperio's
    ``Aperio Image Library ... |AppMag = 40|MPP = 0.25`` form.
``"pyramidal-tiff"``
    A generic tiled pyramid: the reduced levels (halving) as SubIFDs of the
    baseline, the pixel size in the resolution tags (pixels per centimetre).
``"ome-tiff"``
    OME-TIFF: the same pyramid as SubIFDs, the pixel size as OME-XML
    ``PhysicalSizeX`` / ``PhysicalSizeY`` in µm, no resolution tags.
``"ndpi-like"``
    Hamamatsu-style: the levels as top-level pages (a quarter of the edge
    each), the objective in the NDPI ``SourceLens`` tag (65421), a ``FileFormat``
    tag (65420), the pixel size in the resolution tags.

Pixels are averaged block by block for the reduced levels. The file is
written under a temporary name and moved into place when whole.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tifffile

from cellseg.atomic import atomic_path
from cellseg.synth.write import resolution_tags

__all__ = ["FLAVOURS", "write_slide"]

#: The file layouts :func:`write_slide` writes.
FLAVOURS = ("svs", "pyramidal-tiff", "ome-tiff", "ndpi-like")

#: Edge of the thumbnail page of an SVS file (its longest side).
THUMBNAIL_EDGE = 256


def write_slide(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float,
    *,
    flavour: str = "svs",
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    objective_power: float | None = None,
) -> Path:
    """Write an RGB image as a tiled pyramidal whole-slide TIFF, atomically.

    Parameters
    ----------
    path : str or Path
        The file to write (``.svs``, ``.tif``, ``.ome.tif``, ``.ndpi``, ...);
        an existing file is replaced once the new one is whole.
    rgb : numpy.ndarray
        ``(Y, X, 3)`` uint8, the full-resolution image.
    mpp : float
        Microns per pixel of the full-resolution image (both axes).
    flavour : {"svs", "pyramidal-tiff", "ome-tiff", "ndpi-like"}
        The scanner layout and metadata (see the module notes).
    tile : int
        Tile edge in pixels, a multiple of 16.
    compression : str
        Tile compression, a tifffile name: ``"jpeg"`` (default), ``"zlib"``, ``"none"``.
    quality : int
        JPEG quality of the tiles (1-100).
    objective_power : float, optional
        The scanner objective's magnification; default ``10 / mpp`` rounded
        (0.25 µm → 40×). Written as ``AppMag`` (SVS) and ``SourceLens`` (NDPI);
        generic and OME-TIFF files state none.

    Returns
    -------
    Path
        `path`.

    Raises
    ------
    ValueError
        For an image that is not ``(Y, X, 3)`` uint8, a pixel size that is not
        positive, a tile edge that is not a multiple of 16, an unknown flavour,
        or an ndpi-like slide of 2 GB or more (NDPI's layout is a classic TIFF).

    Examples
    --------
    >>> import tempfile
    >>> rgb = np.full((300, 500, 3), 240, np.uint8)
    >>> f = write_slide(Path(tempfile.mkdtemp()) / "s.svs", rgb, 0.5, tile=64)
    >>> with tifffile.TiffFile(f) as tif:
    ...     tif.is_svs, [lvl.shape for lvl in tif.series[0].levels]
    (True, [(300, 500, 3), (75, 125, 3)])
    """
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (Y, X, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm, got {mpp}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    power = float(objective_power) if objective_power else float(round(10.0 / mpp))
    step = 4 if flavour in ("svs", "ndpi-like") else 2
    levels = _pyramid(rgb, step, tile)
    options = {
        "tile": (tile, tile),
        "compression": None if compression == "none" else compression,
        "photometric": "rgb",
        "metadata": None,
    }
    if compression == "jpeg":
        options["compressionargs"] = {"level": int(quality)}
    big = rgb.nbytes > 2**31
    if big and flavour == "ndpi-like":
        raise ValueError("ndpi-like slides are written as classic TIFF: under 2 GB of pixels")
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=big, ome=flavour == "ome-tiff") as tw:
            if flavour == "svs":
                _write_svs(tw, levels, mpp, power, tile, options)
            elif flavour == "ndpi-like":
                _write_ndpi_pages(tw, levels, mpp, power, options)
            elif flavour == "pyramidal-tiff":
                resolution = resolution_tags(mpp)
                tw.write(levels[0], subifds=len(levels) - 1, **resolution, **options)
                for k, level in enumerate(levels[1:], start=1):
                    tw.write(level, subfiletype=1, **resolution_tags(mpp * step**k), **options)
            else:
                ome = {
                    "axes": "YXS",
                    "PhysicalSizeX": float(mpp),
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": float(mpp),
                    "PhysicalSizeYUnit": "µm",
                    "Name": path.name.split(".")[0],
                }
                first = dict(options, metadata=ome)
                tw.write(levels[0], subifds=len(levels) - 1, **first)
                for level in levels[1:]:
                    tw.write(level, subfiletype=1, **options)
        if flavour == "ndpi-like":
            _to_ndpi_offsets(tmp)
    return path


def _pyramid(rgb: np.ndarray, step: int, tile: int) -> list[np.ndarray]:
    """Level 0 and its reductions by `step`, while the next one still spans a tile."""
    levels = [rgb]
    while min(levels[-1].shape[:2]) // step >= tile // 2 and max(levels[-1].shape[:2]) > tile:
        levels.append(_reduce(levels[-1], step))
    return levels


def _reduce(rgb: np.ndarray, step: int) -> np.ndarray:
    """Mean of `step` × `step` blocks (a partial last block averages what it has)."""
    h, w = rgb.shape[:2]
    out_h, out_w = -(-h // step), -(-w // step)
    padded = np.pad(rgb, ((0, out_h * step - h), (0, out_w * step - w), (0, 0)), mode="edge")
    blocks = padded.reshape(out_h, step, out_w, step, 3).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _write_svs(
    tw: tifffile.TiffWriter,
    levels: list[np.ndarray],
    mpp: float,
    power: float,
    tile: int,
    options: dict,
) -> None:
    """Aperio layout: baseline, thumbnail (stripped), reduced levels."""
    h, w = levels[0].shape[:2]
    head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile})"
    tail = f"JPEG/RGB Q=90|AppMag = {power:g}|MPP = {mpp:g}|ScanScope ID = SS0000"
    tw.write(levels[0], description=f"{head} {tail}", **options)
    scale = THUMBNAIL_EDGE / max(h, w)
    thumb = levels[0][:: max(1, round(1 / scale)), :: max(1, round(1 / scale))]
    thumb_options = {k: v for k, v in options.items() if k != "tile"}
    th, tw_ = thumb.shape[:2]
    tw.write(thumb, description=f"{head} -> {tw_}x{th} {tail}", **thumb_options)
    for level in levels[1:]:
        lh, lw = level.shape[:2]
        tw.write(level, description=f"{head} -> {lw}x{lh} {tail}", **options)


def _write_ndpi_pages(
    tw: tifffile.TiffWriter, levels: list[np.ndarray], mpp: float, power: float, options: dict
) -> None:
    """Hamamatsu-like pages: every level a top-level page with the NDPI tags."""
    for k, level in enumerate(levels):
        extratags = [
            (65420, "I", 1, 1, True),  # FileFormat
            (65421, "f", 1, float(power), True),  # SourceLens (objective magnification)
            (271, "s", 0, "Hamamatsu", True),  # Make
        ]
        tw.write(
            level,
            extratags=extratags,
            software="NDP.scan",
            **resolution_tags(mpp * 4**k),
            **options,
            **({"subfiletype": 0} if k == 0 else {}),
        )


def _to_ndpi_offsets(path: Path) -> None:
    """Turn a classic little-endian TIFF into NDPI's layout (64-bit IFD offsets), in place.

    NDPI files are classic TIFFs whose first-IFD and next-IFD offsets are 8
    bytes, and whose IFDs are followed by the high 32 bits of each entry's
    value field (zero in a file under 4 GB). The IFDs are copied to the end of
    the file in that form and the header points at the first copy; the pixel
    data and the tag values stay where they are.
    """
    with open(path, "r+b") as f:
        head = f.read(8)
        if head[:4] != b"II*\x00":
            raise ValueError(f"{path}: not a classic little-endian TIFF")
        offset = int.from_bytes(head[4:8], "little")
        if offset != 8:
            raise ValueError(f"{path}: the first IFD does not follow the header")
        ifds = []
        while offset:
            f.seek(offset)
            n = int.from_bytes(f.read(2), "little")
            entries = f.read(12 * n)
            ifds.append((n, entries))
            offset = int.from_bytes(f.read(4), "little")
        end = f.seek(0, 2)
        end += end % 2
        starts = []
        for n, _ in ifds:
            starts.append(end)
            end += 2 + 12 * n + 8 + 4 * n
        f.seek(starts[0])
        for k, (n, entries) in enumerate(ifds):
            following = starts[k + 1] if k + 1 < len(ifds) else 0
            f.write(n.to_bytes(2, "little") + entries + following.to_bytes(8, "little"))
            f.write(bytes(4 * n))
        f.seek(4)
        f.write(starts[0].to_bytes(8, "little"))
