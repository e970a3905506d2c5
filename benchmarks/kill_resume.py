"""kill -9 ``cellseg segment`` at random moments; each rerun must give the same bytes.

Runs ``cellseg segment`` on a small synthetic scan once uninterrupted (the
reference), then N times: start a run into a fresh OUTDIR, kill its process
group with SIGKILL after a random delay within the reference run's duration,
rerun to the end, and compare the label image and ``cells.parquet`` byte for
byte with the reference; also that nothing under a final name was left
incomplete and no temporary survives the rerun. Prints one line per kill and
a summary.

    python benchmarks/kill_resume.py --kills 20 [--seed 0] [--shape 256 256]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if ".tmp" in p.name or ".old-" in p.name or p.suffix == ".lock"
    )


def segment_cmd(scan: Path, outdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cellseg.cli",
        "-q",
        "segment",
        str(scan),
        "-o",
        str(outdir),
        "--backend",
        "classical",
        "--tile-size",
        "64",
        "--tiles-per-batch",
        "2",
        "--threads",
        "1",
    ]


def outputs(outdir: Path, name: str) -> dict[str, bytes]:
    got = {"cells.parquet": (outdir / "cells.parquet").read_bytes()}
    labels = outdir / f"{name}.ome.zarr" / "labels"
    got.update({f"labels/{k}": v for k, v in tree(labels).items()})
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=2, default=[256, 256])
    args = parser.parse_args()

    from cellseg.synth import write_synthetic_scan

    root = Path(tempfile.mkdtemp(prefix="kill_resume-"))
    scan, _ = write_synthetic_scan(root / "scan.ome.tif", None, shape=tuple(args.shape), seed=3)
    subprocess.run(segment_cmd(scan, root / "reference"), check=True, capture_output=True)
    reference = outputs(root / "reference", "scan")
    # a second uninterrupted run: its time (warm caches) spans the kill moments
    t0 = time.perf_counter()
    subprocess.run(segment_cmd(scan, root / "again"), check=True, capture_output=True)
    duration = time.perf_counter() - t0
    again = outputs(root / "again", "scan") == reference
    print(f"uninterrupted run: {duration:.1f} s, {len(reference)} output files, repeatable {again}")

    rng = random.Random(args.seed)
    identical = 0
    for k in range(args.kills):
        outdir = root / f"run{k}"
        delay = rng.uniform(0.5, duration)
        proc = subprocess.Popen(
            segment_cmd(scan, outdir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rerun = subprocess.run(segment_cmd(scan, outdir), capture_output=True, text=True)
        same = rerun.returncode == 0 and outputs(outdir, "scan") == reference
        left = leftovers(outdir)
        identical += same and not left
        print(
            f"kill {k + 1:2d} at {delay:5.2f} s{' (run had ended)' if finished else ''}: "
            f"rerun exit {rerun.returncode}, byte-identical {same}, leftovers {left or 'none'}"
        )
        shutil.rmtree(outdir)
    print(f"{identical}/{args.kills} reruns byte-identical with nothing left over")
    shutil.rmtree(root)
    return 0 if identical == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
