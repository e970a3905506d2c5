"""Synthetic fluorescence-nuclei scans with ground-truth instance labels.

A scan is built in physical units (µm) and then rendered on the pixel grid.
Every knob of the generator lives in one `SynthParams`; its defaults give the
demo scans, and `sample_params` draws a fresh, widely varied set for each
training sample (`training_pair`).

1. *Placement*: nucleus centres and sizes are drawn by random sequential
   adsorption with a soft hard-core rule (two centres stay at least
   ``f * (r_i + r_j)`` apart). A few isolated nuclei come first (large ``f``),
   then a few dense clusters (small ``f``, nuclei press against each other),
   then the bulk: a nearly jammed packing thinned by a smooth random density
   field, so that crowded and sparse regions alternate. Optionally some nuclei
   are then replaced by a dividing pair (two small, round, tightly touching
   daughters) or by a few small fragments (apoptotic bodies).
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
4. *Rendering*: per-nucleus brightness (some nuclei dim, but never below a
   visibility floor set by the noise), smooth variation within nuclei, dimmer
   edges and seams, dark nucleolus-like spots, chromatin texture (and bright
   chromocentre spots), unlabelled debris specks, Gaussian optical blur (in 3D
   much wider between planes), unlabelled out-of-focus nuclei and glow, an
   uneven smooth background, then Poisson shot noise (optionally with
   electron-multiplication excess noise), camera gain and offset, Gaussian read
   noise and the camera's bit depth.

Everything is drawn from one ``numpy.random.Generator`` in a fixed order, so
the same arguments give byte-identical arrays. A feature that is switched off
draws nothing, so the defaults reproduce the scans of earlier versions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cellseg.errors import ConfigError

__all__ = [
    "SynthParams",
    "SynthSample",
    "default_spacing",
    "sample_params",
    "synthesize_sample",
    "synthesize_scan",
    "training_pair",
    "write_synthetic_scan",
]

_BULK_JAMMING = {2: 0.75, 3: 0.62}  # rough coverage of the bulk packing before thinning
_MAX_ROUNDS = 12
_DRAW_BUDGET = 1 << 16  # padded crop pixels computed together
_MIN_SIZE = {2: 20, 3: 60}  # pixels (voxels) for a nucleus to be kept, by default
_SMALL_BODY_SHAPE = 0.3  # daughters and fragments: this much of the usual irregularity
_NUCLEUS, _DAUGHTER, _FRAGMENT = 0, 1, 2
_SETTINGS = ("train", "heldout")
_EXACT_SHOT_NOISE_BELOW = 10.0  # electrons; see SynthParams.fast


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the synthetic scan generator; the defaults make the demo scans.

    Lengths are in µm, brightness factors are relative to a typical nucleus
    (1.0), light is in photo-electrons (e), and ``(lo, hi)`` pairs are ranges
    drawn from uniformly per nucleus (or per speck) unless said otherwise.
    A feature whose amount is 0 is off and draws no random numbers.

    Attributes
    ----------
    spacing : tuple of float, optional
        Pixel size per axis; used when `synthesize_scan` gets no ``spacing``.
    dtype : data-type
        Type of the image: an integer type (camera counts; 8-bit types are
        rescaled from `full_scale_adu`) or a float type.
    diameter_um : (float, float)
        Range of the nuclei's equivalent diameters (disc or ball of the same
        area or volume). Elongated nuclei are longer along their major axis.
    density : float
        Rough fraction of the area (volume) covered by nuclei, in (0, 1].
        Crowding saturates the coverage near 0.65 in 2D and 0.5 in 3D.
    isolated_fraction, isolated_gap : float
        Share of the nuclei placed first with an empty ring around them, and
        their minimum centre distance as a fraction of the sum of radii.
    cluster_fraction, cluster_sizes, cluster_packing, cluster_gap
        Share of the nuclei in dense clusters, nuclei per cluster ``(lo, hi)``,
        the area (volume) fraction of a cluster's disc (ball), and the minimum
        centre distance in clusters (below 1: nuclei press against each other).
    bulk_gap : float
        Minimum centre distance of the remaining nuclei, as above.
    density_cell_um, density_contrast : float
        Correlation length and relative spread of the bulk's density field.
    overlap_allowance : float
        Placed size per unit of wanted covered size (overlaps take some back).
    aspect_sigma, aspect_max : float
        Spread and bound of the log semi-axis ratios (elongation).
    flatten_z : float
        3D only: thickness of nuclei along the plane axis relative to their
        in-plane size (adherent cells are flat); 1 keeps them round.
    irregularity, max_perturbation : float
        Spread and bound (sum of absolute amplitudes) of the radial harmonics.
    min_keep_fraction : float
        A nucleus cut by its neighbours below this fraction of its size is dropped.
    min_size : int, optional
        Smallest kept nucleus in pixels (voxels); default 20 (2D), 60 (3D).
    dividing_fraction : float
        Share of nuclei replaced by a dividing pair (two labelled daughters).
    daughter_size, daughter_gap, dividing_brightness : (float, float)
        Daughter radius relative to the parent, daughter centre distance as a
        fraction of the sum of their radii (below 1: they touch), brightness factor.
    fragmented_fraction : float
        Share of nuclei replaced by apoptotic fragments (each labelled if big enough).
    fragment_count, fragment_size, fragment_brightness
        Fragments per nucleus ``(lo, hi)``, their radius relative to the
        nucleus, their brightness factor.
    brightness_sigma, brightness_range
        Log-normal spread of brightness between nuclei and its clip range.
    dim_fraction, dim_brightness
        Share of dim nuclei and their brightness. No nucleus is rendered below
        a floor where it stays visible above the background noise.
    intranuclear_variation : float
        Relative spread of a smooth brightness field within nuclei.
    edge_dimming : float
        Relative dimming at a nucleus's edge; negative gives a bright rim.
    contact_dimming : float
        Relative dimming of pixels where two nuclei touch (a dark seam).
    texture_strength, texture_sigma_um
        Per-nucleus strength and correlation length of the chromatin texture.
    spot_count, spot_sigma_um, spot_brightness
        Bright chromocentre spots: mean count per nucleus, size, relative peak.
    nucleoli_count, nucleolus_size, nucleolus_depth
        Dark nucleolus-like spots: mean count per nucleus, size (Gaussian
        sigma) relative to the mean nucleus radius, relative darkening.
    debris_density, debris_size_um, debris_brightness
        Unlabelled bright specks on the background: mean count per
        (10 µm)^ndim, their size (Gaussian sigma), peak brightness factor.
    haze_density, haze_brightness, haze_blur
        Unlabelled out-of-focus nuclei (soft Gaussian blobs): how many cover
        a point on average (count times ``(2 pi sigma^2)^(ndim/2)`` per
        area/volume), peak brightness factor, blur (Gaussian sigma) relative
        to the mean radius.
    glow, glow_sigma_um
        Share of the signal scattered into a wide glow, and its width.
    psf_sigma_um, psf_z_sigma_um
        Optical blur (Gaussian sigma) in-plane and between planes (3D).
    nucleus_e : float
        Photo-electrons per pixel of a typical nucleus (sets the shot-noise SNR).
    background_e, background_jitter
        Background photo-electrons per pixel and its per-scan factor range.
    background_field, background_cell_um, background_gradient
        Relative spread and correlation length of the smooth background, and
        the relative strength of a linear gradient across the scan.
    excess_noise : bool
        Electron-multiplying camera: shot noise twice the Poisson variance.
    fast : bool
        Trade exactness for speed: shot noise is Gaussian where 10 or more
        electrons are expected (exact Poisson below) and smooth background
        fields are interpolated from a coarser grid.
    gain, camera_offset, read_noise
        ADU per electron, offset in ADU, Gaussian read noise in electrons.
    bit_depth : int, optional
        When set, counts are rounded and clipped to ``[0, 2**bit_depth - 1]``
        (saturating bright pixels).
    full_scale_adu : float
        Camera counts that map to the top of an 8-bit output type.
    """

    spacing: tuple[float, ...] | None = None
    dtype: DTypeLike = np.uint16
    # placement
    diameter_um: tuple[float, float] = (6.0, 11.0)
    density: float = 0.5
    isolated_fraction: float = 0.005
    isolated_gap: float = 1.4
    cluster_fraction: float = 0.2
    cluster_sizes: tuple[int, int] = (6, 25)
    cluster_packing: float = 0.8
    cluster_gap: float = 0.6
    bulk_gap: float = 0.8
    density_cell_um: float = 40.0
    density_contrast: float = 0.8
    overlap_allowance: float = 1.1
    # shapes
    aspect_sigma: float = 0.2
    aspect_max: float = 0.45
    flatten_z: float = 1.0
    irregularity: float = 0.06
    max_perturbation: float = 0.3
    min_keep_fraction: float = 0.5
    min_size: int | None = None
    # dividing and fragmented nuclei
    dividing_fraction: float = 0.0
    daughter_size: tuple[float, float] = (0.55, 0.75)
    daughter_gap: tuple[float, float] = (0.65, 0.8)
    dividing_brightness: tuple[float, float] = (1.2, 2.0)
    fragmented_fraction: float = 0.0
    fragment_count: tuple[int, int] = (3, 7)
    fragment_size: tuple[float, float] = (0.2, 0.4)
    fragment_brightness: tuple[float, float] = (1.5, 3.0)
    # brightness and texture
    brightness_sigma: float = 0.35
    brightness_range: tuple[float, float] = (0.4, 3.0)
    dim_fraction: float = 0.0
    dim_brightness: tuple[float, float] = (0.1, 0.35)
    intranuclear_variation: float = 0.0
    edge_dimming: float = 0.3
    contact_dimming: float = 0.0
    texture_strength: tuple[float, float] = (0.08, 0.3)
    texture_sigma_um: float = 0.5
    spot_count: float = 0.0
    spot_sigma_um: float = 0.4
    spot_brightness: tuple[float, float] = (0.4, 1.0)
    nucleoli_count: float = 0.0
    nucleolus_size: float = 0.15
    nucleolus_depth: tuple[float, float] = (0.3, 0.7)
    # debris and haze
    debris_density: float = 0.0
    debris_size_um: float = 0.3
    debris_brightness: tuple[float, float] = (0.5, 3.0)
    haze_density: float = 0.0
    haze_brightness: tuple[float, float] = (0.1, 0.4)
    haze_blur: float = 0.8
    glow: float = 0.0
    glow_sigma_um: float = 15.0
    # optics and camera
    psf_sigma_um: float = 0.35
    psf_z_sigma_um: float = 1.2
    nucleus_e: float = 900.0
    background_e: float = 120.0
    background_jitter: tuple[float, float] = (0.7, 1.3)
    background_field: float = 0.15
    background_cell_um: float = 150.0
    background_gradient: float = 0.35
    excess_noise: bool = False
    fast: bool = False
    gain: float = 1.0
    camera_offset: float = 100.0
    read_noise: float = 3.0
    bit_depth: int | None = None
    full_scale_adu: float = 4095.0


@dataclass(frozen=True)
class SynthSample:
    """A synthetic scan with its truth.

    Attributes
    ----------
    image : ndarray
        The rendered scan, of the parameters' ``dtype``.
    labels : ndarray of uint32
        0 for background, nuclei 1..N (see `synthesize_scan`).
    spacing : tuple of float
        Pixel size in µm per axis.
    params : SynthParams
        The parameters the scan was made with.
    dividing_pairs : ndarray of uint32, shape (k, 2)
        Label ids of the two daughters of each dividing pair that survived.
    debris_mask : ndarray of bool
        Pixels covered by debris (before blur); never labelled.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    params: SynthParams
    dividing_pairs: np.ndarray
    debris_mask: np.ndarray


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


def sample_params(rng: np.random.Generator, ndim: int, setting: str = "train") -> SynthParams:
    """Draw a random, widely varied set of generator parameters for one sample.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    ndim : int
        2 or 3.
    setting : {"train", "heldout"}
        ``"train"``: nucleus diameters of 4–16 µm (2D; 4–14 µm in 3D) at
        8–64 px (8–40 px in-plane in 3D), smooth chromatin texture, a normal
        camera (Poisson shot noise) from very low to high SNR.
        ``"heldout"``: a shifted distribution not used in training, to
        measure generalisation: larger nuclei (16–26 µm in 2D, 14–22 µm in
        3D) at 14–48 px (14–32 px in 3D), chromatin with bright chromocentre
        spots, and an electron-multiplying camera (excess shot noise) at low
        light. Everything else is drawn alike in both settings. The median
        diameter is drawn in µm and in pixels; their ratio is the pixel size.

    Returns
    -------
    SynthParams
        With ``spacing`` set and ``dtype`` float32.

    Examples
    --------
    >>> params = sample_params(np.random.default_rng(0), 2)
    >>> 4.0 <= float(np.sqrt(np.prod(params.diameter_um))) <= 16.0
    True
    """
    if ndim not in (2, 3):
        raise ConfigError(f"synthetic scans are 2D or 3D, not {ndim}D")
    if setting not in _SETTINGS:
        raise ConfigError(f"setting must be one of {_SETTINGS}, got {setting!r}")
    heldout = setting == "heldout"

    def uniform(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    def log_uniform(lo: float, hi: float) -> float:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def sometimes(probability: float, value: float) -> float:
        return value if rng.random() < probability else 0.0

    # Size: the median diameter in µm and in pixels set the pixel size.
    if ndim == 2:
        d_um = log_uniform(16.0, 26.0) if heldout else log_uniform(4.0, 16.0)
        d_px = log_uniform(14.0, 48.0) if heldout else log_uniform(8.0, 64.0)
    else:
        d_um = log_uniform(14.0, 22.0) if heldout else log_uniform(4.0, 14.0)
        d_px = log_uniform(14.0, 32.0) if heldout else log_uniform(8.0, 40.0)
    px = d_um / d_px
    spread = math.sqrt(log_uniform(1.15, 2.2))
    flatten = uniform(0.5, 1.0) if ndim == 3 else 1.0
    if ndim == 3:
        thickness = d_um * flatten
        z = min(px * log_uniform(1.0, 6.0), thickness / 3.0)
        spacing: tuple[float, ...] = (max(z, px), px, px)
    else:
        spacing = (px, px)

    # Optics, in pixels first: never so blurred that nuclei merge.
    psf_um = px * min(log_uniform(0.4, 2.5), 0.12 * d_px)
    psf_z_um = max(psf_um, min(psf_um * uniform(2.0, 4.0), 0.3 * d_um * flatten))

    # Light and camera.
    if heldout:
        nucleus_e = log_uniform(8.0, 150.0)
        read_e = log_uniform(0.1, 2.0)
    else:
        nucleus_e = log_uniform(15.0, 3000.0)
        read_e = log_uniform(0.5, 15.0)
    background_e = nucleus_e * log_uniform(0.02, 0.6)
    brightness_sigma = uniform(0.1, 0.6)
    bit_depth = int(rng.choice([8, 10, 12, 16], p=[0.3, 0.1, 0.35, 0.25]))
    full = 2.0**bit_depth - 1.0
    offset = full * uniform(0.0, 0.06)
    peak_e = nucleus_e * math.exp(2.0 * brightness_sigma) * 1.3 + background_e
    gain = uniform(0.25, 1.1) * (full - offset) / peak_e

    texture_lo = uniform(0.0, 0.2)
    return SynthParams(
        spacing=spacing,
        dtype=np.float32,
        diameter_um=(d_um / spread, d_um * spread),
        density=log_uniform(0.02, 0.12) if rng.random() < 0.25 else uniform(0.12, 0.7),
        isolated_fraction=uniform(0.0, 0.1),
        isolated_gap=uniform(1.2, 2.0),
        cluster_fraction=uniform(0.0, 0.7),
        cluster_sizes=(int(rng.integers(2, 7)), int(rng.integers(7, 41))),
        cluster_packing=uniform(0.6, 1.0),
        cluster_gap=uniform(0.45, 0.75),
        bulk_gap=uniform(0.65, 1.1),
        density_cell_um=d_um * uniform(3.0, 12.0),
        density_contrast=uniform(0.0, 1.5),
        aspect_sigma=uniform(0.05, 0.4),
        aspect_max=uniform(0.3, 0.8),
        flatten_z=flatten,
        irregularity=uniform(0.0, 0.12),
        max_perturbation=uniform(0.2, 0.45),
        dividing_fraction=sometimes(0.7, uniform(0.0, 0.12)),
        fragmented_fraction=sometimes(0.6, uniform(0.0, 0.06)),
        brightness_sigma=brightness_sigma,
        brightness_range=(0.2, 4.0),
        dim_fraction=sometimes(0.6, uniform(0.0, 0.25)),
        intranuclear_variation=uniform(0.0, 0.35),
        edge_dimming=uniform(-0.15, 0.6),
        contact_dimming=sometimes(0.7, uniform(0.0, 0.5)),
        texture_strength=(texture_lo, texture_lo + uniform(0.05, 0.45)),
        texture_sigma_um=max(0.5 * px, d_um * uniform(0.02, 0.1)),
        spot_count=log_uniform(2.0, 10.0) if heldout else 0.0,
        spot_sigma_um=max(0.5 * px, d_um * uniform(0.03, 0.06)),
        spot_brightness=(0.3, uniform(0.5, 1.2)),
        nucleoli_count=sometimes(0.7, uniform(0.0, 3.0)),
        nucleolus_size=uniform(0.08, 0.18),
        nucleolus_depth=(uniform(0.1, 0.4), uniform(0.4, 0.8)),
        debris_density=sometimes(0.7, log_uniform(0.005, 0.3)),
        debris_size_um=px * min(uniform(0.4, 1.2), 0.06 * d_px),
        debris_brightness=(0.3, uniform(1.0, 3.0)),
        haze_density=sometimes(0.6, uniform(0.0, 0.6)),
        haze_brightness=(0.05, uniform(0.1, 0.4)),
        haze_blur=uniform(0.5, 1.5),
        glow=sometimes(0.5, uniform(0.0, 0.3)),
        glow_sigma_um=d_um * uniform(1.0, 4.0),
        psf_sigma_um=psf_um,
        psf_z_sigma_um=psf_z_um,
        nucleus_e=nucleus_e,
        background_e=background_e,
        background_field=uniform(0.0, 0.5),
        background_cell_um=d_um * uniform(5.0, 30.0),
        background_gradient=uniform(0.0, 1.2),
        excess_noise=heldout,
        fast=True,
        gain=gain,
        camera_offset=offset,
        read_noise=read_e,
        bit_depth=bit_depth,
    )


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
    setting : {"train", "heldout"}
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
        Further arguments of `synthesize_scan` (``params`` or fields of
        `SynthParams` such as ``diameter_um``, ``density``, ``dtype``).

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
    sample = synthesize_sample(shape, spacing=spacing, seed=seed, **kwargs)
    image, labels = sample.image, sample.labels
    spacing_used = sample.spacing
    # The OME UUID is derived from the arguments, so equal arguments give equal files.
    key = repr((tuple(shape), spacing_used, seed, sorted(kwargs.items(), key=str)))
    if labels_out is not None:
        metadata = _ome_metadata(spacing_used, _stem(labels_out), f"labels {key}")
        _write_tiff_atomic(labels_out, labels, metadata, compression="zlib")
    metadata = _ome_metadata(spacing_used, _stem(image_path), f"image {key}")
    _write_tiff_atomic(image_path, image, metadata, compression=None)
    return image_path, labels_out


# --------------------------------------------------------------------------- arguments


def _resolve_params(params: SynthParams | None, overrides: dict[str, Any]) -> SynthParams:
    if params is None:
        params = SynthParams()
    elif not isinstance(params, SynthParams):
        raise ConfigError(f"params must be a SynthParams, got {type(params).__name__}")
    if overrides:
        known = {f.name for f in dataclasses.fields(SynthParams)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown synthetic scan parameter(s) {unknown}; known: {sorted(known)}"
            )
        params = dataclasses.replace(params, **overrides)
    return params


def _check_arguments(
    shape: Sequence[int],
    spacing: Sequence[float] | None,
    params: SynthParams,
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
    _check_params(params)
    try:
        dtype = np.dtype(params.dtype)
    except TypeError:
        raise ConfigError(f"dtype {params.dtype!r} is not a numpy data type") from None
    if dtype.kind not in "uif":
        raise ConfigError(f"dtype must be an integer or float type, got {dtype}")
    return shape, spacing_arr, dtype


def _check_params(p: SynthParams) -> None:
    """Raise ConfigError naming the first parameter that is out of range."""
    for field in dataclasses.fields(p):
        name, value = field.name, getattr(p, field.name)
        if name in ("spacing", "dtype") or value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        try:
            ok = all(math.isfinite(float(v)) for v in values)
        except (TypeError, ValueError):
            ok = False
        if isinstance(value, tuple) and ok:
            ok = len(value) == 2 and value[0] <= value[1]
        if not ok:
            kind = "(smallest, largest) with smallest <= largest" if len(values) > 1 else "finite"
            raise ConfigError(f"synthetic scan parameter {name} must be {kind}, got {value!r}")
    d = p.diameter_um
    if not 0 < d[0] <= d[1]:
        raise ConfigError(
            f"diameter_um must be (smallest, largest) with 0 < smallest <= largest, got {d!r}"
        )
    if not 0 < p.density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {p.density!r}")
    for name in (
        "isolated_fraction",
        "cluster_fraction",
        "min_keep_fraction",
        "dividing_fraction",
        "fragmented_fraction",
        "dim_fraction",
        "glow",
    ):
        if not 0 <= getattr(p, name) <= 1:
            raise ConfigError(f"{name} must be in [0, 1], got {getattr(p, name)!r}")
    if p.dividing_fraction + p.fragmented_fraction > 1:
        raise ConfigError("dividing_fraction + fragmented_fraction must be at most 1")
    positive = (
        "isolated_gap",
        "cluster_packing",
        "cluster_gap",
        "bulk_gap",
        "density_cell_um",
        "overlap_allowance",
        "flatten_z",
        "texture_sigma_um",
        "spot_sigma_um",
        "nucleolus_size",
        "debris_size_um",
        "haze_blur",
        "glow_sigma_um",
        "background_cell_um",
        "nucleus_e",
        "gain",
    )
    for name in positive:
        if not getattr(p, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(p, name)!r}")
    non_negative = (
        "density_contrast",
        "aspect_sigma",
        "aspect_max",
        "irregularity",
        "max_perturbation",
        "intranuclear_variation",
        "contact_dimming",
        "spot_count",
        "nucleoli_count",
        "debris_density",
        "haze_density",
        "psf_sigma_um",
        "psf_z_sigma_um",
        "background_e",
        "background_field",
        "background_gradient",
        "read_noise",
    )
    for name in non_negative:
        if not getattr(p, name) >= 0:
            raise ConfigError(f"{name} must be at least 0, got {getattr(p, name)!r}")
    for name in (
        "cluster_sizes",
        "daughter_size",
        "daughter_gap",
        "fragment_count",
        "fragment_size",
        "brightness_range",
        "dim_brightness",
        "texture_strength",
        "background_jitter",
    ):
        if getattr(p, name)[0] < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(p, name)!r}")
    if p.cluster_sizes[0] < 1 or p.fragment_count[0] < 1:
        raise ConfigError("cluster_sizes and fragment_count must be at least 1")
    if p.min_size is not None and p.min_size < 1:
        raise ConfigError(f"min_size must be at least 1 pixel, got {p.min_size!r}")
    if p.bit_depth is not None and not 1 <= p.bit_depth <= 32:
        raise ConfigError(f"bit_depth must be in 1..32, got {p.bit_depth!r}")
    if not 0 < p.brightness_range[0]:
        raise ConfigError(f"brightness_range must be positive, got {p.brightness_range!r}")


# --------------------------------------------------------------------------- the scan


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
    background and a quarter of that background (against its unevenness).
    """
    background = p.background_e * p.background_jitter[1]
    background *= 1.0 + 2.0 * p.background_field + 0.5 * p.background_gradient
    haze = p.nucleus_e * p.haze_brightness[1] * (1.0 + p.haze_density) if p.haze_density else 0.0
    local = background + haze + p.glow * p.nucleus_e
    noise = math.sqrt(local * (2.0 if p.excess_noise else 1.0) + p.read_noise**2)
    return max(3.0 * noise, 0.25 * local) / p.nucleus_e


# --------------------------------------------------------------------------- placement


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
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: np.ndarray,
    cell_um: float,
    coarse: bool = False,
) -> np.ndarray:
    """A smooth random field on the pixel grid, about unit variance, correlated over
    ``cell_um``: random lattice values interpolated one axis at a time. With
    `coarse`, computed every few pixels (a quarter of ``cell_um``) and
    interpolated linearly in between.
    """
    shape = tuple(int(s) for s in shape)
    extent = np.asarray(shape) * spacing
    field, std = _field_lattice(rng, extent, cell_um)
    factor = np.ones(len(shape), dtype=np.int64)
    if coarse:
        factor = np.maximum(1, np.floor(0.25 * cell_um / spacing).astype(np.int64))
    for axis, (size, sp, f) in enumerate(zip(shape, spacing, factor.tolist(), strict=True)):
        # Pixel centres of each coarse cell of f pixels (the pixel itself when f is 1).
        at = (np.arange(-(-size // f)) * f + 0.5 * (f - 1)) * sp
        weights = _field_weights(at, field.shape[axis], cell_um)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    field = (field / std).astype(np.float32)
    return _upsample(field, factor, shape)


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


# --------------------------------------------------------------------------- rendering


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
    # Optical blur: in 3D much wider between planes than in-plane.
    psf = list(_gaussian_sigma(p.psf_sigma_um, spacing))
    if ndim == 3:
        psf[0] = float(p.psf_z_sigma_um / spacing[0])
    signal = ndi.gaussian_filter(signal, psf, output=np.float32, truncate=3.0)
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


def _upsample(image: np.ndarray, factor: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear interpolation of a coarse grid (cells of `factor` pixels) back to `shape`."""
    for axis, (f, size) in enumerate(zip(factor.tolist(), shape, strict=True)):
        if f == 1:
            continue
        # Pixel i's centre in coarse cells; coarse cell j's centre sits at j.
        where = (np.arange(size) + 0.5) / f - 0.5
        low = np.clip(np.floor(where).astype(np.int64), 0, image.shape[axis] - 1)
        high = np.minimum(low + 1, image.shape[axis] - 1)
        view = [1] * image.ndim
        view[axis] = size
        weight = np.clip(where - low, 0.0, 1.0).astype(np.float32).reshape(view)
        a = np.take(image, low, axis=axis)
        b = np.take(image, high, axis=axis)
        b -= a
        b *= weight
        a += b
        image = a
    return image


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
