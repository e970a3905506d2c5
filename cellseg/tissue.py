"""Tissue detection on brightfield slides: where the tissue is, and where only glass.

Half of a typical slide is glass. The tissue mask is computed once per scan
at ingest from a low-resolution view (a level of the file's pyramid, else a
strided subsample), so that the later stages touch only the tiles with
tissue: the image copy does not decode glass-only chunks (they are filled
with the glass colour), the plan skips tiles without tissue, and no nucleus
is looked for on glass.

The mask (:func:`tissue_mask`) is the classic thresholding of a thumbnail:

1. white balance by the glass colour (the brightest pixels' median), so a
   tinted background reads as grey;
2. a pixel is tissue when its colour saturation or its darkness (1 - grey
   level) passes a threshold set by Otsu's method on the whole view and
   clamped to a sensible range (glass is unsaturated and bright; stained
   tissue is neither); near-black pixels (outside a scanned area) are not;
3. clean-up: a morphological closing joins the speckle of faint tissue,
   specks smaller than ``min_object_um2`` are dropped and holes smaller than
   ``min_hole_um2`` filled.

:class:`TissueMask` keeps the mask with its place on the full-resolution
grid: mask pixel ``(i, j)`` covers full-resolution rows ``floor(i * fy)`` to
``floor((i + 1) * fy)`` (``fy = Y / mask rows``) and likewise columns.

The pure functions (:func:`tissue_mask`, :func:`tiles_with_tissue`,
:func:`fill_glass`, :class:`TissueMask`) work on arrays; :func:`find_tissue`,
:func:`save_tissue` and :func:`load_tissue` connect them to a scan and to
its OME-Zarr image, where the mask is the label image ``labels/tissue``
(1 = tissue) on the image's grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from scipy import ndimage as ndi

from cellseg.errors import InputError
from cellseg.io import create_labels, finalize_labels, open_labels, read_image_attrs
from cellseg.io.slide import SLIDE_SUFFIXES, is_slide_tiff, open_slide, slide_info
from cellseg.normalize import otsu_threshold
from cellseg.stain import glass_colour
from cellseg.tiling import Box, Tile, batch_tiles

log = logging.getLogger("cellseg")

__all__ = [
    "MASK_MAX_PIXELS",
    "TISSUE_LABEL",
    "TissueMask",
    "fill_glass",
    "find_tissue",
    "load_tissue",
    "low_resolution_rgb",
    "on_tissue",
    "plan_tissue_tiles",
    "save_tissue",
    "slide_record",
    "tiles_with_tissue",
    "tissue_mask",
]

#: The low-resolution view the mask is computed from holds at most this many pixels.
MASK_MAX_PIXELS = 4_000_000
#: Name of the label image of the tissue mask.
TISSUE_LABEL = "tissue"
#: Ranges the Otsu thresholds of saturation and darkness are clamped to.
SATURATION_RANGE = (0.05, 0.15)
DARKNESS_RANGE = (0.06, 0.15)
#: Pixels whose brightest channel is below this are not tissue (black outside a scan).
BLACK_LEVEL = 25
#: Default smallest tissue piece kept and largest hole filled (µm²).
MIN_OBJECT_UM2 = 2_500.0
MIN_HOLE_UM2 = 20_000.0
#: The same in mask pixels when the pixel size is unknown.
MIN_OBJECT_PX = 16
MIN_HOLE_PX = 64


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A tissue mask on a coarse grid, placed on the full-resolution image.

    Attributes
    ----------
    mask : numpy.ndarray
        ``(rows, cols)`` bool, True on tissue.
    shape : tuple of int
        ``(Y, X)`` of the full-resolution image.
    background : tuple of float
        The glass colour (RGB), what glass-only chunks are filled with.
    """

    mask: np.ndarray
    shape: tuple[int, int]
    background: tuple[float, float, float] = (255.0, 255.0, 255.0)

    @property
    def downsample(self) -> tuple[float, float]:
        """Full-resolution pixels per mask pixel, ``(Y, X)``."""
        return (self.shape[0] / self.mask.shape[0], self.shape[1] / self.mask.shape[1])

    @property
    def fraction(self) -> float:
        """Share of the image that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def summary(self) -> dict:
        """What ingest records in ``ingest.json`` (``"tissue"``)."""
        return {
            "fraction": round(self.fraction, 4),
            "mask_shape": [int(n) for n in self.mask.shape],
            "downsample": [round(d, 4) for d in self.downsample],
            "background": [round(float(c), 1) for c in self.background],
        }

    def _rows(self, start: int, stop: int, axis: int) -> tuple[int, int]:
        """Mask indices ``[a, b)`` covering full-resolution ``[start, stop)`` along an axis."""
        n, full = self.mask.shape[axis], self.shape[axis]
        a = min(n - 1, (int(start) * n) // full)
        b = min(n, -(-int(stop) * n // full))
        return a, max(b, a + 1)

    def any_in(self, box: Box, margin: int = 0) -> bool:
        """Whether any tissue lies under a full-resolution box (grown by `margin` mask pixels).

        Examples
        --------
        >>> t = TissueMask(np.eye(4, dtype=bool), (40, 40))
        >>> t.any_in(((0, 10), (30, 40))), t.any_in(((0, 10), (30, 40)), margin=2)
        (False, True)
        """
        (y0, y1), (x0, x1) = self._rows(*box[0], 0), self._rows(*box[1], 1)
        y0, x0 = max(0, y0 - margin), max(0, x0 - margin)
        return bool(self.mask[y0 : y1 + margin, x0 : x1 + margin].any())

    def region(self, box: Box) -> np.ndarray:
        """The mask under a full-resolution box, at full resolution (nearest neighbour).

        Examples
        --------
        >>> t = TissueMask(np.array([[True, False]]), (2, 4))
        >>> t.region(((0, 2), (1, 3))).astype(int).tolist()
        [[1, 0], [1, 0]]
        """
        (y0, y1), (x0, x1) = box
        rows = (np.arange(y0, y1) * self.mask.shape[0]) // self.shape[0]
        cols = (np.arange(x0, x1) * self.mask.shape[1]) // self.shape[1]
        return self.mask[np.ix_(rows, cols)]


# --------------------------------------------------------------------------------------
# The mask
# --------------------------------------------------------------------------------------


def tissue_mask(
    rgb: np.ndarray,
    *,
    pixel_size_um: float | None = None,
    min_object_um2: float = MIN_OBJECT_UM2,
    min_hole_um2: float = MIN_HOLE_UM2,
    background: Sequence[float] | None = None,
) -> np.ndarray:
    """The tissue of a low-resolution brightfield RGB view (see the module notes).

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(Y, X, 3)`` (or 4, with alpha) uint8: a low-resolution level of the slide.
    pixel_size_um : float, optional
        µm per pixel of `rgb`; without it the size limits are
        ``MIN_OBJECT_PX`` and ``MIN_HOLE_PX`` pixels.
    min_object_um2 : float
        Tissue pieces smaller than this are dropped (dust, specks).
    min_hole_um2 : float
        Holes in the tissue smaller than this are filled.
    background : sequence of float, optional
        The glass colour; default :func:`glass_colour` of `rgb`.

    Returns
    -------
    numpy.ndarray
        ``(Y, X)`` bool, True on tissue.

    Examples
    --------
    >>> rgb = np.full((60, 80, 3), 236, np.uint8)
    >>> rgb[10:40, 20:60] = (215, 150, 190)   # eosin-pink tissue
    >>> rgb[20:24, 30:34] = (90, 60, 140)     # a dark nucleus cluster
    >>> rgb[50, 5] = (120, 120, 120)          # a speck of dust
    >>> mask = tissue_mask(rgb)
    >>> int(mask.sum()), bool(mask[50, 5])
    (1200, False)
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"rgb must be (Y, X, 3), got shape {rgb.shape}")
    pixels = rgb[..., :3].astype(np.float32)
    glass = np.asarray(background if background is not None else glass_colour(rgb), np.float32)
    balanced = np.clip(pixels * (255.0 / np.maximum(glass, 1.0)), 0.0, 255.0)
    high = balanced.max(axis=-1)
    saturation = (high - balanced.min(axis=-1)) / np.maximum(high, 1.0)
    darkness = 1.0 - balanced.mean(axis=-1) / 255.0
    t_sat = _clamped_otsu(saturation, SATURATION_RANGE)
    t_dark = _clamped_otsu(darkness, DARKNESS_RANGE)
    mask = ((saturation > t_sat) | (darkness > t_dark)) & (pixels.max(axis=-1) >= BLACK_LEVEL)
    mask = ndi.binary_closing(mask, structure=np.ones((3, 3), bool), border_value=0) | mask
    if pixel_size_um:
        area = float(pixel_size_um) ** 2
        min_object = max(1, math.ceil(min_object_um2 / area))
        min_hole = max(1, math.ceil(min_hole_um2 / area))
    else:
        min_object, min_hole = MIN_OBJECT_PX, MIN_HOLE_PX
    mask = _drop_small(mask, min_object)
    holes = _drop_small(~mask, min_hole, keep_border=True)
    return mask | ~holes


def _clamped_otsu(values: np.ndarray, bounds: tuple[float, float]) -> float:
    if values.size == 0 or float(values.max()) <= float(values.min()):
        return bounds[0]
    return float(np.clip(otsu_threshold(values.ravel(), bins=256), *bounds))


def _drop_small(mask: np.ndarray, min_size: int, *, keep_border: bool = False) -> np.ndarray:
    """`mask` without its 8-connected pieces of fewer than `min_size` pixels.

    With `keep_border`, pieces touching the border are kept whatever their size
    (holes of a mask are the small pieces of its inverse that do not touch it).
    """
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    if keep_border:
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[np.unique(edge)] = True
    keep[0] = False
    return keep[labels]


# --------------------------------------------------------------------------------------
# Using the mask
# --------------------------------------------------------------------------------------


def tiles_with_tissue(tissue: TissueMask, tiles: Sequence[Tile], margin: int = 1) -> list[int]:
    """Indices of the tiles whose core has tissue under it.

    Parameters
    ----------
    tissue : TissueMask
        The scan's mask.
    tiles : sequence of Tile
        The plan's tiles (2D).
    margin : int
        Mask pixels around a core that count too (the mask is coarse: its
        edge is uncertain by about a mask pixel).

    Returns
    -------
    list of int
        ``Tile.index`` of the tiles to segment, ascending.

    Examples
    --------
    >>> from cellseg.tiling import plan_tiles
    >>> mask = np.zeros((8, 8), bool); mask[1:3, 1:3] = True
    >>> tiles_with_tissue(TissueMask(mask, (64, 64)), plan_tiles((64, 64), 16, 4), margin=0)
    [0, 1, 4, 5]
    """
    return sorted(t.index for t in tiles if tissue.any_in(t.core, margin))


def plan_tissue_tiles(
    image_path: str | Path, tiles: Sequence[Tile], tiles_per_batch: int, summary: dict | None
) -> tuple[dict[str, list[int]], list[int] | None]:
    """The plan's batches of tiles with tissue, and the tiles skipped as glass.

    Parameters
    ----------
    image_path : str or Path
        The ingested OME-Zarr image (its ``labels/tissue``).
    tiles : sequence of Tile
        Every tile of the plan.
    tiles_per_batch : int
        Tiles per batch.
    summary : dict or None
        ``ingest.json``'s ``"tissue"``; None (no mask: fluorescence) batches every tile.

    Returns
    -------
    batches : dict
        Batch name → tile indices (:func:`cellseg.tiling.batch_tiles` over the kept tiles).
    skipped : list of int or None
        Indices of the tiles without tissue; None without a mask.
    """
    tissue = load_tissue(image_path, summary) if summary else None
    if tissue is None:
        return batch_tiles(len(tiles), tiles_per_batch), None
    kept = tiles_with_tissue(tissue, tiles)
    batches = batch_tiles(kept, tiles_per_batch)
    skipped = sorted(set(t.index for t in tiles) - set(kept))
    log.info(
        "plan: %d of %d tiles have tissue (%.0f %% of the scan); %d glass tiles skipped",
        len(kept),
        len(tiles),
        100 * tissue.fraction,
        len(skipped),
    )
    return batches, skipped


def fill_glass(data: Any, tissue: TissueMask | None, chunks: Sequence[int]) -> Any:
    """`data` in `chunks`, its chunks without tissue made of the glass colour, never read.

    Parameters
    ----------
    data : dask.array.Array
        ``(C, Y, X)``: the scan's RGB channels first.
    tissue : TissueMask or None
        The scan's mask; None returns `data` unchanged.
    chunks : sequence of int
        ``(Y, X)`` chunk shape of the result (the image's chunks).

    Returns
    -------
    dask.array.Array
        The same pixels where a chunk has tissue (a mask pixel of margin
        around it), the glass colour (rounded) in every other chunk. Computing a
        glass chunk reads nothing from `data`.

    Examples
    --------
    >>> data = da.from_array(np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8), chunks=4)
    >>> mask = np.zeros((4, 4), bool); mask[0, 0] = True
    >>> out = fill_glass(data, TissueMask(mask, (8, 8), (250, 240, 230)), (2, 2)).compute()
    >>> out[:, 7, 7].tolist(), bool((out[:, :2, :2] == data[:, :2, :2]).all())
    ([250, 240, 230], True)
    """
    if tissue is None:
        return data
    data = da.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"fill_glass needs (C, Y, X) data, got shape {data.shape}")
    data = data.rechunk((data.shape[0], *(int(c) for c in chunks)))
    background = np.zeros(data.shape[0], data.dtype)
    colour = np.clip(np.rint(tissue.background), 0, np.iinfo(np.uint8).max)
    background[: min(3, data.shape[0])] = colour[: min(3, data.shape[0])]
    if data.shape[0] == 4:
        background[3] = 255  # opaque
    name = "fill-glass-" + tokenize(data.name, tissue.mask, tissue.shape, tuple(background))
    starts = [np.cumsum((0, *c)) for c in data.chunks]
    graph: dict = {}
    for key in _block_indices(data.numblocks):
        (_, yi, xi) = key
        box = (
            (int(starts[1][yi]), int(starts[1][yi + 1])),
            (int(starts[2][xi]), int(starts[2][xi + 1])),
        )
        if tissue.any_in(box, margin=1):
            graph[(name, *key)] = (data.name, *key)
        else:
            shape = (data.shape[0], box[0][1] - box[0][0], box[1][1] - box[1][0])
            graph[(name, *key)] = (_glass_block, shape, background)
    layers = HighLevelGraph.from_collections(name, graph, dependencies=[data])
    return da.Array(layers, name, data.chunks, dtype=data.dtype, meta=data._meta)


def _block_indices(numblocks: Sequence[int]) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*numblocks)]


def _glass_block(shape: tuple[int, ...], background: np.ndarray) -> np.ndarray:
    out = np.empty(shape, background.dtype)
    out[...] = background.reshape(-1, *([1] * (len(shape) - 1)))
    return out


# --------------------------------------------------------------------------------------
# The mask of a scan, and as a label image
# --------------------------------------------------------------------------------------


def find_tissue(
    path: str | Path,
    scan: Any,
    modality: str,
    *,
    max_pixels: int = MASK_MAX_PIXELS,
) -> TissueMask | None:
    """The tissue mask of a brightfield scan, from a low-resolution view; None otherwise.

    Parameters
    ----------
    path : str or Path
        The scan's file: a whole-slide image gives its pyramid level of at
        most `max_pixels` pixels (no full-resolution read).
    scan : cellseg.io.Scan
        The scan as read (``(C, Y, X)``); a scan without such a level gives
        a strided subsample of its level 0.
    modality : str
        ``"brightfield"`` computes a mask; anything else gives None.
    max_pixels : int
        Size limit of the low-resolution view.

    Returns
    -------
    TissueMask or None
        None for a fluorescence scan, a 3D scan or one without 3 colour
        channels, and when no tissue is found at all (then nothing is
        skipped: a wrong empty mask would lose the whole scan).
    """
    if modality != "brightfield" or scan.axes != "yx" or scan.n_channels not in (3, 4):
        return None
    if np.dtype(scan.data.dtype) != np.uint8:
        return None
    shape = tuple(int(n) for n in scan.spatial_shape)
    rgb = low_resolution_rgb(path, scan, max_pixels)
    spacing = float(np.mean(scan.spacing)) if scan.spacing_source != "default" else None
    factor = (shape[0] / rgb.shape[0] + shape[1] / rgb.shape[1]) / 2
    glass = glass_colour(rgb)
    mask = tissue_mask(rgb, pixel_size_um=spacing * factor if spacing else None, background=glass)
    if not mask.any():
        log.warning("ingest: %s: no tissue found; every tile is segmented", path)
        return None
    return TissueMask(mask, shape, glass)


def low_resolution_rgb(
    path: str | Path, scan: Any, max_pixels: int = MASK_MAX_PIXELS
) -> np.ndarray:
    """A low-resolution view of a 2D RGB scan, read cheaply.

    A whole-slide file gives the finest level of its pyramid with at most
    `max_pixels` pixels (only that level's tiles are decoded); other scans a
    strided subsample of the full-resolution image (which reads every chunk).
    The view spans the whole image: its pixel ``(i, j)`` stands for
    full-resolution pixel ``(i * Y / rows, j * X / cols)``.

    Parameters
    ----------
    path : str or Path
        The scan's file.
    scan : cellseg.io.Scan
        The scan as read, ``(C, Y, X)`` with at least 3 channels.
    max_pixels : int
        Size limit of the view.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` in the scan's dtype.
    """
    shape = tuple(int(n) for n in scan.spatial_shape)
    rgb = _slide_view(Path(path), shape, max_pixels)
    if rgb is None:
        stride = max(1, math.ceil(math.sqrt(shape[0] * shape[1] / max_pixels)))
        view = scan.data[:3, ::stride, ::stride]
        rgb = np.moveaxis(np.asarray(view.compute() if hasattr(view, "compute") else view), 0, -1)
    return rgb[..., :3]


def _slide_view(path: Path, shape: tuple[int, ...], max_pixels: int) -> np.ndarray | None:
    """The finest pyramid level of a slide file with at most `max_pixels` pixels, if any."""
    name = path.name.lower()
    if not path.is_file() or not (
        name.endswith(SLIDE_SUFFIXES) or (name.endswith((".tif", ".tiff")) and is_slide_tiff(path))
    ):
        return None
    slide = open_slide(path)
    if tuple(slide.levels[0].shape) != shape:
        return None
    for k, level in enumerate(slide.levels):
        if k and level.shape[0] * level.shape[1] <= max_pixels:
            data = open_slide(path, k).data
            rgb = np.asarray(data.compute())
            return rgb if rgb.ndim == 3 else None
    return None


def slide_record(path: str | Path, tissue: TissueMask | None) -> dict:
    """What ingest records about a slide: ``{"slide": ..., "tissue": ...}``, each if known.

    Parameters
    ----------
    path : str or Path
        The scan's file.
    tissue : TissueMask or None
        Its tissue mask.

    Returns
    -------
    dict
        ``"slide"``: :func:`cellseg.io.slide.slide_info` (levels, pixel size,
        objective power) for a whole-slide or pyramidal TIFF file;
        ``"tissue"``: :meth:`TissueMask.summary` (``fraction`` of the scan that
        is tissue, the mask's grid and the glass colour). Empty for other scans.
    """
    record: dict = {}
    info = slide_info(path)
    if info:
        record["slide"] = info
    if tissue is not None:
        record["tissue"] = tissue.summary()
    return record


def save_tissue(image_path: str | Path, tissue: TissueMask | None, chunks: Sequence[int]) -> None:
    """Write the mask as the label image ``labels/tissue`` of an OME-Zarr image.

    The label is on the image's full-resolution grid with its pyramid
    (:func:`cellseg.io.finalize_labels`); only chunks with tissue are written
    (a missing chunk reads as 0). Its attributes hold :meth:`TissueMask.summary`.

    Parameters
    ----------
    image_path : str or Path
        The OME-Zarr image (``OUTDIR/<scan>.ome.zarr``).
    tissue : TissueMask or None
        The mask; None writes nothing.
    chunks : sequence of int
        ``(Y, X)`` chunk shape.
    """
    if tissue is None:
        return
    image_path = Path(image_path)
    labels = create_labels(image_path, TISSUE_LABEL, tissue.shape, tuple(chunks))
    cy, cx = labels.chunks
    for y0 in range(0, tissue.shape[0], cy):
        for x0 in range(0, tissue.shape[1], cx):
            box = ((y0, min(y0 + cy, tissue.shape[0])), (x0, min(x0 + cx, tissue.shape[1])))
            if tissue.any_in(box):
                region = tissue.region(box)
                if region.any():
                    labels[y0 : box[0][1], x0 : box[1][1]] = region.astype(labels.dtype)
    finalize_labels(image_path, TISSUE_LABEL, attrs=tissue.summary())


def load_tissue(image_path: str | Path, summary: dict | None = None) -> TissueMask | None:
    """Read the mask back from ``labels/tissue`` at the level nearest its own resolution.

    Parameters
    ----------
    image_path : str or Path
        The OME-Zarr image.
    summary : dict, optional
        :meth:`TissueMask.summary` (``ingest.json``'s ``"tissue"``); default the
        label's attributes. None when the image has no tissue label.

    Returns
    -------
    TissueMask or None
    """
    image_path = Path(image_path)
    if not (image_path / "labels" / TISSUE_LABEL / "zarr.json").exists():
        return None
    level0 = open_labels(image_path, TISSUE_LABEL, 0)
    if summary is None:
        summary = read_image_attrs(image_path / "labels" / TISSUE_LABEL)
    factor = min(summary.get("downsample") or [1.0])
    level = 0
    while 2 ** (level + 1) <= factor:
        try:
            open_labels(image_path, TISSUE_LABEL, level + 1)
        except InputError:
            break
        level += 1
    array = open_labels(image_path, TISSUE_LABEL, level)
    mask = np.asarray(array[...]) > 0
    background = tuple(summary.get("background") or (255.0, 255.0, 255.0))
    shape = (int(level0.shape[0]), int(level0.shape[1]))
    return TissueMask(mask, shape, background)  # type: ignore[arg-type]


def on_tissue(labels: np.ndarray, tissue: np.ndarray, share: float = 0.5) -> np.ndarray:
    """Labels with the objects that lie mostly on glass removed.

    Parameters
    ----------
    labels : numpy.ndarray of int
        Objects of a crop.
    tissue : numpy.ndarray of bool
        The tissue mask over the same crop (:meth:`TissueMask.region`).
    share : float
        An object is kept when more than this share of its pixels is on tissue.

    Returns
    -------
    numpy.ndarray
        ``labels``, itself when every object is kept.

    Examples
    --------
    >>> lab = np.array([[1, 1, 2, 2]]); t = np.array([[True, True, True, False]])
    >>> on_tissue(lab, t).tolist()
    [[1, 1, 0, 0]]
    """
    n = int(labels.max(initial=0)) + 1
    total = np.bincount(labels.ravel(), minlength=n)
    inside = np.bincount(labels.ravel(), weights=tissue.ravel(), minlength=n)
    glass = (total > 0) & (inside <= share * total)
    glass[0] = False
    if not glass.any():
        return labels
    return np.where(glass[labels], 0, labels).astype(labels.dtype, copy=False)
