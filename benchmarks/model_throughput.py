"""Throughput of the model backend: bare network forward pass vs the whole `cellseg segment`.

Synthesizes a 2D and a 3D scan, then measures

* the network alone: every tile's halo crop of the scan's plan, run through the
  U-Net in batches (``--batch-size``; for the 3D model, over the three plane
  families of each crop), no post-processing;
* the whole pipeline: ``cellseg segment`` on the same scan (ingest, plan, model,
  post-processing, stitching, measuring), as a subprocess;

and prints pixels per second of each and their ratio. Runs on the GPU when one
is visible (``--device auto``), else on the CPU.

    python benchmarks/model_throughput.py            # 2048² and 32×512² scans
    python benchmarks/model_throughput.py --quick    # small scans
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def forward_throughput(image: np.ndarray, spacing, tile_size: int, batch_size: int, device: str):
    """Pixels of scan per second through the bare network on the plan's halo crops."""
    import torch

    from cellseg.normalize import compute_scan_stats, normalize
    from cellseg.segmentation import get_backend
    from cellseg.segmentation.inference import predict_maps
    from cellseg.segmentation.network import load_model, resolve_device
    from cellseg.stages import tile_geometry
    from cellseg.tiling import plan_tiles

    device = resolve_device(device)
    be = get_backend("model", device=device)
    core, halo, _, _ = tile_geometry(image.shape, spacing, be, tile_size, None)
    tiles = plan_tiles(image.shape, core, halo)
    spec = be.spec(image.ndim)
    net, _ = load_model(spec["path"], device)
    stats = compute_scan_stats(image)
    crops = [normalize(image[t.halo_slices], stats) for t in tiles]
    seen = be.model_spacing(spacing)
    predict_maps(net, crops[:batch_size], spec, device, spacing=seen)  # warm up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(crops), batch_size):
        predict_maps(net, crops[i : i + batch_size], spec, device, spacing=seen)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return image.size / seconds, seconds, len(tiles), device


def pipeline_throughput(path: Path, outdir: Path, tile_size: int, batch_size: int, device: str):
    """Pixels per second of `cellseg segment` (a subprocess, so imports are counted)."""
    cmd = [
        sys.executable,
        "-m",
        "cellseg.cli",
        "-q",
        "segment",
        str(path),
        "-o",
        str(outdir),
        "--backend",
        "model",
        "--tile-size",
        str(tile_size),
        "--batch-size",
        str(batch_size),
        "--device",
        device,
        "--force",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    """Run the benchmark and print a table."""
    from cellseg.synth import synthesize_scan, write_synthetic_scan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small scans")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    cases = [
        ("2D", (1024, 1024) if args.quick else (2048, 2048), (0.5, 0.5), 512),
        ("3D", (24, 256, 256) if args.quick else (32, 512, 512), (2.0, 0.5, 0.5), 256),
    ]
    print(
        f"{'scan':>4} {'shape':>16} {'tiles':>5} {'device':>6} {'forward px/s':>13} "
        f"{'segment px/s':>13} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, spacing, tile in cases:
            image, _ = synthesize_scan(shape, spacing=spacing, seed=1)
            path = Path(tmp) / f"{name}.ome.tif"
            write_synthetic_scan(path, None, shape=shape, spacing=spacing, seed=1)
            fwd, _, n_tiles, device = forward_throughput(
                image, spacing, tile, args.batch_size, args.device
            )
            seconds = pipeline_throughput(
                path, Path(tmp) / f"out{name}", tile, args.batch_size, device
            )
            whole = math.prod(shape) / seconds
            print(
                f"{name:>4} {'×'.join(map(str, shape)):>16} {n_tiles:>5} {device:>6} "
                f"{fwd:>13.3g} {whole:>13.3g} {fwd / whole:>6.1f}"
            )


if __name__ == "__main__":
    main()
