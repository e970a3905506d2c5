"""Training data from a reviewer's corrections: image crops and corrected labels.

:func:`export_training` (``cellseg export-training``) writes every region of
the edit log (overlapping regions joined) as a pair of TIFF files, in a
folder that several scans can share and that ``cellseg train`` reads::

    DEST/
      index.json               what the pairs are (below)
      images/<scan>_<k>.tif    the segmented channel of region k, the scan's dtype
      labels/<scan>_<k>.tif    its corrected labels, uint32, 0 = background

Both TIFFs are OME-TIFF with axes ``YX`` or ``ZYX`` and the physical pixel
size in µm, so :func:`cellseg.io.read_scan` reads them with their spacing.
Label ids are those of ``labels/cells_corrected`` (cells cut by the crop's
edge keep their id).

``index.json``::

    {"format": "cellseg-training", "version": 1,
     "samples": [{"image": "images/s_000.tif", "labels": "labels/s_000.tif",
                  "scan": "s", "source": "/abs/results/s/s.ome.zarr",
                  "labels_name": "cells_corrected", "labels_uid": "...",
                  "axes": "yx", "spacing_um": [0.5, 0.5], "shape": [120, 96],
                  "channel": 0, "channel_name": "DAPI",
                  "region": [[y0, y1], [x0, x1]], "edits": [1, 2],
                  "n_cells": 31, "normalization": {"low": 100.0, "high": 2100.0},
                  "exported": "2026-01-01T12:00:00.000Z"}, ...]}

``region`` is the crop's place in the scan (full-resolution pixels, stop
exclusive); ``normalization`` the scan-level intensities that cellseg maps to
0 and 1 before segmenting (:func:`cellseg.normalize.normalize`). Exporting a
scan again replaces its samples and keeps those of other scans.
"""

from __future__ import annotations

import io as _io
import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from cellseg.atomic import atomic_write_bytes, atomic_write_json
from cellseg.errors import InputError
from cellseg.io import open_image, read_image_attrs
from cellseg.review.logs import now, read_edits
from cellseg.review.paths import CORRECTED, find_image, has_labels
from cellseg.review.store import corrected_state, label_levels
from cellseg.tiling import Box, box_from_json, box_slices, grow_box, merge_boxes

FORMAT = "cellseg-training"
VERSION = 1
INDEX = "index.json"

__all__ = ["export_training", "read_training_index", "training_regions"]


def training_regions(
    edits: list[dict], shape: tuple[int, ...], pad: int = 0
) -> list[tuple[Box, list[int]]]:
    """The regions to export: edited regions grown by `pad`, overlapping ones joined.

    Returns
    -------
    list of (box, edit numbers)
        Sorted by position.

    Examples
    --------
    >>> edits = [{"edit": 1, "region": [[0, 10], [0, 10]]},
    ...          {"edit": 2, "region": [[5, 20], [5, 20]]},
    ...          {"edit": 3, "region": [[40, 50], [0, 8]]}]
    >>> training_regions(edits, (64, 64))
    [(((0, 20), (0, 20)), [1, 2]), (((40, 50), (0, 8)), [3])]
    """
    boxes = {int(e["edit"]): grow_box(box_from_json(e["region"]), pad, shape) for e in edits}
    return merge_boxes(boxes)


def export_training(path: str | Path, dest: str | Path | None = None, *, pad: int = 0) -> Path:
    """Write the corrected regions of a result as image / label TIFF pairs.

    Parameters
    ----------
    path : str or Path
        A result folder or its ``<scan>.ome.zarr``, with corrections.
    dest : str or Path, optional
        The training data folder; default ``OUTDIR/training``.
    pad : int
        Pixels of context added around each edited region (in-plane and in Z).

    Returns
    -------
    Path
        ``DEST/index.json``.

    Raises
    ------
    InputError
        If the result has no corrections.
    """
    image_path = _image_path(Path(path))
    outdir = image_path.parent
    dest = Path(dest) if dest is not None else outdir / "training"
    if not has_labels(image_path, CORRECTED):
        raise InputError(
            f"{image_path}: has no corrected labels; correct cells in the napari review "
            "widget first (see README, Review in napari)"
        )
    state = corrected_state(image_path)
    edits = read_edits(image_path, uid=state["uid"])
    if not edits:
        raise InputError(f"{image_path}: the edit log holds no edit of {CORRECTED}")
    scan = open_image(image_path)
    attrs = read_image_attrs(image_path)
    channel = int(attrs.get("channel", 0))
    stats = attrs.get("stats") or {}
    name = str(attrs.get("name") or image_path.name.split(".")[0])
    labels = label_levels(_open_corrected(image_path))[0]
    regions = training_regions(edits, tuple(labels.shape), pad)
    source = str(image_path.resolve())
    index_path = dest / INDEX
    previous = read_training_index(dest) if index_path.exists() else {"samples": []}
    others = [s for s in previous["samples"] if s.get("source") != source]
    stale = {s["image"] for s in previous["samples"] if s.get("source") == source}
    stale |= {s["labels"] for s in previous["samples"] if s.get("source") == source}
    samples = []
    exported = now()
    for k, (box, numbers) in enumerate(regions):
        stem = f"{name}_{k:03d}"
        crop = np.asarray(scan.data[(channel, *box_slices(box))])
        lab = np.asarray(labels[box_slices(box)])
        image_rel, labels_rel = f"images/{stem}.tif", f"labels/{stem}.tif"
        _write_tiff(dest / image_rel, crop, scan.axes, scan.spacing)
        _write_tiff(dest / labels_rel, lab, scan.axes, scan.spacing)
        stale -= {image_rel, labels_rel}
        samples.append(
            {
                "image": image_rel,
                "labels": labels_rel,
                "scan": name,
                "source": source,
                "labels_name": CORRECTED,
                "labels_uid": state["uid"],
                "axes": scan.axes,
                "spacing_um": [float(s) for s in scan.spacing],
                "shape": [int(n) for n in lab.shape],
                "channel": channel,
                "channel_name": scan.channel_names[channel],
                "region": [[int(a), int(b)] for a, b in box],
                "edits": [int(n) for n in numbers],
                "n_cells": int(np.count_nonzero(np.unique(lab))),
                "normalization": {k: float(stats[k]) for k in ("low", "high") if k in stats},
                "exported": exported,
            }
        )
    for rel in sorted(stale):
        (dest / rel).unlink(missing_ok=True)
    atomic_write_json(
        index_path, {"format": FORMAT, "version": VERSION, "samples": others + samples}
    )
    return index_path


def read_training_index(dest: str | Path) -> dict:
    """Read ``DEST/index.json`` of a training data folder.

    Raises
    ------
    InputError
        If it is missing or not a cellseg training index.
    """
    path = Path(dest) / INDEX
    if not path.exists():
        raise InputError(f"{dest}: no {INDEX}; write one with `cellseg export-training`")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT or int(index.get("version", 0)) > VERSION:
        raise InputError(f"{path}: is not a cellseg training index of version {VERSION} or older")
    return index


def _image_path(path: Path) -> Path:
    image = find_image(path)
    if image is None:
        raise InputError(f"{path}: is not a cellseg result folder or OME-Zarr image")
    return image


def _open_corrected(image_path: Path) -> Any:
    return zarr.open_group(str(image_path / "labels" / CORRECTED), mode="r")


def _write_tiff(path: Path, data: np.ndarray, axes: str, spacing: tuple[float, ...]) -> None:
    """Write an OME-TIFF with axes and µm pixel size, atomically."""
    metadata: dict[str, Any] = {"axes": axes.upper()}
    for ax, s in zip(axes.upper(), spacing):
        metadata[f"PhysicalSize{ax}"] = float(s)
        metadata[f"PhysicalSize{ax}Unit"] = "µm"
    buffer = _io.BytesIO()
    tifffile.imwrite(
        buffer, data, ome=True, metadata=metadata, photometric="minisblack", compression="zlib"
    )
    atomic_write_bytes(path, buffer.getvalue())
