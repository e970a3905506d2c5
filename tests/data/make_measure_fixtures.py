"""Write the measure fixtures: random label images and the cell tables measured on them.

``measure_2d.npz`` / ``measure_3d.npz`` hold the labels, the intensity image and
the pixel size; ``measure_2d.parquet`` / ``measure_3d.parquet`` the table that
:func:`cellseg.measure.measure_cells` gave for them when they were written
(``tests/test_measure.py`` compares today's table with it). Run from the
repository root: ``python tests/data/make_measure_fixtures.py [--labels-only]``;
``--labels-only`` rewrites nothing but the inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPACING = {2: (0.5, 0.45), 3: (1.0, 0.4, 0.4)}
SHAPE = {2: (200, 200), 3: (24, 96, 96)}


def _ellipsoid(shape, centre, radii, rotation):
    """Pixels of a rotated ellipse / ellipsoid (radii in pixels)."""
    grids = np.meshgrid(*[np.arange(n) - c for n, c in zip(shape, centre)], indexing="ij")
    pts = np.stack([g.ravel() for g in grids], axis=1) @ rotation
    return ((pts / np.asarray(radii)) ** 2).sum(axis=1).reshape(shape) <= 1.0


def random_labels(ndim: int, seed: int) -> np.ndarray:
    """Touching, overlapping, holed, split, tiny and border cells, ids not contiguous."""
    rng = np.random.default_rng(seed)
    shape = SHAPE[ndim]
    labels = np.zeros(shape, np.uint32)
    n = 330 if ndim == 2 else 170
    ids = np.sort(rng.choice(np.arange(1, 5 * n), size=n, replace=False)).astype(np.uint32)
    rng.shuffle(ids)
    for k, cell in enumerate(ids):
        centre = rng.uniform(-2, np.array(shape) + 1)
        if ndim == 2:
            radii = rng.uniform(1.0, 9.0, 2)
            a = rng.uniform(0, np.pi)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        else:
            radii = rng.uniform(1.0, 8.0, 3) * np.array([0.4, 1.0, 1.0])
            rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        mask = _ellipsoid(shape, centre, radii, rot)
        kind = k % 11
        if kind == 0 and radii.min() > 3:  # a hole (2D) or a cavity (3D)
            mask &= ~_ellipsoid(shape, centre, radii * 0.45, rot)
        if kind == 1:  # two pieces of one cell
            mask |= _ellipsoid(shape, centre + 12, np.maximum(radii * 0.4, 1), rot)
        if kind == 2:  # a thin cell: a line of pixels
            mask = np.zeros(shape, bool)
            p = np.clip(centre.astype(int), 0, np.array(shape) - 1)
            mask[tuple(p)] = True
            if k % 3:
                mask[tuple(np.clip(p + 1, 0, np.array(shape) - 1))] = True
        labels[mask] = cell
    return labels


def random_image(labels: np.ndarray, channels: int, seed: int) -> np.ndarray:
    """A smooth background plus brighter cells and noise, uint16 ``(C, *shape)``."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    out = []
    for c in range(channels):
        field = ndi.gaussian_filter(rng.normal(size=labels.shape), 4)
        field = 100 + 400 * (field - field.min()) / np.ptp(field)
        cells = (labels > 0) * (300 + 50 * c) * (1 + (labels % 5))
        noisy = rng.poisson(np.maximum(field + cells, 0) / 8.0) * 8
        out.append(noisy.astype(np.uint16))
    return np.stack(out)


def main(labels_only: bool = False) -> None:
    from cellseg.measure import measure_cells, write_table

    for ndim, seed in ((2, 19), (3, 21)):
        labels = random_labels(ndim, seed)
        image = random_image(labels, 2 if ndim == 2 else 1, seed + 1)
        np.savez_compressed(
            HERE / f"measure_{ndim}d.npz",
            labels=labels,
            image=image,
            spacing=np.array(SPACING[ndim]),
        )
        if labels_only:
            continue
        table = measure_cells(
            labels,
            image,
            spacing=SPACING[ndim],
            channel_names=[f"ch{c}" for c in range(len(image))],
        )
        write_table(table, HERE / f"measure_{ndim}d.parquet")
        print(ndim, "D:", len(table), "cells")


if __name__ == "__main__":
    main("--labels-only" in sys.argv)
