"""Synthetic brightfield histology (H&E, IHC) with ground-truth nucleus labels.

A scan is laid out in µm, drawn as per-pixel stain amounts and rendered by
the Beer–Lambert law: the optical density (OD) of a pixel is the sum over the
stains of amount × the stain's unit OD vector, and the transmitted light is
``background × 10^-OD`` (:func:`cellseg.stain.from_optical_density`).

1. *Tissue*: smooth random fields split the image into glass and tissue (in a
   whole-slide layout, one irregular piece with glass all around), and the
   tissue into epithelial (tumour) nests, dense lymphocyte areas, fat and
   stroma. Empty lumens (holes with a thin wall) sit mostly in nests; fat is a
   mesh of large empty cells with thin walls.
2. *Nuclei* (the labels) are placed by the fluorescence generator's random
   sequential adsorption (:mod:`cellseg.synth.placement`), one population
   after the other, each in its own region: big tumour nuclei in nests,
   small, round, densely packed lymphocytes, elongated stromal nuclei and a few
   stray lymphocytes in stroma. Their shapes, overlaps and clean-up are those
   of :mod:`cellseg.synth.shapes`; lumens, fat and glass cut them.
3. *Haematoxylin*: per nucleus a level by kind (lymphocytes darkest), a
   darker rim (nuclear membrane), granular chromatin at two grain sizes, and
   nucleoli; vesicular tumour nuclei are pale with a clear centre, a crisp
   membrane and prominent nucleoli.
4. *Eosin*: each tumour cell's cytoplasm (the nearest-nucleus partition of
   the nest, up to a reach) with brighter cell borders; stroma as wavy
   collagen fibres with pale gaps; red blood cells (unlabelled bright-red
   discs with a paler centre, single or in clumps); a faint stain everywhere
   in tissue; a smooth thickness variation of the section.
5. *IHC* (``stain="hdab"``): a paler haematoxylin counterstain, no eosin
   (the stroma a faint blue), and DAB in a random fraction of the cells, on
   their membranes, in their cytoplasm or in their nuclei. The positive ids
   and their amounts are recorded in the sample.
6. *Colour and scanner*: stain vectors turned by a few degrees from the
   references and scaled per sample, optical blur, per-tile brightness and
   colour steps on the scanner's tile grid (seams), sensor noise, and a JPEG
   round trip.

Everything is drawn from one ``numpy.random.Generator`` in a fixed order, so
the same arguments give byte-identical arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.errors import ConfigError
from cellseg.stain import estimate_stains, stain_channel
from cellseg.synth.brightfield_params import (
    BRIGHTFIELD_STAINS,
    BrightfieldParams,
    BrightfieldSample,
    _resolve_brightfield_params,
    sample_brightfield_params,
)
from cellseg.synth.brightfield_render import _synthesize
from cellseg.synth.slide import FLAVOURS, write_slide
from cellseg.synth.write import ome_metadata, scan_stem, write_ome_tiff


def synthesize_brightfield(
    shape: tuple[int, int],
    *,
    spacing: tuple[float, float] | None = None,
    seed: int | np.random.Generator = 0,
    params: BrightfieldParams | None = None,
    **overrides: Any,
) -> BrightfieldSample:
    """Synthesize a brightfield H&E or IHC scan and its ground-truth nucleus labels.

    Parameters
    ----------
    shape : (int, int)
        ``(rows, columns)``.
    spacing : (float, float), optional
        Pixel size in µm. Default: ``params.spacing``, else 0.5 (a 20× scanner).
    seed : int or numpy.random.Generator
        Seed of the random generator (or the generator itself); the same
        arguments give identical output.
    params : BrightfieldParams, optional
        All knobs of the generator; default `BrightfieldParams()`.
    **overrides
        Fields of `BrightfieldParams` to replace, e.g. ``stain="hdab"``,
        ``dab_fraction=0.4`` or ``jpeg_quality=None``.

    Returns
    -------
    BrightfieldSample

    Raises
    ------
    ConfigError
        If an argument or parameter is out of range or unknown.

    Examples
    --------
    >>> s = synthesize_brightfield((96, 96), seed=1)
    >>> s.image.shape, s.image.dtype, s.labels.dtype
    ((96, 96, 3), dtype('uint8'), dtype('uint32'))
    """
    p = _resolve_brightfield_params(params, overrides)
    try:
        ok = len(shape) == 2
        shape = (int(shape[0]), int(shape[1]))
        ok = ok and min(shape) >= 1
    except (TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        raise ConfigError(f"a brightfield scan's shape is (rows, columns), got {shape!r}")
    spacing = spacing if spacing is not None else p.spacing or (0.5, 0.5)
    try:
        sp = np.asarray(spacing, dtype=np.float64)
        ok = sp.shape == (2,) and bool(np.all(np.isfinite(sp) & (sp > 0)))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"spacing must be two positive pixel sizes in µm, got {spacing!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _synthesize(shape, sp, p, rng)


def brightfield_training_pair(
    seed: int | np.random.Generator,
    shape: tuple[int, int] = (256, 256),
    *,
    stain: str = "he",
    setting: str = "train",
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A random brightfield training sample as the model sees it: the haematoxylin image.

    Parameters are drawn with `sample_brightfield_params`, an RGB scan is
    rendered, its stain vectors are estimated from the scan itself
    (:func:`cellseg.stain.estimate_stains`, ``kind="auto"``, as ingest does
    for a slide) and the haematoxylin amount
    (:func:`cellseg.stain.stain_channel`) is the image: the same path that
    inference takes, before the scan-level normalisation of
    :mod:`cellseg.normalize`.

    Parameters
    ----------
    seed : int or numpy.random.Generator
        Source of randomness; the same seed (generator state) gives the same sample.
    shape : (int, int)
        ``(rows, columns)``.
    stain : {"he", "hdab"}
        H&E or IHC.
    setting : {"train", "heldout"}
        Parameter distribution (see `sample_brightfield_params`).

    Returns
    -------
    image : ndarray of float32
        Haematoxylin amount (OD units), not normalised.
    labels : ndarray of uint32
        Nuclei 1..N.
    spacing : (float, float)
        Pixel size in µm.

    Examples
    --------
    >>> image, labels, spacing = brightfield_training_pair(0, (64, 64))
    >>> image.dtype, labels.shape
    (dtype('float32'), (64, 64))
    """
    if stain not in BRIGHTFIELD_STAINS:
        raise ConfigError(f"stain must be one of {BRIGHTFIELD_STAINS}, got {stain!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    params = sample_brightfield_params(rng, stain, setting)
    sample = synthesize_brightfield(shape, seed=rng, params=params)
    stains = estimate_stains(sample.image, kind="auto")
    image = stain_channel(sample.image, stains, "hematoxylin").astype(np.float32, copy=False)
    return image, sample.labels, sample.spacing


def write_brightfield_scan(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    *,
    shape: tuple[int, int],
    spacing: tuple[float, float] | None = None,
    seed: int = 0,
    slide: str | None = None,
    **kwargs: Any,
) -> tuple[Path, Path | None]:
    """Synthesize a brightfield scan and write it as an RGB OME-TIFF, with its labels.

    Both files carry the pixel size in their OME-XML (``PhysicalSizeX/Y`` in
    µm) and their TIFF resolution tags; each is written to a temporary name
    and moved into place when complete.

    Parameters
    ----------
    image_path : path
        Where to write the RGB uint8 image (``*.ome.tif``; for a slide e.g. ``*.svs``).
    labels_path : path, optional
        Where to write the uint32 labels (OME-TIFF); not written if None.
    shape, spacing, seed, **kwargs
        As in `synthesize_brightfield`.
    slide : str, optional
        Write the image as a whole slide instead: a tiled, JPEG-compressed
        pyramidal TIFF with scanner-style metadata (the microns per pixel),
        in one of the layouts of :func:`cellseg.synth.slide.write_slide`
        (``"svs"``, ``"pyramidal-tiff"``, ``"ome-tiff"``, ``"ndpi-like"``).
        The tissue is then, unless `kwargs` say otherwise, one piece with
        glass all around (``slide_layout=True``, ``tissue_fraction=0.45``),
        and the only JPEG compression is the file's own (``jpeg_quality=None``).

    Returns
    -------
    image_path : Path
    labels_path : Path or None

    Examples
    --------
    >>> import tempfile, tifffile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     image_path, _ = write_brightfield_scan(Path(folder) / "he.ome.tif", shape=(64, 64))
    ...     tifffile.imread(image_path).shape
    (64, 64, 3)
    """
    if slide is not None:
        if slide not in FLAVOURS:
            raise ConfigError(f"slide must be one of {FLAVOURS}, got {slide!r}")
        kwargs = {"slide_layout": True, "tissue_fraction": 0.45, "jpeg_quality": None} | kwargs
    sample = synthesize_brightfield(shape, spacing=spacing, seed=seed, **kwargs)
    key = repr((tuple(shape), sample.spacing, seed, sorted(kwargs.items(), key=str)))
    image_path = Path(image_path)
    labels_out = None if labels_path is None else Path(labels_path)
    if labels_out is not None:
        _write_tiff(labels_out, sample.labels, sample.spacing, f"labels {key}", rgb=False)
    if slide is None:
        _write_tiff(image_path, sample.image, sample.spacing, f"image {key}", rgb=True)
    else:
        mpp = float(np.sqrt(sample.spacing[0] * sample.spacing[1]))
        write_slide(image_path, sample.image, mpp, flavour=slide)
    return image_path, labels_out


def _write_tiff(path: Path, data: np.ndarray, spacing, key: str, rgb: bool) -> None:
    """An OME-TIFF of the sample (zlib) with its pixel size in the OME-XML and the tags."""
    metadata = ome_metadata(
        tuple(spacing), scan_stem(path), key, rgb=rgb, namespace="cellseg.synth.brightfield"
    )
    write_ome_tiff(path, data, metadata, "zlib", resolution_um=tuple(spacing))
