"""The backend protocol and the registry of backends.

A backend turns a batch of normalised image crops into label crops. The
tiling, stitching and stage code talk only to :class:`Backend`, so a new
backend is one module with a class that implements it (most easily by
subclassing :class:`BackendBase`, which supplies the optional members) and one
line registering it::

    @register_backend("mine")
    class MyBackend(BackendBase):
        ...

and, for it to be imported, one line in ``cellseg/segmentation/__init__.py``.
A backend also says how much context it needs: how large its objects get
(which sets the default halo) and how far from a crop edge its output can
differ from the output on the whole scan (the ``margin``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from cellseg.errors import ConfigError


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a segmentation backend.

    Attributes
    ----------
    name : str
        The registered name (``--backend NAME``).
    per_tile_cpu : bool
        True when the backend runs one tile at a time on the CPU, so the
        stage spreads tiles over threads; False when it batches tiles itself
        (a network on a device).
    splits_finish : bool
        True when :meth:`finish` may run on each crop of a batch on its own
        (the stage then spreads a batch's post-processing over threads).
    """

    name: str
    per_tile_cpu: bool
    splits_finish: bool

    def max_diameter_um(self) -> float:
        """Largest object diameter the backend expects, in µm."""

    def max_diameter_px(self, spacing: Sequence[float]) -> float:
        """Largest object diameter the backend expects, in pixels of the finest axis."""

    def margin_px(self, spacing: Sequence[float]) -> tuple[int, ...]:
        """Per axis, how far from a crop edge results may differ from whole-scan results."""

    def alignment(self, spacing: Sequence[float]) -> tuple[int, ...]:
        """Per axis, the multiple that crop origins must have (1: none)."""

    def estimate_diameter_um(
        self, image: Any, spacing: Sequence[float], stats: dict
    ) -> float | None:
        """The scan's typical nucleus diameter in µm (``--diameter auto``), or None."""

    def model_spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        """Pixel size in µm per axis at which the backend works on crops of ``spacing``."""

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

    def forward(self, crops: Sequence[np.ndarray], spacing: Sequence[float]) -> list:
        """The device part of :meth:`predict` (a network's forward pass): one item per crop.

        Optional (:class:`BackendBase` returns the crops). The segment stage
        runs it for one batch of crops while it post-processes the previous
        batch with :meth:`finish` on other threads.
        """

    def finish(
        self,
        forwarded: Sequence[Any],
        crops: Sequence[np.ndarray],
        spacing: Sequence[float],
        stats: dict,
    ) -> list[np.ndarray]:
        """The rest of :meth:`predict`: labels of crops from their :meth:`forward` items.

        Optional (:class:`BackendBase` calls :meth:`predict`). ``finish(forward(c), c,
        ...)`` equals ``predict(c, ...)``; when ``splits_finish`` is True it may be
        called on any part of a batch (one crop at a time, from several threads).
        """


class BackendBase:
    """Defaults of the optional members of :class:`Backend`.

    Subclasses set ``name`` (by :func:`register_backend`) and implement
    ``max_diameter_um``, ``margin_px`` and ``predict``. ``from_options`` builds
    one from the stage's options: by default a backend takes no model and runs
    on the CPU, so a model is an error and the device is ignored.
    """

    name: ClassVar[str] = ""
    per_tile_cpu: ClassVar[bool] = True

    @property
    def splits_finish(self) -> bool:
        """By default: a backend that runs per tile on the CPU labels each crop on its own."""
        return bool(self.per_tile_cpu)

    @classmethod
    def from_options(cls, model: str | None = None, device: str = "auto", **options):
        """Build the backend from ``--model``, ``--device`` and its own options."""
        if model is not None:
            raise ConfigError(f"the {cls.name} backend takes no model; use --backend model.")
        return cls(**options)

    def max_diameter_um(self) -> float:  # pragma: no cover - abstract
        """Largest object diameter the backend expects, in µm."""
        raise NotImplementedError

    def max_diameter_px(self, spacing: Sequence[float]) -> float:
        """:meth:`max_diameter_um` in pixels of the finest axis."""
        return self.max_diameter_um() / min(float(s) for s in spacing)

    def alignment(self, spacing: Sequence[float]) -> tuple[int, ...]:
        """No alignment: crops may start anywhere."""
        return (1,) * len(spacing)

    def estimate_diameter_um(
        self, image: Any, spacing: Sequence[float], stats: dict
    ) -> float | None:
        """No estimate: the backend does not rescale by nucleus size."""
        return None

    def model_spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        """The crops' own pixel size: the backend does not resample."""
        return tuple(float(s) for s in spacing)

    def forward(self, crops: Sequence[np.ndarray], spacing: Sequence[float]) -> list:
        """No separate device part: the crops themselves (:meth:`finish` labels them)."""
        return list(crops)

    def finish(
        self,
        forwarded: Sequence[Any],
        crops: Sequence[np.ndarray],
        spacing: Sequence[float],
        stats: dict,
    ) -> list[np.ndarray]:
        """:meth:`predict` of the crops (the whole work when :meth:`forward` is the default)."""
        return self.predict(crops, spacing, stats)


#: Registered backends by name (filled by :func:`register_backend`).
BACKENDS: dict[str, type] = {}
#: Default backend per number of spatial axes.
DEFAULT_BACKEND: dict[int, str] = {}


def register_backend(name: str, *, default_for: Sequence[int] = ()) -> Callable[[type], type]:
    """Class decorator: register a backend under ``name``.

    Parameters
    ----------
    name : str
        The name users give (``--backend NAME``, config ``backend``).
    default_for : sequence of int
        Numbers of spatial axes (2, 3) for which it is the default backend.
    """

    def register(cls: type) -> type:
        cls.name = name
        BACKENDS[name] = cls
        for nd in default_for:
            DEFAULT_BACKEND[int(nd)] = name
        return cls

    return register


def backend_names() -> list[str]:
    """Names of the registered backends, sorted."""
    return sorted(BACKENDS)


def default_backend_name(ndim: int) -> str:
    """The backend used when none is given, for a scan with ``ndim`` spatial axes."""
    return DEFAULT_BACKEND.get(int(ndim), "classical")


def get_backend(
    name: str | None = None,
    model: str | None = None,
    *,
    ndim: int = 2,
    device: str = "auto",
    **options,
) -> Backend:
    """Build a backend by name (default :func:`default_backend_name` of ``ndim``).

    Raises
    ------
    ConfigError
        For an unknown backend name, or a model given to a backend without models.
    """
    name = name or default_backend_name(ndim)
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}.")
    return BACKENDS[name].from_options(model=model, device=device, **options)


def default_halo_px(backend: Backend, spacing: Sequence[float]) -> int:
    """Default overlap in pixels of the finest axis: the largest cell plus the margin."""
    finest = min(float(s) for s in spacing)
    margin = max(m * s for m, s in zip(backend.margin_px(spacing), spacing)) / finest
    return int(math.ceil(backend.max_diameter_px(spacing) + margin))
