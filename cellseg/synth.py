"""Synthetic fluorescence-nuclei scans with ground-truth instance labels.

A scan is built in physical units (µm) and then rendered on the pixel grid:

1. *Placement*: nucleus centres and sizes are drawn by random sequential
   adsorption with a soft hard-core rule (two centres stay at least
   ``f * (r_i + r_j)`` apart). A few isolated nuclei come first (large ``f``),
   then a few dense clusters (small ``f``, nuclei press against each other),
   then the bulk: a nearly jammed packing thinned by a smooth random density
   field, so that crowded and sparse regions alternate.
2. *Shapes*: each nucleus is an ellipse (2D) or ellipsoid (3D) with random
   orientation and aspect, whose radius is perturbed by low-order angular
   harmonics. Each is computed on a small crop around its bounding box as a
   normalised distance ("score": < 1 inside, 0 at the centre). Where nuclei
   overlap, a pixel goes to the nucleus it is more inside (lowest score), so
   labels touch without overlapping.
3. *Clean-up*: a nucleus split by its neighbours keeps only its largest
   piece; one reduced to less than half of its own size, or smaller than a
   visible minimum, is dropped. Ids are renumbered 1..N in raster order of
   their first pixel.
4. *Rendering*: per-nucleus brightness and chromatin texture, slightly dimmer
   edges, Gaussian optical blur (in 3D much wider between planes), an
   uneven smooth background, then Poisson shot noise, camera offset and
   Gaussian read noise.

Everything is drawn from ``numpy.random.default_rng(seed)`` in a fixed order,
so the same arguments give byte-identical arrays.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cellseg.errors import ConfigError

__all__ = ["synthesize_scan", "write_synthetic_scan", "default_spacing"]

# Placement: minimum centre distance as a fraction of the sum of radii.
_F_ISOLATED = 1.4
_F_CLUSTER = 0.6
_F_BULK = 0.8
_ISOLATED_FRACTION = 0.005  # of the target number of nuclei
_CLUSTER_FRACTION = 0.2
_CLUSTER_SIZES = (6, 25)  # nuclei per cluster
_CLUSTER_PACKING = 0.8  # area (volume) fraction of a cluster's disc (ball)
_DENSITY_CELL_UM = 40.0  # correlation length of the bulk density field
_DENSITY_CONTRAST = 0.8  # relative spread of the bulk density field
_OVERLAP_ALLOWANCE = 1.1  # placed size per unit of wanted covered size
_BULK_JAMMING = {2: 0.75, 3: 0.62}  # rough coverage of the bulk packing before thinning
_MAX_ROUNDS = 12

# Shapes.
_MAX_PERTURBATION = 0.3  # bound on the sum of |harmonic amplitudes|
_DRAW_BUDGET = 1 << 16  # padded crop pixels computed together
_MIN_KEEP_FRACTION = 0.5  # of the nucleus's own drawn size
_MIN_SIZE = {2: 20, 3: 60}  # pixels (voxels) for a nucleus to be kept

# Rendering (photo-electrons; the camera gain is 1 ADU per electron).
_NUCLEUS_E = 900.0
_BACKGROUND_E = 120.0
_CAMERA_OFFSET = 100.0
_READ_NOISE = 3.0
_TEXTURE_SIGMA_UM = 0.5
_PSF_SIGMA_UM = (1.2, 0.35)  # (between planes, in-plane)
_BACKGROUND_CELL_UM = 150.0
_FULL_SCALE_ADU = 4095.0  # 8-bit outputs are rescaled from this range


def default_spacing(ndim: int) -> tuple[float, ...]:
    """Return the default pixel size in µm: 0.5 in-plane, 2.0 between planes.

    Parameters
    ----------
    ndim : int
        2 for (row, column) scans, 3 for (plane, row, column) scans.

    Returns
    -------
    tuple of float
        One size per axis, in µm.

    Examples
    --------
    >>> default_spacing(3)
    (2.0, 0.5, 0.5)
    """
    if ndim == 2:
        return (0.5, 0.5)
    if ndim == 3:
        return (2.0, 0.5, 0.5)
    raise ConfigError(f"synthetic scans are 2D or 3D, not {ndim}D")


def synthesize_scan(
    shape: tuple[int, ...],
    *,
    spacing: tuple[float, ...] | None = None,
    seed: int = 0,
    diameter_um: tuple[float, float] = (6.0, 11.0),
    density: float = 0.5,
    dtype: DTypeLike = np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize a fluorescence-nuclei scan and its ground-truth labels.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, columns)`` for 2D or ``(planes, rows, columns)`` for 3D.
    spacing : tuple of float, optional
        Pixel size in µm per axis. Default: 0.5 in-plane, 2.0 between planes.
    seed : int
        Seed of the random generator; the same arguments give identical output.
    diameter_um : (float, float)
        Range of the nuclei's equivalent diameters (diameter of the disc or
        ball of the same area or volume), in µm. Elongated nuclei are longer
        than this along their major axis.
    density : float
        Rough fraction of the area (volume) covered by nuclei, in (0, 1].
        Crowding saturates the coverage near 0.65 in 2D and 0.5 in 3D.
    dtype : data-type
        Type of the image: an integer type (values are camera counts with an
        offset of about 100; 8-bit types are rescaled to fit) or a float type.

    Returns
    -------
    image : ndarray of `dtype`, shape `shape`
        The rendered scan.
    labels : ndarray of uint32, shape `shape`
        0 for background, nuclei numbered 1..N in raster order of their first
        pixel. Labels touch but never overlap; each is one face-connected piece.

    Raises
    ------
    ConfigError
        If an argument is out of range.

    Examples
    --------
    >>> image, labels = synthesize_scan((128, 128), seed=1)
    >>> image.dtype, labels.dtype, image.shape
    (dtype('uint16'), dtype('uint32'), (128, 128))
    >>> ids = np.unique(labels[labels > 0])
    >>> bool(np.array_equal(ids, np.arange(1, ids.size + 1)))
    True
    """
    shape, spacing_arr, dtype = _check_arguments(shape, spacing, diameter_um, density, dtype)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    extent = np.asarray(shape, dtype=np.float64) * spacing_arr

    centres, radii = _place_nuclei(rng, extent, diameter_um, density)
    score, raw_labels, own_size = _draw_nuclei(rng, shape, spacing_arr, centres, radii)
    labels, kept = _clean_labels(raw_labels, own_size, _MIN_SIZE[ndim])
    del raw_labels

    n = centres.shape[0]
    brightness = np.clip(rng.lognormal(0.0, 0.35, n), 0.4, 3.0)
    texture_strength = rng.uniform(0.08, 0.3, n)
    image = _render(rng, labels, score, spacing_arr, brightness[kept], texture_strength[kept])
    return _to_dtype(image, dtype), labels


def write_synthetic_scan(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    *,
    shape: tuple[int, ...],
    spacing: tuple[float, ...] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[Path, Path | None]:
    """Synthesize a scan and write it as OME-TIFF, with its labels.

    Both files carry the axes (``YX`` or ``ZYX``) and the physical pixel sizes
    in µm in their OME-XML. Each is written to a temporary name in its folder
    and moved into place when complete, so no partial file is ever visible
    under the final name.

    Parameters
    ----------
    image_path : path
        Where to write the image (conventionally ``*.ome.tif``).
    labels_path : path, optional
        Where to write the uint32 label image; not written if None.
    shape, spacing, seed
        As in `synthesize_scan`.
    **kwargs
        Further arguments of `synthesize_scan` (``diameter_um``, ``density``,
        ``dtype``).

    Returns
    -------
    image_path : Path
    labels_path : Path or None

    Examples
    --------
    >>> import tempfile, tifffile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     image_path, labels_path = write_synthetic_scan(
    ...         Path(folder) / "scan.ome.tif", Path(folder) / "truth.tif", shape=(64, 64)
    ...     )
    ...     tifffile.imread(labels_path).dtype
    dtype('uint32')
    """
    image_path = Path(image_path)
    labels_out = None if labels_path is None else Path(labels_path)
    image, labels = synthesize_scan(shape, spacing=spacing, seed=seed, **kwargs)
    if spacing is None:
        spacing = default_spacing(len(shape))
    spacing_used = tuple(float(s) for s in spacing)
    # The OME UUID is derived from the arguments, so equal arguments give equal files.
    key = repr((tuple(shape), spacing_used, seed, sorted(kwargs.items(), key=str)))
    if labels_out is not None:
        metadata = _ome_metadata(spacing_used, _stem(labels_out), f"labels {key}")
        _write_tiff_atomic(labels_out, labels, metadata, compression="zlib")
    metadata = _ome_metadata(spacing_used, _stem(image_path), f"image {key}")
    _write_tiff_atomic(image_path, image, metadata, compression=None)
    return image_path, labels_out


# --------------------------------------------------------------------------- arguments


def _check_arguments(
    shape: Sequence[int],
    spacing: Sequence[float] | None,
    diameter_um: Sequence[float],
    density: float,
    dtype: DTypeLike,
) -> tuple[tuple[int, ...], np.ndarray, np.dtype]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"shape must be a tuple of 2 or 3 integers, got {shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ConfigError(
            f"shape must be (rows, columns) or (planes, rows, columns) of positive sizes, "
            f"got {shape!r}"
        )
    if spacing is None:
        spacing = default_spacing(len(shape))
    try:
        spacing_arr = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        spacing_arr = np.full(0, np.nan)
    if spacing_arr.shape != (len(shape),) or not np.all(np.isfinite(spacing_arr)):
        raise ConfigError(
            f"spacing (pixel size) must give one value in µm per axis of shape {shape}, "
            f"got {spacing!r}"
        )
    if np.any(spacing_arr <= 0):
        raise ConfigError(
            f"spacing (pixel size) must be positive, in µm per pixel, got {spacing!r}"
        )
    if (
        len(diameter_um) != 2
        or not all(math.isfinite(d) for d in diameter_um)
        or not 0 < diameter_um[0] <= diameter_um[1]
    ):
        raise ConfigError(
            f"diameter_um must be (smallest, largest) with 0 < smallest <= largest, "
            f"got {diameter_um!r}"
        )
    if not (math.isfinite(density) and 0 < density <= 1):
        raise ConfigError(f"density must be in (0, 1], got {density!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"dtype {dtype!r} is not a numpy data type") from None
    if dtype.kind not in "uif":
        raise ConfigError(f"dtype must be an integer or float type, got {dtype}")
    return shape, spacing_arr, dtype


# --------------------------------------------------------------------------- placement


def _place_nuclei(
    rng: np.random.Generator,
    extent: np.ndarray,
    diameter_um: Sequence[float],
    density: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return nucleus centres (n, ndim) in µm and equivalent radii (n,) in µm."""
    ndim = extent.size
    d_lo, d_hi = float(diameter_um[0]), float(diameter_um[1])
    # Mean area (volume) of a disc (ball) with a diameter uniform in [d_lo, d_hi].
    if d_hi > d_lo:
        mean_d_pow = (d_hi ** (ndim + 1) - d_lo ** (ndim + 1)) / ((ndim + 1) * (d_hi - d_lo))
    else:
        mean_d_pow = d_lo**ndim
    unit = math.pi if ndim == 2 else 4 * math.pi / 3  # size of a unit-radius disc (ball)
    mean_size = unit * mean_d_pow / 2**ndim
    r_mean = 0.25 * (d_lo + d_hi)
    volume = float(np.prod(extent))
    n_target = max(1, round(density * volume / mean_size))

    def sample_radii(n: int) -> np.ndarray:
        return 0.5 * rng.uniform(d_lo, d_hi, n)

    placed = _Placement(ndim, r_max=0.5 * d_hi)

    # Isolated nuclei: anywhere, with a wide empty ring around them.
    n_isolated = max(1, round(_ISOLATED_FRACTION * n_target))
    for _ in range(_MAX_ROUNDS):
        missing = n_isolated - placed.count
        if missing <= 0:
            break
        points = rng.uniform(0.0, 1.0, (4 * missing, ndim)) * extent
        placed.add(points, sample_radii(points.shape[0]), _F_ISOLATED, np.array([missing]))

    # Dense clusters: nuclei drawn in a disc (ball) sized for tight packing.
    n_in_clusters = round(_CLUSTER_FRACTION * n_target)
    sizes: list[int] = []
    while sum(sizes) < n_in_clusters:
        size = int(rng.integers(_CLUSTER_SIZES[0], _CLUSTER_SIZES[1] + 1))
        sizes.append(min(size, max(_CLUSTER_SIZES[0], n_in_clusters - sum(sizes))))
    if sizes:
        goal = np.asarray(sizes)
        cluster_centres = rng.uniform(0.0, 1.0, (goal.size, ndim)) * extent
        cluster_radii = r_mean * (goal / _CLUSTER_PACKING) ** (1.0 / ndim)
        got = np.zeros(goal.size, dtype=np.int64)
        for _ in range(3):
            missing = goal - got
            if not np.any(missing > 0):
                break
            group = np.repeat(np.arange(goal.size), 3 * np.maximum(missing, 0))
            offsets = _uniform_in_ball(rng, group.size, ndim) * cluster_radii[group, None]
            points = cluster_centres[group] + offsets
            inside = np.all((points >= 0) & (points < extent), axis=1)
            radii = sample_radii(group.size)
            accepted = placed.add(
                points[inside], radii[inside], _F_CLUSTER, missing, group=group[inside]
            )
            got += np.bincount(group[inside][accepted], minlength=goal.size)

    # The bulk: a near-jammed packing, thinned by a smooth random density field so
    # that crowded and sparse regions alternate, down to the target number.
    n_fixed = placed.count
    n_jammed = _BULK_JAMMING[ndim] * volume / mean_size
    for _ in range(_MAX_ROUNDS):
        n_candidates = int(1.5 * n_jammed) + 16
        points = rng.uniform(0.0, 1.0, (n_candidates, ndim)) * extent
        radii = sample_radii(n_candidates)
        accepted = placed.add(points, radii, _F_BULK, np.array([n_candidates]))
        if accepted.size < 0.02 * n_jammed:
            break
    points, radii = placed.points[n_fixed:], placed.radii[n_fixed:]
    weight = np.maximum(
        1.0 + _DENSITY_CONTRAST * _smooth_field_at(rng, points, extent, _DENSITY_CELL_UM), 0.05
    )
    # Thin by covered size, not count: the packing favours small nuclei. Overlaps
    # later take back part of the placed size, hence the allowance.
    size = unit * radii**ndim
    fixed_size = float(np.sum(unit * placed.radii[:n_fixed] ** ndim))
    wanted = _OVERLAP_ALLOWANCE * density * volume - fixed_size
    keep_probability = np.minimum(1.0, _solve_scale(weight, size, wanted) * weight)
    keep = np.concatenate([np.ones(n_fixed, dtype=bool), rng.random(radii.size) < keep_probability])
    return placed.points[keep], placed.radii[keep]


def _solve_scale(weight: np.ndarray, size: np.ndarray, total: float) -> float:
    """The scale ``s`` with ``sum(min(1, s * weight) * size) == total``, at least 0."""
    if total <= 0 or weight.size == 0:
        return 0.0
    hi = float(1.0 / weight.min())
    if total >= size.sum():
        return hi
    lo = 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.sum(np.minimum(1.0, mid * weight) * size) < total:
            lo = mid
        else:
            hi = mid
    return hi


class _Placement:
    """Nuclei placed so far, and the random sequential adsorption of new ones."""

    def __init__(self, ndim: int, r_max: float) -> None:
        self.points = np.zeros((0, ndim))
        self.radii = np.zeros(0)
        self.factors = np.zeros(0)
        self.r_max = r_max

    @property
    def count(self) -> int:
        return int(self.radii.size)

    def add(
        self,
        points: np.ndarray,
        radii: np.ndarray,
        factor: float,
        limits: np.ndarray,
        group: np.ndarray | None = None,
    ) -> np.ndarray:
        """Accept candidates in order, each if it respects every accepted nucleus.

        Candidate ``j`` conflicts with nucleus ``i`` when their centres are
        closer than ``max(f_i, f_j) * (r_i + r_j)``. Without limits, the result
        equals adding the candidates one by one; it is computed with array
        operations. At most
        ``limits[g]`` candidates of group ``g`` are accepted (candidates sorted
        by group; all in group 0 when `group` is None). Returns the indices of
        the accepted candidates.
        """
        n = points.shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if group is None:
            group = np.zeros(n, dtype=np.int64)
        factors = np.full(n, factor)
        f_max = max(factor, float(self.factors.max(initial=0.0)))
        reach = f_max * 2 * self.r_max
        tree = cKDTree(points)
        alive = np.ones(n, dtype=bool)
        if self.count:
            pairs = tree.sparse_distance_matrix(cKDTree(self.points), reach, output_type="ndarray")
            i, j, dist = pairs["i"], pairs["j"], pairs["v"]
            limit_dist = np.maximum(factors[i], self.factors[j]) * (radii[i] + self.radii[j])
            alive[i[dist < limit_dist]] = False
        pairs = tree.query_pairs(factor * 2 * self.r_max, output_type="ndarray")
        if pairs.size:
            i, j = pairs[:, 0], pairs[:, 1]
            dist = np.linalg.norm(points[i] - points[j], axis=1)
            conflict = dist < factor * (radii[i] + radii[j])
            # Each pair (earlier, later): the later candidate loses if the earlier lives.
            # Iterating to the fixed point reproduces the one-by-one order.
            earlier = np.minimum(i, j)[conflict]
            later = np.maximum(i, j)[conflict]
            base = alive.copy()
            while True:
                dead = np.zeros_like(alive)
                dead[later[alive[earlier]]] = True
                new_alive = base & ~dead
                if np.array_equal(new_alive, alive):
                    break
                alive = new_alive
        index = np.flatnonzero(alive)
        g = group[index]
        rank = np.arange(index.size) - np.searchsorted(g, g, side="left")
        index = index[rank < limits[g]]
        self.points = np.concatenate([self.points, points[index]])
        self.radii = np.concatenate([self.radii, radii[index]])
        self.factors = np.concatenate([self.factors, factors[index]])
        return index


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
    rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray, cell_um: float
) -> np.ndarray:
    """A smooth random field on the pixel grid, about unit variance, correlated over
    ``cell_um``: random lattice values interpolated one axis at a time.
    """
    shape = tuple(int(s) for s in shape)
    extent = np.asarray(shape) * spacing
    field, std = _field_lattice(rng, extent, cell_um)
    for axis, (size, sp) in enumerate(zip(shape, spacing, strict=True)):
        weights = _field_weights(np.arange(size) * sp, field.shape[axis], cell_um)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return (field / std).astype(np.float32)


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


# --------------------------------------------------------------------------- shapes


def _random_rotations(rng: np.random.Generator, n: int, ndim: int) -> np.ndarray:
    """Uniformly random rotation matrices, shape (n, ndim, ndim)."""
    if ndim == 2:
        angle = rng.uniform(0.0, 2 * math.pi, n)
        c, s = np.cos(angle), np.sin(angle)
        return np.stack([np.stack([c, -s], axis=-1), np.stack([s, c], axis=-1)], axis=-2)
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def _draw_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw every nucleus, resolving overlaps by the lowest normalised distance.

    Returns the score image (float32, 1 outside every nucleus), the raw labels
    (uint32, nucleus ``k`` drawn as ``k + 1``) and each nucleus's own size in
    pixels (its shape within the scan, before any competition).
    """
    ndim = len(shape)
    n = radii.size
    # Semi-axes: log-normal aspect factors normalised to keep the equivalent radius.
    log_aspect = rng.normal(0.0, 0.2, (n, ndim))
    log_aspect -= log_aspect.mean(axis=1, keepdims=True)
    semi_axes = radii[:, None] * np.exp(np.clip(log_aspect, -0.45, 0.45))
    rotation = _random_rotations(rng, n, ndim)
    # u = M (x - c) maps the nucleus onto the unit disc (ball): M = diag(1/a) R^T.
    to_unit = np.swapaxes(rotation, 1, 2) / semi_axes[:, :, None]
    # Radial perturbation: sum of Legendre polynomials P_2, P_3, P_4 of the
    # cosine between the direction and a random axis per term.
    n_terms = 3
    amplitudes = rng.normal(0.0, 0.06, (n, n_terms))
    total = np.abs(amplitudes).sum(axis=1, keepdims=True)
    amplitudes *= np.minimum(1.0, _MAX_PERTURBATION / np.maximum(total, 1e-12))
    axes = rng.standard_normal((n, n_terms, ndim))
    axes /= np.linalg.norm(axes, axis=2, keepdims=True)
    # Linear forms on (x - c): row j gives u . axis_j; the first ndim rows give u itself.
    forms = np.concatenate([to_unit, np.einsum("ntk,nkd->ntd", axes, to_unit)], axis=1)
    # Bounding box: half-extent of the ellipsoid along each axis, times the largest radius.
    reach = 1.0 + np.abs(amplitudes).sum(axis=1)
    cov = np.einsum("nij,nj,nkj->nik", rotation, semi_axes**2, rotation)
    half = np.sqrt(np.einsum("nii->ni", cov)) * reach[:, None]
    size = np.asarray(shape)
    lo = np.clip(np.floor((centres - half) / spacing).astype(np.int64), 0, size)
    hi = np.clip(np.ceil((centres + half) / spacing).astype(np.int64) + 1, 0, size)

    extent = hi - lo
    drawn = np.flatnonzero(np.all(extent > 0, axis=1))
    # Batches of nuclei with similar crop sizes, each computed as one padded array.
    order = drawn[np.argsort(np.prod(extent[drawn], axis=1), kind="stable")]
    score = np.ones(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint32)
    own_size = np.zeros(n, dtype=np.int64)
    for batch in _batches(order, extent):
        scores = _nucleus_scores(
            lo[batch],
            extent[batch].max(axis=0),
            spacing,
            centres[batch],
            forms[batch],
            amplitudes[batch],
        )
        for k, nucleus_score, low, ext in zip(
            batch.tolist(), scores, lo[batch].tolist(), extent[batch].tolist(), strict=True
        ):
            nucleus_score = nucleus_score[tuple(slice(0, e) for e in ext)]
            box = tuple(slice(a, a + e) for a, e in zip(low, ext, strict=True))
            best = score[box]
            win = nucleus_score < best
            np.copyto(best, nucleus_score, where=win)
            np.copyto(labels[box], np.uint32(k + 1), where=win)
            own_size[k] = np.count_nonzero(nucleus_score < 1.0)
    return score, labels, own_size


def _batches(order: np.ndarray, extent: np.ndarray) -> list[np.ndarray]:
    """Split `order` into consecutive batches whose padded crops stay cache-sized."""
    batches = []
    start = 0
    top = np.zeros(extent.shape[1], dtype=np.int64)
    for position, k in enumerate(order.tolist()):
        grown = np.maximum(top, extent[k])
        if position > start and (position - start + 1) * int(np.prod(grown)) > _DRAW_BUDGET:
            batches.append(order[start:position])
            start = position
            grown = extent[k]
        top = grown
    if start < order.size:
        batches.append(order[start:])
    return batches


def _nucleus_scores(
    lo: np.ndarray,
    extent: np.ndarray,
    spacing: np.ndarray,
    centres: np.ndarray,
    forms: np.ndarray,
    amplitudes: np.ndarray,
) -> np.ndarray:
    """Normalised distance of each pixel of each nucleus's crop, shape (batch, *extent).

    The score is ``|u| / radius(u / |u|)`` with ``u = forms[:, :ndim] @ (x - c)``:
    1 on the perturbed boundary, 0 at the centre.
    """
    batch, ndim = centres.shape
    offsets = []
    for axis in range(ndim):
        along = (lo[:, axis, None] + np.arange(extent[axis])) * spacing[axis]
        along -= centres[:, axis, None]
        view = [batch] + [1] * ndim
        view[1 + axis] = int(extent[axis])
        offsets.append(along.astype(np.float32).reshape(view))
    per_nucleus = (batch,) + (1,) * ndim
    forms = forms.astype(np.float32)
    amplitudes = amplitudes.astype(np.float32)

    def linear(row: int) -> np.ndarray:
        value = offsets[0] * forms[:, row, 0].reshape(per_nucleus)
        for axis in range(1, ndim):
            value = value + offsets[axis] * forms[:, row, axis].reshape(per_nucleus)
        return value

    u = linear(0)
    rho = u * u
    for row in range(1, ndim):
        u = linear(row)
        rho += u * u
    np.sqrt(rho, out=rho)
    inv = np.float32(1.0) / (rho + np.float32(1e-6))
    # Legendre polynomials P2, P3, P4 of the cosine to each term's axis.
    polynomials = (
        lambda t2, t: np.float32(1.5) * t2 - np.float32(0.5),
        lambda t2, t: t * (np.float32(2.5) * t2 - np.float32(1.5)),
        lambda t2, t: (np.float32(4.375) * t2 - np.float32(3.75)) * t2 + np.float32(0.375),
    )
    radius = np.ones_like(rho)
    for term, polynomial in enumerate(polynomials):
        t = linear(ndim + term)
        t *= inv
        radius += amplitudes[:, term].reshape(per_nucleus) * polynomial(t * t, t)
    rho /= radius
    return rho


def _clean_labels(
    raw: np.ndarray, own_size: np.ndarray, min_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep each nucleus's largest piece, drop small remnants, renumber in raster order.

    Returns the final labels and, for final id ``i``, the index of its nucleus
    at position ``i - 1`` of the second array.
    """
    from skimage.measure import label as connected_components

    # Face-connected pieces of equal label; numbered in raster order of first pixel.
    pieces = connected_components(raw, background=0, connectivity=1)
    n_pieces = int(pieces.max())
    piece_size = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
    piece_label = np.zeros(n_pieces + 1, dtype=np.int64)
    piece_label[pieces.ravel()] = raw.ravel()
    # Largest piece of each nucleus (ties: the earlier piece).
    ids = np.arange(1, n_pieces + 1)
    order = np.lexsort((ids, -piece_size[1:], piece_label[1:]))
    first = np.ones(order.size, dtype=bool)
    first[1:] = piece_label[1:][order[1:]] != piece_label[1:][order[:-1]]
    largest = ids[order[first]]
    nucleus = piece_label[largest] - 1
    enough = (piece_size[largest] >= _MIN_KEEP_FRACTION * own_size[nucleus]) & (
        piece_size[largest] >= min_size
    )
    keep_piece = np.zeros(n_pieces + 1, dtype=bool)
    keep_piece[largest[enough]] = True
    new_id = np.cumsum(keep_piece).astype(np.uint32)
    new_id[~keep_piece] = 0
    labels = new_id[pieces]
    del pieces
    kept = piece_label[np.flatnonzero(keep_piece)] - 1
    # Pieces come numbered in raster order already; make sure of it, cheaply.
    first = _first_pixels(labels, kept.size)
    if np.any(np.diff(first) < 0):
        order = np.argsort(first, kind="stable")
        lut = np.zeros(kept.size + 1, dtype=np.uint32)
        lut[order + 1] = np.arange(1, kept.size + 1, dtype=np.uint32)
        labels = lut[labels]
        kept = kept[order]
    return labels, kept


def _first_pixels(labels: np.ndarray, n: int) -> np.ndarray:
    """Flat index of the first pixel (raster order) of each id 1..n."""
    coords = np.zeros((labels.ndim, n), dtype=np.int64)
    for index, box in enumerate(ndi.find_objects(labels, max_label=n)):
        if box is None:
            continue
        # The first pixel lies in the first plane (row in 2D) of the bounding box.
        head = (slice(box[0].start, box[0].start + 1),) + box[1:]
        crop = labels[head]
        where = np.unravel_index(int(np.argmax(crop == index + 1)), crop.shape)
        coords[:, index] = [b.start + w for b, w in zip(box, where, strict=True)]
    return np.ravel_multi_index(tuple(coords), labels.shape)


# --------------------------------------------------------------------------- rendering


def _gaussian_sigma(sigma_um: float, spacing: np.ndarray) -> tuple[float, ...]:
    return tuple(float(sigma_um / s) for s in spacing)


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    score: np.ndarray,
    spacing: np.ndarray,
    brightness: np.ndarray,
    texture_strength: np.ndarray,
) -> np.ndarray:
    """Render expected camera counts from the labels, then add noise (float32 ADU)."""
    ndim = labels.ndim
    lut = np.concatenate([[0.0], brightness]).astype(np.float32)
    signal = lut[labels]
    # Slightly dimmer towards the edge (score 1 at the boundary).
    profile = score * score
    profile *= profile
    profile *= np.float32(-0.3)
    profile += np.float32(1.0)
    signal *= profile
    del profile
    # Chromatin texture: band-limited noise, stronger in some nuclei.
    texture = rng.standard_normal(labels.shape, dtype=np.float32)
    sigma = _gaussian_sigma(_TEXTURE_SIGMA_UM, spacing)
    texture = ndi.gaussian_filter(texture, sigma, output=np.float32, truncate=3.0)
    texture *= np.float32(1.0 / _filtered_noise_std(sigma, truncate=3.0))
    strength = np.concatenate([[0.0], texture_strength]).astype(np.float32)
    texture *= strength[labels]
    texture += np.float32(1.0)
    signal *= texture
    del texture
    np.maximum(signal, 0.0, out=signal)
    # Optical blur: in 3D much wider between planes than in-plane.
    psf = list(_gaussian_sigma(_PSF_SIGMA_UM[1], spacing))
    if ndim == 3:
        psf[0] = float(_PSF_SIGMA_UM[0] / spacing[0])
    signal = ndi.gaussian_filter(signal, psf, output=np.float32, truncate=3.0)
    signal *= np.float32(_NUCLEUS_E)
    # Uneven background: a random linear gradient and low-frequency variation.
    background = _smooth_field(rng, labels.shape, spacing, _BACKGROUND_CELL_UM)
    background *= np.float32(0.15)
    gradient = rng.normal(0.0, 1.0, ndim)
    gradient *= 0.35 / max(float(np.linalg.norm(gradient)), 1e-12)
    for axis, g in enumerate(gradient):
        ramp = np.linspace(-0.5, 0.5, labels.shape[axis], dtype=np.float32) * np.float32(g)
        background += ramp[tuple(slice(None) if a == axis else None for a in range(ndim))]
    background += np.float32(1.0)
    np.maximum(background, 0.3, out=background)
    background *= np.float32(_BACKGROUND_E * rng.uniform(0.7, 1.3))
    signal += background
    del background
    # Camera: Poisson shot noise, offset, Gaussian read noise.
    counts = rng.poisson(signal).astype(np.float32)
    del signal
    counts += np.float32(_CAMERA_OFFSET)
    read = rng.standard_normal(labels.shape, dtype=np.float32)
    read *= np.float32(_READ_NOISE)
    counts += read
    return counts


def _filtered_noise_std(sigma: Sequence[float], truncate: float) -> float:
    """Standard deviation of unit white noise after `ndi.gaussian_filter`."""
    var = 1.0
    for s in sigma:
        if s <= 0:
            continue
        radius = int(truncate * s + 0.5)
        x = np.arange(-radius, radius + 1)
        w = np.exp(-0.5 * (x / s) ** 2)
        w /= w.sum()
        var *= float(np.sum(w**2))
    return math.sqrt(var)


def _to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return image.astype(dtype)
    info = np.iinfo(dtype)
    if info.bits <= 8:
        image *= np.float32(info.max / _FULL_SCALE_ADU)
    np.rint(image, out=image)
    np.clip(image, max(info.min, 0), info.max, out=image)
    return image.astype(dtype)


# --------------------------------------------------------------------------- files


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _ome_metadata(spacing: tuple[float, ...], name: str, key: str) -> dict[str, Any]:
    axes = "YX" if len(spacing) == 2 else "ZYX"
    metadata: dict[str, Any] = {
        "axes": axes,
        "Name": name,
        "UUID": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'cellseg.synth:' + key)}",
        "PhysicalSizeX": spacing[-1],
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": spacing[-2],
        "PhysicalSizeYUnit": "µm",
    }
    if len(spacing) == 3:
        metadata["PhysicalSizeZ"] = spacing[0]
        metadata["PhysicalSizeZUnit"] = "µm"
    return metadata


def _write_tiff_atomic(
    path: Path, data: np.ndarray, metadata: dict[str, Any], compression: str | None
) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tifffile.imwrite(
            tmp,
            data,
            ome=True,
            photometric="minisblack",
            metadata=metadata,
            compression=compression,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
