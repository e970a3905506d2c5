"""Synthetic multi-channel fluorescence with marker-positive cells and two cell classes.

For positive-cell scoring and cell classifiers, with their truth:

* a nuclear channel (``dapi``) and a marker channel (``marker``); a known
  fraction of the cells is marker-positive, with a nuclear marker amount drawn
  per cell from `marker_strength` (weak to strong); negative cells carry a
  faint autofluorescence drawn from `negative_level`;
* two cell classes (:data:`CLASS_NAMES`) that differ, with overlap, in size
  (the large class's diameters are `size_ratio` × the small one's, at most
  1.25) and in DNA stain (the small class brighter, ranges overlapping).

Nuclei are placed by the generator's random sequential adsorption and drawn
with its shapes and clean-up (:mod:`cellseg.synth.placement`,
:mod:`cellseg.synth.shapes`); the channels are rendered simply (per-nucleus
levels with a smooth fall-off at the edge, optical blur, background, shot and
read noise) and stored as uint16. Everything comes from one seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cellseg.errors import ConfigError
from cellseg.synth.params import SynthParams
from cellseg.synth.placement import _Placement
from cellseg.synth.shapes import _clean_labels, _draw_nuclei

#: The two cell classes, by index in `MarkerSample.cell_class`.
CLASS_NAMES = ("small", "large")
#: Channel names of the scan.
CHANNEL_NAMES = ("dapi", "marker")
_FULL_SCALE = 4000.0  # grey levels of amount 1


@dataclass(frozen=True)
class MarkerSample:
    """A synthetic marker scan and its truth.

    Attributes
    ----------
    image : ndarray of uint16, shape (2, rows, columns)
        Channels :data:`CHANNEL_NAMES`.
    labels : ndarray of uint32
        Nuclei 1..N.
    spacing : (float, float)
        Pixel size in µm.
    channel_names : tuple of str
    cell_class : ndarray of int8, shape (N,)
        Class of cell ``i`` at ``i - 1`` (index into :data:`CLASS_NAMES`).
    marker_positive : ndarray of bool, shape (N,)
        Whether cell ``i`` (at ``i - 1``) is marker-positive.
    marker_amount : ndarray of float32, shape (N,)
        Its marker amount (0 for negative cells; 1 is the full scale).
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float]
    channel_names: tuple[str, ...]
    cell_class: np.ndarray
    marker_positive: np.ndarray
    marker_amount: np.ndarray

    @property
    def marker_fraction(self) -> float:
        """Share of the cells that are marker-positive."""
        return float(self.marker_positive.mean()) if self.marker_positive.size else 0.0


def synthesize_marker_scan(
    shape: tuple[int, int],
    *,
    spacing: tuple[float, float] = (0.5, 0.5),
    seed: int | np.random.Generator = 0,
    marker_fraction: float = 0.3,
    marker_strength: tuple[float, float] = (0.25, 1.0),
    negative_level: tuple[float, float] = (0.0, 0.08),
    large_fraction: float = 0.5,
    diameter_um: tuple[float, float] = (7.5, 9.5),
    size_ratio: float = 1.2,
    dapi_small: tuple[float, float] = (0.6, 0.95),
    dapi_large: tuple[float, float] = (0.35, 0.65),
    density: float = 0.35,
) -> MarkerSample:
    """Synthesize a two-channel fluorescence scan with marker-positive cells and two classes.

    Parameters
    ----------
    shape : (int, int)
        ``(rows, columns)``.
    spacing : (float, float)
        Pixel size in µm.
    seed : int or numpy.random.Generator
        Seed (or generator); the same arguments give identical output.
    marker_fraction : float
        Share of the cells that are marker-positive, in [0, 1].
    marker_strength : (float, float)
        Range of a positive cell's marker amount (1 = full scale).
    negative_level : (float, float)
        Range of a negative cell's autofluorescence in the marker channel.
    large_fraction : float
        Share of the cells in the large class.
    diameter_um : (float, float)
        Range of the small class's nucleus diameters.
    size_ratio : float
        The large class's diameters over the small one's, in [1, 1.25].
    dapi_small, dapi_large : (float, float)
        Ranges of the DNA stain level of each class (overlapping by default).
    density : float
        Covered fraction of the scan.

    Returns
    -------
    MarkerSample

    Raises
    ------
    ConfigError
        If an argument is out of range.

    Examples
    --------
    >>> s = synthesize_marker_scan((96, 96), seed=1)
    >>> s.image.shape, s.image.dtype, bool(s.labels.max() == s.cell_class.size)
    ((2, 96, 96), dtype('uint16'), True)
    """
    if len(shape) != 2 or min(shape) < 16:
        raise ConfigError(f"a marker scan's shape is (rows, columns) of at least 16, got {shape}")
    for name, value in (
        ("marker_fraction", marker_fraction),
        ("large_fraction", large_fraction),
        ("density", density),
    ):
        if not 0 <= value <= 1:
            raise ConfigError(f"{name} must be in [0, 1], got {value}")
    if not 1 <= size_ratio <= 1.25:
        raise ConfigError(f"size_ratio must be in [1, 1.25] (classes overlap), got {size_ratio}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    sp = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape) * sp
    d_lo, d_hi = float(diameter_um[0]), float(diameter_um[1])
    mean_area = math.pi / 4 * (d_lo * d_lo + d_lo * d_hi + d_hi * d_hi) / 3
    mean_area *= 1 + large_fraction * (size_ratio**2 - 1)
    goal = max(1, int(round(density * float(np.prod(extent)) / mean_area)))
    placed = _Placement(2, 0.5 * d_hi * size_ratio)
    klass: list[np.ndarray] = []
    for _ in range(8):
        missing = goal - placed.count
        if missing <= 0:
            break
        n = 3 * missing + 16
        points = rng.uniform(0.0, 1.0, (n, 2)) * extent
        large = rng.random(n) < large_fraction
        radii = 0.5 * rng.uniform(d_lo, d_hi, n) * np.where(large, size_ratio, 1.0)
        index = placed.add(points, radii, 0.85, np.array([missing]))
        klass.append(large[index].astype(np.int8))
    kind = np.concatenate(klass) if klass else np.zeros(0, dtype=np.int8)
    shape_params = SynthParams(aspect_sigma=0.15, irregularity=0.05)
    score, raw, own_size = _draw_nuclei(
        rng, tuple(shape), sp, placed.points, placed.radii, shape_params
    )
    min_size = max(8, int(round(math.pi * 1.5**2 / float(np.prod(sp)))))
    labels, kept = _clean_labels(raw, own_size, min_size, 0.5)
    kind = kind[kept]
    n = int(kept.size)

    dapi_level = np.where(
        kind == 1, rng.uniform(*dapi_large, n), rng.uniform(*dapi_small, n)
    ).astype(np.float32)
    positive = rng.random(n) < marker_fraction
    amount = np.where(
        positive, rng.uniform(*marker_strength, n), rng.uniform(*negative_level, n)
    ).astype(np.float32)
    # A soft edge: full level inside, falling off over the outer quarter of the radius.
    edge = np.clip((1.0 - score) / 0.25, 0.0, 1.0).astype(np.float32)
    del score
    channels = []
    for level, background in ((dapi_level, 0.03), (amount, 0.02)):
        lut = np.concatenate([[0.0], level]).astype(np.float32)
        plane = lut[labels] * np.where(labels > 0, edge, 0.0)
        plane = ndi.gaussian_filter(plane, 0.4 / sp, truncate=3.0) + background
        counts = rng.poisson(np.clip(plane, 0, None) * _FULL_SCALE).astype(np.float32)
        counts += rng.normal(100.0, 6.0, counts.shape).astype(np.float32)  # offset, read noise
        channels.append(np.clip(np.rint(counts), 0, 65535).astype(np.uint16))
    return MarkerSample(
        image=np.stack(channels),
        labels=labels,
        spacing=(float(sp[0]), float(sp[1])),
        channel_names=CHANNEL_NAMES,
        cell_class=kind.astype(np.int8),
        marker_positive=positive,
        marker_amount=np.where(positive, amount, 0.0).astype(np.float32),
    )
