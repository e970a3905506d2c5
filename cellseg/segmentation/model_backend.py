"""The model backend: a trained MONAI network run on batches of tiles.

Crops are rescaled so that nuclei have the model's typical size in pixels
when the scan's nucleus diameter is known (given, or measured with
``--diameter auto``, :mod:`cellseg.segmentation.sizing`), the network's maps
are post-processed into labels on the rescaled grid, and the labels are
mapped back to the scan's grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cellseg.errors import ConfigError
from cellseg.segmentation.base import BackendBase, register_backend
from cellseg.segmentation.bioimageio import model_spec, open_model
from cellseg.segmentation.inference import predict_maps
from cellseg.segmentation.network import alignment as network_alignment
from cellseg.segmentation.network import (
    plane_factor,
    resolve_device,
    resolve_model_path,
)
from cellseg.segmentation.sizing import estimate_diameter_um
from cellseg.segmentation.targets import postprocess

#: Zooms this close to 1 are not applied: the models are trained on a range of sizes.
NO_ZOOM = (0.8, 1.25)
#: The zoom is kept within these bounds (nuclei of about 6 to 200 px), so a wrong
#: diameter cannot blow a tile up to many times its memory.
ZOOM_RANGE = (0.125, 4.0)
#: Zooms are fractions p/q with q at most this: crops that start on multiples of
#: q (and span multiples of it) then land on one global resampled grid, so tiles
#: agree with one tile at the seams.
ZOOM_DENOMINATOR = 8


def zoom_fraction(zoom: float) -> Fraction:
    """The fraction p/q (q ≤ :data:`ZOOM_DENOMINATOR`) nearest to ``zoom``.

    Examples
    --------
    >>> zoom_fraction(1 / 0.55), zoom_fraction(0.2), zoom_fraction(1.0)
    (Fraction(11, 6), Fraction(1, 5), Fraction(1, 1))
    """
    return Fraction(float(zoom)).limit_denominator(ZOOM_DENOMINATOR)


def zoom_crop(crop: np.ndarray, zoom: Sequence[Fraction]) -> np.ndarray:
    """Resample a crop by exact fractions onto the scan's global zoomed grid.

    The crop is padded at its far end (edge values) to a multiple of each
    denominator, so the output has exactly ``n * p / q`` pixels and output pixel
    ``i`` is centred at ``(i + 0.5) * q / p - 0.5`` crop pixels (``grid_mode``):
    a crop starting at a multiple of q is resampled exactly like the same
    pixels of the whole scan, away from its borders.
    """
    pad = [(0, -n % z.denominator) for n, z in zip(crop.shape, zoom)]
    if any(p for _, p in pad):
        crop = np.pad(crop, pad, mode="edge")
    shape = tuple(n * z.numerator // z.denominator for n, z in zip(crop.shape, zoom))
    factors = [m / n for m, n in zip(shape, crop.shape)]
    return ndi.zoom(crop, factors, order=1, mode="nearest", grid_mode=True)


@register_backend("model", default_for=(2, 3))
class ModelBackend(BackendBase):
    """A trained MONAI network (see :mod:`cellseg.segmentation.network`) run on batches of tiles.

    Parameters
    ----------
    model : str or path, optional
        A shipped model name or a model folder; default the shipped model for the
        scan's dimensionality (``nuclei2d`` / ``nuclei3d``).
    device : {"auto", "cpu", "cuda"}
        ``auto`` picks CUDA when a GPU is visible. On CUDA the forward pass runs in
        mixed precision.
    diameter_um : float, optional
        Typical nucleus diameter of the scan in µm. Crops are rescaled in-plane so
        nuclei have the model's typical size in pixels (and z so that planes are
        not finer than the new in-plane pixels), and labels are mapped back to
        the scan's grid; default: no rescaling.
    flips : bool
        Test-time flips: average the network's maps over the crops mirrored
        along every set of axes (4 passes in 2D and per plane of the 3D
        model's views). Smoother outlines, at 4× the forward pass.
    """

    per_tile_cpu = False
    splits_finish = True

    def __init__(
        self,
        model=None,
        device: str = "auto",
        diameter_um: float | None = None,
        flips: bool = False,
    ):
        self.model = model
        self.device = device
        self.diameter_um = diameter_um
        self.flips = bool(flips)
        self._specs: dict[int, dict] = {}

    @classmethod
    def from_options(cls, model: str | None = None, device: str = "auto", **options):
        """Build from ``--model``, ``--device``, ``diameter_um`` and ``flips``."""
        return cls(model=model, device=device, **options)

    def spec(self, ndim: int) -> dict:
        """Metadata of the model used for ``ndim`` spatial axes."""
        if ndim not in self._specs:
            path = resolve_model_path(self.model, ndim)
            spec = model_spec(path)  # a model folder or a bioimage.io package
            if int(spec["spatial_dims"]) != ndim:
                raise ConfigError(
                    f"model {path} is a {spec['spatial_dims']}D model but the scan is {ndim}D; "
                    f"use a {ndim}D model (--model nuclei{ndim}d)."
                )
            spec["path"] = str(path)
            self._specs[ndim] = spec
        return self._specs[ndim]

    def scale(self, spacing: Sequence[float]) -> tuple[float, ...]:
        """Zoom per axis (floats of :meth:`zoom_fractions`)."""
        return tuple(float(z) for z in self.zoom_fractions(spacing))

    def zoom_fractions(self, spacing: Sequence[float]) -> tuple[Fraction, ...]:
        """Zoom per axis from the scan's grid to the model's grid (1 = no resampling).

        Without ``diameter_um`` crops are not resampled, unless the model
        was trained on a range of pixel sizes (``pixel_size_range_um``, e.g.
        the brightfield model) and the scan's is outside it: then crops are
        brought to the range's nearest end. With it, the in-plane axes are zoomed so that
        nuclei have the model's typical diameter in pixels (within
        :data:`ZOOM_RANGE`; zooms within :data:`NO_ZOOM` are not applied), and
        in 3D the z axis is zoomed down where its step would be finer than the
        new in-plane pixels; but nuclei whose diameter in pixels lies in the
        model's ``unzoomed_diameter_px`` are segmented as they are.
        """
        spec = self.spec(len(spacing))
        typical = float(spec.get("diameter_px", 24.0))
        diameter_um = self.diameter_um
        if not diameter_um and spec.get("pixel_size_range_um"):
            # a model trained on a range of pixel sizes: crops outside it are brought
            # to its nearest end (a 10× slide up, a 100× one down), the rest stay
            lo, hi = (float(v) for v in spec["pixel_size_range_um"])
            finest = min(float(s) for s in spacing[-2:])
            if not lo <= finest <= hi:
                diameter_um = typical * min(max(finest, lo), hi)
        if not diameter_um or self._unzoomed(spacing):
            return (Fraction(1),) * len(spacing)
        zoom = [typical / (float(diameter_um) / float(s)) for s in spacing]
        zoom = [min(max(z, ZOOM_RANGE[0]), ZOOM_RANGE[1]) for z in zoom]
        zoom = [1.0 if NO_ZOOM[0] <= z <= NO_ZOOM[1] else z for z in zoom]
        if len(spacing) == 3:
            new_xy = float(min(spacing[1:])) / min(zoom[1:])
            zoom[0] = min(1.0, float(spacing[0]) / new_xy)
            zoom[0] = 1.0 if zoom[0] >= NO_ZOOM[0] else zoom[0]
        return tuple(zoom_fraction(z) for z in zoom)

    def _unzoomed(self, spacing: Sequence[float]) -> bool:
        """Whether the scan's diameter (in pixels of its finest in-plane axis) lies in
        the model's ``unzoomed_diameter_px``: nuclei the model segments better as
        they are, with the post-processing of unknown size (the shipped
        fluorescence models: 12-30 px, chosen on synthetic scans, where zooming
        them to the typical size merged touching small nuclei)."""
        band = self.spec(len(spacing)).get("unzoomed_diameter_px")
        if not self.diameter_um or not band:
            return False
        px = float(self.diameter_um) / min(float(s) for s in spacing[-2:])
        return float(band[0]) <= px <= float(band[1])

    def sized(self, spacing: Sequence[float]) -> bool:
        """Whether crops are zoomed to the model's typical nucleus size (the
        post-processing then smooths more and asks seeds for more prominence)."""
        return bool(self.diameter_um) and not self._unzoomed(spacing)

    def max_diameter_um(self) -> float:  # noqa: D102
        return float(self._any_spec().get("max_diameter_um", 26.0))

    def max_diameter_px(self, spacing: Sequence[float]) -> float:
        """Largest nucleus in scan pixels: the model's range, undone by the zoom."""
        spec = self.spec(len(spacing))
        largest = float(spec.get("diameter_px_range", [8.0, 64.0])[1])
        return largest / min(self.scale(spacing)[-2:])

    def _any_spec(self) -> dict:
        return next(iter(self._specs.values())) if self._specs else self.spec(2)

    def margin_px(self, spacing: Sequence[float]) -> tuple[int, ...]:  # noqa: D102
        spec = self.spec(len(spacing))
        ctx = list(spec.get("context_px", [32] * len(spacing)))
        if spec.get("views") == "orthogonal":
            # the network sees z resampled k times finer: its context spans fewer planes
            ctx[0] = int(math.ceil(ctx[-1] / plane_factor(spec, self.model_spacing(spacing))))
        zoom = self.scale(spacing)
        return tuple(int(math.ceil(c / z)) for c, z in zip(ctx, zoom))

    def model_spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        """Voxel size of the crops as the network sees them (after the zoom)."""
        return tuple(float(s) / z for s, z in zip(spacing, self.scale(spacing)))

    def alignment(self, spacing: Sequence[float]) -> tuple[int, ...]:
        """Crops start at multiples of these: the network's total stride, on the zoomed grid.

        With a zoom p/q, a crop starting at a multiple of q starts on the global
        zoomed grid, and one starting at a multiple of ``q * a / gcd(p, a)``
        lands on a multiple of the network's stride ``a`` there.
        """
        spec = self.spec(len(spacing))
        zoom = self.zoom_fractions(spacing)
        stride = network_alignment(spec, self.model_spacing(spacing))
        return tuple(z.denominator * a // math.gcd(z.numerator, a) for z, a in zip(zoom, stride))

    def estimate_diameter_um(
        self, image: Any, spacing: Sequence[float], stats: dict
    ) -> float | None:
        """The scan's nucleus diameter from this model's foreground maps (see
        :func:`cellseg.segmentation.sizing.estimate_diameter_um`)."""

        def rescaled(diameter_um: float | None) -> ModelBackend:
            return ModelBackend(self.model, self.device, diameter_um=diameter_um)

        def foreground(crops, spacing, diameter_um):
            be = rescaled(diameter_um)
            threshold = float(be.spec(len(spacing))["postprocess"].get("fg_threshold", 0.5))
            masks = [fg > threshold for fg, _ in be.maps(crops, spacing)]
            return masks, be.model_spacing(spacing)

        return estimate_diameter_um(
            image, spacing, stats, foreground, lambda d: rescaled(d).scale(spacing)
        )

    def maps(self, crops: Sequence[np.ndarray], spacing: Sequence[float]) -> list[tuple]:
        """The network's (foreground, centre) maps of each crop on the model's grid."""
        spec = self.spec(len(spacing))
        device = resolve_device(self.device)
        net, _ = open_model(spec["path"], device)
        zoom = self.zoom_fractions(spacing)
        if any(z != 1 for z in zoom):
            inputs = [zoom_crop(c, zoom) for c in crops]
        else:
            inputs = list(crops)
        return predict_maps(
            net, inputs, spec, device, spacing=self.model_spacing(spacing), flips=self.flips
        )

    def forward(self, crops: Sequence[np.ndarray], spacing: Sequence[float]) -> list[tuple]:
        """The network's part of :meth:`predict`: :meth:`maps` of the crops."""
        return self.maps(crops, spacing)

    def finish(
        self,
        forwarded: Sequence[tuple],
        crops: Sequence[np.ndarray],
        spacing: Sequence[float],
        stats: dict,
    ) -> list[np.ndarray]:
        """Labels of crops from their maps: peaks, watershed, back to the crops' grid.

        Each crop is labelled on its own (CPU work, which releases the GIL
        mostly), so the stage runs it per crop on several threads.
        """
        spec = self.spec(len(spacing))
        seen = self.model_spacing(spacing)
        zoom = self.zoom_fractions(spacing)
        sized = self.sized(spacing)
        out = []
        for crop_maps, crop in zip(forwarded, crops):
            lab = postprocess(crop_maps, spec, seen, sized=sized)
            if lab.shape != crop.shape:
                # back onto the crop padded as zoom_crop padded it, then cut to the crop
                padded = [n + (-n % z.denominator) for n, z in zip(crop.shape, zoom)]
                lab = resize_labels(lab, padded)[tuple(slice(0, n) for n in crop.shape)]
            out.append(lab)
        return out

    def predict(self, crops, spacing, stats):  # noqa: D102
        return self.finish(self.forward(crops, spacing), crops, spacing, stats)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image onto ``shape`` (same field of view).

    Examples
    --------
    >>> resize_labels(np.array([[1, 2]]), (2, 4)).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2]]
    """
    idx = [
        np.minimum((np.arange(n) + 0.5) * labels.shape[a] / n, labels.shape[a] - 1).astype(int)
        for a, n in enumerate(shape)
    ]
    return labels[np.ix_(*idx)]
