"""Parameters of the generator: `SynthParams`, `SynthSample`, `sample_params`, checks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from cellseg.errors import ConfigError

_SETTINGS = ("train", "heldout", "wide")


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
    bright_fraction, bright_brightness
        Share of very bright nuclei (mitotic or apoptotic, condensed
        chromatin) and their brightness factor: the heavy tail of real scans.
    cytoplasm, cytoplasm_reach
        Brightness (relative to a typical nucleus) of a dim, unlabelled cell
        body around each nucleus, and how far it reaches from the nucleus's
        edge, relative to the mean nucleus radius; 0 is off.
    depth_attenuation, defocus
        3D only: fraction of the light lost from the first to the last plane
        (or the reverse), and the share of the stack, from one end, that is
        progressively out of focus (blurred along z and in-plane).
    vignetting
        Relative loss of light at the image corners (radial, in-plane).
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
    bright_fraction: float = 0.0
    bright_brightness: tuple[float, float] = (5.0, 20.0)
    cytoplasm: float = 0.0
    cytoplasm_reach: tuple[float, float] = (0.6, 1.6)
    depth_attenuation: float = 0.0
    defocus: float = 0.0
    vignetting: float = 0.0
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


def sample_params(rng: np.random.Generator, ndim: int, setting: str = "train") -> SynthParams:
    """Draw a random, widely varied set of generator parameters for one sample.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    ndim : int
        2 or 3.
    setting : {"train", "heldout", "wide"}
        ``"train"``: nucleus diameters of 4–16 µm (2D; 4–14 µm in 3D) at
        12–48 px (12–40 px in-plane in 3D), chromatin texture with sometimes
        bright chromocentre spots and dark nucleoli, a heavy brightness tail
        (a few nuclei 5–20× brighter), sometimes a dim cytoplasm, saturated
        pixels, vignetting, and in stacks depth attenuation and out-of-focus
        planes; a normal camera (Poisson shot noise) from very low to high SNR.
        ``"wide"``: as ``train`` with nuclei of 6–100 px (6–60 px in 3D).
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

    # Size: the median diameter in µm and in pixels set the pixel size. The
    # models see nuclei rescaled to about 24 px (see cellseg.sizing), so
    # training concentrates there; "wide" spans what microscopes give.
    if ndim == 2:
        d_um = log_uniform(16.0, 26.0) if heldout else log_uniform(4.0, 16.0)
        d_px = {"heldout": (14.0, 48.0), "wide": (6.0, 100.0)}.get(setting, (12.0, 48.0))
    else:
        d_um = log_uniform(14.0, 22.0) if heldout else log_uniform(4.0, 14.0)
        d_px = {"heldout": (14.0, 32.0), "wide": (6.0, 60.0)}.get(setting, (12.0, 40.0))
    d_px = log_uniform(*d_px)
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
    # A third of the scans saturate their brightest nuclei (or most of them).
    headroom = uniform(1.1, 4.0) if rng.random() < 0.3 else uniform(0.25, 1.1)
    gain = headroom * (full - offset) / peak_e

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
        bright_fraction=sometimes(0.5, uniform(0.0, 0.06)),
        cytoplasm=sometimes(0.4, uniform(0.03, 0.3)),
        depth_attenuation=sometimes(0.5, uniform(0.0, 0.7)) if ndim == 3 else 0.0,
        defocus=sometimes(0.5, uniform(0.1, 0.45)) if ndim == 3 else 0.0,
        vignetting=sometimes(0.3, uniform(0.0, 0.5)),
        intranuclear_variation=uniform(0.0, 0.35),
        edge_dimming=uniform(-0.15, 0.6),
        contact_dimming=sometimes(0.7, uniform(0.0, 0.5)),
        texture_strength=(texture_lo, texture_lo + uniform(0.05, 0.7)),
        texture_sigma_um=max(0.5 * px, d_um * uniform(0.02, 0.1)),
        spot_count=log_uniform(2.0, 10.0) if heldout else sometimes(0.5, log_uniform(1.0, 10.0)),
        spot_sigma_um=max(0.5 * px, d_um * uniform(0.03, 0.06)),
        spot_brightness=(0.3, uniform(0.5, 1.2)),
        nucleoli_count=sometimes(0.7, uniform(0.0, 5.0)),
        nucleolus_size=uniform(0.08, 0.2),
        nucleolus_depth=(uniform(0.1, 0.4), uniform(0.4, 0.9)),
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
        "bright_fraction",
        "depth_attenuation",
        "defocus",
        "vignetting",
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
        "cytoplasm",
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
        "bright_brightness",
        "cytoplasm_reach",
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
    if not 0 < p.bright_brightness[0] <= p.bright_brightness[1]:
        raise ConfigError(f"bright_brightness must be positive, got {p.bright_brightness!r}")
    if not 0 < p.brightness_range[0]:
        raise ConfigError(f"brightness_range must be positive, got {p.brightness_range!r}")
