"""napari sample data: small synthetic scans, segmented on first use (classical backend).

The results are kept in ``$CELLSEG_SAMPLE_DIR`` (default
``~/.cache/cellseg/napari-samples``), so corrections made on a sample are
kept too, and opening it again is instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: name → (shape, tile size) of each sample scan.
SAMPLES = {
    "synthetic2d": ((256, 256), 128),
    "synthetic3d": ((16, 128, 128), 64),
}


def sample_dir() -> Path:
    """Where sample results are written."""
    root = os.environ.get("CELLSEG_SAMPLE_DIR")
    if root:
        return Path(root)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cellseg" / "napari-samples"


def make_sample(name: str, root: Path | None = None) -> Path:
    """Synthesize and segment sample `name` unless it is there already; return its folder."""
    from cellseg.review import find_image
    from cellseg.stages import segment
    from cellseg.synth import write_synthetic_scan

    shape, tile = SAMPLES[name]
    outdir = (root or sample_dir()) / name
    if (outdir / "cells.parquet").exists() and find_image(outdir) is not None:
        return outdir
    scan = outdir / "scan" / f"{name}.ome.tif"
    if not scan.exists():
        write_synthetic_scan(scan, None, shape=shape, seed=len(shape))
    segment(scan, outdir, tile_size=tile, backend="classical", show_progress=False)
    return outdir


def sample_2d() -> list[tuple[Any, dict, str]]:
    """A 256 × 256 px synthetic nuclei scan (0.5 µm pixels) with its cells and table."""
    from cellseg.napari._reader import read_result

    return read_result(make_sample("synthetic2d"))


def sample_3d() -> list[tuple[Any, dict, str]]:
    """A 16 × 128 × 128 voxel synthetic nuclei stack (2 × 0.5 × 0.5 µm) with its cells."""
    from cellseg.napari._reader import read_result

    return read_result(make_sample("synthetic3d"))
