"""Drawing nuclei as normalised-distance scores and labels; clean-up and renumbering."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as connected_components

from cellseg.synth.params import SynthParams

_DRAW_BUDGET = 1 << 16  # padded crop pixels computed together


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
    p: SynthParams,
    shape_scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw every nucleus, resolving overlaps by the lowest normalised distance.

    `shape_scale` (n,) scales each nucleus's elongation and irregularity.
    Returns the score image (float32, 1 outside every nucleus), the raw labels
    (uint32, nucleus ``k`` drawn as ``k + 1``) and each nucleus's own size in
    pixels (its shape within the scan, before any competition).
    """
    ndim = len(shape)
    n = radii.size
    # Semi-axes: log-normal aspect factors normalised to keep the equivalent radius.
    log_aspect = rng.normal(0.0, p.aspect_sigma, (n, ndim))
    log_aspect -= log_aspect.mean(axis=1, keepdims=True)
    if shape_scale is not None:
        log_aspect *= shape_scale[:, None]
    semi_axes = radii[:, None] * np.exp(np.clip(log_aspect, -p.aspect_max, p.aspect_max))
    rotation = _random_rotations(rng, n, ndim)
    # u = M (x - c) maps the nucleus onto the unit disc (ball): M = diag(1/a) R^T.
    to_unit = np.swapaxes(rotation, 1, 2) / semi_axes[:, :, None]
    flatten = ndim == 3 and p.flatten_z != 1.0
    if flatten:
        # Squeeze along the plane axis: M S^-1 with S = diag(flatten_z, 1, 1).
        to_unit[:, :, 0] /= p.flatten_z
    # Radial perturbation: sum of Legendre polynomials P_2, P_3, P_4 of the
    # cosine between the direction and a random axis per term.
    n_terms = 3
    amplitudes = rng.normal(0.0, p.irregularity, (n, n_terms))
    if shape_scale is not None:
        amplitudes *= shape_scale[:, None]
    total = np.abs(amplitudes).sum(axis=1, keepdims=True)
    amplitudes *= np.minimum(1.0, p.max_perturbation / np.maximum(total, 1e-12))
    axes = rng.standard_normal((n, n_terms, ndim))
    axes /= np.linalg.norm(axes, axis=2, keepdims=True)
    # Linear forms on (x - c): row j gives u . axis_j; the first ndim rows give u itself.
    forms = np.concatenate([to_unit, np.einsum("ntk,nkd->ntd", axes, to_unit)], axis=1)
    # Bounding box: half-extent of the ellipsoid along each axis, times the largest radius.
    reach = 1.0 + np.abs(amplitudes).sum(axis=1)
    cov = np.einsum("nij,nj,nkj->nik", rotation, semi_axes**2, rotation)
    half = np.sqrt(np.einsum("nii->ni", cov)) * reach[:, None]
    if flatten:
        half[:, 0] *= p.flatten_z
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
    raw: np.ndarray, own_size: np.ndarray, min_size: int, min_keep_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep each nucleus's largest piece, drop small remnants, renumber in raster order.

    Returns the final labels and, for final id ``i``, the index of its nucleus
    at position ``i - 1`` of the second array.
    """
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
    enough = (piece_size[largest] >= min_keep_fraction * own_size[nucleus]) & (
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
