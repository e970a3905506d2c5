"""The network of the model backend and its model folders.

A model is a folder: ``model.safetensors`` (weights) and ``model.json``
(architecture, spatial dims, channels, normalisation, training pixel size and
nucleus diameter, heads, post-processing, training config and data
description, version, weights checksum). Weights load with safetensors or
``torch.load(..., weights_only=True)``; an arbitrary pickle is refused.

3D stacks
---------
A model whose ``model.json`` says ``"views": "orthogonal"`` is a 2D network
applied to the three orthogonal plane families of a stack: the xy planes as
they are, and the xz and yz planes of the stack resampled along z by an
integer factor to (nearly) isotropic voxels (see
:mod:`cellseg.segmentation.inference`). It sees every nucleus from three
sides, which separates nuclei that touch along z far better than a 3D network
we could train on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from cellseg.atomic import atomic_path, atomic_write_json
from cellseg.errors import ConfigError

MODEL_FORMAT = 1
HEADS = ("foreground", "centre")
BUILTIN = {2: "nuclei2d", 3: "nuclei3d"}
#: The shipped model of brightfield (H&E, IHC) scans, which sees the haematoxylin amount.
BUILTIN_BRIGHTFIELD = "brightfield2d"


def default_model(spatial_dims: int, modality: str = "fluorescence") -> str:
    """Name of the shipped model for a scan's number of spatial axes and modality."""
    if modality == "brightfield":
        if spatial_dims != 2:
            raise ConfigError("brightfield scans are 2D (YX with RGB); this one is 3D.")
        return BUILTIN_BRIGHTFIELD
    return BUILTIN[spatial_dims]


def models_dir() -> Path:
    """Folder of the models shipped in the package."""
    return Path(__file__).parent.parent / "data" / "models"


def default_spec(spatial_dims: int) -> dict:
    """Architecture and metadata defaults of a new model.

    A 3D model is an orthogonal-view model (see the module notes): its network
    is the 2D one, so a 2D model can initialise it.
    """
    spacing = [0.5, 0.5] if spatial_dims == 2 else [2.0, 0.5, 0.5]
    spec = {
        "format": MODEL_FORMAT,
        "name": f"nuclei{spatial_dims}d",
        "version": "0.3.2",
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "heads": list(HEADS),
        "architecture": {
            "class": "monai.networks.nets.UNet",
            "channels": [16, 32, 64, 128],
            "strides": [2, 2, 2],
            "num_res_units": 1,
            "norm": "batch",
        },
        "normalisation": (
            "scan-level: (x - p1) / (high - p1), the typical nucleus's bright part "
            "at 0.5 (cellseg.normalize)"
        ),
        "pixel_size_um": spacing,
        "diameter_um": 8.0,
        "diameter_px": 24.0,
        "diameter_px_range": [8.0, 64.0],
        # a known diameter of this many px leaves crops as they are (see ModelBackend)
        "unzoomed_diameter_px": [12.0, 30.0],
        "max_diameter_um": 26.0,
        "context_px": [32] * spatial_dims,
        "postprocess": {
            "fg_threshold": 0.5,
            "seeds": "peaks",
            "seed_threshold": 0.3,
            "peak_radius_px": 4.0 if spatial_dims == 2 else 5.0,
            "smooth_px": 2.0 if spatial_dims == 2 else 1.5,
            "min_size": 8,
            # a seed must rise a little above the pass to a higher one, so the
            # bumps of a large textured nucleus are not seeds of their own
            "prominence": 0.05,
        },
        # when the scan's diameter is known, nuclei are about diameter_px across:
        # smooth more and keep only prominent seeds (see targets_to_labels)
        "postprocess_sized": (
            {"smooth_px": 2.5, "prominence": 0.15}
            if spatial_dims == 2
            else {"smooth_px": 2.0, "prominence": 0.1}
        ),
    }
    if spatial_dims == 3:
        spec["views"] = "orthogonal"
        spec["max_plane_factor"] = 8
    return spec


def network_dims(spec: dict) -> int:
    """Spatial dims of the network itself (2 for an orthogonal-view 3D model)."""
    return 2 if spec.get("views") == "orthogonal" else int(spec["spatial_dims"])


def plane_factor(spec: dict, spacing: Sequence[float] | None) -> int:
    """Integer factor by which an orthogonal-view model resamples z (1 = none).

    The ratio of the z step to the in-plane pixel size, rounded, between 1 and
    the model's ``max_plane_factor``.
    """
    if spec.get("views") != "orthogonal" or not spacing:
        return 1
    ratio = float(spacing[0]) / float(min(spacing[1:]))
    return int(min(max(round(ratio), 1), int(spec.get("max_plane_factor", 8))))


def build_network(spec: dict):
    """The MONAI U-Net described by ``spec["architecture"]``.

    Batch normalisation (not instance normalisation) keeps the network's output
    independent of the crop it sees, which the tiling relies on.
    """
    from monai.networks.nets import UNet

    arch = spec["architecture"]
    return UNet(
        spatial_dims=network_dims(spec),
        in_channels=int(spec["in_channels"]),
        out_channels=len(spec["heads"]),
        channels=tuple(arch["channels"]),
        strides=tuple(tuple(s) if isinstance(s, list) else s for s in arch["strides"]),
        num_res_units=int(arch["num_res_units"]),
        norm=arch["norm"],
    )


def alignment(spec: dict, spacing: Sequence[float] | None = None) -> tuple[int, ...]:
    """Per axis, the network's total stride: crops aligned to it see the same grid.

    For an orthogonal-view model, z is aligned so that the resampled z grid
    (``plane_factor`` times finer) starts on a multiple of the stride.
    """
    nd = network_dims(spec)
    out = [1] * nd
    for s in spec["architecture"]["strides"]:
        s = s if isinstance(s, list) else [s] * nd
        out = [a * int(b) for a, b in zip(out, s)]
    if spec.get("views") == "orthogonal":
        stride = out[-1]
        k = plane_factor(spec, spacing)
        return (stride // math.gcd(stride, k), *out)
    return tuple(out)


def resolve_model_path(model: str | Path | None, spatial_dims: int) -> Path:
    """Folder of a model given by name (shipped) or path; default the shipped one."""
    if model is None:
        model = BUILTIN[spatial_dims]
    path = Path(model)
    if not path.exists():
        shipped = models_dir() / str(model)
        if shipped.exists():
            return shipped
        names = sorted(p.name for p in models_dir().glob("*") if (p / "model.json").exists())
        raise ConfigError(
            f"model {model!r} is neither a model folder nor a shipped model; "
            f"shipped models: {', '.join(names) or 'none'}."
        )
    return path


def read_spec(path: Path) -> dict:
    """Read ``model.json`` of a model folder, with a clear error when it is not one."""
    path = Path(path)
    meta = path / "model.json" if path.is_dir() else path.with_name("model.json")
    if not meta.exists():
        raise ConfigError(f"{path} is not a cellseg model folder: it has no model.json.")
    spec = json.loads(meta.read_text())
    if spec.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{meta}: unsupported model format {spec.get('format')!r}.")
    return spec


def load_state(path: Path) -> dict:
    """Load weights safely: safetensors, or a torch file with ``weights_only=True``.

    Raises
    ------
    ConfigError
        When the file holds anything but tensors (an arbitrary pickle is refused).
    """
    import torch

    path = Path(path)
    if path.is_dir():
        cands = [path / "model.safetensors", path / "model.pt"]
        path = next((c for c in cands if c.exists()), cands[0])
    if not path.exists():
        raise ConfigError(f"{path}: no weights found (model.safetensors or model.pt).")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError: not what its name says
            raise ConfigError(
                f"{path} is not a safetensors weights file and was not loaded "
                f"({type(exc).__name__}); save the weights again with safetensors."
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and friends
        raise ConfigError(
            f"{path} is not a plain weights file and was not loaded "
            f"({type(exc).__name__}); save weights with safetensors or torch.save(state_dict)."
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def file_sha256(path: Path) -> str:
    """Checksum of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(folder: Path, net, spec: dict) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (with the weights' checksum) atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    spec = dict(spec, sha256=file_sha256(folder / "model.safetensors"))
    atomic_write_json(folder / "model.json", spec)
    return folder


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA GPU is visible; use auto or cpu."
        )
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda.")
    return device


@lru_cache(maxsize=4)
def load_model(path: str, device: str = "cpu"):
    """Load a model folder once per process: (network in eval mode, spec)."""
    spec = read_spec(Path(path))
    net = build_network(spec)
    weights = Path(path) / "model.safetensors"
    if spec.get("sha256") and weights.is_file() and file_sha256(weights) != spec["sha256"]:
        raise ConfigError(
            f"{weights}: its checksum differs from the one in model.json, so the weights were "
            "changed or damaged and were not loaded; copy the model folder again."
        )
    state = load_state(Path(path))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: weights do not fit the architecture in model.json ({exc})"
        ) from None
    net.eval().to(device)
    return net, spec
