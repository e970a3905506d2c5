"""Segmentation backends: turn a batch of normalised image crops into label crops.

Every backend implements :class:`Backend`. The tiling and stitching code only
talks to this interface, so a model-based backend plugs in next to the
classical one. A backend also says how much context it needs: how large its
objects get (which sets the default halo) and how far from a crop edge its
output can differ from the output on the whole scan (the ``margin``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from cellseg.errors import ConfigError
from cellseg.normalize import normalized_value


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a segmentation backend."""

    name: str

    def max_diameter_um(self) -> float:
        """Largest object diameter the backend expects, in µm."""

    def margin_px(self, spacing: Sequence[float]) -> tuple[int, ...]:
        """Per axis, how far from a crop edge results may differ from whole-scan results."""

    def predict(
        self, crops: Sequence[np.ndarray], spacing: Sequence[float], stats: dict
    ) -> list[np.ndarray]:
        """Label a batch of crops.

        Parameters
        ----------
        crops : sequence of ndarray
            Normalised float32 crops, (Y, X) or (Z, Y, X), possibly of different shapes.
        spacing : sequence of float
            Pixel size in µm per axis.
        stats : dict
            Scan-level statistics from :func:`cellseg.normalize.compute_scan_stats`.

        Returns
        -------
        list of ndarray
            One int32 label image per crop, same shape, 0 = background.
        """


def default_halo_px(backend: Backend, spacing: Sequence[float]) -> int:
    """Default overlap in pixels of the finest axis: the largest cell plus the margin.

    Backends whose largest cell is fixed in pixels rather than µm (models trained
    over a range of nucleus sizes in pixels) say so with ``max_diameter_px``.
    """
    finest = min(float(s) for s in spacing)
    margin = max(m * s for m, s in zip(backend.margin_px(spacing), spacing)) / finest
    by_px = getattr(backend, "max_diameter_px", None)
    largest = by_px(spacing) if by_px else backend.max_diameter_um() / finest
    return int(math.ceil(largest + margin))


def _ellipsoid_footprint(radius_um: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean footprint of a ball of ``radius_um`` on an anisotropic grid."""
    radii = [max(1, int(math.floor(radius_um / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist2 = sum((g * s / radius_um) ** 2 for g, s in zip(grids, spacing))
    return dist2 <= 1.0


#: Voxels whose float64 offsets :func:`distance_map` holds at a time.
_DISTANCE_SLAB = 1 << 20


def distance_map(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance in µm from each pixel of `mask` to the nearest pixel outside it.

    Equal, bit for bit, to
    ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing).astype(np.float32)``
    with under half of its memory: scipy turns its int32 feature transform into
    float64 offsets for the whole image at once (48 bytes a voxel in 3D); here
    the offsets become distances a slab of the first axis at a time, so the
    feature transform (4 bytes a voxel per axis) and the float32 result are
    what is held.

    Parameters
    ----------
    mask : ndarray
        Pixels to measure (nonzero); the distance is 0 elsewhere.
    spacing : sequence of float
        Pixel size per axis.

    Returns
    -------
    ndarray of float32
        Same shape as `mask`.
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask)
    spacing = np.asarray(spacing, np.float64)
    nearest = ndi.distance_transform_edt(
        mask, sampling=spacing, return_distances=False, return_indices=True
    )
    out = np.empty(mask.shape, np.float32)
    if not mask.size:
        return out
    shape = mask.shape
    step = max(1, _DISTANCE_SLAB // max(1, math.prod(shape[1:])))
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        total = None
        for a, n in enumerate(shape):
            along = np.arange(start, stop) if a == 0 else np.arange(n)
            along = along.astype(np.int32).reshape([-1 if b == a else 1 for b in range(len(shape))])
            # the same float64 steps as scipy, in the same order: offset, scale, square, sum
            offset = (nearest[a, start:stop] - along).astype(np.float64)
            offset *= spacing[a]
            offset *= offset
            total = offset if total is None else np.add(total, offset, out=total)
        out[start:stop] = np.sqrt(total, out=total)
    return out


@dataclass
class ClassicalBackend:
    """Smoothing, a scan-level threshold, a distance transform and a seeded watershed.

    Parameters
    ----------
    diameter_um : float
        Typical nucleus diameter in µm; sets the seed spacing and the minimum size.
    max_diameter_um_ : float
        Largest nucleus diameter expected in µm; sets the default halo.
    smooth_um : float
        Gaussian smoothing sigma in µm (per axis converted with the pixel size, so
        anisotropic stacks are smoothed isotropically in physical space).
    threshold : float or None
        Foreground threshold in raw intensity units; default Otsu's threshold of
        the scan, computed once per scan.
    min_area_fraction : float
        Objects smaller than this fraction of a typical nucleus are dropped.
    """

    diameter_um: float = 7.0
    max_diameter_um_: float = 16.0
    smooth_um: float = 0.4
    threshold: float | None = None
    min_area_fraction: float = 0.15
    name: str = "classical"

    def max_diameter_um(self) -> float:  # noqa: D102
        return self.max_diameter_um_

    def margin_px(self, spacing: Sequence[float]) -> tuple[int, ...]:  # noqa: D102
        reach_um = 4.0 * self.smooth_um + 0.5 * self.diameter_um
        return tuple(int(math.ceil(reach_um / float(s))) for s in spacing)

    def predict(self, crops, spacing, stats):  # noqa: D102
        return [self.segment(c, spacing, stats) for c in crops]

    def segment(self, image: np.ndarray, spacing: Sequence[float], stats: dict) -> np.ndarray:
        """Label one normalised crop; see :class:`ClassicalBackend`."""
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.morphology import remove_small_objects
        from skimage.segmentation import watershed

        spacing = tuple(float(s) for s in spacing)
        if image.ndim != len(spacing):
            raise ConfigError(f"crop has {image.ndim} axes but {len(spacing)} pixel sizes")
        raw_thr = self.threshold if self.threshold is not None else stats["otsu"]
        thr = normalized_value(raw_thr, stats)
        sigma = [self.smooth_um / s for s in spacing]
        smooth = ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma, mode="nearest")
        foreground = smooth > thr
        voxel = math.prod(spacing)
        typical = (math.pi / 4 if image.ndim == 2 else math.pi / 6) * self.diameter_um**image.ndim
        min_size = max(3, int(self.min_area_fraction * typical / voxel))
        foreground = remove_small_objects(foreground, max_size=min_size)
        foreground = ndi.binary_fill_holes(foreground)
        if not foreground.any():
            return np.zeros(image.shape, np.int32)
        dist = distance_map(foreground, spacing)
        # A little smoothing of the distance map keeps one seed per nucleus.
        dist = ndi.gaussian_filter(dist, [0.5 * self.smooth_um / s for s in spacing])
        footprint = _ellipsoid_footprint(0.35 * self.diameter_um, spacing)
        peaks = peak_local_max(
            dist,
            footprint=footprint,
            threshold_abs=0.15 * self.diameter_um,
            exclude_border=False,
            labels=foreground.astype(np.int32),
        )
        markers = np.zeros(image.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        labels = watershed(-dist, markers, mask=foreground).astype(np.int32, copy=False)
        small = np.bincount(labels.ravel()) <= min_size
        small[0] = False
        labels[small[labels]] = 0
        return labels


class ModelBackend:
    """A trained MONAI network (see :mod:`cellseg.model`) run on batches of tiles.

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
        nuclei have the model's typical size in pixels, and labels are mapped back
        to the scan's grid; default: no rescaling (the models are trained on a wide
        range of nucleus sizes).
    """

    name = "model"
    per_tile_cpu = False

    def __init__(self, model=None, device: str = "auto", diameter_um: float | None = None):
        self.model = model
        self.device = device
        self.diameter_um = diameter_um
        self._specs: dict[int, dict] = {}

    def spec(self, ndim: int) -> dict:
        """Metadata of the model used for ``ndim`` spatial axes."""
        from cellseg.model import read_spec, resolve_model_path

        if ndim not in self._specs:
            path = resolve_model_path(self.model, ndim)
            spec = read_spec(path)
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

        The models are trained on nuclei of a wide range of sizes in pixels, so by
        default crops are not resampled. With ``diameter_um``, the in-plane axes
        are zoomed so that nuclei have the model's typical diameter in pixels.
        """
        if not self.diameter_um:
            return (1.0,) * len(spacing)
        spec = self.spec(len(spacing))
        typical = float(spec.get("diameter_px", 24.0))
        zoom = [typical / (float(self.diameter_um) / float(s)) for s in spacing]
        if len(spacing) == 3:
            zoom[0] = 1.0
        # small differences are within what the model was trained on
        return tuple(1.0 if 0.8 <= z <= 1.25 else z for z in zoom)

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
        from cellseg.model import plane_factor

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
        from cellseg.model import alignment

        spec = self.spec(len(spacing))
        if any(z != 1.0 for z in self.scale(spacing)):
            return (1,) * len(spacing)
        return alignment(spec, spacing)

    def predict(self, crops, spacing, stats):  # noqa: D102
        from scipy import ndimage as ndi

        from cellseg.model import load_model, postprocess, predict_maps, resolve_device

        nd = len(spacing)
        spec = self.spec(nd)
        device = resolve_device(self.device)
        net, _ = load_model(spec["path"], device)
        zoom = self.scale(spacing)
        if any(z != 1.0 for z in zoom):
            inputs = [ndi.zoom(c, zoom, order=1, mode="nearest") for c in crops]
        else:
            inputs = list(crops)
        seen = self.model_spacing(spacing)
        maps = predict_maps(net, inputs, spec, device, spacing=seen)
        out = []
        for crop_maps, crop in zip(maps, crops):
            lab = postprocess(crop_maps, spec, seen)
            if lab.shape != crop.shape:
                lab = _resize_labels(lab, crop.shape)
            out.append(lab)
        return out


def equivalent_diameters_um(labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Diameter in µm of the circle (2D) or sphere (3D) of each object's area or volume,
    for the objects that do not touch the image border."""
    sizes = np.bincount(labels.ravel())
    edge = np.zeros_like(sizes, bool)
    for ax in range(labels.ndim):
        for end in (0, -1):
            edge[np.unique(np.take(labels, end, axis=ax))] = True
    keep = (sizes > 0) & ~edge
    keep[0] = False
    measure = sizes[keep] * float(np.prod(spacing))
    if labels.ndim == 2:
        return 2.0 * np.sqrt(measure / np.pi)
    return np.cbrt(6.0 * measure / np.pi)


def estimate_diameter_um(
    image,
    spacing: Sequence[float],
    stats: dict,
    *,
    model: str | None = None,
    device: str = "auto",
    crop_px: int = 256,
    samples: int = 9,
) -> float | None:
    """Typical nucleus diameter of a scan in µm, measured by the model itself.

    The model segments up to ``samples`` crops spread over the scan (``crop_px``
    in-plane, the whole depth up to 32 planes) at the scan's own pixel size; the
    median equivalent diameter of the nuclei found is the estimate. When that
    asks for rescaling, the crops are segmented once more at the new scale and
    the estimate refined. Returns None when no nucleus is found.

    Parameters
    ----------
    image : array-like, (Y, X) or (Z, Y, X)
        One channel of the scan (numpy, dask or zarr); only the crops are read.
    spacing : sequence of float
        µm per axis.
    stats : dict
        Scan-level statistics (:func:`cellseg.normalize.compute_scan_stats`).
    """
    from cellseg.normalize import normalize

    shape = tuple(int(n) for n in image.shape)
    nd = len(shape)
    side = int(math.ceil(math.sqrt(samples)))
    starts = []
    for ax, n in enumerate(shape):
        if nd == 3 and ax == 0:
            size = min(n, 32)
            starts.append([max(0, (n - size) // 2)])
            continue
        size = min(n, crop_px)
        pos = np.linspace(0, n - size, side).astype(int) if n > size else np.array([0])
        starts.append(sorted(set(pos.tolist())))
    sizes = [min(n, 32) if (nd == 3 and ax == 0) else min(n, crop_px) for ax, n in enumerate(shape)]
    grid = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, nd)
    crops = [
        normalize(np.asarray(image[tuple(slice(o, o + s) for o, s in zip(org, sizes))]), stats)
        for org in grid[:samples]
    ]
    estimate = None
    for _ in range(2):
        be = ModelBackend(model, device=device, diameter_um=estimate)
        found = np.concatenate(
            [equivalent_diameters_um(lab, spacing) for lab in be.predict(crops, spacing, stats)]
        )
        if found.size == 0:
            return estimate
        new = float(np.median(found))
        if ModelBackend(model, diameter_um=new).scale(spacing) == be.scale(spacing):
            return new
        estimate = new
    return estimate


def _resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image onto ``shape`` (same field of view)."""
    idx = [
        np.minimum((np.arange(n) + 0.5) * labels.shape[a] / n, labels.shape[a] - 1).astype(int)
        for a, n in enumerate(shape)
    ]
    return labels[np.ix_(*idx)]


BACKENDS = {"classical": ClassicalBackend, "model": ModelBackend}
#: Default backend per number of spatial axes (README, "Models": both shipped
#: models beat the classical backend).
DEFAULT_BACKEND = {2: "model", 3: "model"}


def default_backend_name(ndim: int) -> str:
    """The backend used when none is given, for a scan with ``ndim`` spatial axes."""
    return DEFAULT_BACKEND.get(int(ndim), "classical")


def get_backend(
    name: str | None = None, model: str | None = None, *, ndim: int = 2, **options
) -> Backend:
    """Build a backend by name (default :func:`default_backend_name` of ``ndim``).

    Raises
    ------
    ConfigError
        For an unknown backend name, or a model given to a backend without models.
    """
    name = name or default_backend_name(ndim)
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}."
        )
    if name == "model":
        return ModelBackend(model=model, **options)
    if model is not None:
        raise ConfigError(f"the {name} backend takes no model; use --backend model.")
    options.pop("device", None)
    return BACKENDS[name](**options)


def backend_alignment(backend: Backend, spacing: Sequence[float]) -> tuple[int, ...]:
    """Per-axis alignment a backend needs of its crops (1 when it has none)."""
    fn = getattr(backend, "alignment", None)
    return tuple(fn(spacing)) if fn else (1,) * len(spacing)
