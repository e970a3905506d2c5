"""The instance model: a MONAI U-Net, its targets, its post-processing, its folder.

Representation
--------------
The network predicts two maps per pixel (voxel):

* ``foreground``: probability of lying inside any nucleus;
* ``centre``: the distance to the nucleus' own boundary, divided by the largest
  such distance in that nucleus (1 at the centre, falling to 0 at its edge).

Because the distance is measured *per nucleus*, two touching nuclei have a
valley of zeros along the line where they meet, which a distance transform of
the foreground mask does not have. Post-processing thresholds the centre map
into one seed per nucleus (its inner core) and grows the seeds over the
foreground with a watershed on the centre map. Everything is array operations
(numpy / scipy / scikit-image); the same code serves 2D and anisotropic 3D.

Model folder
------------
``model.safetensors`` (weights) and ``model.json`` (architecture, spatial dims,
channels, normalisation, training pixel size and nucleus diameter, heads,
training config and data description, version, weights checksum).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from cellseg.errors import ConfigError

MODEL_FORMAT = 1
HEADS = ("foreground", "centre")
BUILTIN = {2: "nuclei2d", 3: "nuclei3d"}


def models_dir() -> Path:
    """Folder of the models shipped in the package."""
    return Path(__file__).parent / "data" / "models"


# ----------------------------------------------------------------------------- representation
def labels_to_targets(labels: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Training targets of a label image.

    Parameters
    ----------
    labels : ndarray of int, (Y, X) or (Z, Y, X)
        Instance labels, 0 = background.
    spacing : sequence of float, optional
        Pixel size per axis (distances are physical, so anisotropic voxels count right).

    Returns
    -------
    ndarray of float32, (2, *labels.shape)
        Foreground (0/1) and the per-nucleus normalised distance to the boundary.

    Examples
    --------
    >>> lab = np.zeros((1, 7), int); lab[0, 1:6] = 1
    >>> np.round(labels_to_targets(lab)[1].astype(float), 2).tolist()
    [[0.0, 0.33, 0.67, 1.0, 0.67, 0.33, 0.0]]
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    spacing = tuple(spacing or (1.0,) * labels.ndim)
    fg = labels > 0
    # a pixel is "inside" when all its face neighbours carry the same label;
    # the distance to the nearest non-inside pixel is the distance to its own edge
    inside = fg.copy()
    for ax in range(labels.ndim):
        for shift in (1, -1):
            nb = np.roll(labels, shift, axis=ax)
            edge = [slice(None)] * labels.ndim
            edge[ax] = slice(0, 1) if shift == 1 else slice(-1, None)
            same = nb == labels
            same[tuple(edge)] = True  # the image border does not end a nucleus
            inside &= same
    dist = ndi.distance_transform_edt(inside, sampling=spacing).astype(np.float32)
    dist[fg] += min(spacing)  # edge pixels get one step, not zero
    n = int(labels.max())
    peak = np.zeros(n + 1, np.float32)
    if n:
        peak[1:] = ndi.maximum(dist, labels, index=np.arange(1, n + 1))
    norm = np.where(fg, dist / np.maximum(peak[labels], 1e-6), 0.0).astype(np.float32)
    return np.stack([fg.astype(np.float32), norm])


def targets_to_labels(
    foreground: np.ndarray,
    centre: np.ndarray,
    *,
    fg_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_size: int = 8,
) -> np.ndarray:
    """Instance labels from predicted foreground and centre maps.

    Parameters
    ----------
    foreground, centre : ndarray of float
        Probabilities / normalised distances in [0, 1], same shape.
    fg_threshold : float
        Foreground cut.
    seed_threshold : float
        Centre-map cut that gives one seed (inner core) per nucleus.
    min_size : int
        Seeds and objects with fewer pixels are dropped.

    Returns
    -------
    ndarray of int32
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    fg = foreground > fg_threshold
    seeds_mask = (centre > seed_threshold) & fg
    seeds, n = ndi.label(seeds_mask)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    sizes = np.bincount(seeds.ravel(), minlength=n + 1)
    small = sizes < max(1, min_size // 4)
    small[0] = False
    seeds[small[seeds]] = 0
    labels = watershed(-centre, seeds, mask=fg).astype(np.int32, copy=False)
    sizes = np.bincount(labels.ravel())
    tiny = sizes < min_size
    tiny[0] = False
    labels[tiny[labels]] = 0
    return labels


# ----------------------------------------------------------------------------- network
def default_spec(spatial_dims: int) -> dict:
    """Architecture and metadata defaults of a new model."""
    if spatial_dims == 2:
        strides = [2, 2, 2]
        spacing = [0.5, 0.5]
    else:
        strides = [[1, 2, 2], [2, 2, 2], [2, 2, 2]]
        spacing = [2.0, 0.5, 0.5]
    return {
        "format": MODEL_FORMAT,
        "name": f"nuclei{spatial_dims}d",
        "version": "0.1.0",
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "heads": list(HEADS),
        "architecture": {
            "class": "monai.networks.nets.UNet",
            "channels": [16, 32, 64, 128],
            "strides": strides,
            "num_res_units": 1,
            "norm": "batch",
        },
        "normalisation": "scan-level percentiles: (x - p1) / (p99.8 - p1)",
        "pixel_size_um": spacing,
        "diameter_um": 8.0,
        "diameter_px": 24.0 if spatial_dims == 2 else 20.0,
        "diameter_px_range": [8.0, 64.0] if spatial_dims == 2 else [8.0, 40.0],
        "max_diameter_um": 26.0,
        "context_px": [32] * spatial_dims if spatial_dims == 2 else [8, 32, 32],
        "postprocess": {"fg_threshold": 0.5, "seed_threshold": 0.5, "min_size": 8},
    }


def build_network(spec: dict):
    """The MONAI U-Net described by ``spec["architecture"]``.

    Batch normalisation (not instance normalisation) keeps the network's output
    independent of the crop it sees, which the tiling relies on.
    """
    from monai.networks.nets import UNet

    arch = spec["architecture"]
    return UNet(
        spatial_dims=int(spec["spatial_dims"]),
        in_channels=int(spec["in_channels"]),
        out_channels=len(spec["heads"]),
        channels=tuple(arch["channels"]),
        strides=tuple(tuple(s) if isinstance(s, list) else s for s in arch["strides"]),
        num_res_units=int(arch["num_res_units"]),
        norm=arch["norm"],
    )


def alignment(spec: dict) -> tuple[int, ...]:
    """Per axis, the product of the network's strides: crops aligned to it see the same grid."""
    nd = int(spec["spatial_dims"])
    out = [1] * nd
    for s in spec["architecture"]["strides"]:
        s = s if isinstance(s, list) else [s] * nd
        out = [a * int(b) for a, b in zip(out, s)]
    return tuple(out)


# ----------------------------------------------------------------------------- folders
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

        return load_file(str(path))
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
    import os

    from safetensors.torch import save_file

    from cellseg.io import atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = folder / f".model.safetensors.tmp-{os.getpid()}"
    save_file(state, str(tmp))
    os.replace(tmp, folder / "model.safetensors")
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
    state = load_state(Path(path))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: weights do not fit the architecture in model.json ({exc})"
        ) from None
    net.eval().to(device)
    return net, spec


# ----------------------------------------------------------------------------- inference
def _pad_to(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pad = [(0, int(s) - n) for n, s in zip(arr.shape, shape)]
    if all(p == (0, 0) for p in pad):
        return arr
    return np.pad(arr, pad, mode="reflect" if all(n > 1 for n in arr.shape) else "edge")


def predict_maps(net, crops: Sequence[np.ndarray], spec: dict, device: str = "cpu") -> list:
    """Run the network on a batch of normalised crops: (foreground, centre) maps per crop.

    Each crop is padded at its far end to the next multiple of the network's
    alignment (by reflection), so its result does not depend on the other
    crops of the batch; crops of equal padded shape run as one batch. Mixed
    precision (float16 autocast) is used on CUDA.
    """
    import torch

    align = alignment(spec)
    padded = [
        _pad_to(
            np.asarray(c, np.float32), [int(math.ceil(n / a) * a) for n, a in zip(c.shape, align)]
        )
        for c in crops
    ]
    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(padded):
        groups.setdefault(p.shape, []).append(k)
    maps: list = [None] * len(crops)
    with torch.inference_mode():
        for members in groups.values():
            x = torch.from_numpy(np.stack([padded[k] for k in members])[:, None]).to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"):
                y = net(x)
            y = torch.sigmoid(y.float()).cpu().numpy()
            for j, k in enumerate(members):
                sl = tuple(slice(0, n) for n in crops[k].shape)
                maps[k] = (y[j, 0][sl], y[j, 1][sl])
    return maps
