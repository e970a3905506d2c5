"""Accuracy of the brightfield (H&E, IHC) nuclei model: synthetic, a whole slide, real.

Synthetic: H&E and IHC images from the brightfield generator (``heldout``:
ranges never used in training; ``train``: the training ranges, with seeds not
used in training), each segmented as one tile at its own pixel size; AP at IoU
0.5 and 0.75 (tp / (tp + fp + fn)) for the shipped brightfield model, the
fluorescence model on the same haematoxylin image (with its diameter measured,
``--diameter auto``) and the classical backend.

Whole slide: a synthetic H&E slide written as a JPEG-compressed SVS pyramid
with glass around the tissue, through ``cellseg segment``: the pixel size read
from the file, AP against its truth, and the nuclei reported on glass (goal 0).

Real (the dev images in ``../shared/data/real-dev``, when present; never used
for training; no annotations, so no AP): ``cellseg segment`` with 256-px tiles
and as one tile, the number of nuclei and the match between the two (F1 at IoU
0.5, goal ≥ 0.99).

    python benchmarks/brightfield_accuracy.py [--n 8] [--model FOLDER] [--no-real]
        [--no-synthetic] [--no-slide]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from cellseg.io import open_labels
from cellseg.metrics import match_instances
from cellseg.normalize import compute_scan_stats
from cellseg.segmentation import get_backend
from cellseg.segmentation.training import synthetic_images
from cellseg.stages import segment
from cellseg.synth import write_brightfield_scan

REAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-dev"
#: Real dev images: file, pixel size in µm (None: not known, measured).
REAL = {
    "he_tumour_40x": 0.25,
    "he_skin_10x": 1.0,
    "ihc_colon": None,
}


def _backend(name: str, model: str | None, img: np.ndarray, spacing) -> object:
    """The backend for one image; the fluorescence model measures the diameter first."""
    if name == "fluorescence model":
        be = get_backend("model", "nuclei2d", ndim=2)
        d = be.estimate_diameter_um(img, spacing, compute_scan_stats(img))
        return get_backend("model", "nuclei2d", ndim=2, diameter_um=d) if d else be
    if name == "classical":
        return get_backend("classical", None, ndim=2)
    return get_backend("model", model or "brightfield2d", ndim=2)


def synthetic(args) -> None:
    """The synthetic table."""
    print(f"{'stain':>5} {'setting':>8} {'backend':>19} {'AP50':>6} {'AP75':>6}")
    for stain in ("he", "hdab"):
        for setting in ("heldout", "train"):
            data = synthetic_images(
                args.n, (256, 256), setting, 60_000, modality="brightfield", stain=stain
            )
            for name in ("brightfield model", "fluorescence model", "classical"):
                a50, a75 = [], []
                for img, truth, spacing in data:
                    be = _backend(name, args.model, img, spacing)
                    lab = be.predict([img], spacing, compute_scan_stats(img))[0]
                    a50.append(match_instances(truth, lab, 0.5)["ap"])
                    a75.append(match_instances(truth, lab, 0.75)["ap"])
                print(
                    f"{stain:>5} {setting:>8} {name:>19} {np.mean(a50):>6.3f} {np.mean(a75):>6.3f}",
                    flush=True,
                )


def _labels(outdir: Path) -> np.ndarray:
    image = next(outdir.glob("*.ome.zarr"))
    return np.asarray(open_labels(image)[...])


def slide(args, folder: Path) -> None:
    """A synthetic whole slide through ``cellseg segment``."""
    path, truth_path = write_brightfield_scan(
        folder / "slide.svs",
        folder / "slide_labels.tif",
        shape=(2048, 2048),
        spacing=(0.5, 0.5),
        seed=7,
        slide="svs",
    )
    out = folder / "slide"
    t0 = time.perf_counter()
    segment(path, out, model=args.model, show_progress=False)
    seconds = time.perf_counter() - t0
    info = json.loads((out / "work" / "ingest.json").read_text())
    truth, lab = tifffile.imread(truth_path), _labels(out)
    r50, r75 = match_instances(truth, lab, 0.5), match_instances(truth, lab, 0.75)
    glass = info["tissue"] and _on_glass(out, lab)
    print(
        f"\nsynthetic SVS slide 2048² (tissue {100 * info['tissue']['fraction']:.0f} %): "
        f"pixel size {info['spacing']} µm from the file ({info['spacing_source']}), "
        f"{lab.max()} nuclei, AP50 {r50['ap']:.3f} AP75 {r75['ap']:.3f}, "
        f"{glass} on glass, {seconds:.1f} s"
    )


def _on_glass(outdir: Path, lab: np.ndarray) -> int:
    """Nuclei whose centre lies outside the tissue mask."""
    from cellseg.tissue import load_tissue

    image = next(outdir.glob("*.ome.zarr"))
    tissue = load_tissue(image)
    if tissue is None:
        return 0
    region = tissue.region(((0, lab.shape[0]), (0, lab.shape[1])))
    ids = np.arange(lab.max() + 1)
    counts = np.bincount(lab.ravel(), minlength=len(ids))
    yy, xx = np.indices(lab.shape)
    cy = np.bincount(lab.ravel(), weights=yy.ravel(), minlength=len(ids))
    cx = np.bincount(lab.ravel(), weights=xx.ravel(), minlength=len(ids))
    ok = counts[1:] > 0
    cy = (cy[1:][ok] / counts[1:][ok]).astype(int)
    cx = (cx[1:][ok] / counts[1:][ok]).astype(int)
    return int((~region[cy, cx]).sum())


def real(args, folder: Path) -> None:
    """Tiles against one tile on the real dev images."""
    if not REAL_DEV.exists():
        print(f"no real dev images at {REAL_DEV}; skipping the real figures")
        return
    print(f"\n{'real dev image':>15} {'pixel':>6} {'nuclei':>7} {'tiled':>7} {'F1 tiled/one':>12}")
    for name, px in REAL.items():
        path = REAL_DEV / f"{name}.tif"
        runs = {}
        for tile in (256, 4096):
            out = folder / f"{name}_{tile}"
            pixel = [px, px] if px else None
            segment(
                path, out, tile_size=tile, pixel_size=pixel, model=args.model, show_progress=False
            )
            runs[tile] = _labels(out)
        f1 = match_instances(runs[4096], runs[256], 0.5)["f1"]
        print(
            f"{name:>15} {px or 'auto':>6} {runs[4096].max():>7} {runs[256].max():>7} {f1:>12.3f}",
            flush=True,
        )


def main() -> None:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="images per stain and setting")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--no-slide", action="store_true")
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_synthetic:
            synthetic(args)
        if not args.no_slide:
            slide(args, Path(tmp))
        if not args.no_real:
            real(args, Path(tmp))


if __name__ == "__main__":
    main()
