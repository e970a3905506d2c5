"""Shared fixtures: small synthetic scans with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.synth import synthesize_scan


@pytest.fixture(scope="session")
def scan2d():
    """A crowded 2D scan (0.5 µm pixels) and its ground-truth labels."""
    image, labels = synthesize_scan((320, 288), spacing=(0.5, 0.5), seed=11)
    return image, labels, (0.5, 0.5)


@pytest.fixture(scope="session")
def scan3d():
    """An anisotropic 3D stack (2 µm z, 0.5 µm in-plane) and its ground-truth labels."""
    spacing = (2.0, 0.5, 0.5)
    image, labels = synthesize_scan((20, 112, 120), spacing=spacing, seed=12)
    return image, labels, spacing


def disk_scene(shape=(256, 256), spacing=(0.5, 0.5)):
    """Bright disks on a dark, noisy background, placed on tile seams and corners.

    Returns the image and the truth labels. Tiles of 64 px put seams at multiples
    of 64: disks sit on seams, on corners where four tiles meet, and one cell is
    far larger than any halo.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(5)
    truth = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = [
        (64, 64, 7),
        (128, 128, 8),
        (64, 192, 6),
        (192, 64, 7),  # corners
        (64, 30, 6),
        (30, 128, 7),
        (128, 20, 8),
        (100, 128, 6),
        (192, 160, 7),  # seams
        (20, 20, 6),
        (100, 100, 5),
        (225, 230, 6),
        (250, 10, 6),  # elsewhere, border
    ]
    for k, (cy, cx, r) in enumerate(centres, start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    # a large cell (60 px = 30 µm across) spanning several tiles
    big = (yy - 176) ** 2 + (xx - 200) ** 2 <= 30**2
    truth[big & (truth == 0)] = len(centres) + 1
    img = (truth > 0) * 800.0
    img = ndi.gaussian_filter(img, 1.0) + 100 + rng.normal(0, 10, shape)
    return np.clip(img, 0, None).astype(np.uint16), truth


# ----------------------------------------------------------------------------- review results
def _segmented(root, name, shape, tile, pyramid_edge, seed):
    """Segment a synthetic scan into ``root/name`` with a pyramid of several levels."""
    import cellseg.io.omezarr
    from cellseg.stages import segment
    from cellseg.synth import write_synthetic_scan

    scan, _ = write_synthetic_scan(root / f"{name}.ome.tif", None, shape=shape, seed=seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cellseg.io.omezarr, "PYRAMID_MAX_EDGE", pyramid_edge)
        segment(scan, root / name, tile_size=tile, backend="classical", show_progress=False)
    return root / name


@pytest.fixture(scope="session")
def result2d(tmp_path_factory):
    """A segmented 200 × 200 px scan (0.5 µm), 3 pyramid levels: read-only, copy to edit."""
    return _segmented(tmp_path_factory.mktemp("result2d"), "slide", (200, 200), 96, 64, 3)


@pytest.fixture(scope="session")
def result3d(tmp_path_factory):
    """A segmented 12 × 64 × 64 voxel stack (2 × 0.5 × 0.5 µm), 2 pyramid levels."""
    return _segmented(tmp_path_factory.mktemp("result3d"), "stack", (12, 64, 64), 48, 32, 4)


@pytest.fixture
def copy_result(tmp_path):
    """Copy a result folder under the test's temp dir, for tests that correct cells."""
    import shutil

    def copy(src):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return copy


_QT_PROBE = """
import sys
from qtpy.QtGui import QOpenGLContext
from qtpy.QtWidgets import QApplication
app = QApplication(sys.argv[:1])
sys.exit(0 if QOpenGLContext().create() else 3)
"""


@pytest.fixture(scope="session")
def qt_display():
    """Skip unless Qt can open OpenGL windows here (Xvfb started by pytest-xvfb, or a display).

    Probed in a subprocess: Qt aborts the whole process when it has no display.
    """
    import os
    import subprocess
    import sys

    pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[test]')")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("no display: install Xvfb (`make sysdeps`) so that pytest-xvfb starts one")
    probe = subprocess.run(
        [sys.executable, "-c", _QT_PROBE], capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        pytest.skip(f"Qt cannot open an OpenGL window here ({why}); run `make sysdeps`")


# ----------------------------------------------------------------------------- workflow runs
@pytest.fixture(scope="session")
def tiny_scan(tmp_path_factory):
    """The tiny 2D scan of tests/workflow_helpers.py, at one absolute path for all runs."""
    from workflow_helpers import make_scan

    return make_scan(tmp_path_factory.mktemp("tiny_scan"))


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory, tiny_scan):
    """OUTDIR of an uninterrupted local workflow run on the tiny scan: the oracle of the
    SLURM and kill/resume tests (read-only)."""
    from workflow_helpers import (
        SCAN,
        output_of,
        run,
        snakemake_cmd,
        tiny_config,
        write_config,
    )

    workdir = tmp_path_factory.mktemp("tiny_reference")
    write_config(workdir, tiny_config(tiny_scan))
    target = f"results/{SCAN}/cells.parquet"
    proc = run(snakemake_cmd(workdir, "--cores", "2", target), workdir)
    assert proc.returncode == 0, output_of(proc)
    return workdir / "results" / SCAN


@pytest.fixture
def tiny_unet():
    """The architecture of a tiny model that trains in seconds (tests of training)."""
    return {
        "class": "monai.networks.nets.UNet",
        "channels": [8, 8, 16, 16],
        "strides": [2, 2, 2],
        "num_res_units": 0,
        "norm": "batch",
    }
