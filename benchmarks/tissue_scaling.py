"""Segment time follows tissue area, not slide area: the same tissue on more glass.

The same synthetic H&E tissue (``cellseg.synth.brightfield``; a block of
``--tissue`` × ``--tissue`` pixels at 0.5 µm, tissue throughout) is placed in
the middle of two slides, each written as an Aperio-style SVS (tiled, JPEG,
pyramidal, with its MPP):

* ``1x``: as much glass as tissue around it (the slide is twice the tissue);
* ``4x``: four times that glass (the slide is five times the tissue).

``cellseg segment`` runs on each (a fresh output folder, one process per run)
and this prints the wall time of each run and of each stage
(``work/times/``), the tiles segmented and skipped as glass, and the ratio
4x / 1x. Goal: a ratio below 1.2 (the glass costs next to nothing).

    nice -n 10 python benchmarks/tissue_scaling.py                       # default backend
    nice -n 10 python benchmarks/tissue_scaling.py --backend classical   # no model
    nice -n 10 python benchmarks/tissue_scaling.py --tissue 2048 --repeat 2

Slides are kept in ``--workdir`` (default ``/tmp/cellseg-tissue-scaling``) and
reused; outputs are rewritten each run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MPP = 0.5
TILE = 256
#: Slide area over tissue area of each slide: glass 1× and 4× the tissue.
SLIDES = {"1x": 2.0, "4x": 5.0}


def tissue_block(edge: int, seed: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Synthetic H&E tissue filling an ``edge`` × ``edge`` block, and the glass colour."""
    try:
        from cellseg.synth.brightfield import synthesize_brightfield
    except ImportError:  # an older checkout: pink tissue with purple nuclei
        return simple_tissue(edge, seed), (242, 240, 244)
    sample = synthesize_brightfield(
        (edge, edge), spacing=(MPP, MPP), seed=seed, tissue_fraction=1.0, jpeg_quality=None
    )
    glass = tuple(int(round(c)) for c in sample.params.background)
    return sample.image, glass  # type: ignore[return-value]


def simple_tissue(edge: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = np.empty((edge, edge, 3), np.float32)
    rgb[:] = (226, 158, 198)
    yy, xx = np.mgrid[-5:6, -5:6]
    disk = yy**2 + xx**2 <= 16
    for y, x in rng.integers(6, edge - 6, (edge * edge // 300, 2)):
        rgb[y - 5 : y + 6, x - 5 : x + 6][disk] = (95, 60, 150)
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def slide_shape(edge: int, area_factor: float) -> tuple[int, int]:
    """A slide of about `area_factor` times the tissue's area, in whole tiles, 4:5 landscape."""
    area = area_factor * edge * edge
    rows = math.sqrt(area * 4 / 5)
    rows = max(edge, int(round(rows / TILE)) * TILE)
    cols = max(edge, int(round(area / rows / TILE)) * TILE)
    return rows, cols


def write_slides(workdir: Path, edge: int, seed: int) -> dict[str, tuple[Path, float]]:
    """The two slides (written once), and each one's glass area in tissue areas."""
    from cellseg.synth.slide import write_slide

    workdir.mkdir(parents=True, exist_ok=True)
    paths = {k: workdir / f"tissue{edge}-{k}.svs" for k in SLIDES}
    glass_share = {}
    tissue = glass = None
    for key, factor in SLIDES.items():
        rows, cols = slide_shape(edge, factor)
        glass_share[key] = (rows * cols - edge * edge) / (edge * edge)
        if paths[key].exists():
            continue
        if tissue is None:
            print(f"synthesizing {edge}x{edge} px of H&E tissue ...", flush=True)
            tissue, glass = tissue_block(edge, seed)
        rng = np.random.default_rng(seed + 1)
        canvas = np.empty((rows, cols, 3), np.uint8)
        noise = rng.normal(0, 2, (rows, cols, 1))
        canvas[:] = np.clip(np.asarray(glass, np.float32) + noise, 0, 255).astype(np.uint8)
        y0, x0 = (rows - edge) // 2, (cols - edge) // 2
        canvas[y0 : y0 + edge, x0 : x0 + edge] = tissue
        write_slide(paths[key], canvas, MPP, flavour="svs", tile=TILE)
        print(f"wrote {paths[key]} ({rows}x{cols})", flush=True)
    return {k: (paths[k], glass_share[k]) for k in SLIDES}


def run_segment(slide: Path, outdir: Path, args: argparse.Namespace) -> float:
    """``cellseg segment`` in a child process on a fresh folder; its wall time."""
    shutil.rmtree(outdir, ignore_errors=True)
    exe = Path(sys.executable).parent / "cellseg"
    cmd = [str(exe) if exe.exists() else "cellseg", "segment", str(slide), "-o", str(outdir)]
    cmd += ["--tile-size", str(args.tile_size), "--modality", "brightfield"]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log = outdir.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return seconds


def stage_times(outdir: Path) -> dict[str, float]:
    total: dict[str, float] = {}
    for path in sorted((outdir / "work" / "times").glob("*.json")):
        entry = json.loads(path.read_text())
        stage = str(entry["stage"]).split("-")[0]
        total[stage] = total.get(stage, 0.0) + float(entry["seconds"])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tissue", type=int, default=1024, help="tissue edge in pixels")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--backend", default=None, help="default: the pipeline's")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="runs per slide (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cellseg-tissue-scaling"))
    args = parser.parse_args()

    slides = write_slides(args.workdir, args.tissue, args.seed)
    results = {}
    for key, (slide, glass) in slides.items():
        outdir = args.workdir / f"out-{slide.stem}"
        best = min(run_segment(slide, outdir, args) for _ in range(args.repeat))
        plan = json.loads((outdir / "work" / "tiles.json").read_text())
        ingest = json.loads((outdir / "work" / "ingest.json").read_text())
        results[key] = {
            "seconds": best,
            "stages": stage_times(outdir),
            "shape": ingest["shape"],
            "glass": glass,
            "tissue_fraction": ingest.get("tissue", {}).get("fraction"),
            "tiles": len(plan["tiles"]),
            "skipped": len(plan.get("skipped_tiles", [])),
        }

    stages = sorted({s for r in results.values() for s in r["stages"]})
    print()
    print(f"tissue {args.tissue}x{args.tissue} px at {MPP} µm, tiles {args.tile_size} px")
    header = f"{'slide':>5} {'shape':>11} {'glass':>6} {'tissue%':>7} {'tiles':>11} {'total s':>8}"
    print(header + "".join(f" {s:>13}" for s in stages))
    for key, r in results.items():
        shape = "x".join(map(str, r["shape"]))
        fraction = r["tissue_fraction"]
        tissue = f"{100 * fraction:.1f}" if fraction is not None else "-"
        tiles = f"{r['tiles'] - r['skipped']}/{r['tiles']}"
        glass = f"{r['glass']:.1f}x"
        row = f"{key:>5} {shape:>11} {glass:>6} {tissue:>7} {tiles:>11} {r['seconds']:>8.1f}"
        print(row + "".join(f" {r['stages'].get(s, 0.0):>13.2f}" for s in stages))
    one, four = results["1x"], results["4x"]
    ratio = four["seconds"] / one["seconds"]
    print(
        f"ratio 4x/1x: total {ratio:.2f} (goal < 1.2); "
        + ", ".join(
            f"{s} {four['stages'].get(s, 0.0) / max(one['stages'].get(s, 0.0), 1e-9):.2f}"
            for s in stages
        )
    )


if __name__ == "__main__":
    main()
