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
    """

    per_tile_cpu = False
    splits_finish = True

    def __init__(self, model=None, device: str = "auto", diameter_um: float | None = None):
        self.model = model
        self.device = device
        self.diameter_um = diameter_um
        self._specs: dict[int, dict] = {}

    @classmethod
    def from_options(cls, model: str | None = None, device: str = "auto", **options):
        """Build from ``--model``, ``--device`` and ``diameter_um``."""
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
        """Zoom per axis from the scan's grid to the model's grid (1 = no resampling).

        Without ``diameter_um`` crops are not resampled, unless the model
        was trained on a range of pixel sizes (``pixel_size_range_um``, e.g.
        the brightfield model) and the scan's is outside it: then crops are
        brought to the range's nearest end. With it, the in-plane axes are zoomed so that
        nuclei have the model's typical diameter in pixels (within
        :data:`ZOOM_RANGE`; zooms within :data:`NO_ZOOM` are not applied), and
        in 3D the z axis is zoomed down where its step would be finer than the
        new in-plane pixels.
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
        if not diameter_um:
            return (1.0,) * len(spacing)
        zoom = [typical / (float(diameter_um) / float(s)) for s in spacing]
        zoom = [min(max(z, ZOOM_RANGE[0]), ZOOM_RANGE[1]) for z in zoom]
        zoom = [1.0 if NO_ZOOM[0] <= z <= NO_ZOOM[1] else z for z in zoom]
        if len(spacing) == 3:
            new_xy = float(min(spacing[1:])) / min(zoom[1:])
            zoom[0] = min(1.0, float(spacing[0]) / new_xy)
            zoom[0] = 1.0 if zoom[0] >= NO_ZOOM[0] else zoom[0]
        return tuple(zoom)

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
        """Crops start at multiples of these (the network's total stride) when not rescaled."""
        spec = self.spec(len(spacing))
        if any(z != 1.0 for z in self.scale(spacing)):
            return (1,) * len(spacing)
        return network_alignment(spec, spacing)

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
        zoom = self.scale(spacing)
        if any(z != 1.0 for z in zoom):
            inputs = [ndi.zoom(c, zoom, order=1, mode="nearest") for c in crops]
        else:
            inputs = list(crops)
        return predict_maps(net, inputs, spec, device, spacing=self.model_spacing(spacing))

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
        out = []
        for crop_maps, crop in zip(forwarded, crops):
            lab = postprocess(crop_maps, spec, seen, sized=bool(self.diameter_um))
            if lab.shape != crop.shape:
                lab = resize_labels(lab, crop.shape)
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
