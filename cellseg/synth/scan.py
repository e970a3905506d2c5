"""Synthesizing a scan: placement, shapes, clean-up and rendering in one fixed order."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cellseg.errors import ConfigError
from cellseg.synth.params import (
    SynthParams,
    SynthSample,
    _check_arguments,
    _resolve_params,
    sample_params,
)
from cellseg.synth.placement import (
    _DAUGHTER,
    _FRAGMENT,
    _NUCLEUS,
    _divide_and_fragment,
    _place_nuclei,
)
from cellseg.synth.render import _render, _to_dtype
from cellseg.synth.shapes import _clean_labels, _draw_nuclei

_MIN_SIZE = {2: 20, 3: 60}  # pixels (voxels) for a nucleus to be kept, by default
_SMALL_BODY_SHAPE = 0.3  # daughters and fragments: this much of the usual irregularity


def synthesize_scan(
    shape: tuple[int, ...],
    *,
    spacing: tuple[float, ...] | None = None,
    seed: int | np.random.Generator = 0,
    params: SynthParams | None = None,
    **overrides: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize a fluorescence-nuclei scan and its ground-truth labels.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, columns)`` for 2D or ``(planes, rows, columns)`` for 3D.
    spacing : tuple of float, optional
        Pixel size in µm per axis. Default: ``params.spacing``, else 0.5
        in-plane and 2.0 between planes.
    seed : int or numpy.random.Generator
        Seed of the random generator (or the generator itself); the same
        arguments give identical output.
    params : SynthParams, optional
        All knobs of the generator; default `SynthParams()`.
    **overrides
        Fields of `SynthParams` to replace, e.g. ``diameter_um=(6.0, 11.0)``
        (range of equivalent diameters in µm), ``density=0.5`` (rough covered
        fraction, in (0, 1]) or ``dtype=np.uint16``.

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
        If an argument or parameter is out of range or unknown.

    Examples
    --------
    >>> image, labels = synthesize_scan((128, 128), seed=1)
    >>> image.dtype, labels.dtype, image.shape
    (dtype('uint16'), dtype('uint32'), (128, 128))
    >>> ids = np.unique(labels[labels > 0])
    >>> bool(np.array_equal(ids, np.arange(1, ids.size + 1)))
    True
    """
    sample = synthesize_sample(shape, spacing=spacing, seed=seed, params=params, **overrides)
    return sample.image, sample.labels


def synthesize_sample(
    shape: tuple[int, ...],
    *,
    spacing: tuple[float, ...] | None = None,
    seed: int | np.random.Generator = 0,
    params: SynthParams | None = None,
    **overrides: Any,
) -> SynthSample:
    """Like `synthesize_scan`, returning the scan with all of its truth.

    Examples
    --------
    >>> sample = synthesize_sample((96, 96), seed=2, dividing_fraction=0.3)
    >>> sample.dividing_pairs.shape[1], sample.debris_mask.any()
    (2, np.False_)
    """
    params = _resolve_params(params, overrides)
    if spacing is None:
        spacing = params.spacing
    shape, spacing_arr, dtype = _check_arguments(shape, spacing, params)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _synthesize(shape, spacing_arr, params, dtype, rng)


def training_pair(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    ndim: int | None = None,
    *,
    setting: str = "train",
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A random training sample: parameters from `sample_params`, then a scan.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; the same generator state gives the same sample.
    shape : tuple of int
        ``(rows, columns)`` or ``(planes, rows, columns)``.
    ndim : int, optional
        2 or 3; must match ``len(shape)`` when given.
    setting : {"train", "heldout", "wide"}
        Which parameter distribution to draw from (see `sample_params`).

    Returns
    -------
    image : ndarray of float32
        Camera counts (ADU), not normalised.
    labels : ndarray of uint32
        Nuclei 1..N, as in `synthesize_scan`.
    spacing : tuple of float
        Pixel size in µm per axis.

    Examples
    --------
    >>> image, labels, spacing = training_pair(np.random.default_rng(0), (64, 64))
    >>> image.dtype, labels.dtype, len(spacing)
    (dtype('float32'), dtype('uint32'), 2)
    """
    shape = tuple(int(s) for s in shape)
    if ndim is not None and ndim != len(shape):
        raise ConfigError(f"shape {shape} does not have {ndim} axes")
    params = sample_params(rng, len(shape), setting)
    sample = synthesize_sample(shape, seed=rng, params=params)
    return sample.image, sample.labels, sample.spacing


def _synthesize(
    shape: tuple[int, ...],
    spacing: np.ndarray,
    p: SynthParams,
    dtype: np.dtype,
    rng: np.random.Generator,
) -> SynthSample:
    ndim = len(shape)
    extent = np.asarray(shape, dtype=np.float64) * spacing

    centres, radii = _place_nuclei(rng, extent, p)
    kind = np.zeros(radii.size, dtype=np.int8)
    pairs = np.zeros((0, 2), dtype=np.int64)
    if p.dividing_fraction > 0 or p.fragmented_fraction > 0:
        centres, radii, kind, pairs = _divide_and_fragment(rng, centres, radii, p)
    shape_scale = None if not np.any(kind) else np.where(kind == _NUCLEUS, 1.0, _SMALL_BODY_SHAPE)
    score, raw_labels, own_size = _draw_nuclei(rng, shape, spacing, centres, radii, p, shape_scale)
    min_size = _MIN_SIZE[ndim] if p.min_size is None else int(p.min_size)
    labels, kept = _clean_labels(raw_labels, own_size, min_size, p.min_keep_fraction)
    del raw_labels

    n = centres.shape[0]
    brightness = np.clip(rng.lognormal(0.0, p.brightness_sigma, n), *p.brightness_range)
    texture_strength = rng.uniform(*p.texture_strength, n)
    if np.any(kind == _DAUGHTER):
        daughters = kind == _DAUGHTER
        brightness[daughters] *= rng.uniform(*p.dividing_brightness, np.count_nonzero(daughters))
    if np.any(kind == _FRAGMENT):
        fragments = kind == _FRAGMENT
        brightness[fragments] *= rng.uniform(*p.fragment_brightness, np.count_nonzero(fragments))
        texture_strength[fragments] *= 0.3
    if p.dim_fraction > 0:
        dim = rng.random(n) < p.dim_fraction
        brightness[dim] = rng.uniform(*p.dim_brightness, np.count_nonzero(dim))
    if p.bright_fraction > 0:
        bright = rng.random(n) < p.bright_fraction
        factor = np.exp(rng.uniform(*np.log(p.bright_brightness), np.count_nonzero(bright)))
        brightness[bright] = factor
        texture_strength[bright] *= 0.5
    brightness = np.maximum(brightness, _visibility_floor(p))

    image, debris = _render(
        rng,
        labels,
        score,
        spacing,
        p,
        centres[kept],
        radii[kept],
        brightness[kept],
        texture_strength[kept],
    )
    # Dividing pairs whose two daughters both survived, as final label ids.
    label_of = np.zeros(n, dtype=np.int64)
    label_of[kept] = np.arange(1, kept.size + 1)
    pair_labels = label_of[pairs]
    pair_labels = pair_labels[np.all(pair_labels > 0, axis=1)].astype(np.uint32)
    return SynthSample(
        image=_to_dtype(image, dtype, p.full_scale_adu),
        labels=labels,
        spacing=tuple(float(s) for s in spacing),
        params=p,
        dividing_pairs=pair_labels,
        debris_mask=debris,
    )


def _visibility_floor(p: SynthParams) -> float:
    """Smallest brightness factor at which a nucleus stands out of the local background.

    A nucleus must exceed both three times the per-pixel noise of the brightest
    background and a quarter of that background (against its unevenness), and
    the brightest cell body around it (the cytoplasm); where a stack loses
    light with depth or blurs out of focus, it must do so at the worst plane.
    """
    background = p.background_e * p.background_jitter[1]
    background *= 1.0 + 2.0 * p.background_field + 0.5 * p.background_gradient
    haze = p.nucleus_e * p.haze_brightness[1] * (1.0 + p.haze_density) if p.haze_density else 0.0
    local = background + haze + p.glow * p.nucleus_e
    noise = math.sqrt(local * (2.0 if p.excess_noise else 1.0) + p.read_noise**2)
    floor = max(max(3.0 * noise, 0.25 * local) / p.nucleus_e, 2.0 * p.cytoplasm)
    dimming = (1.0 - 0.9 * p.depth_attenuation) * (1.0 - p.defocus) * (1.0 - p.vignetting)
    return floor / dimming
