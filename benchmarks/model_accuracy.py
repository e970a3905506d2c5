"""Accuracy of the shipped models (and the classical backend) on synthetic data.

Draws images from generator settings (``heldout``: ranges not used in
training; ``classic``: the demo scans' look) with seeds not used in training,
segments each as one tile, and prints AP at IoU 0.5 and 0.75 (tp / (tp + fp + fn))
per backend and setting.

    python benchmarks/model_accuracy.py [--n 8] [--dims 2 3] [--backends model classical]
        [--model2d FOLDER] [--model3d FOLDER]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    """Print the table."""
    from cellseg.backends import get_backend
    from cellseg.metrics import match_instances
    from cellseg.normalize import compute_scan_stats, normalize
    from cellseg.train import synthetic_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="images per setting")
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--backends", nargs="+", default=["model", "classical"])
    ap.add_argument("--model2d", default=None, help="model folder (default: shipped)")
    ap.add_argument("--model3d", default=None, help="model folder (default: shipped)")
    args = ap.parse_args()
    print(f"{'dims':>4} {'setting':>8} {'backend':>9} {'AP50':>6} {'AP75':>6} {'cells':>6}")
    for nd in args.dims:
        shape = (256, 256) if nd == 2 else (24, 128, 128)
        for setting in ("heldout", "classic"):
            data = synthetic_images(args.n, shape, setting, seed=50_000 + nd)
            for name in args.backends:
                model = {2: args.model2d, 3: args.model3d}[nd] if name == "model" else None
                be = get_backend(name, model, ndim=nd)
                a50, a75, n = [], [], 0
                for img, truth, spacing in data:
                    # synthetic_images returns normalised images; the classical
                    # backend thresholds with the statistics of the same image
                    stats = compute_scan_stats(img)
                    lab = be.predict([normalize(img, stats)], spacing, stats)[0]
                    a50.append(match_instances(truth, lab, 0.5)["ap"])
                    a75.append(match_instances(truth, lab, 0.75)["ap"])
                    n += int(truth.max())
                print(
                    f"{nd:>4} {setting:>8} {name:>9} {np.mean(a50):>6.3f} "
                    f"{np.mean(a75):>6.3f} {n:>6}"
                )


if __name__ == "__main__":
    main()
