"""Fine-tuning from a few annotations: what a user gains in a few minutes on the CPU.

Half of an annotated image trains, the other half scores (split spatially:
train on x < W/2, score on x >= W/2; nuclei that cross the line are left out
of the score). The shipped model is fine-tuned with ``cellseg train`` for
``--minutes`` (``training.max_minutes``, validated on the training half) and
both models are scored on the other half, AP at IoU 0.5 and 0.75.

Cases:

* ``synthetic``: a 2D image in a generator style never used in training (the
  ``heldout`` setting: larger nuclei, chromocentre spots, an electron-
  multiplying camera at low light).
* ``cells3d``: the real dev stack with its silver labels (planes 17-59), when
  ``../shared/data/real-dev`` is there. That model is thrown away: it is the only
  one ever trained on dev data, it is never kept, and no setting is chosen by it.

    python benchmarks/finetune.py [--minutes 5] [--cases synthetic cells3d]

Everything is written to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from model_accuracy import measured_backend, segment_one_tile  # beside this script
from scipy import ndimage as ndi

from cellseg.metrics import match_instances
from cellseg.normalize import compute_scan_stats
from cellseg.segmentation.training import train
from cellseg.synth import sample_params, synthesize_sample

REAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-dev"


def synthetic_case() -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A 512 x 512 image of the held-out generator style, and its labels."""
    rng = np.random.default_rng(90_210)
    params = sample_params(rng, 2, "heldout")
    sample = synthesize_sample((512, 512), seed=rng, params=params)
    return sample.image, sample.labels.astype(np.int32), sample.spacing


def cells3d_case() -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The real dev stack's labelled planes and its silver labels."""
    image = tifffile.imread(REAL_DEV / "cells3d_nuclei.tif")[17:]
    labels = tifffile.imread(REAL_DEV / "cells3d_nuclei_silver_labels.tif")[17:].astype(np.int32)
    return image, labels, (0.29, 0.26, 0.26)


def crossing_ids(labels: np.ndarray, cut: int) -> np.ndarray:
    """Ids of the objects on both sides of x = cut."""
    left = np.unique(labels[..., :cut])
    right = np.unique(labels[..., cut:])
    both = np.intersect1d(left, right)
    return both[both > 0]


def score_right_half(truth, pred, cut: int) -> dict:
    """AP of the right half, objects crossing the line left out of both sides."""
    truth = np.where(np.isin(truth, crossing_ids(truth, cut)), 0, truth)[..., cut:]
    pred = np.where(np.isin(pred, crossing_ids(pred, cut)), 0, pred)[..., cut:]
    return {t: match_instances(truth, pred, t)["ap"] for t in (0.5, 0.75)}


def run_case(name: str, minutes: float, work: Path) -> None:
    """Fine-tune on the left half of one case and print the right half's scores."""
    image, labels, spacing = synthetic_case() if name == "synthetic" else cells3d_case()
    cut = image.shape[-1] // 2
    init = "nuclei2d" if image.ndim == 2 else "nuclei3d"
    # the model sees nuclei rescaled to its typical size: it learns them so too
    be, _ = measured_backend("model", init, image, spacing, compute_scan_stats(image))
    zoom = be.scale(spacing)
    left_image = ndi.zoom(image[..., :cut].astype(np.float32), zoom, order=1)
    left_labels = ndi.zoom(labels[..., :cut], zoom, order=0)
    spacing_seen = be.model_spacing(spacing)
    folder = work / name / "train"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    axes = "YX" if image.ndim == 2 else "ZYX"
    meta = {"axes": axes, "PhysicalSizeX": spacing_seen[-1], "PhysicalSizeY": spacing_seen[-2]}
    if image.ndim == 3:
        meta["PhysicalSizeZ"] = spacing_seen[0]
    tifffile.imwrite(folder / "images" / "left.tif", left_image, ome=True, metadata=meta)
    tifffile.imwrite(folder / "labels" / "left.tif", left_labels, ome=True, metadata=meta)
    out = work / name / "model"
    config = {
        "spatial_dims": image.ndim,
        "out": str(out),
        "init": init,
        "data": {"synthetic": None, "folders": [str(folder)]},
        "validation": {"synthetic": None, "folders": [str(folder)]},
        "training": {
            "epochs": 1000,
            "steps_per_epoch": 20,
            "batch_size": 8,
            "learning_rate": 0.0005,
            "max_minutes": minutes,
        },
    }
    before = score_right_half(labels, segment_one_tile("model", init, image, spacing, True)[0], cut)
    t0 = time.perf_counter()
    summary = train(config, show_progress=False)
    seconds = time.perf_counter() - t0
    tuned = segment_one_tile("model", str(out), image, spacing, True)[0]
    after = score_right_half(labels, tuned, cut)
    epochs = len([h for h in summary["history"] if h["loss"] is not None])
    print(
        f"{name:>10} {before[0.5]:>10.3f} {before[0.75]:>10.3f} {after[0.5]:>9.3f} "
        f"{after[0.75]:>9.3f} {seconds:>8.0f} s {epochs:>4} epochs",
        flush=True,
    )


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="fine-tuning budget per case")
    ap.add_argument("--cases", nargs="+", default=["synthetic", "cells3d"])
    args = ap.parse_args()
    cases = [c for c in args.cases if c != "cells3d" or REAL_DEV.is_dir()]
    if len(cases) < len(args.cases):
        print(f"no real dev images at {REAL_DEV}; skipping cells3d")
    print(f"{'case':>10} {'AP50 ship':>10} {'AP75 ship':>10} {'AP50 tune':>9} {'AP75 tune':>9}")
    work = Path(tempfile.mkdtemp(prefix="cellseg-finetune-"))
    try:
        for name in cases:
            run_case(name, args.minutes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
