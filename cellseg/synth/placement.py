"""Placing nuclei: isolated ones, dense clusters, a thinned bulk; division, fragments."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from cellseg.synth.fields import _smooth_field_at, _uniform_in_ball
from cellseg.synth.params import SynthParams

_BULK_JAMMING = {2: 0.75, 3: 0.62}  # rough coverage of the bulk packing before thinning
_MAX_ROUNDS = 12
_NUCLEUS, _DAUGHTER, _FRAGMENT = 0, 1, 2


def _place_nuclei(
    rng: np.random.Generator, extent: np.ndarray, p: SynthParams
) -> tuple[np.ndarray, np.ndarray]:
    """Return nucleus centres (n, ndim) in µm and equivalent radii (n,) in µm."""
    ndim = extent.size
    density = float(p.density)
    d_lo, d_hi = float(p.diameter_um[0]), float(p.diameter_um[1])
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
    n_isolated = max(1, round(p.isolated_fraction * n_target))
    for _ in range(_MAX_ROUNDS):
        missing = n_isolated - placed.count
        if missing <= 0:
            break
        points = rng.uniform(0.0, 1.0, (4 * missing, ndim)) * extent
        placed.add(points, sample_radii(points.shape[0]), p.isolated_gap, np.array([missing]))

    # Dense clusters: nuclei drawn in a disc (ball) sized for tight packing.
    n_in_clusters = round(p.cluster_fraction * n_target)
    size_lo, size_hi = int(p.cluster_sizes[0]), int(p.cluster_sizes[1])
    sizes: list[int] = []
    while sum(sizes) < n_in_clusters:
        size = int(rng.integers(size_lo, size_hi + 1))
        sizes.append(min(size, max(size_lo, n_in_clusters - sum(sizes))))
    if sizes:
        goal = np.asarray(sizes)
        cluster_centres = rng.uniform(0.0, 1.0, (goal.size, ndim)) * extent
        cluster_radii = r_mean * (goal / p.cluster_packing) ** (1.0 / ndim)
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
                points[inside], radii[inside], p.cluster_gap, missing, group=group[inside]
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
        accepted = placed.add(points, radii, p.bulk_gap, np.array([n_candidates]))
        if accepted.size < 0.02 * n_jammed:
            break
    points, radii = placed.points[n_fixed:], placed.radii[n_fixed:]
    field = _smooth_field_at(rng, points, extent, p.density_cell_um)
    weight = np.maximum(1.0 + p.density_contrast * field, 0.05)
    # Thin by covered size, not count: the packing favours small nuclei. Overlaps
    # later take back part of the placed size, hence the allowance.
    size = unit * radii**ndim
    fixed_size = float(np.sum(unit * placed.radii[:n_fixed] ** ndim))
    wanted = p.overlap_allowance * density * volume - fixed_size
    keep_probability = np.minimum(1.0, _solve_scale(weight, size, wanted) * weight)
    keep = np.concatenate([np.ones(n_fixed, dtype=bool), rng.random(radii.size) < keep_probability])
    return placed.points[keep], placed.radii[keep]


def _divide_and_fragment(
    rng: np.random.Generator, centres: np.ndarray, radii: np.ndarray, p: SynthParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Replace some nuclei by dividing pairs and some by apoptotic fragments.

    Returns centres, radii, the kind of each nucleus and the (k, 2) indices
    of the two daughters of each dividing pair.
    """
    n, ndim = centres.shape
    u = rng.random(n)
    divide = u < p.dividing_fraction
    fragment = ~divide & (u < p.dividing_fraction + p.fragmented_fraction)
    whole = ~(divide | fragment)

    # Daughters: two small round nuclei whose shapes overlap, so they touch.
    parent = np.flatnonzero(divide)
    axis = _uniform_in_ball(rng, parent.size, ndim)
    if ndim == 3:
        axis[:, 0] *= 0.25  # cells on a substrate divide mostly along it
    axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-12)
    size = radii[parent] * rng.uniform(*p.daughter_size, parent.size)
    asymmetry = rng.uniform(0.9, 1.1, parent.size)
    r_a, r_b = size * asymmetry, size / asymmetry
    separation = rng.uniform(*p.daughter_gap, parent.size) * (r_a + r_b)
    c_a = centres[parent] - axis * (separation * r_a / (r_a + r_b))[:, None]
    c_b = centres[parent] + axis * (separation * r_b / (r_a + r_b))[:, None]
    daughter_centres = np.stack([c_a, c_b], axis=1).reshape(-1, ndim)
    daughter_radii = np.stack([r_a, r_b], axis=1).ravel()

    # Fragments: a few small bodies scattered over the nucleus's footprint.
    owner = np.flatnonzero(fragment)
    count = rng.integers(p.fragment_count[0], p.fragment_count[1] + 1, owner.size)
    owner = np.repeat(owner, count)
    offsets = _uniform_in_ball(rng, owner.size, ndim) * (0.8 * radii[owner, None])
    fragment_centres = centres[owner] + offsets
    fragment_radii = radii[owner] * rng.uniform(*p.fragment_size, owner.size)

    n_whole = int(np.count_nonzero(whole))
    new_centres = np.concatenate([centres[whole], daughter_centres, fragment_centres])
    new_radii = np.concatenate([radii[whole], daughter_radii, fragment_radii])
    kind = np.concatenate(
        [
            np.full(n_whole, _NUCLEUS, dtype=np.int8),
            np.full(daughter_radii.size, _DAUGHTER, dtype=np.int8),
            np.full(fragment_radii.size, _FRAGMENT, dtype=np.int8),
        ]
    )
    pairs = n_whole + np.arange(2 * parent.size).reshape(-1, 2)
    return new_centres, new_radii, kind, pairs


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
