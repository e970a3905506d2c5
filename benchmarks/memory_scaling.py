"""Peak memory and time of each stage as a scan grows 16-fold at the same tile size.

For each pair of scans (a small one and one with 16 times the pixels) this runs

* ``cellseg segment`` (every stage in one process), then the stage commands
  one by one on the same folder: ``ingest``, ``segment-tiles`` (one batch),
  ``stitch`` and ``measure`` (each with ``--force``), every one a child
  process whose peak resident memory comes from ``os.wait4``;

and prints peak RSS and time per stage, time per pixel, and the big/small
ratio of each. Memory bounded by a tile means a ratio near 1 (target ≤ 1.2);
time linear in the pixels means a time ratio near 16.

    nice -n 10 python benchmarks/memory_scaling.py --quick   # 2D: 2048² and 8192²
    nice -n 10 python benchmarks/memory_scaling.py           # + 3D: 32×1024² and 128×2048²
    nice -n 10 python benchmarks/memory_scaling.py --dims 3d # only the 3D pair (~2 h)
    # again, only the stand-alone stages (they reuse the folders segment left)
    nice -n 10 python benchmarks/memory_scaling.py --dims 3d --stages stitch measure

The 2D scans are ``cellseg synth`` OME-TIFFs (uncompressed, one strip per
plane, as many microscopes and ImageJ write them). The 3D scans are too large
to synthesize in one piece; they are OME-Zarr images assembled from
independently synthesized 32×512×512 blocks. Scans are kept in ``--workdir``
and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PAIRS_2D = [(2048, 2048), (8192, 8192)]
PAIRS_3D = [(32, 1024, 1024), (128, 2048, 2048)]
BLOCK_3D = (32, 512, 512)
SPACING_2D = (0.5, 0.5)
SPACING_3D = (2.0, 0.5, 0.5)
STAGES = ("segment", "ingest", "segment-tiles", "stitch", "measure")


@dataclass
class Run:
    """One measured child process."""

    scan: str
    stage: str
    pixels: int
    peak_mb: float
    seconds: float

    @property
    def ns_per_pixel(self) -> float:
        return self.seconds / self.pixels * 1e9


def measured(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd` as a child process; its peak RSS in MB and wall time in s."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return usage.ru_maxrss / 1024.0, seconds  # ru_maxrss is in KiB on Linux


def shape_name(shape: tuple[int, ...]) -> str:
    """``2048²`` or ``32×1024²``."""
    if shape[-1] == shape[-2]:
        return "×".join([*map(str, shape[:-2]), f"{shape[-1]}²"])
    return "×".join(map(str, shape))


def make_scan_2d(shape: tuple[int, int], folder: Path) -> Path:
    """A synthetic 2D OME-TIFF (written once, then reused)."""
    path = folder / f"scan_{shape[0]}x{shape[1]}.ome.tif"
    if not path.exists():
        cmd = [sys.executable, "-m", "cellseg.cli", "synth", str(path), "--shape", *map(str, shape)]
        cmd += ["--pixel-size", *map(str, SPACING_2D), "--seed", "1"]
        cmd += ["--labels", str(folder / f".labels_{shape[0]}.tif")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


def make_scan_3d(shape: tuple[int, int, int], folder: Path) -> Path:
    """A synthetic 3D OME-Zarr assembled from independent blocks (written once, then reused).

    It is written by a spawned process: a child's peak RSS as ``os.wait4`` reports
    it starts from the RSS of the parent that forked it, so the measuring process
    must stay small.
    """
    import multiprocessing

    path = folder / f"scan_{'x'.join(map(str, shape))}.ome.zarr"
    if not path.exists():
        proc = multiprocessing.get_context("spawn").Process(
            target=write_scan_3d, args=(shape, path)
        )
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"synthesizing {path} failed ({proc.exitcode})")
    return path


def write_scan_3d(shape: tuple[int, int, int], path: Path) -> None:
    """Assemble `shape` from independently synthesized blocks and write it to `path`."""
    import dask
    import dask.array as da

    from cellseg.io import write_image
    from cellseg.synth import synthesize_scan

    grid = [n // b for n, b in zip(shape, BLOCK_3D)]

    def block(seed: int):
        image, _ = synthesize_scan(BLOCK_3D, spacing=SPACING_3D, seed=seed)
        return image

    seeds = iter(range(1, 1 + int(np.prod(grid))))
    rows = [
        [
            [
                da.from_delayed(dask.delayed(block)(next(seeds)), BLOCK_3D, np.uint16)
                for _ in range(grid[2])
            ]
            for _ in range(grid[1])
        ]
        for _ in range(grid[0])
    ]
    image = da.block(rows)[None]
    with dask.config.set(scheduler="threads", num_workers=2):
        write_image(
            path, image, axes="zyx", spacing=SPACING_3D, channel_names=["nuclei"], chunks=BLOCK_3D
        )


def benchmark_scan(scan: Path, shape, tile: int | list[int], args, work: Path) -> list[Run]:
    """Every stage of one scan, each as a measured child process."""
    from cellseg.layout import scan_name

    name = shape_name(shape)
    pixels = int(np.prod(shape))
    out = work / f"out_{scan_name(scan)}"
    log = work / f"{out.name}.log"
    common = ["--threads", str(args.threads)]
    cli = [sys.executable, "-m", "cellseg.cli", "-q"]
    pixel_size = list(map(str, SPACING_2D if len(shape) == 2 else SPACING_3D))
    runs = []

    def stage(label: str, cmd: list[str]) -> None:
        if label not in args.stages:
            return
        peak, seconds = measured(cli + cmd, log)
        runs.append(Run(name, label, pixels, peak, seconds))
        print(f"  {name:>12}  {label:<14} {peak:9.0f} MB  {seconds:8.1f} s", flush=True)

    tile_size = [str(tile)] if isinstance(tile, int) else list(map(str, tile))
    segment = ["segment", str(scan), "-o", str(out), "--tile-size", *tile_size, "--force"]
    segment += ["--pixel-size", *pixel_size, "--backend", args.backend, "--device", "cpu"]
    stage("segment", segment + common)
    if "segment" not in args.stages and not (out / "work" / "stitch.json").exists():
        raise SystemExit(f"{out} holds no finished run: measure the segment stage first")
    ingest = ["ingest", str(scan), "-o", str(out), "--force", "--pixel-size", *pixel_size]
    stage("ingest", ingest + common)
    plan = json.loads((out / "work" / "tiles.json").read_text())
    batch = plan["batches"][len(plan["batches"]) // 2]
    tiles = ["segment-tiles", str(out), "--batch", batch, "--force", "--device", "cpu"]
    stage("segment-tiles", tiles + common)
    stage("stitch", ["stitch", str(out), "--force"] + common)
    stage("measure", ["measure", str(out), "--force"] + common)
    return runs


def report(runs: list[Run], pairs) -> str:
    """The table of figures and the ratios of each pair."""
    lines = [
        f"{'scan':>12}  {'stage':<14} {'peak RSS':>9}  {'time':>8}  {'per pixel':>10}",
    ]
    for r in runs:
        # segment-tiles runs one batch: a time per pixel of the scan means nothing there.
        per_pixel = "      -   " if r.stage == "segment-tiles" else f"{r.ns_per_pixel:7.0f} ns"
        lines.append(
            f"{r.scan:>12}  {r.stage:<14} {r.peak_mb:7.0f} MB  {r.seconds:7.1f} s  {per_pixel}"
        )
    lines.append("")
    lines.append(f"{'pair':>26}  {'stage':<14} {'memory ratio':>12}  {'time ratio':>10}")
    for small, big in pairs:
        a, b = shape_name(small), shape_name(big)
        for s in STAGES:
            ra = next((r for r in runs if r.scan == a and r.stage == s), None)
            rb = next((r for r in runs if r.scan == b and r.stage == s), None)
            if ra and rb:
                lines.append(
                    f"{b + ' / ' + a:>26}  {s:<14} {rb.peak_mb / ra.peak_mb:12.2f}"
                    f"  {rb.seconds / ra.seconds:10.1f}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the 2D pair (= --dims 2d)")
    parser.add_argument(
        "--dims", choices=["2d", "3d", "all"], default="all", help="which pairs (default all)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/cellseg-memory-scaling"),
        help="scans and outputs (default /tmp/cellseg-memory-scaling)",
    )
    parser.add_argument("--tile-size-2d", type=int, default=512)
    parser.add_argument(
        "--tile-size-3d",
        type=int,
        nargs=3,
        default=[11, 256, 256],
        metavar=("Z", "Y", "X"),
        help="3D tile core (default 11 256 256: the 32-plane scan is then three tiles deep, "
        "so both scans have tiles with their full z halo on both sides, 11 planes at the "
        "default diameter: 32 and 33 planes read)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="stages to measure (default all; ingest comes first whenever a later stand-alone "
        "stage is asked for and the scan has no output yet)",
    )
    parser.add_argument("--backend", default="classical", help="default classical")
    parser.add_argument("--threads", type=int, default=2, help="threads of every stage (2)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    dims = "2d" if args.quick else args.dims
    pairs = [(PAIRS_2D[0], PAIRS_2D[1])] if dims in ("2d", "all") else []
    pairs += [(PAIRS_3D[0], PAIRS_3D[1])] if dims in ("3d", "all") else []
    runs: list[Run] = []
    for small, big in pairs:
        for shape in (small, big):
            print(f"scan {shape_name(shape)}: synthesizing (not measured)", flush=True)
            if len(shape) == 2:
                scan, tile = make_scan_2d(shape, args.workdir), args.tile_size_2d
            else:
                scan, tile = make_scan_3d(shape, args.workdir), args.tile_size_3d
            runs += benchmark_scan(scan, shape, tile, args, args.workdir)
    text = report(runs, pairs)
    print()
    print(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
