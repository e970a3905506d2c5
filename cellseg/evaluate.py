"""``cellseg evaluate``: compare a predicted label image with ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellseg.errors import InputError
from cellseg.io import open_labels, read_scan
from cellseg.metrics import DEFAULT_THRESHOLDS, error_counts, matching_table


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a label image: a file, an OME-Zarr scan (its ``labels/cells``) or a result folder."""
    path = Path(path)
    if path.is_dir() and not (path / "labels").exists():
        images = sorted(path.glob("*.ome.zarr"))
        if len(images) == 1:
            path = images[0]
    if path.is_dir() and (path / "labels" / "cells").exists():
        return np.asarray(open_labels(path, "cells")[...])
    scan = read_scan(path)
    if scan.data.shape[0] != 1:
        raise InputError(
            f"{path}: a label image has one channel, this one has {scan.data.shape[0]}"
        )
    data = np.asarray(scan.data[0].compute())
    if not np.issubdtype(data.dtype, np.integer):
        raise InputError(f"{path}: a label image holds integers, this one holds {data.dtype}")
    return data


def evaluate_arrays(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict:
    """All metrics of a prediction: per-threshold matching, mean AP and error counts."""
    rows = matching_table(gt, pred, thresholds)
    return {
        "thresholds": rows,
        "mean_ap": float(np.mean([r["ap"] for r in rows])) if rows else 0.0,
        "errors": error_counts(gt, pred),
    }


def evaluate_paths(
    gt: str | Path, pred: str | Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict:
    """Match the labels in ``pred`` against those in ``gt``; see :func:`evaluate_arrays`."""
    g = read_label_image(gt)
    p = read_label_image(pred)
    if g.shape != p.shape:
        raise InputError(f"{gt} has shape {g.shape} but {pred} has shape {p.shape}")
    return evaluate_arrays(g, p, thresholds)


def format_table(result: dict) -> str:
    """A readable table of :func:`evaluate_arrays` results."""
    cols = ["threshold", "tp", "fp", "fn", "precision", "recall", "f1", "ap", "mean_matched_iou"]
    lines = ["  ".join(f"{c:>9}" for c in cols[:-1]) + "  mean_matched_iou"]
    for r in result["thresholds"]:
        lines.append(
            "  ".join(f"{r[c]:>9.3f}" if isinstance(r[c], float) else f"{r[c]:>9}" for c in cols)
        )
    e = result["errors"]
    lines.append(
        f"mean AP {result['mean_ap']:.3f}  panoptic quality {e['panoptic_quality']:.3f}  "
        f"missed {e['missed']}  merged {e['merged']}  split {e['split']}  "
        f"spurious {e['spurious']}"
    )
    return "\n".join(lines)
