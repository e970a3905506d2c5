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

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
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
    elif seeds == "threshold":
        landscape = centre
        seeds_mask = (centre > seed_threshold) & fg
    else:
        raise ConfigError(f"unknown seeding {seeds!r}; use peaks or threshold.")
    markers, n = ndi.label(seeds_mask)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    labels = watershed(-landscape, markers, mask=fg).astype(np.int32, copy=False)
    if seeds == "peaks" and prominence > 0:
        labels = merge_shallow_basins(labels, landscape, n, prominence)
    sizes = np.bincount(labels.ravel())
    tiny = sizes < min_size
    tiny[0] = False
    labels[tiny[labels]] = 0
    return labels


#: One of each pair of opposite neighbour steps (full connectivity, as h-maxima use).
_HALF_NEIGHBOURHOOD = {
    nd: [d for d in itertools.product((-1, 0, 1), repeat=nd) if d > (0,) * nd] for nd in (2, 3)
}


def merge_shallow_basins(
    labels: np.ndarray, landscape: np.ndarray, n: int, prominence: float
) -> np.ndarray:
    """Merge each basin whose peak rises less than `prominence` above its pass to a higher one.

    The basins (labels ``1..n`` of a watershed of ``-landscape``) are joined
    from the highest pass down, as the landscape's upper level sets join
    (Kruskal on the basins' adjacency graph; a pass is the highest point of a
    shared border, the lower of two neighbouring pixels). When two groups
    meet, the one with the lower peak ends there: its rise above the pass
    (its dynamics) is its prominence. Less than `prominence`: its pixels join
    the basin across that pass. The seeds kept are those the landscape's
    h-maxima would keep (but for the pass being read between pixels), without
    their cost: a morphological reconstruction over the whole crop, seconds
    for a stack tile.

    Examples
    --------
    >>> lab = np.array([[1, 1, 2, 2, 3, 3]])
    >>> land = np.array([[0.5, 0.9, 0.88, 0.95, 0.2, 0.6]])
    >>> merge_shallow_basins(lab, land, 3, 0.1).tolist()
    [[2, 2, 2, 2, 3, 3]]
    """
    if n < 2:
        return labels
    inside = labels > 0
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, labels[inside], landscape[inside])  # (no sort, unlike ndi.maximum)
    keys, passes = [], []
    for step in _HALF_NEIGHBOURHOOD[labels.ndim]:
        head = tuple(
            slice(0, -1) if d > 0 else slice(1, None) if d < 0 else slice(None) for d in step
        )
        tail = tuple(
            slice(1, None) if d > 0 else slice(0, -1) if d < 0 else slice(None) for d in step
        )
        a, b = labels[head], labels[tail]
        border = (a != b) & (a > 0) & (b > 0)
        la, lb = a[border].astype(np.int64), b[border].astype(np.int64)
        keys.append(np.minimum(la, lb) * (n + 1) + np.maximum(la, lb))
        passes.append(np.minimum(landscape[head][border], landscape[tail][border]))
    key, height = np.concatenate(keys), np.concatenate(passes)
    if not len(key):
        return labels
    order = np.lexsort((height, key))
    key, height = key[order], height[order]
    last = np.r_[key[1:] != key[:-1], True]  # the highest pass of each pair
    key, height = key[last], height[last]
    ends = np.stack([key // (n + 1), key % (n + 1)], axis=1)

    tree = np.arange(n + 1)  # joined groups of the level sets; a root is its group's highest basin
    into = np.arange(n + 1)  # where a basin's pixels go

    def root(parent: np.ndarray, i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for e in np.argsort(-height, kind="stable"):
        a, b = int(ends[e, 0]), int(ends[e, 1])
        ra, rb = root(tree, a), root(tree, b)
        if ra == rb:
            continue
        if (peak[ra], -ra) < (peak[rb], -rb):
            ra, rb, a, b = rb, ra, b, a  # ra: the group with the higher peak
        if peak[rb] - height[e] < prominence:  # the lower group ends here, too shallow
            into[root(into, rb)] = root(into, a)
        tree[rb] = ra
    mapping = np.array([root(into, i) for i in range(n + 1)], dtype=labels.dtype)
    return mapping[labels]


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
