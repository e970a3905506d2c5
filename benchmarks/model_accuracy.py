"""Accuracy of the shipped models (and the classical backend): synthetic and real.

Synthetic: draws images from generator settings (``heldout``: ranges not used
in training; ``classic``: the demo scans' look; ``wide``: nuclei of 6-100 px)
with seeds not used in training, segments each as one tile, and prints AP at
IoU 0.5 and 0.75 (tp / (tp + fp + fn)) per backend and setting, each with the
nucleus diameter measured (``--diameter auto``) and without rescaling.

Real (the dev images in ``../shared/data/real-dev``, when present; never used
for training): the confocal stack against its silver labels (planes 17-59,
objects of at least 100 voxels, AP at IoU 0.5 only: the labels are automatic),
and the diameter estimate against the silver labels' median equivalent
diameter.

    python benchmarks/model_accuracy.py [--n 8] [--dims 2 3] [--backends model classical]
        [--model2d FOLDER] [--model3d FOLDER] [--no-real] [--no-synthetic] [--flips]

``--flips`` runs the model with test-time flips (``cellseg segment --flips``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cellseg.metrics import match_instances
from cellseg.normalize import compute_scan_stats, normalize
from cellseg.segmentation import get_backend
from cellseg.segmentation.training import synthetic_images

REAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-dev"


def measured_backend(name, model, img, spacing, stats, auto: bool = True, flips: bool = False):
    """The backend for one image, with its diameter measured first when ``auto``."""
    extra = {"flips": True} if flips and name == "model" else {}
    be = get_backend(name, model, ndim=img.ndim, **extra)
    diameter = be.estimate_diameter_um(img, spacing, stats) if auto else None
    if diameter:
        be = get_backend(name, model, ndim=img.ndim, diameter_um=diameter, **extra)
    return be, diameter


def segment_one_tile(name, model, img, spacing, auto: bool, flips: bool = False):
    """Labels of one image as one tile, and the diameter measured (or None)."""
    stats = compute_scan_stats(img)
    be, diameter = measured_backend(name, model, img, spacing, stats, auto, flips)
    return be.predict([normalize(img, stats)], spacing, stats)[0], diameter


def synthetic(args) -> None:
    """The synthetic table."""
    print(f"{'dims':>4} {'setting':>8} {'backend':>9} {'diameter':>8} {'AP50':>6} {'AP75':>6}")
    for nd in args.dims:
        shape = (256, 256) if nd == 2 else (24, 128, 128)
        for setting in ("heldout", "classic", "wide"):
            data = synthetic_images(args.n, shape, setting, seed=50_000 + nd)
            for name in args.backends:
                model = {2: args.model2d, 3: args.model3d}[nd] if name == "model" else None
                for auto in (False, True) if name == "model" else (False,):
                    a50, a75 = [], []
                    for img, truth, spacing in data:
                        lab, _ = segment_one_tile(name, model, img, spacing, auto, args.flips)
                        a50.append(match_instances(truth, lab, 0.5)["ap"])
                        a75.append(match_instances(truth, lab, 0.75)["ap"])
                    print(
                        f"{nd:>4} {setting:>8} {name:>9} {'auto' if auto else '-':>8} "
                        f"{np.mean(a50):>6.3f} {np.mean(a75):>6.3f}",
                        flush=True,
                    )


def real(args) -> None:
    """The dev-set figures."""
    import tifffile

    stack = REAL_DEV / "cells3d_nuclei.tif"
    silver = REAL_DEV / "cells3d_nuclei_silver_labels.tif"
    if not stack.exists():
        print(f"no real dev images at {REAL_DEV}; skipping the real figures")
        return
    img = tifffile.imread(stack)
    truth = tifffile.imread(silver)[17:]
    spacing = (0.29, 0.26, 0.26)
    # the median equivalent diameter of the silver objects of at least 100 voxels
    sizes = np.bincount(truth.ravel())[1:]
    volumes = sizes[sizes >= 100] * float(np.prod(spacing))
    true_d = float(np.median(np.cbrt(6.0 * volumes / np.pi)))
    print(f"\nreal dev stack (cells3d, silver labels, planes 17-59): diameter {true_d:.2f} µm")
    print(f"{'backend':>9} {'diameter':>8} {'estimate':>9} {'error':>6} {'AP50':>6} {'cells':>6}")
    for name in args.backends:
        model = args.model3d if name == "model" else None
        for auto in (False, True) if name == "model" else (False,):
            lab, d = segment_one_tile(name, model, img, spacing, auto, args.flips)
            lab = lab[17:]
            r = match_instances(truth, lab, 0.5)
            est = f"{d:9.2f} {d / true_d - 1:+6.0%}" if d else f"{'-':>9} {'-':>6}"
            print(
                f"{name:>9} {'auto' if auto else '-':>8} {est} {r['ap']:>6.3f} "
                f"{len(np.unique(lab)) - 1:>6}",
                flush=True,
            )


def main() -> None:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="images per setting")
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--backends", nargs="+", default=["model", "classical"])
    ap.add_argument("--model2d", default=None, help="model folder (default: shipped)")
    ap.add_argument("--model3d", default=None, help="model folder (default: shipped)")
    ap.add_argument("--no-real", action="store_true", help="skip the real dev images")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the synthetic table")
    ap.add_argument("--flips", action="store_true", help="the model with test-time flips")
    args = ap.parse_args()
    if not args.no_synthetic:
        synthetic(args)
    if not args.no_real:
        real(args)


if __name__ == "__main__":
    main()
