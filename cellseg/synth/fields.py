"""Random points and smooth random fields in µm, and linear upsampling of coarse grids."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _uniform_in_ball(rng: np.random.Generator, n: int, ndim: int) -> np.ndarray:
    direction = rng.standard_normal((n, ndim))
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    return direction * rng.random((n, 1)) ** (1.0 / ndim)


def _field_weights(coords_um: np.ndarray, n_nodes: int, cell_um: float) -> np.ndarray:
    """Gaussian interpolation weights from lattice nodes to coordinates, rows sum to 1."""
    t = coords_um / cell_um + 1.0  # node k sits at (k - 1) * cell_um
    weights = np.exp(-0.5 * ((t[:, None] - np.arange(n_nodes)[None, :]) / 0.8) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights


def _field_lattice(
    rng: np.random.Generator, extent: np.ndarray, cell_um: float
) -> tuple[np.ndarray, float]:
    """Random lattice values covering `extent`, and the std of the interpolated field."""
    n_nodes = [int(math.ceil(e / cell_um)) + 3 for e in extent]
    # A lattice of unit cells on a fine grid gives the interpolated variance.
    probe = _field_weights(np.linspace(0.0, cell_um, 16, endpoint=False) + cell_um, 5, cell_um)
    std = math.sqrt(float(np.mean(np.sum(probe**2, axis=1)))) ** len(extent)
    return rng.standard_normal(n_nodes), std


def _smooth_field(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: np.ndarray,
    cell_um: float,
    coarse: bool = False,
) -> np.ndarray:
    """A smooth random field on the pixel grid, about unit variance, correlated over
    ``cell_um``: random lattice values interpolated one axis at a time. With
    `coarse`, computed every few pixels (a quarter of ``cell_um``) and
    interpolated linearly in between.
    """
    shape = tuple(int(s) for s in shape)
    extent = np.asarray(shape) * spacing
    field, std = _field_lattice(rng, extent, cell_um)
    factor = np.ones(len(shape), dtype=np.int64)
    if coarse:
        factor = np.maximum(1, np.floor(0.25 * cell_um / spacing).astype(np.int64))
    for axis, (size, sp, f) in enumerate(zip(shape, spacing, factor.tolist(), strict=True)):
        # Pixel centres of each coarse cell of f pixels (the pixel itself when f is 1).
        at = (np.arange(-(-size // f)) * f + 0.5 * (f - 1)) * sp
        weights = _field_weights(at, field.shape[axis], cell_um)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    field = (field / std).astype(np.float32)
    return _upsample(field, factor, shape)


def _smooth_field_at(
    rng: np.random.Generator, points: np.ndarray, extent: np.ndarray, cell_um: float
) -> np.ndarray:
    """Like `_smooth_field`, evaluated at points (n, ndim) in µm."""
    field, std = _field_lattice(rng, extent, cell_um)
    weights = [
        _field_weights(points[:, axis], field.shape[axis], cell_um)
        for axis in range(points.shape[1])
    ]
    values = np.tensordot(weights[0], field, axes=([1], [0]))
    for w in weights[1:]:
        values = np.einsum("mj,mj...->m...", w, values)
    return values / std


def _upsample(image: np.ndarray, factor: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear interpolation of a coarse grid (cells of `factor` pixels) back to `shape`."""
    for axis, (f, size) in enumerate(zip(factor.tolist(), shape, strict=True)):
        if f == 1:
            continue
        # Pixel i's centre in coarse cells; coarse cell j's centre sits at j.
        where = (np.arange(size) + 0.5) / f - 0.5
        low = np.clip(np.floor(where).astype(np.int64), 0, image.shape[axis] - 1)
        high = np.minimum(low + 1, image.shape[axis] - 1)
        view = [1] * image.ndim
        view[axis] = size
        weight = np.clip(where - low, 0.0, 1.0).astype(np.float32).reshape(view)
        a = np.take(image, low, axis=axis)
        b = np.take(image, high, axis=axis)
        b -= a
        b *= weight
        a += b
        image = a
    return image
