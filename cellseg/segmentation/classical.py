"""The classical backend: smoothing, a scan-level threshold, a distance transform
and a seeded watershed. No model; a baseline and a fallback."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from cellseg.errors import ConfigError
from cellseg.normalize import normalized_value
from cellseg.segmentation.base import BackendBase, register_backend
from cellseg.segmentation.distance import distance_map


def _ellipsoid_footprint(radius_um: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean footprint of a ball of ``radius_um`` on an anisotropic grid."""
    radii = [max(1, int(math.floor(radius_um / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist2 = sum((g * s / radius_um) ** 2 for g, s in zip(grids, spacing))
    return dist2 <= 1.0


#: Voxels whose float64 offsets :func:`distance_map` holds at a time.
@register_backend("classical")
@dataclass
class ClassicalBackend(BackendBase):
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

    def max_diameter_um(self) -> float:  # noqa: D102
        return self.max_diameter_um_

    def margin_px(self, spacing: Sequence[float]) -> tuple[int, ...]:  # noqa: D102
        reach_um = 4.0 * self.smooth_um + 0.5 * self.diameter_um
        return tuple(int(math.ceil(reach_um / float(s))) for s in spacing)

    def predict(self, crops, spacing, stats):  # noqa: D102
        return [self.segment(c, spacing, stats) for c in crops]

    def segment(self, image: np.ndarray, spacing: Sequence[float], stats: dict) -> np.ndarray:
        """Label one normalised crop; see :class:`ClassicalBackend`."""

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
        dist = distance_map(foreground, spacing)
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
