"""Where review data lives: label image names, the review folder, the result's image.

``labels/cells`` is the original label image, never modified by corrections;
``labels/cells_corrected`` the corrected one. The edit and flag logs live in
``OUTDIR/review``, beside the OME-Zarr image; the table measured from a label
image is ``OUTDIR/<labels>.parquet`` (``cells.parquet`` for the original).
"""

from __future__ import annotations

import json
from pathlib import Path

import zarr

from cellseg.errors import InputError

#: Name of the original label image, never modified by corrections.
ORIGINAL = "cells"
#: Name of the corrected label image.
CORRECTED = "cells_corrected"
#: Folder, next to the OME-Zarr image, holding the edit log and the flags.
REVIEW_DIR = "review"
EDIT_LOG = "edits.jsonl"
FLAG_LOG = "flags.jsonl"
ATTRS_KEY = "cellseg"


def table_path(outdir: Path, labels: str = ORIGINAL) -> Path:
    """Path of the cell table measured from label image `labels`.

    ``cells`` → ``OUTDIR/cells.parquet``; any other name, e.g.
    ``cells_corrected`` → ``OUTDIR/cells_corrected.parquet``, so the table of
    the original labels is never overwritten by the corrected one.

    Examples
    --------
    >>> table_path(Path("out"), "cells_corrected").name
    'cells_corrected.parquet'
    """
    return Path(outdir) / ("cells.parquet" if labels == ORIGINAL else f"{labels}.parquet")


def review_dir(image_path: Path) -> Path:
    """Folder of the edit log and the flags of an image: ``OUTDIR/review``."""
    return Path(image_path).parent / REVIEW_DIR


def edit_log_path(image_path: Path) -> Path:
    """The append-only edit log, ``OUTDIR/review/edits.jsonl``."""
    return review_dir(image_path) / EDIT_LOG


def flag_log_path(image_path: Path) -> Path:
    """The append-only flag log, ``OUTDIR/review/flags.jsonl``."""
    return review_dir(image_path) / FLAG_LOG


def labels_dir(image_path: Path, name: str) -> Path:
    """Folder of label image `name` under the image: ``<image>/labels/<name>``.

    Examples
    --------
    >>> labels_dir(Path("s.ome.zarr"), "cells").as_posix()
    's.ome.zarr/labels/cells'
    """
    return Path(image_path) / "labels" / name


def has_labels(image_path: Path, name: str) -> bool:
    """Whether a finished label image `name` exists under the image."""
    return (labels_dir(image_path, name) / "zarr.json").exists()


def find_image(path: str | Path) -> Path | None:
    """The cellseg OME-Zarr image a path refers to, or None.

    Cheap: reads a few small metadata files, never pixels.

    Parameters
    ----------
    path : str or Path
        ``<scan>.ome.zarr`` written by cellseg, or its output folder (holding
        ``work/ingest.json`` or exactly one cellseg OME-Zarr image).
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if _is_cellseg_image(path):
        return path
    ingest = path / "work" / "ingest.json"
    if ingest.is_file():
        try:
            image = path / json.loads(ingest.read_text())["image"]
        except (ValueError, KeyError, TypeError):
            image = None
        if image is not None and _is_cellseg_image(image):
            return image
    found = [p for p in sorted(path.glob("*.zarr")) if _is_cellseg_image(p)]
    return found[0] if len(found) == 1 else None


def _is_cellseg_image(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except ValueError:
        return False
    return ATTRS_KEY in attrs and "multiscales" in attrs.get("ome", {})


def review_labels(image_path: Path) -> str:
    """The label image a reviewer sees and edits: the corrected one once it exists."""
    return CORRECTED if has_labels(image_path, CORRECTED) else ORIGINAL


def open_label_group(image_path: Path, name: str, mode: str = "r") -> zarr.Group:
    """Open the group of label image `name` under the image.

    Parameters
    ----------
    image_path : Path
        The OME-Zarr image group.
    name : str
        Label image name (``cells``, ``cells_corrected``).
    mode : str
        zarr open mode.

    Raises
    ------
    InputError
        If the image has no such label image.
    """
    path = labels_dir(image_path, name)
    if not (path / "zarr.json").exists():
        raise InputError(f"{image_path}: has no label image {name!r}; run the stitch stage first")
    return zarr.open_group(str(path), mode=mode)
