"""Throughput of every stage of `cellseg segment`, against the bare forward pass of its model.

Default mode: synthesizes a 2D and a 3D scan, runs the whole ``cellseg segment``
(ingest to report, the shipped default model, as a subprocess) and prints per
stage the seconds, pixels per second and cells per second (from
``work/times/``); then the bare forward pass of the same model over the same
tiles (the plan's halo crops) with the same threads and batch size, in the
same run; in 2D also MONAI's ``sliding_window_inference`` with the same model
and tile size. The last line is exactly ``segment/forward ratio 2D: X 3D: Y``
(whole ``cellseg segment`` wall time / bare forward-pass time).

``--measure``: the measure stage alone: ms per cell of
:func:`cellseg.measure.measure_cells` on ``--threads`` threads and on as
many processes (labels and image in Zarr, as the stage reads them; the
processes' start-up counts, except the server's imports after the first run)
and of scikit-image's ``regionprops_table`` on comparable columns (the
property list is printed), on the same synthetic labels, best of ``--repeat``
runs (timings on a shared machine are noisy).

    nice python benchmarks/pipeline_throughput.py --quick            # < 5 min on 2 cores
    nice python benchmarks/pipeline_throughput.py --measure --quick
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _best(func, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    return best


def regionprops_properties(ndim: int) -> list[str]:
    """The regionprops_table properties compared with the cell table's columns."""
    props = ["label", "area", "centroid", "bbox", "equivalent_diameter_area"]
    props += ["axis_major_length", "axis_minor_length", "solidity", "extent", "euler_number"]
    props += ["intensity_mean", "intensity_min", "intensity_max", "intensity_std"]
    if ndim == 2:  # scikit-image has these in 2D only (its 3D Feret fails on flat cells)
        props += ["perimeter", "eccentricity", "orientation", "feret_diameter_max"]
    return props


def _on_disk(array: np.ndarray, chunks, folder: str, name: str):
    """`array` as a zarr array in `folder` (the measure stage reads its labels so)."""
    import zarr

    z = zarr.open_array(
        f"{folder}/{name}.zarr", mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype
    )
    z[:] = array
    return z


def measure_benchmark(quick: bool, threads: int, repeat: int) -> None:
    """ms per cell of measure_cells (threads; processes) and of regionprops_table."""
    from skimage.measure import regionprops_table

    from cellseg.measure import measure_cells
    from cellseg.synth import synthesize_scan

    cases = [
        ("2D", (1024, 1024) if quick else (2048, 2048), (0.5, 0.5), (512, 512)),
        ("3D", (24, 256, 256) if quick else (32, 512, 512), (2.0, 0.5, 0.5), (24, 128, 128)),
    ]
    head = f"{'scan':>4} {'shape':>14} {'cells':>6} {'threads ms/cell':>16}"
    print(f"{head} {'processes ms/cell':>18} {'regionprops ms/cell':>20}")
    for name, shape, spacing, chunks in cases:
        image, labels = synthesize_scan(shape, spacing=spacing, seed=1)
        n = int(labels.max())
        with tempfile.TemporaryDirectory() as folder:
            stored = (
                _on_disk(labels, chunks, folder, "labels"),
                _on_disk(image, chunks, folder, "image"),
            )
            times = {}
            for processes in (False, True):

                def run(processes=processes, stored=stored, spacing=spacing, chunks=chunks):
                    measure_cells(
                        *stored,
                        spacing=spacing,
                        chunks=chunks,
                        threads=threads,
                        processes=processes,
                    )

                times[processes] = _best(run, repeat)
        props = regionprops_properties(len(shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = _best(
                lambda labels=labels, image=image, spacing=spacing, props=props: regionprops_table(
                    labels, image, properties=props, spacing=spacing
                ),
                repeat,
            )
        ours = min(times.values())
        print(
            f"{name:>4} {'×'.join(map(str, shape)):>14} {n:>6} {1e3 * times[False] / n:>16.3f} "
            f"{1e3 * times[True] / n:>18.3f} {1e3 * theirs / n:>20.3f}   "
            f"({theirs / ours:.1f}× regionprops)"
        )
        print(f"     regionprops_table properties: {', '.join(props)}")


def monai_sliding_window(image: np.ndarray, spacing, tile: int, batch_size: int, device: str):
    """Seconds of MONAI's sliding_window_inference over the scan with the default model."""
    import torch
    from monai.inferers import sliding_window_inference

    from cellseg.normalize import compute_scan_stats, normalize
    from cellseg.segmentation import get_backend
    from cellseg.segmentation.network import load_model
    from cellseg.stages import tile_geometry

    be = get_backend("model", device=device)
    _, halo, _, _ = tile_geometry(image.shape, spacing, be, tile, None)
    spec = be.spec(image.ndim)
    net, _ = load_model(spec["path"], device)
    x = torch.from_numpy(normalize(image, compute_scan_stats(image)).astype(np.float32))
    x = x[None, None].to(device)
    roi = tuple(int(c + 2 * h) for c, h in zip([tile] * image.ndim, halo))
    overlap = float(2 * max(halo)) / max(roi)

    def run():
        with torch.inference_mode():
            sliding_window_inference(x, roi, batch_size, net, overlap=overlap)

    run()  # warm up
    return _best(run, 1), roi


def stage_times(outdir: Path) -> dict[str, float]:
    """Seconds per stage from work/times (batches of segment_tiles added up)."""
    out: dict[str, float] = {}
    for path in sorted((outdir / "work" / "times").glob("*.json")):
        entry = json.loads(path.read_text())
        stage = entry["stage"].split("-")[0]
        out[stage] = out.get(stage, 0.0) + float(entry["seconds"])
    return out


def pipeline_benchmark(quick: bool, threads: int, batch_size: int, device: str) -> None:
    """Per-stage throughput, the bare forward pass and MONAI's sliding window."""
    import torch

    sys.path.insert(0, str(HERE))
    from model_throughput import forward_throughput

    from cellseg.synth import synthesize_scan, write_synthetic_scan

    torch.set_num_threads(threads)
    cases = [
        ("2D", (1024, 1024) if quick else (2048, 2048), (0.5, 0.5), 512),
        ("3D", (24, 256, 256) if quick else (32, 512, 512), (2.0, 0.5, 0.5), 256),
    ]
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, spacing, tile in cases:
            image, labels = synthesize_scan(shape, spacing=spacing, seed=1)
            path = Path(tmp) / f"{name}.ome.tif"
            write_synthetic_scan(path, None, shape=shape, spacing=spacing, seed=1)
            out = Path(tmp) / f"out{name}"
            cmd = [sys.executable, "-m", "cellseg.cli", "-q", "segment", str(path), "-o", str(out)]
            cmd += ["--backend", "model", "--tile-size", str(tile), "--batch-size", str(batch_size)]
            cmd += ["--threads", str(threads), "--device", device, "--force"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            whole = time.perf_counter() - t0
            import pandas as pd

            cells = len(pd.read_parquet(out / "cells.parquet", columns=["cell_id"]))
            px = math.prod(shape)
            print(
                f"\n{name} {'×'.join(map(str, shape))}: {cells} cells, tile {tile}, "
                f"threads {threads}, batch {batch_size}, device {device}"
            )
            print(f"  {'stage':<14} {'s':>7} {'Mpx/s':>8} {'cells/s':>9}")
            for stage, seconds in stage_times(out).items():
                print(
                    f"  {stage:<14} {seconds:>7.2f} {px / seconds / 1e6:>8.2f} "
                    f"{cells / seconds:>9.0f}"
                )
            print(
                f"  {'segment (all)':<14} {whole:>7.2f} {px / whole / 1e6:>8.2f} "
                f"{cells / whole:>9.0f}"
            )
            _, forward, n_tiles, dev = forward_throughput(image, spacing, tile, batch_size, device)
            print(
                f"  {'forward (bare)':<14} {forward:>7.2f} {px / forward / 1e6:>8.2f} "
                f"{'':>9}  ({n_tiles} tiles on {dev})"
            )
            if len(shape) == 2:
                seconds, roi = monai_sliding_window(image, spacing, tile, batch_size, dev)
                print(
                    f"  {'MONAI sliding':<14} {seconds:>7.2f} {px / seconds / 1e6:>8.2f} "
                    f"{'':>9}  (sliding_window_inference, roi {roi})"
                )
            ratios[name] = whole / forward
    print(f"segment/forward ratio 2D: {ratios['2D']:.2f} 3D: {ratios['3D']:.2f}")


def main() -> None:
    """Parse the arguments and run one of the benchmarks."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small scans (under 5 minutes)")
    ap.add_argument("--measure", action="store_true", help="the measure micro-benchmark only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing (best is kept)")
    args = ap.parse_args()
    if args.measure:
        measure_benchmark(args.quick, args.threads, args.repeat)
    else:
        pipeline_benchmark(args.quick, args.threads, args.batch_size, args.device)


if __name__ == "__main__":
    main()
