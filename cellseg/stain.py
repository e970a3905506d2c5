"""Brightfield stains: optical density, per-slide stain vectors, stain amounts.

A brightfield image is light transmitted through absorbing dyes. By the
Beer–Lambert law the optical density ``OD = -log10(I / I0)`` of each colour
channel (``I0`` the brightness of glass) is a sum over the stains of
*amount × stain vector*, so with three unit OD vectors (two stains and a
residual direction orthogonal to both) every pixel's OD splits into stain
amounts by solving a 3×3 linear system (colour deconvolution).

The vectors differ between labs, scanners and batches of dye. They are
estimated once per slide from a subsample (:func:`estimate_stains`, after
Macenko et al.: the OD of tissue pixels spans a plane; the two stains are the
extreme directions within it), like the intensity statistics of
:mod:`cellseg.normalize`, so every tile of a slide is unmixed the same way.

Stains are described by a small JSON-able dict (stored in ``work/ingest.json``)::

    {"kind": "he", "names": ["hematoxylin", "eosin"],
     "vectors": [[r, g, b], [r, g, b], [r, g, b]], "background": [r, g, b]}

whose third vector is the residual.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

__all__ = [
    "KINDS",
    "REFERENCE",
    "STAINS",
    "concentrations",
    "estimate_stains",
    "from_optical_density",
    "glass_colour",
    "looks_brightfield",
    "nuclear_image",
    "optical_density",
    "reference_stains",
    "stain_channel",
    "stain_image",
]

#: Every stain cellseg knows, by name.
STAINS = ("hematoxylin", "eosin", "dab")

#: The stains of each kind of slide: H&E, and IHC (haematoxylin counterstain + DAB).
KINDS = {"he": ("hematoxylin", "eosin"), "hdab": ("hematoxylin", "dab")}

_UNIT = {
    # typical OD directions (red, green, blue) of each dye (Ruifrok & Johnston)
    "hematoxylin": (0.650, 0.704, 0.286),
    "eosin": (0.072, 0.990, 0.105),
    "dab": (0.268, 0.570, 0.776),
}

#: Least OD summed over the channels for a pixel to count as tissue.
TISSUE_OD = 0.15
#: Least summed OD of the pixels the vectors are estimated from (about 0.15 per
#: channel): fainter pixels' colours are mostly noise and JPEG error, and their
#: extreme angles pull the estimate past the true stains (by 7° for a pale
#: IHC counterstain at :data:`TISSUE_OD`, 2° at this).
STAIN_OD = 0.45
#: Percentiles of the angle within the stain plane taken as the two stains.
ANGLE_PERCENTILE = 1.0
#: Glass is at least this bright (grey level 0-255) and nearly grey.
GLASS_MIN_GREY = 180
#: Fewest tissue pixels needed to estimate vectors; with fewer, the reference is used.
MIN_TISSUE_PIXELS = 500
#: Largest angle (degrees) between an estimated vector and its reference before
#: the estimate is distrusted and the reference used instead.
MAX_ANGLE_DEG = 35.0


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _with_residual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows ``a``, ``b`` and their unit normal (made non-negative)."""
    r = np.cross(a, b)
    r = np.abs(r) / max(np.linalg.norm(r), 1e-12)
    return np.stack([a, b, r])


#: Reference stain matrices, rows unit OD vectors: the kind's two stains and the residual.
REFERENCE = {
    kind: _with_residual(_unit(_UNIT[n0]), _unit(_UNIT[n1])) for kind, (n0, n1) in KINDS.items()
}


def reference_stains(kind: str = "he", background: Sequence[float] = (255, 255, 255)) -> dict:
    """The stain dict of the reference vectors of ``kind`` ("he" or "hdab").

    Examples
    --------
    >>> reference_stains("hdab")["names"]
    ['hematoxylin', 'dab']
    """
    if kind not in KINDS:
        raise ValueError(f"unknown stain kind {kind!r}; choose one of {', '.join(KINDS)}")
    return {
        "kind": kind,
        "names": list(KINDS[kind]),
        "vectors": [[round(float(x), 6) for x in row] for row in REFERENCE[kind]],
        "background": [float(x) for x in background],
    }


def optical_density(rgb: np.ndarray, background: Sequence[float] = (255, 255, 255)) -> np.ndarray:
    """Beer–Lambert optical density of each channel, ``-log10(I / I0)``, clipped at 0.

    Parameters
    ----------
    rgb : ndarray, (..., 3)
        Transmitted light, any numeric dtype (0 is treated as 1, so OD stays finite).
    background : sequence of 3 floats
        Brightness of glass ``I0`` per channel.

    Returns
    -------
    ndarray, float32, (..., 3)

    Examples
    --------
    >>> optical_density(np.array([[255, 25.5, 2.55]])).round(3)
    array([[0., 1., 2.]], dtype=float32)
    """
    bg = np.asarray(background, dtype=np.float32)
    x = np.maximum(np.asarray(rgb, dtype=np.float32), 1.0)
    return np.maximum(-np.log10(x / bg), 0.0).astype(np.float32, copy=False)


def from_optical_density(
    od: np.ndarray, background: Sequence[float] = (255, 255, 255)
) -> np.ndarray:
    """Transmitted light of an optical density (the inverse of :func:`optical_density`), uint8.

    Examples
    --------
    >>> from_optical_density(np.array([[0.0, 1.0, 2.0]]))
    array([[255,  26,   3]], dtype=uint8)
    """
    bg = np.asarray(background, dtype=np.float32)
    out = bg * np.power(np.float32(10.0), -np.asarray(od, dtype=np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def glass_colour(rgb: np.ndarray) -> tuple[float, float, float]:
    """The glass (background) colour of a brightfield view: the median of its brightest pixels.

    The brightest 5 % of the pixels (by grey level) are taken; when their
    colour is not glass-like, bright and nearly grey (a view with no glass),
    white is returned.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(..., 3)`` values 0-255 (uint8, or float pixels of a sample).

    Returns
    -------
    tuple of float
        ``(r, g, b)``; the glass of the stain vectors' optical density and of
        the tissue mask.

    Examples
    --------
    >>> rgb = np.full((10, 10, 3), (230, 235, 245), np.uint8); rgb[:5] = (200, 100, 150)
    >>> glass_colour(rgb)
    (230.0, 235.0, 245.0)
    >>> glass_colour(np.full((10, 10, 3), (226, 158, 198), np.uint8))  # no glass: white
    (255.0, 255.0, 255.0)
    """
    pixels = np.asarray(rgb)[..., :3].reshape(-1, 3).astype(np.float32)
    if not len(pixels):
        return (255.0, 255.0, 255.0)
    grey = pixels.mean(axis=1)
    bright = pixels[grey >= np.percentile(grey, 95)]
    colour = np.median(bright, axis=0)
    if colour.mean() < GLASS_MIN_GREY or (colour.max() - colour.min()) > 0.1 * colour.max():
        return (255.0, 255.0, 255.0)
    return tuple(float(c) for c in colour)  # type: ignore[return-value]


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))))


def estimate_stains(rgb_sample: np.ndarray, kind: str = "auto") -> dict:
    """Per-slide stain vectors from a sample of its pixels (Macenko's method).

    The OD of stained pixels (summed OD above :data:`STAIN_OD`, else above
    :data:`TISSUE_OD` when too few are) is projected
    on the plane of its two largest principal directions; the directions at
    the :data:`ANGLE_PERCENTILE` and ``100 - ANGLE_PERCENTILE`` percentiles of
    the angle within that plane are the two stains. The one closer to
    haematoxylin's reference (redder OD) is haematoxylin. With too little
    tissue, or an estimate far from the reference (more than
    :data:`MAX_ANGLE_DEG`), the reference vectors are used.

    Parameters
    ----------
    rgb_sample : ndarray, (..., 3)
        Pixels of the slide (any spatial layout), typically a strided subsample.
    kind : {"auto", "he", "hdab"}
        H&E, or IHC with DAB and a haematoxylin counterstain; ``"auto"``:
        the kind whose second stain (eosin or DAB) is nearer the estimated
        second direction (when the estimate fails, the kind whose reference
        vectors leave less of the tissue's optical density unexplained).

    Returns
    -------
    dict
        The stain dict (see the module notes), with ``"estimated": bool``.
    """
    pixels = np.asarray(rgb_sample, dtype=np.float64).reshape(-1, 3)
    if pixels.size == 0:
        return reference_stains("he" if kind == "auto" else kind) | {"estimated": False}
    bg = np.asarray(glass_colour(pixels), np.float64)
    od = optical_density(pixels, bg).astype(np.float64)
    stained = od[od.sum(axis=1) > STAIN_OD]
    if len(stained) < MIN_TISSUE_PIXELS:  # a faint slide: its fainter pixels too
        stained = od[od.sum(axis=1) > TISSUE_OD]
    pair = _macenko(stained) if len(stained) >= MIN_TISSUE_PIXELS else None
    if kind == "auto":
        if pair is not None:
            # the second stain is eosin or DAB, whichever reference it is nearer
            kind = min(KINDS, key=lambda k: _angle_deg(pair[1], REFERENCE[k][1]))
        else:
            fits = [reference_stains(k, bg) for k in KINDS]
            kind = min(fits, key=lambda s: _residual_share(pixels, s))["kind"]
    reference = REFERENCE[kind]
    fallback = reference_stains(kind, bg) | {"estimated": False}
    if pair is None:
        return fallback
    h, other = pair
    if (
        _angle_deg(h, reference[0]) > MAX_ANGLE_DEG
        or _angle_deg(other, reference[1]) > MAX_ANGLE_DEG
        or _angle_deg(h, other) < 5.0
    ):
        return fallback
    matrix = _with_residual(h, other)
    return {
        "kind": kind,
        "names": list(KINDS[kind]),
        "vectors": [[round(float(x), 6) for x in row] for row in matrix],
        "background": [round(float(x), 3) for x in bg],
        "estimated": True,
    }


def _macenko(tissue_od: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two stain directions of tissue pixels' OD: haematoxylin first, then the other."""
    _, vecs = np.linalg.eigh(np.cov(tissue_od, rowvar=False))
    plane = vecs[:, [2, 1]]  # the two largest principal directions
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0
    plane[:, 1] *= np.sign(plane[:, 1].sum()) or 1.0
    proj = tissue_od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100.0 - ANGLE_PERCENTILE])
    v1 = _unit(np.abs(plane @ np.array([np.cos(lo), np.sin(lo)])))
    v2 = _unit(np.abs(plane @ np.array([np.cos(hi), np.sin(hi)])))
    # haematoxylin absorbs red light more than eosin and DAB do
    return (v1, v2) if v1[0] / v1.sum() >= v2[0] / v2.sum() else (v2, v1)


def _residual_share(pixels: np.ndarray, stains: dict) -> float:
    """Share of the tissue pixels' optical density left in the residual direction."""
    conc = concentrations(pixels, stains)
    tissue = conc[:, :2].sum(axis=1) > TISSUE_OD
    if not tissue.any():
        return float("inf")
    return float(np.abs(conc[tissue, 2]).mean() / max(conc[tissue, :2].sum(axis=1).mean(), 1e-9))


def concentrations(rgb: np.ndarray, stains: dict) -> np.ndarray:
    """Per-pixel stain amounts (OD units): the stains of ``stains["names"]``, then the residual.

    Parameters
    ----------
    rgb : ndarray, (..., 3)
        Transmitted light.
    stains : dict
        A stain dict (:func:`estimate_stains`, :func:`reference_stains`).

    Returns
    -------
    ndarray, float32, (..., 3)

    Examples
    --------
    >>> s = reference_stains("he")
    >>> od = 0.8 * np.asarray(s["vectors"][0]) + 0.3 * np.asarray(s["vectors"][1])
    >>> rgb = 255 * 10 ** -od
    >>> concentrations(rgb, s).round(2)
    array([ 0.8,  0.3, -0. ], dtype=float32)
    """
    od = optical_density(rgb, stains.get("background", (255, 255, 255)))
    inverse = np.linalg.inv(np.asarray(stains["vectors"], dtype=np.float64)).astype(np.float32)
    return od @ inverse


def stain_channel(rgb: np.ndarray, stains: dict, name: str) -> np.ndarray:
    """One stain's amount per pixel (float32), e.g. haematoxylin: the brightfield model's input.

    Negative amounts (noise, other dyes) are clipped to 0.
    """
    if name not in stains["names"]:
        raise ValueError(f"stain {name!r} is not among {stains['names']}")
    idx = stains["names"].index(name)
    conc = concentrations(rgb, stains)[..., idx]
    return np.maximum(conc, 0.0).astype(np.float32, copy=False)


def stain_image(data: np.ndarray | da.Array, stains: dict, name: str) -> np.ndarray | da.Array:
    """One stain's amount over a channel-first RGB image ``(3, *spatial)``.

    Lazy for a dask array (one block per spatial chunk), eager for numpy.
    """
    if data.shape[0] != 3:
        raise ValueError(f"an RGB image has 3 channels, not {data.shape[0]}")

    def block(b: np.ndarray) -> np.ndarray:
        return stain_channel(np.moveaxis(np.asarray(b), 0, -1), stains, name)

    if isinstance(data, da.Array):
        return da.map_blocks(block, data.rechunk({0: 3}), drop_axis=0, dtype=np.float32)
    return block(data)


def nuclear_image(data: np.ndarray | da.Array, info: dict) -> np.ndarray | da.Array:
    """The image the nucleus model sees, from a scan's channel-first array and its ingest record.

    Fluorescence: the nuclear channel ``info["channel"]``. Brightfield: the
    haematoxylin amount under the scan's stain vectors ``info["stain"]``.
    """
    if info.get("modality") == "brightfield":
        return stain_image(data[:3], info["stain"], "hematoxylin")
    return data[info["channel"]]


def looks_brightfield(sample: np.ndarray, dtype: np.dtype | str) -> bool:
    """Whether a channel-first subsample ``(C, *spatial)`` looks like a brightfield RGB image.

    Brightfield: 8-bit, three (or four, with alpha) channels, and bright: glass
    and most tissue transmit much of the light, where a fluorescence image is
    mostly dark background.

    Examples
    --------
    >>> glass = np.full((3, 20, 20), 240, np.uint8); glass[:, 5:9, 5:9] = 90
    >>> looks_brightfield(glass, np.uint8), looks_brightfield(255 - glass, np.uint8)
    (True, False)
    """
    if np.dtype(dtype) != np.uint8 or sample.shape[0] not in (3, 4):
        return False
    brightness = np.asarray(sample[:3], dtype=np.float32).mean(axis=0)
    return bool(np.median(brightness) > 100 and np.percentile(brightness, 90) > 170)
