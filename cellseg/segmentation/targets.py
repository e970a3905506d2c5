"""The model's representation: training targets from labels, labels from predicted maps.

The network predicts two maps per pixel (voxel):

* ``foreground``: probability of lying inside any nucleus;
* ``centre``: the distance to the nucleus' own boundary, divided by the largest
  such distance in that nucleus (1 at the centre, falling to 0 at its edge).

Because the distance is measured *per nucleus*, two touching nuclei have a
valley of zeros along the line where they meet, which a distance transform of
the foreground mask does not have. Post-processing smooths the centre map,
takes its local maxima (one per nucleus) as seeds and grows them over the
foreground with a watershed on the smoothed map. Everything is array
operations (numpy / scipy / scikit-image); the same code serves 2D and
anisotropic 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from cellseg.errors import ConfigError
from cellseg.segmentation.distance import distance_map


def labels_to_targets(labels: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Training targets of a label image.

    Parameters
    ----------
    labels : ndarray of int, (Y, X) or (Z, Y, X)
        Instance labels, 0 = background.
    spacing : sequence of float, optional
        Pixel size per axis (distances are physical, so anisotropic voxels count right).

    Returns
    -------
    ndarray of float32, (2, *labels.shape)
        Foreground (0/1) and the per-nucleus normalised distance to the boundary.

    Examples
    --------
    >>> lab = np.zeros((1, 7), int); lab[0, 1:6] = 1
    >>> np.round(labels_to_targets(lab)[1].astype(float), 2).tolist()
    [[0.0, 0.33, 0.67, 1.0, 0.67, 0.33, 0.0]]
    """

    labels = np.asarray(labels)
    spacing = tuple(spacing or (1.0,) * labels.ndim)
    fg = labels > 0
    # a pixel is "inside" when all its face neighbours carry the same label;
    # the distance to the nearest non-inside pixel is the distance to its own edge
    inside = fg.copy()
    for ax in range(labels.ndim):
        for shift in (1, -1):
            nb = np.roll(labels, shift, axis=ax)
            edge = [slice(None)] * labels.ndim
            edge[ax] = slice(0, 1) if shift == 1 else slice(-1, None)
            same = nb == labels
            same[tuple(edge)] = True  # the image border does not end a nucleus
            inside &= same
    dist = distance_map(inside, spacing)
    dist[fg] += min(spacing)  # edge pixels get one step, not zero
    n = int(labels.max())
    peak = np.zeros(n + 1, np.float32)
    if n:
        peak[1:] = ndi.maximum(dist, labels, index=np.arange(1, n + 1))
    norm = np.where(fg, dist / np.maximum(peak[labels], 1e-6), 0.0).astype(np.float32)
    return np.stack([fg.astype(np.float32), norm])


def targets_to_labels(
    foreground: np.ndarray,
    centre: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    fg_threshold: float = 0.5,
    seeds: str = "peaks",
    seed_threshold: float = 0.3,
    peak_radius_px: float = 4.0,
    smooth_px: float = 2.0,
    min_size: int = 8,
    prominence: float = 0.0,
) -> np.ndarray:
    """Instance labels from predicted foreground and centre maps.

    Parameters
    ----------
    foreground, centre : ndarray of float
        Probabilities / normalised distances in [0, 1], same shape.
    spacing : sequence of float, optional
        Voxel size per axis; the smoothing and the peak window are given in
        units of the finest axis and shrink along coarser ones (anisotropic z).
    fg_threshold : float
        Foreground cut.
    seeds : {"peaks", "threshold"}
        ``peaks``: one seed per local maximum of the smoothed centre map (within
        ``peak_radius_px``) above ``seed_threshold``; ``threshold``: the
        connected parts of the centre map above ``seed_threshold``.
    seed_threshold : float
        Lowest centre value of a seed.
    peak_radius_px : float
        Half-width of the window in which a seed must be the maximum.
    smooth_px : float
        Gaussian sigma applied to the centre map before finding peaks.
    min_size : int
        Objects with fewer pixels are dropped.
    prominence : float
        With ``peaks``: a seed must rise this much above the lowest pass to a
        higher seed (the h-maxima of the smoothed centre map), so a nucleus
        whose centre map has two bumps is not split, while nuclei that touch
        keep their seeds (the centre map falls to 0 between them). 0: off.

    Returns
    -------
    ndarray of int32
    """

    fg = foreground > fg_threshold
    if seeds == "peaks":
        unit = np.asarray(spacing or (1.0,) * fg.ndim, float)
        unit = unit.min() / unit
        landscape = centre.astype(np.float32, copy=False)
        if smooth_px > 0:
            landscape = ndi.gaussian_filter(landscape, smooth_px * unit, mode="nearest")
        size = [2 * max(1, int(peak_radius_px * u + 1e-6)) + 1 for u in unit]
        peak = ndi.maximum_filter(landscape, size=size, mode="nearest")
        seeds_mask = (landscape >= peak) & (landscape > seed_threshold) & fg
        if prominence > 0:
            seeds_mask &= h_maxima(np.where(fg, landscape, 0.0), prominence).astype(bool)
    elif seeds == "threshold":
        landscape = centre
        seeds_mask = (centre > seed_threshold) & fg
    else:
        raise ConfigError(f"unknown seeding {seeds!r}; use peaks or threshold.")
    markers, n = ndi.label(seeds_mask)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    labels = watershed(-landscape, markers, mask=fg).astype(np.int32, copy=False)
    sizes = np.bincount(labels.ravel())
    tiny = sizes < min_size
    tiny[0] = False
    labels[tiny[labels]] = 0
    return labels


def postprocess(
    maps: tuple, spec: dict, spacing: Sequence[float] | None = None, *, sized: bool = False
) -> np.ndarray:
    """Labels of one crop's (foreground, centre) maps with the model's post-processing.

    ``sized``: the nuclei were brought to the model's typical size (the scan's
    diameter is known), so the model's ``postprocess_sized`` settings apply
    (more smoothing, prominent seeds only), where present; otherwise the
    ``postprocess`` settings, which must also serve nuclei of unknown size.
    """
    params = dict(spec.get("postprocess", {}))
    if sized:
        params.update(spec.get("postprocess_sized", {}))
    return targets_to_labels(*maps, spacing=spacing, **params)
