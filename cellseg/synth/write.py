"""Writing a synthetic scan and its labels as OME-TIFF files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from cellseg.atomic import atomic_path
from cellseg.layout import SCAN_SUFFIXES
from cellseg.synth.scan import synthesize_sample


def write_synthetic_scan(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    *,
    shape: tuple[int, ...],
    spacing: tuple[float, ...] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[Path, Path | None]:
    """Synthesize a scan and write it as OME-TIFF, with its labels.

    Both files carry the axes (``YX`` or ``ZYX``) and the physical pixel sizes
    in µm in their OME-XML. Each is written to a temporary name in its folder
    and moved into place when complete, so no partial file is ever visible
    under the final name.

    Parameters
    ----------
    image_path : path
        Where to write the image (conventionally ``*.ome.tif``).
    labels_path : path, optional
        Where to write the uint32 label image; not written if None.
    shape, spacing, seed
        As in `synthesize_scan`.
    **kwargs
        Further arguments of `synthesize_scan` (``params`` or fields of
        `SynthParams` such as ``diameter_um``, ``density``, ``dtype``).

    Returns
    -------
    image_path : Path
    labels_path : Path or None

    Examples
    --------
    >>> import tempfile, tifffile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     image_path, labels_path = write_synthetic_scan(
    ...         Path(folder) / "scan.ome.tif", Path(folder) / "truth.tif", shape=(64, 64)
    ...     )
    ...     tifffile.imread(labels_path).dtype
    dtype('uint32')
    """
    image_path = Path(image_path)
    labels_out = None if labels_path is None else Path(labels_path)
    sample = synthesize_sample(shape, spacing=spacing, seed=seed, **kwargs)
    image, labels = sample.image, sample.labels
    spacing_used = sample.spacing
    # The OME UUID is derived from the arguments, so equal arguments give equal files.
    key = repr((tuple(shape), spacing_used, seed, sorted(kwargs.items(), key=str)))
    if labels_out is not None:
        metadata = ome_metadata(spacing_used, scan_stem(labels_out), f"labels {key}")
        write_ome_tiff(labels_out, labels, metadata, compression="zlib")
    metadata = ome_metadata(spacing_used, scan_stem(image_path), f"image {key}")
    write_ome_tiff(image_path, image, metadata, compression=None)
    return image_path, labels_out


def scan_stem(path: Path) -> str:
    """A scan file's name without its scan suffix (``a.ome.tif`` → ``a``), the OME ``Name``."""
    name = path.name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def resolution_tags(y_um: float, x_um: float | None = None) -> dict[str, Any]:
    """TIFF resolution tags (pixels per centimetre) of pixels `y_um` × `x_um` µm (square if one).

    Examples
    --------
    >>> resolution_tags(0.25)
    {'resolution': (40000.0, 40000.0), 'resolutionunit': 'CENTIMETER'}
    """
    x_um = y_um if x_um is None else x_um
    return {"resolution": (1e4 / float(x_um), 1e4 / float(y_um)), "resolutionunit": "CENTIMETER"}


def ome_metadata(
    spacing: tuple[float, ...],
    name: str,
    key: str,
    *,
    rgb: bool = False,
    namespace: str = "cellseg.synth",
) -> dict[str, Any]:
    """OME-XML of a synthetic scan: axes, name, a UUID derived from `key`, pixel sizes in µm."""
    axes = "YX" if len(spacing) == 2 else "ZYX"
    metadata: dict[str, Any] = {
        "axes": axes + "S" if rgb else axes,
        "Name": name,
        "UUID": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{namespace}:{key}')}",
        "PhysicalSizeX": spacing[-1],
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": spacing[-2],
        "PhysicalSizeYUnit": "µm",
    }
    if len(spacing) == 3:
        metadata["PhysicalSizeZ"] = spacing[0]
        metadata["PhysicalSizeZUnit"] = "µm"
    return metadata


def write_ome_tiff(
    path: Path,
    data: np.ndarray,
    metadata: dict[str, Any],
    compression: str | None,
    *,
    resolution_um: tuple[float, float] | None = None,
) -> None:
    """Write an OME-TIFF under a temporary name and move it into place; RGB when the
    metadata's axes end in ``S``; with TIFF resolution tags when `resolution_um` (y, x)."""
    tags = {} if resolution_um is None else resolution_tags(*resolution_um)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            ome=True,
            photometric="rgb" if metadata["axes"].endswith("S") else "minisblack",
            metadata=metadata,
            compression=compression,
            **tags,
        )
