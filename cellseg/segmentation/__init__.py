"""Segmentation: backends that turn normalised crops into labels, and the model.

Modules
-------
``base``
    The :class:`Backend` protocol, :class:`BackendBase` (its optional members),
    the registry (:func:`register_backend`, :func:`get_backend`) and the
    default halo.
``classical``
    The classical backend (threshold, distance transform, watershed).
``model_backend``
    The model backend: rescaling, the network's maps, post-processing.
``network``
    The MONAI U-Net, its spec and model folders (shipped models, safe loading).
``inference``
    Batched forward passes, orthogonal views of stacks, devices.
``targets``
    The representation: training targets from labels, labels from maps.
``distance``
    Distance maps in µm on anisotropic grids.
``sizing``
    The scan's nucleus diameter (``--diameter auto``).
``training``
    ``cellseg train``: data, augmentation, validation, checkpoints.

Adding a backend: write a module with a :class:`BackendBase` subclass
decorated with ``@register_backend("name")``, and import it below.
"""

from cellseg.segmentation import classical, model_backend  # noqa: F401  (registers them)
from cellseg.segmentation.base import (
    BACKENDS,
    Backend,
    BackendBase,
    backend_names,
    default_backend_name,
    default_halo_px,
    get_backend,
    register_backend,
)
from cellseg.segmentation.classical import ClassicalBackend
from cellseg.segmentation.model_backend import ModelBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendBase",
    "ClassicalBackend",
    "ModelBackend",
    "backend_names",
    "default_backend_name",
    "default_halo_px",
    "get_backend",
    "register_backend",
]
