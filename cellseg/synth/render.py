"""Rendering labels as a fluorescence image: brightness, texture, optics, background, camera."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from cellseg.synth.fields import _smooth_field, _uniform_in_ball, _upsample
from cellseg.synth.params import SynthParams

_EXACT_SHOT_NOISE_BELOW = 10.0  # electrons; see SynthParams.fast


def _gaussian_sigma(sigma_um: float, spacing: np.ndarray) -> tuple[float, ...]:
    return tuple(float(sigma_um / s) for s in spacing)


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    score: np.ndarray,
    spacing: np.ndarray,
    p: SynthParams,
    centres: np.ndarray,
    radii: np.ndarray,
    brightness: np.ndarray,
    texture_strength: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Render camera counts (float32 ADU) from the labels, with the debris mask.

    `centres`, `radii`, `brightness` and `texture_strength` describe the
    nucleus of each final id (row ``i - 1`` for id ``i``).
    """
    ndim = labels.ndim
    shape = labels.shape
    extent = np.asarray(shape) * spacing
    r_mean = 0.25 * (p.diameter_um[0] + p.diameter_um[1])
    lut = np.concatenate([[0.0], brightness]).astype(np.float32)
    signal = lut[labels]
    # Slightly dimmer (or brighter, for a rim) towards the edge (score 1 at the boundary).
    profile = score * score
    profile *= profile
    profile *= np.float32(-p.edge_dimming)
    profile += np.float32(1.0)
    signal *= profile
    del profile
    if p.contact_dimming > 0:
        signal[_contact_pixels(labels)] *= np.float32(1.0 - p.contact_dimming)
    if p.intranuclear_variation > 0:
        field = _smooth_field(rng, shape, spacing, r_mean, coarse=True)
        field *= np.float32(p.intranuclear_variation)
        field += np.float32(1.0)
        np.maximum(field, 0.2, out=field)
        signal *= field
        del field
    if p.nucleoli_count > 0 and radii.size:
        # Dark spots near each nucleus's centre.
        owner = np.repeat(np.arange(radii.size), rng.poisson(p.nucleoli_count, radii.size))
        points = centres[owner] + _uniform_in_ball(rng, owner.size, ndim) * (
            0.55 * radii[owner, None]
        )
        depth = rng.uniform(*p.nucleolus_depth, owner.size)
        dark = _splat(shape, spacing, points, depth, p.nucleolus_size * r_mean)
        np.minimum(dark, 0.9, out=dark)
        np.subtract(1.0, dark, out=dark)
        signal *= dark
        del dark
    # Chromatin texture: band-limited noise, stronger in some nuclei.
    texture = rng.standard_normal(shape, dtype=np.float32)
    sigma = _gaussian_sigma(p.texture_sigma_um, spacing)
    texture = ndi.gaussian_filter(texture, sigma, output=np.float32, truncate=3.0)
    texture *= np.float32(1.0 / _filtered_noise_std(sigma, truncate=3.0))
    strength = np.concatenate([[0.0], texture_strength]).astype(np.float32)
    texture *= strength[labels]
    texture += np.float32(1.0)
    if p.spot_count > 0 and radii.size:
        # Bright chromocentres scattered over each nucleus.
        owner = np.repeat(np.arange(radii.size), rng.poisson(p.spot_count, radii.size))
        points = centres[owner] + _uniform_in_ball(rng, owner.size, ndim) * (
            0.75 * radii[owner, None]
        )
        peak = rng.uniform(*p.spot_brightness, owner.size)
        texture += _splat(shape, spacing, points, peak, p.spot_sigma_um)
    signal *= texture
    del texture
    np.maximum(signal, 0.0, out=signal)
    debris = np.zeros(shape, dtype=bool)
    if p.debris_density > 0:
        specks = _debris(rng, labels, spacing, p)
        debris = specks > np.float32(0.05)
        signal += specks
        del specks
    if p.cytoplasm > 0 and radii.size:
        signal += _cytoplasm(rng, labels, spacing, p, r_mean)
    # Optical blur: in 3D much wider between planes than in-plane.
    psf = list(_gaussian_sigma(p.psf_sigma_um, spacing))
    if ndim == 3:
        psf[0] = float(p.psf_z_sigma_um / spacing[0])
    signal = ndi.gaussian_filter(signal, psf, output=np.float32, truncate=3.0)
    if ndim == 3 and p.defocus > 0:
        signal = _defocus(rng, signal, spacing, p, r_mean)
    if p.haze_density > 0:
        # Out-of-focus nuclei: soft blobs, not labelled.
        blob_um = p.haze_blur * r_mean
        blob_size = (2.0 * math.pi * blob_um**2) ** (ndim / 2.0)
        n_haze = int(rng.poisson(p.haze_density * float(np.prod(extent)) / blob_size))
        points = rng.uniform(0.0, 1.0, (n_haze, ndim)) * extent
        peak = rng.uniform(*p.haze_brightness, n_haze)
        signal += _splat(shape, spacing, points, peak, blob_um)
    if p.glow > 0:
        signal += np.float32(p.glow) * _wide_blur(signal, _gaussian_sigma(p.glow_sigma_um, spacing))
    signal *= np.float32(p.nucleus_e)
    if ndim == 3 and p.depth_attenuation > 0:
        ramp = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)
        ramp = ramp if rng.random() < 0.5 else ramp[::-1]
        signal *= (1.0 - np.float32(p.depth_attenuation) * ramp)[:, None, None]
    # Uneven background: a random linear gradient and low-frequency variation.
    background = _smooth_field(rng, shape, spacing, p.background_cell_um, coarse=p.fast)
    background *= np.float32(p.background_field)
    gradient = rng.normal(0.0, 1.0, ndim)
    gradient *= p.background_gradient / max(float(np.linalg.norm(gradient)), 1e-12)
    for axis, g in enumerate(gradient):
        ramp = np.linspace(-0.5, 0.5, shape[axis], dtype=np.float32) * np.float32(g)
        background += ramp[tuple(slice(None) if a == axis else None for a in range(ndim))]
    background += np.float32(1.0)
    np.maximum(background, 0.3, out=background)
    background *= np.float32(p.background_e * rng.uniform(*p.background_jitter))
    signal += background
    del background
    if p.vignetting > 0:
        signal *= _vignette(shape, p.vignetting)
    # Camera: shot noise (doubled by electron multiplication), gain, offset, read noise.
    if p.fast:
        counts = _shot_noise_fast(rng, signal, p.excess_noise)
    else:
        counts = rng.poisson(signal)
        if p.excess_noise:
            counts = rng.gamma(counts)
        counts = counts.astype(np.float32)
    del signal
    if p.gain != 1.0:
        counts *= np.float32(p.gain)
    counts += np.float32(p.camera_offset)
    read = rng.standard_normal(shape, dtype=np.float32)
    read *= np.float32(p.read_noise * p.gain)
    counts += read
    if p.bit_depth is not None:
        np.rint(counts, out=counts)
        np.clip(counts, 0.0, float(2**p.bit_depth - 1), out=counts)
    return counts, debris


def _cytoplasm(
    rng: np.random.Generator,
    labels: np.ndarray,
    spacing: np.ndarray,
    p: SynthParams,
    r_mean: float,
) -> np.ndarray:
    """A dim, unlabelled cell body around each nucleus (0 inside nuclei).

    Each background pixel belongs to its nearest nucleus; its brightness falls
    off with the distance to that nucleus's edge over a reach drawn per cell,
    and a smooth random field makes the cell outline irregular.
    """
    dist, nearest = ndi.distance_transform_edt(labels == 0, sampling=spacing, return_indices=True)
    owner = labels[tuple(nearest)]
    del nearest
    n = int(labels.max())
    reach = np.concatenate([[1.0], rng.uniform(*p.cytoplasm_reach, n)]) * r_mean
    level = np.concatenate([[0.0], rng.uniform(0.4, 1.6, n)]) * p.cytoplasm
    edge = _smooth_field(rng, labels.shape, spacing, r_mean, coarse=True)
    edge *= np.float32(0.35)
    edge += np.float32(1.0)
    falloff = dist.astype(np.float32) / (reach[owner] * edge).astype(np.float32)
    del dist, edge
    out = np.clip(1.0 - falloff * falloff, 0.0, 1.0).astype(np.float32)
    out *= level[owner].astype(np.float32)
    out[labels > 0] = 0.0
    return out


def _defocus(
    rng: np.random.Generator, signal: np.ndarray, spacing: np.ndarray, p: SynthParams, r_mean: float
) -> np.ndarray:
    """Blend the planes at one end of a stack with a blurred copy (up to 60 %), more so
    towards the end."""
    nz = signal.shape[0]
    start = int(round(nz * (1.0 - p.defocus)))
    weight = 0.6 * np.clip((np.arange(nz, dtype=np.float32) - start) / max(nz - start, 1), 0.0, 1.0)
    if rng.random() < 0.5:
        weight = weight[::-1]
    sigma = [0.6 * r_mean / float(spacing[0]), 0.3 * r_mean / float(spacing[1])]
    sigma.append(0.3 * r_mean / float(spacing[2]))
    blurred = ndi.gaussian_filter(signal, sigma, output=np.float32, truncate=2.0)
    w = weight[:, None, None]
    return signal * (1.0 - w) + blurred * w


def _vignette(shape: tuple[int, ...], amount: float) -> np.ndarray:
    """Radial in-plane falloff: 1 at the centre, ``1 - amount`` at the corners."""
    ys = np.linspace(-1.0, 1.0, shape[-2], dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, shape[-1], dtype=np.float32)[None, :]
    r2 = (ys * ys + xs * xs) / np.float32(2.0)
    return np.float32(1.0) - np.float32(amount) * r2


def _shot_noise_fast(
    rng: np.random.Generator, signal: np.ndarray, excess_noise: bool
) -> np.ndarray:
    """Shot noise: exact where few electrons are expected, Gaussian elsewhere."""
    factor = np.float32(2.0 if excess_noise else 1.0)
    counts = rng.standard_normal(signal.shape, dtype=np.float32)
    spread = signal * factor
    np.sqrt(spread, out=spread)
    counts *= spread
    del spread
    counts += signal
    low = signal < _EXACT_SHOT_NOISE_BELOW
    if np.any(low):
        exact = rng.poisson(signal[low])
        if excess_noise:
            exact = rng.gamma(exact)
        counts[low] = exact
    return counts


def _contact_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels of a nucleus that face a pixel of another nucleus."""
    contact = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        c = np.moveaxis(contact, axis, 0)
        touch = (a[:-1] != a[1:]) & (a[:-1] > 0) & (a[1:] > 0)
        c[:-1] |= touch
        c[1:] |= touch
    return contact


def _debris(
    rng: np.random.Generator, labels: np.ndarray, spacing: np.ndarray, p: SynthParams
) -> np.ndarray:
    """Bright specks (one to three dots in a row) on the background, away from nuclei."""
    ndim = labels.ndim
    shape = np.asarray(labels.shape)
    extent = shape * spacing
    n = int(rng.poisson(p.debris_density * float(np.prod(extent)) / 10.0**ndim))
    dots = rng.integers(1, 4, n)
    start = rng.uniform(0.0, 1.0, (n, ndim)) * extent
    direction = _uniform_in_ball(rng, n, ndim)
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    peak = rng.uniform(*p.debris_brightness, n)
    owner = np.repeat(np.arange(n), dots)
    step = np.arange(owner.size) - np.searchsorted(owner, owner)
    points = start[owner] + direction[owner] * (1.5 * p.debris_size_um * step)[:, None]
    # A speck is dropped if any of its dots lies on or next to a nucleus.
    reach = np.ceil(2.5 * p.debris_size_um / spacing).astype(np.int64) + 1
    index = np.rint(points / spacing).astype(np.int64)
    on_nucleus = np.zeros(owner.size, dtype=bool)
    probes = [np.zeros(ndim, dtype=np.int64)]
    for axis in range(ndim):
        for sign in (-1, 1):
            probe = np.zeros(ndim, dtype=np.int64)
            probe[axis] = sign * reach[axis]
            probes.append(probe)
    for probe in probes:
        at = np.clip(index + probe, 0, shape - 1)
        on_nucleus |= labels[tuple(at.T)] > 0
    bad = np.zeros(n, dtype=bool)
    bad[owner[on_nucleus]] = True
    keep = ~bad[owner]
    return _splat(labels.shape, spacing, points[keep], peak[owner[keep]], p.debris_size_um)


def _kernel_peak(sigma: Sequence[float], truncate: float = 3.0) -> float:
    """Centre value of the kernel of `ndi.gaussian_filter` (peak of a filtered impulse)."""
    peak = 1.0
    for s in sigma:
        if s <= 0:
            continue
        radius = int(truncate * s + 0.5)
        w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        peak *= float(1.0 / w.sum())
    return peak


def _splat(
    shape: Sequence[int],
    spacing: np.ndarray,
    points: np.ndarray,
    peak: np.ndarray,
    sigma_um: float,
) -> np.ndarray:
    """Gaussian spots of the given peaks at points (n, ndim) in µm, as a float32 image.

    Wide spots are computed on a coarser grid and interpolated back.
    """
    shape = tuple(int(s) for s in shape)
    sigma = np.asarray(_gaussian_sigma(sigma_um, spacing))
    radius = (3.0 * sigma + 0.5).astype(np.int64)
    if points.shape[0] * np.prod(2 * radius + 1) < 0.25 * np.prod(shape):
        return _splat_direct(shape, spacing, points, peak, sigma, radius)
    factor = np.maximum(1, (sigma // 3).astype(np.int64))
    coarse = tuple(int(c) for c in -(-np.asarray(shape) // factor))
    index = np.rint(points / spacing).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.asarray(shape)), axis=1)
    index = index[inside] // factor
    flat = np.ravel_multi_index(tuple(index.T), coarse)
    image = np.bincount(flat, weights=peak[inside], minlength=int(np.prod(coarse)))
    image = image.astype(np.float32).reshape(coarse)
    sigma_coarse = tuple(float(s) for s in sigma / factor)
    image = ndi.gaussian_filter(image, sigma_coarse, output=np.float32, truncate=3.0)
    image *= np.float32(1.0 / _kernel_peak(sigma_coarse))
    return _upsample(image, factor, shape)


def _splat_direct(
    shape: tuple[int, ...],
    spacing: np.ndarray,
    points: np.ndarray,
    peak: np.ndarray,
    sigma: np.ndarray,
    radius: np.ndarray,
) -> np.ndarray:
    """`_splat` for few small spots: each spot's kernel added around its pixel."""
    ndim = len(shape)
    index = np.rint(points / spacing).astype(np.int64)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in radius.tolist()], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)  # (m, ndim)
    # The kernel of `ndi.gaussian_filter` (normalised per axis), scaled to a peak of 1.
    kernel = np.ones(offsets.shape[0])
    for axis in range(ndim):
        if sigma[axis] > 0:
            kernel *= np.exp(-0.5 * (offsets[:, axis] / sigma[axis]) ** 2)
        else:
            kernel *= offsets[:, axis] == 0
    at = index[:, None, :] + offsets[None, :, :]  # (n, m, ndim)
    inside = np.all((at >= 0) & (at < np.asarray(shape)), axis=2)
    values = peak[:, None] * kernel[None, :]
    flat = np.ravel_multi_index(tuple(at[inside].T), shape)
    image = np.bincount(flat, weights=values[inside], minlength=int(np.prod(shape)))
    return image.astype(np.float32).reshape(shape)


def _wide_blur(image: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """`ndi.gaussian_filter` with a wide kernel, on a coarser grid where it is wide."""
    sigma_arr = np.asarray(sigma, dtype=np.float64)
    factor = np.maximum(1, (sigma_arr // 3).astype(np.int64))
    if np.all(factor == 1):
        return ndi.gaussian_filter(image, tuple(sigma_arr), output=np.float32, truncate=3.0)
    shape = np.asarray(image.shape)
    coarse = -(-shape // factor)
    padded = np.pad(image, [(0, int(c * f - s)) for c, f, s in zip(coarse, factor, shape)], "edge")
    blocks = padded.reshape([v for c, f in zip(coarse, factor) for v in (int(c), int(f))])
    small = blocks.mean(axis=tuple(range(1, 2 * image.ndim, 2)), dtype=np.float32)
    small = ndi.gaussian_filter(small, tuple(sigma_arr / factor), output=np.float32, truncate=3.0)
    return _upsample(small, factor, image.shape)


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


def _to_dtype(image: np.ndarray, dtype: np.dtype, full_scale_adu: float) -> np.ndarray:
    if dtype.kind == "f":
        return image.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    if info.bits <= 8:
        image *= np.float32(info.max / full_scale_adu)
    np.rint(image, out=image)
    np.clip(image, max(info.min, 0), info.max, out=image)
    return image.astype(dtype)
