"""Segmentation backends: turn a batch of normalised image crops into label crops.

Every backend implements :class:`Backend`. The tiling and stitching code only
talks to this interface, so a model-based backend plugs in next to the
classical one. A backend also says how much context it needs: how large its
objects get (which sets the default halo) and how far from a crop edge its
output can differ from the output on the whole scan (the ``margin``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from cellseg.errors import ConfigError
from cellseg.normalize import normalized_value


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a segmentation backend."""

    name: str

    def max_diameter_um(self) -> float:
        """Largest object diameter the backend expects, in µm."""

    def margin_px(self, spacing: Sequence[float]) -> tuple[int, ...]:
        """Per axis, how far from a crop edge results may differ from whole-scan results."""

    def predict(
        self, crops: Sequence[np.ndarray], spacing: Sequence[float], stats: dict
    ) -> list[np.ndarray]:
        """Label a batch of crops.

        Parameters
        ----------
        crops : sequence of ndarray
            Normalised float32 crops, (Y, X) or (Z, Y, X), possibly of different shapes.
        spacing : sequence of float
            Pixel size in µm per axis.
        stats : dict
            Scan-level statistics from :func:`cellseg.normalize.compute_scan_stats`.

        Returns
        -------
        list of ndarray
            One int32 label image per crop, same shape, 0 = background.
        """


def default_halo_px(backend: Backend, spacing: Sequence[float]) -> int:
    """Default overlap in pixels of the finest axis: the largest cell plus the margin."""
    finest = min(float(s) for s in spacing)
    margin = max(m * s for m, s in zip(backend.margin_px(spacing), spacing)) / finest
    return int(math.ceil(backend.max_diameter_um() / finest + margin))


def _ellipsoid_footprint(radius_um: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean footprint of a ball of ``radius_um`` on an anisotropic grid."""
    radii = [max(1, int(math.floor(radius_um / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist2 = sum((g * s / radius_um) ** 2 for g, s in zip(grids, spacing))
    return dist2 <= 1.0


@dataclass
class ClassicalBackend:
    """Smoothing, a scan-level threshold, a distance transform and a seeded watershed.

    Parameters
    ----------
    diameter_um : float
        Typical nucleus diameter in µm; sets the seed spacing and the minimum size.
    max_diameter_um_ : float
        Largest nucleus diameter expected in µm; sets the default halo.
    smooth_um : float
        Gaussian smoothing sigma in µm (per axis converted with the pixel size, so
        anisotropic stacks are smoothed isotropically in physical space).
    threshold : float or None
        Foreground threshold in raw intensity units; default Otsu's threshold of
        the scan, computed once per scan.
    min_area_fraction : float
        Objects smaller than this fraction of a typical nucleus are dropped.
    """

    diameter_um: float = 7.0
    max_diameter_um_: float = 16.0
    smooth_um: float = 0.4
    threshold: float | None = None
    min_area_fraction: float = 0.15
    name: str = "classical"

    def max_diameter_um(self) -> float:  # noqa: D102
        return self.max_diameter_um_

    def margin_px(self, spacing: Sequence[float]) -> tuple[int, ...]:  # noqa: D102
        reach_um = 4.0 * self.smooth_um + 0.5 * self.diameter_um
        return tuple(int(math.ceil(reach_um / float(s))) for s in spacing)

    def predict(self, crops, spacing, stats):  # noqa: D102
        return [self.segment(c, spacing, stats) for c in crops]

    def segment(self, image: np.ndarray, spacing: Sequence[float], stats: dict) -> np.ndarray:
        """Label one normalised crop; see :class:`ClassicalBackend`."""
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.morphology import remove_small_objects
        from skimage.segmentation import watershed

        spacing = tuple(float(s) for s in spacing)
        if image.ndim != len(spacing):
            raise ConfigError(f"crop has {image.ndim} axes but {len(spacing)} pixel sizes")
        raw_thr = self.threshold if self.threshold is not None else stats["otsu"]
        thr = normalized_value(raw_thr, stats)
        sigma = [self.smooth_um / s for s in spacing]
        smooth = ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma, mode="nearest")
        foreground = smooth > thr
        voxel = math.prod(spacing)
        typical = (math.pi / 4 if image.ndim == 2 else math.pi / 6) * self.diameter_um**image.ndim
        min_size = max(3, int(self.min_area_fraction * typical / voxel))
        foreground = remove_small_objects(foreground, max_size=min_size)
        foreground = ndi.binary_fill_holes(foreground)
        if not foreground.any():
            return np.zeros(image.shape, np.int32)
        dist = ndi.distance_transform_edt(foreground, sampling=spacing).astype(np.float32)
        # A little smoothing of the distance map keeps one seed per nucleus.
        dist = ndi.gaussian_filter(dist, [0.5 * self.smooth_um / s for s in spacing])
        footprint = _ellipsoid_footprint(0.35 * self.diameter_um, spacing)
        peaks = peak_local_max(
            dist,
            footprint=footprint,
            threshold_abs=0.15 * self.diameter_um,
            exclude_border=False,
            labels=foreground.astype(np.int32),
        )
        markers = np.zeros(image.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        labels = watershed(-dist, markers, mask=foreground).astype(np.int32, copy=False)
        small = np.bincount(labels.ravel()) <= min_size
        small[0] = False
        labels[small[labels]] = 0
        return labels


BACKENDS = {"classical": ClassicalBackend}


def get_backend(name: str | None = None, model: str | None = None, **options) -> Backend:
    """Build a backend by name.

    Raises
    ------
    ConfigError
        For an unknown backend name.
    """
    name = name or "classical"
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}."
        )
    return BACKENDS[name](**options)
