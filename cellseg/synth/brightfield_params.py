"""Parameters of the brightfield generator: `BrightfieldParams`, `BrightfieldSample`, sampling."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellseg.errors import ConfigError

#: Slide kinds: H&E, and IHC (DAB with a haematoxylin counterstain).
BRIGHTFIELD_STAINS = ("he", "hdab")
#: Where DAB sits in a positive cell.
DAB_PATTERNS = ("membrane", "cytoplasm", "nuclear")
_SETTINGS = ("train", "heldout")
#: Kinds of nuclei (`BrightfieldSample.cell_kind`).
TUMOUR, LYMPHOCYTE, STROMAL = 0, 1, 2
CELL_KINDS = ("tumour", "lymphocyte", "stromal")


@dataclass(frozen=True)
class BrightfieldParams:
    """Every knob of the synthetic brightfield (H&E, IHC) generator; defaults make the demo.

    Lengths are in µm, stain amounts in optical-density (OD) units along the
    stain's unit OD vector, and ``(lo, hi)`` pairs are ranges drawn from
    uniformly (per nucleus, per cell or per object) unless said otherwise.
    A feature whose amount is 0 is off.

    Attributes
    ----------
    spacing : (float, float), optional
        Pixel size; used when `synthesize_brightfield` gets no ``spacing``.
    stain : {"he", "hdab"}
        H&E, or IHC: DAB (brown) with a pale haematoxylin counterstain and no eosin.
    tissue_fraction : float
        Share of the image covered by tissue; the rest is bare glass.
    slide_layout : bool
        Tissue as one irregular piece in the middle with glass all around it
        (a whole slide; at least a twelfth of each edge is glass), instead of
        tissue broken by glass anywhere.
    tissue_cell_um, region_cell_um : float
        Correlation lengths of the tissue outline and of the tissue's regions.
    nest_fraction, lymphoid_fraction, fat_fraction : float
        Shares of the tissue in epithelial (tumour) nests, in dense lymphocyte
        areas and in fat; the rest is stroma.
    tumour_diameter_um, lymphocyte_diameter_um, stromal_diameter_um : (float, float)
        Equivalent diameters of tumour (epithelial) nuclei, lymphocytes and
        stromal (fibroblast) nuclei.
    tumour_density, lymphocyte_density, stromal_density : float
        Covered fraction of nests, lymphoid areas and stroma by their nuclei.
    stromal_lymphocytes : float
        Covered fraction of stroma by scattered lymphocytes.
    gap : float
        Minimum centre distance of two nuclei as a fraction of the sum of radii
        (below 1: nuclei press against each other).
    aspect_sigma, aspect_max, irregularity, max_perturbation
        Shape of the nuclei, as in `SynthParams`; stromal nuclei are drawn
        three times as elongated (up to ``aspect_max``), lymphocytes nearly round.
    vesicular_fraction : float
        Share of tumour nuclei that are vesicular: pale, clear centre, crisp
        dark membrane and a prominent nucleolus.
    hematoxylin_tumour, hematoxylin_lymphocyte, hematoxylin_stromal : (float, float)
        Haematoxylin amount of a nucleus, per kind (lymphocytes are darkest).
    rim : (float, float)
        Relative extra haematoxylin at a nucleus's edge (nuclear membrane).
    chromatin, chromatin_um : (float, float), float
        Strength (relative, log scale) and grain size of the granular chromatin.
    nucleoli_count, nucleolus_um
        Mean nucleoli per tumour nucleus (two more in vesicular ones) and their size.
    eosin_cytoplasm, eosin_stroma, eosin_background : (float, float)
        Eosin amount of the tumour cells' cytoplasm, of stroma (collagen) and
        of the faint stain everywhere in tissue.
    hematoxylin_cytoplasm : (float, float)
        Haematoxylin amount of the cytoplasm (its purple tint).
    texture : float
        Strength (log scale) of the fine mottled texture of cytoplasm and stroma.
    cytoplasm_reach : float
        How far a tumour cell's cytoplasm reaches from its nucleus, relative to
        the nucleus's radius; farther is extracellular (stroma or empty).
    membrane : float
        Extra eosin on the cell borders within nests (relative to the cytoplasm).
    fibre_spacing_um, fibre_width_um, fibre_waviness
        Collagen fibres in stroma: mean distance between neighbouring fibres,
        their width and the amplitude of their waves (radians).
    rbc_density, rbc_diameter_um, eosin_rbc
        Red blood cells (unlabelled): mean count per (100 µm)^2 of stroma and
        lumens, half of them in clumps, their diameter and amount (OD along a
        red eosin-and-haemoglobin direction).
    lumen_density, lumen_diameter_um
        Empty lumens (holes with a thin wall): mean count per (100 µm)^2 of
        tissue (mostly in nests) and their diameter.
    fat_cell_um : float
        Diameter of the fat cells (empty, with thin walls).
    stain_angle_deg : float
        Largest angle by which each stain's OD vector is turned away from its
        reference (a random direction per sample); 0 keeps the reference.
    stain_strength : (float, float)
        Factor on every amount of a stain, drawn once per stain.
    background : (float, float, float)
        Brightness of glass, red green blue (0–255).
    dab_fraction, dab_pattern, dab_strength
        IHC: share of the cells that are DAB-positive, where their DAB sits,
        and the DAB amount of a positive cell (ignored for H&E).
    blur_um : float
        Optical blur (Gaussian sigma).
    noise : float
        Sensor noise (Gaussian standard deviation, grey levels of 0–255).
    jpeg_quality : int, optional
        JPEG quality (1–100) of a compression round trip (blocks, ringing,
        colour bleeding); None: none.
    seam_tile_px, seam_strength
        Scanner tiles: the tile edge in pixels and the spread of each tile's
        brightness and colour step (OD units); 0 is off.
    """

    spacing: tuple[float, float] | None = None
    stain: str = "he"
    # tissue layout
    tissue_fraction: float = 0.85
    slide_layout: bool = False
    tissue_cell_um: float = 120.0
    region_cell_um: float = 60.0
    nest_fraction: float = 0.45
    lymphoid_fraction: float = 0.12
    fat_fraction: float = 0.05
    # nuclei
    tumour_diameter_um: tuple[float, float] = (9.0, 15.0)
    lymphocyte_diameter_um: tuple[float, float] = (5.5, 7.0)
    stromal_diameter_um: tuple[float, float] = (6.0, 9.0)
    tumour_density: float = 0.4
    lymphocyte_density: float = 0.45
    stromal_density: float = 0.04
    stromal_lymphocytes: float = 0.03
    gap: float = 0.8
    aspect_sigma: float = 0.2
    aspect_max: float = 0.6
    irregularity: float = 0.06
    max_perturbation: float = 0.3
    vesicular_fraction: float = 0.3
    # stain amounts
    hematoxylin_tumour: tuple[float, float] = (0.4, 0.75)
    hematoxylin_lymphocyte: tuple[float, float] = (0.9, 1.4)
    hematoxylin_stromal: tuple[float, float] = (0.6, 1.0)
    rim: tuple[float, float] = (0.2, 0.6)
    chromatin: tuple[float, float] = (0.2, 0.45)
    chromatin_um: float = 0.4
    nucleoli_count: float = 0.8
    nucleolus_um: float = 0.5
    eosin_cytoplasm: tuple[float, float] = (0.15, 0.4)
    eosin_stroma: tuple[float, float] = (0.3, 0.6)
    eosin_background: tuple[float, float] = (0.03, 0.08)
    hematoxylin_cytoplasm: tuple[float, float] = (0.05, 0.15)
    texture: float = 0.2
    cytoplasm_reach: float = 1.2
    membrane: float = 0.4
    fibre_spacing_um: float = 2.5
    fibre_width_um: float = 1.5
    fibre_waviness: float = 0.35
    rbc_density: float = 2.0
    rbc_diameter_um: tuple[float, float] = (6.5, 8.0)
    eosin_rbc: tuple[float, float] = (0.8, 1.3)
    lumen_density: float = 0.15
    lumen_diameter_um: tuple[float, float] = (12.0, 45.0)
    fat_cell_um: float = 60.0
    # stains
    stain_angle_deg: float = 0.0
    stain_strength: tuple[float, float] = (1.0, 1.0)
    background: tuple[float, float, float] = (246.0, 242.0, 246.0)
    dab_fraction: float = 0.4
    dab_pattern: str = "membrane"
    dab_strength: tuple[float, float] = (0.3, 0.9)
    # optics and scanner
    blur_um: float = 0.3
    noise: float = 1.5
    jpeg_quality: int | None = 85
    seam_tile_px: int = 512
    seam_strength: float = 0.003


@dataclass(frozen=True)
class BrightfieldSample:
    """A synthetic brightfield scan with its truth.

    Attributes
    ----------
    image : ndarray of uint8, shape (rows, columns, 3)
        The rendered RGB scan.
    labels : ndarray of uint32, shape (rows, columns)
        0 for background, nuclei 1..N in raster order of their first pixel.
    spacing : (float, float)
        Pixel size in µm.
    params : BrightfieldParams
        The parameters the scan was made with.
    stains : dict
        The stain vectors it was rendered with, as a stain dict of
        :mod:`cellseg.stain` (``kind``, ``names``, ``vectors``, ``background``).
    cell_kind : ndarray of int8, shape (N,)
        Kind of nucleus ``i`` at position ``i - 1``: 0 tumour, 1 lymphocyte,
        2 stromal (`CELL_KINDS`).
    dab_positive : ndarray of uint32
        IHC: ids of the DAB-positive cells (empty for H&E).
    dab_amount : ndarray of float32, shape (N,)
        IHC: DAB amount (OD units) of each cell, 0 for negative ones.
    tissue : ndarray of bool
        Pixels of tissue (the rest is glass).
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float]
    params: BrightfieldParams
    stains: dict
    cell_kind: np.ndarray
    dab_positive: np.ndarray
    dab_amount: np.ndarray
    tissue: np.ndarray

    @property
    def dab_fraction(self) -> float:
        """Share of the nuclei whose cells are DAB-positive (0 for H&E or no nuclei)."""
        return float(self.dab_positive.size / max(self.cell_kind.size, 1))


def sample_brightfield_params(
    rng: np.random.Generator, stain: str = "he", setting: str = "train"
) -> BrightfieldParams:
    """Draw a random, widely varied set of brightfield generator parameters.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    stain : {"he", "hdab"}
        H&E, or IHC (then a random DAB pattern and fraction of positive cells).
    setting : {"train", "heldout"}
        ``"train"``: pixel sizes of 0.22–0.55 µm (40× to 20× scanners),
        stain vectors up to 12° from the references, stain strengths 0.6–1.5×,
        JPEG quality 55–95, blur, noise and tile seams from none to strong;
        a quarter of the samples blurred by 0.6–1.3 µm, as a 10× scan looks
        when brought up to the model's pixel size.
        ``"heldout"``: a shifted distribution not used in training, to
        measure generalisation: larger tumour nuclei (11–21 µm), stain vectors
        12–18° away, JPEG quality 35–60 and stronger blur.

    Returns
    -------
    BrightfieldParams
        With ``spacing`` set.

    Examples
    --------
    >>> p = sample_brightfield_params(np.random.default_rng(0), "hdab")
    >>> p.stain, 0.22 <= p.spacing[0] <= 0.55
    ('hdab', True)
    """
    if stain not in BRIGHTFIELD_STAINS:
        raise ConfigError(f"stain must be one of {BRIGHTFIELD_STAINS}, got {stain!r}")
    if setting not in _SETTINGS:
        raise ConfigError(f"setting must be one of {_SETTINGS}, got {setting!r}")
    heldout = setting == "heldout"

    def uniform(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    def log_uniform(lo: float, hi: float) -> float:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def span(lo: float, hi: float, width: tuple[float, float]) -> tuple[float, float]:
        start = uniform(lo, hi)
        return (start, start * uniform(*width))

    px = log_uniform(0.22, 0.55)
    tumour = span(11.0, 14.0, (1.2, 1.5)) if heldout else span(7.0, 11.0, (1.2, 1.6))
    lymph = span(5.0, 6.2, (1.05, 1.25))
    angle = uniform(12.0, 18.0) if heldout else uniform(0.0, 12.0)
    jpeg = int(rng.integers(35, 61)) if heldout else int(rng.integers(55, 96))
    nest = uniform(0.0, 0.8)
    lymphoid = uniform(0.0, 0.5) * (1.0 - nest)
    background = tuple(float(v) for v in 255.0 - rng.uniform(3.0, 20.0, 3))
    return BrightfieldParams(
        spacing=(px, px),
        stain=stain,
        tissue_fraction=1.0 if rng.random() < 0.4 else uniform(0.5, 1.0),
        slide_layout=False,
        tissue_cell_um=uniform(40.0, 200.0),
        region_cell_um=uniform(25.0, 90.0),
        nest_fraction=nest,
        lymphoid_fraction=lymphoid,
        fat_fraction=min(uniform(0.0, 0.15), 1.0 - nest - lymphoid) if rng.random() < 0.3 else 0.0,
        tumour_diameter_um=tumour,
        lymphocyte_diameter_um=lymph,
        stromal_diameter_um=span(5.0, 8.0, (1.2, 1.5)),
        tumour_density=uniform(0.25, 0.75),
        lymphocyte_density=uniform(0.25, 0.6),
        stromal_density=uniform(0.01, 0.08),
        stromal_lymphocytes=uniform(0.0, 0.08),
        gap=uniform(0.7, 0.95),
        aspect_sigma=uniform(0.08, 0.3),
        aspect_max=uniform(0.4, 0.7),
        irregularity=uniform(0.02, 0.12),
        max_perturbation=uniform(0.2, 0.4),
        vesicular_fraction=uniform(0.1, 0.9),
        hematoxylin_tumour=span(0.2, 0.6, (1.2, 2.0)),
        hematoxylin_lymphocyte=span(0.7, 1.1, (1.2, 1.6)),
        hematoxylin_stromal=span(0.5, 0.9, (1.1, 1.5)),
        rim=(uniform(0.0, 0.3), uniform(0.3, 1.0)),
        chromatin=(uniform(0.05, 0.25), uniform(0.3, 0.6)),
        chromatin_um=max(0.5 * px, uniform(0.25, 0.6)),
        nucleoli_count=uniform(0.0, 2.0),
        nucleolus_um=uniform(0.35, 0.7),
        eosin_cytoplasm=span(0.08, 0.5, (1.1, 2.0)),
        eosin_stroma=span(0.15, 0.6, (1.1, 1.8)),
        eosin_background=span(0.0, 0.08, (1.2, 2.0)),
        # up to about as much haematoxylin as pale nuclei: purple tumour cytoplasm
        hematoxylin_cytoplasm=span(0.0, 0.45, (1.1, 1.6)),
        texture=uniform(0.0, 0.35),
        cytoplasm_reach=uniform(0.6, 1.8),
        membrane=uniform(0.0, 0.8),
        fibre_spacing_um=uniform(1.5, 4.0),
        fibre_width_um=uniform(0.8, 2.5),
        fibre_waviness=uniform(0.1, 0.6),
        rbc_density=log_uniform(0.2, 8.0) if rng.random() < 0.7 else 0.0,
        eosin_rbc=span(0.6, 1.2, (1.1, 1.4)),
        lumen_density=log_uniform(0.02, 0.4) if rng.random() < 0.6 else 0.0,
        fat_cell_um=uniform(35.0, 90.0),
        stain_angle_deg=angle,
        stain_strength=(uniform(0.6, 1.0), uniform(1.0, 1.5)),
        background=background,  # type: ignore[arg-type]
        dab_fraction=uniform(0.0, 0.9) if stain == "hdab" else 0.0,
        dab_pattern=str(rng.choice(DAB_PATTERNS)),
        dab_strength=span(0.2, 0.7, (1.2, 2.5)),
        blur_um=px * (uniform(1.0, 2.5) if heldout else uniform(0.3, 1.6))
        if heldout or rng.random() < 0.75
        # a 10× scan brought up to the model's pixel size: soft, wide blur
        else uniform(0.6, 1.3),
        noise=uniform(0.0, 4.0),
        jpeg_quality=jpeg if rng.random() < 0.85 else None,
        seam_tile_px=int(rng.choice([0, 128, 256, 512])),
        seam_strength=uniform(0.0, 0.008),
    )


def _resolve_brightfield_params(
    params: BrightfieldParams | None, overrides: dict[str, Any]
) -> BrightfieldParams:
    if params is None:
        params = BrightfieldParams()
    elif not isinstance(params, BrightfieldParams):
        raise ConfigError(f"params must be a BrightfieldParams, got {type(params).__name__}")
    if overrides:
        known = {f.name for f in dataclasses.fields(BrightfieldParams)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown brightfield scan parameter(s) {unknown}; known: {sorted(known)}"
            )
        params = dataclasses.replace(params, **overrides)
    _check_brightfield_params(params)
    return params


def _check_brightfield_params(p: BrightfieldParams) -> None:
    """Raise ConfigError naming the first parameter that is out of range."""
    if p.stain not in BRIGHTFIELD_STAINS:
        raise ConfigError(f"stain must be one of {BRIGHTFIELD_STAINS}, got {p.stain!r}")
    if p.dab_pattern not in DAB_PATTERNS:
        raise ConfigError(f"dab_pattern must be one of {DAB_PATTERNS}, got {p.dab_pattern!r}")
    skip = ("spacing", "stain", "dab_pattern", "slide_layout", "jpeg_quality", "background")
    for field in dataclasses.fields(p):
        name, value = field.name, getattr(p, field.name)
        if name in skip:
            continue
        values = value if isinstance(value, tuple) else (value,)
        try:
            ok = all(math.isfinite(float(v)) and float(v) >= 0 for v in values)
        except (TypeError, ValueError):
            ok = False
        if isinstance(value, tuple) and ok:
            ok = len(value) == 2 and value[0] <= value[1]
        if not ok:
            kind = "(smallest, largest), 0 <= smallest <= largest" if len(values) > 1 else ">= 0"
            raise ConfigError(f"brightfield scan parameter {name} must be {kind}, got {value!r}")
    fractions = (
        "tissue_fraction",
        "nest_fraction",
        "lymphoid_fraction",
        "fat_fraction",
        "tumour_density",
        "lymphocyte_density",
        "stromal_density",
        "stromal_lymphocytes",
        "vesicular_fraction",
        "dab_fraction",
    )
    for name in fractions:
        if getattr(p, name) > 1:
            raise ConfigError(f"{name} must be in [0, 1], got {getattr(p, name)!r}")
    if p.nest_fraction + p.lymphoid_fraction + p.fat_fraction > 1:
        raise ConfigError("nest_fraction + lymphoid_fraction + fat_fraction must be at most 1")
    for name in (
        "tumour_diameter_um",
        "lymphocyte_diameter_um",
        "stromal_diameter_um",
        "rbc_diameter_um",
        "lumen_diameter_um",
    ):
        if getattr(p, name)[0] <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(p, name)!r}")
    for name in ("gap", "tissue_cell_um", "region_cell_um", "fibre_spacing_um", "fat_cell_um"):
        if getattr(p, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(p, name)!r}")
    bg = p.background
    if len(bg) != 3 or not all(1.0 <= float(v) <= 255.0 for v in bg):
        raise ConfigError(f"background must be 3 values in [1, 255], got {bg!r}")
    if p.jpeg_quality is not None and not 1 <= int(p.jpeg_quality) <= 100:
        raise ConfigError(f"jpeg_quality must be in 1..100 or None, got {p.jpeg_quality!r}")
