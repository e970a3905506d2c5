"""The instance model: a MONAI U-Net, its targets, its post-processing, its folder.

Representation
--------------
The network predicts two maps per pixel (voxel):

* ``foreground``: probability of lying inside any nucleus;
* ``centre``: the distance to the nucleus' own boundary, divided by the largest
  such distance in that nucleus (1 at the centre, falling to 0 at its edge).

Because the distance is measured *per nucleus*, two touching nuclei have a
valley of zeros along the line where they meet, which a distance transform of
the foreground mask does not have. Post-processing smooths the centre map,
takes its local maxima (one per nucleus) as seeds and grows them over the
foreground with a watershed on the smoothed map. Everything is array
operations (numpy / scipy / scikit-image); the same code serves 2D and
anisotropic 3D.

3D stacks
---------
A model whose ``model.json`` says ``"views": "orthogonal"`` is a 2D network
applied to the three orthogonal plane families of a stack: the xy planes as
they are, and the xz and yz planes of the stack resampled along z by an
integer factor to (nearly) isotropic voxels. The three predictions are
averaged and post-processed in 3D. Trained on planes of synthetic stacks, it
sees every nucleus from three sides, which separates nuclei that touch along
z far better than a 3D network we could train on CPU.

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

    from cellseg.backends import distance_map

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
    dist = distance_map(inside, spacing)
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
    spacing: Sequence[float] | None = None,
    fg_threshold: float = 0.5,
    seeds: str = "peaks",
    seed_threshold: float = 0.3,
    peak_radius_px: float = 4.0,
    smooth_px: float = 2.0,
    min_size: int = 8,
) -> np.ndarray:
    """Instance labels from predicted foreground and centre maps.

    Parameters
    ----------
    foreground, centre : ndarray of float
        Probabilities / normalised distances in [0, 1], same shape.
    spacing : sequence of float, optional
        Voxel size per axis; the smoothing and the peak window are given in
        units of the finest axis and shrink along coarser ones (anisotropic z).
    fg_threshold : float
        Foreground cut.
    seeds : {"peaks", "threshold"}
        ``peaks``: one seed per local maximum of the smoothed centre map (within
        ``peak_radius_px``) above ``seed_threshold``; ``threshold``: the
        connected parts of the centre map above ``seed_threshold``.
    seed_threshold : float
        Lowest centre value of a seed.
    peak_radius_px : float
        Half-width of the window in which a seed must be the maximum.
    smooth_px : float
        Gaussian sigma applied to the centre map before finding peaks.
    min_size : int
        Objects with fewer pixels are dropped.

    Returns
    -------
    ndarray of int32
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    fg = foreground > fg_threshold
    if seeds == "peaks":
        unit = np.asarray(spacing or (1.0,) * fg.ndim, float)
        unit = unit.min() / unit
        landscape = centre.astype(np.float32, copy=False)
        if smooth_px > 0:
            landscape = ndi.gaussian_filter(landscape, smooth_px * unit, mode="nearest")
        size = [2 * max(1, int(peak_radius_px * u + 1e-6)) + 1 for u in unit]
        peak = ndi.maximum_filter(landscape, size=size, mode="nearest")
        seeds_mask = (landscape >= peak) & (landscape > seed_threshold) & fg
    elif seeds == "threshold":
        landscape = centre
        seeds_mask = (centre > seed_threshold) & fg
    else:
        raise ConfigError(f"unknown seeding {seeds!r}; use peaks or threshold.")
    markers, n = ndi.label(seeds_mask)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    labels = watershed(-landscape, markers, mask=fg).astype(np.int32, copy=False)
    sizes = np.bincount(labels.ravel())
    tiny = sizes < min_size
    tiny[0] = False
    labels[tiny[labels]] = 0
    return labels


def postprocess(maps: tuple, spec: dict, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Labels of one crop's (foreground, centre) maps with the model's post-processing."""
    return targets_to_labels(*maps, spacing=spacing, **spec.get("postprocess", {}))


# ----------------------------------------------------------------------------- network
def default_spec(spatial_dims: int) -> dict:
    """Architecture and metadata defaults of a new model.

    A 3D model is an orthogonal-view model (see the module notes): its network
    is the 2D one, so a 2D model can initialise it.
    """
    spacing = [0.5, 0.5] if spatial_dims == 2 else [2.0, 0.5, 0.5]
    spec = {
        "format": MODEL_FORMAT,
        "name": f"nuclei{spatial_dims}d",
        "version": "0.2.0",
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
        "normalisation": "scan-level percentiles: (x - p1) / (p99.8 - p1)",
        "pixel_size_um": spacing,
        "diameter_um": 8.0,
        "diameter_px": 24.0,
        "diameter_px_range": [8.0, 64.0],
        "max_diameter_um": 26.0,
        "context_px": [32] * spatial_dims,
        "postprocess": {
            "fg_threshold": 0.5,
            "seeds": "peaks",
            "seed_threshold": 0.3,
            "peak_radius_px": 4.0 if spatial_dims == 2 else 5.0,
            "smooth_px": 2.0 if spatial_dims == 2 else 1.5,
            "min_size": 8,
        },
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


#: Pixels per network forward pass (a batch of crops or planes is split to stay below).
MAX_BATCH_PX = {"cpu": 1 << 21, "cuda": 1 << 24}


def _run_network(net, crops: Sequence[np.ndarray], align: Sequence[int], device: str) -> list:
    """(foreground, centre) maps of each crop, crops of equal padded shape batched."""
    import torch

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
        for shape, members in groups.items():
            step = max(1, MAX_BATCH_PX.get(device, 1 << 21) // max(math.prod(shape), 1))
            for i in range(0, len(members), step):
                part = members[i : i + step]
                x = torch.from_numpy(np.stack([padded[k] for k in part])[:, None]).to(device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"):
                    y = net(x)
                y = torch.sigmoid(y.float()).cpu().numpy()
                for j, k in enumerate(part):
                    sl = tuple(slice(0, n) for n in crops[k].shape)
                    maps[k] = (y[j, 0][sl], y[j, 1][sl])
    return maps


def upsample_z(volume: np.ndarray, factor: int) -> np.ndarray:
    """Linear interpolation along axis 0: plane ``z * factor + j`` lies ``j / factor`` of
    the way from plane ``z`` to ``z + 1`` (the last plane is repeated past the end).

    Every output plane depends only on its two neighbours, so a crop of the
    result equals the result of the crop.
    """
    volume = np.asarray(volume, np.float32)
    if factor == 1:
        return volume
    nxt = np.concatenate([volume[1:], volume[-1:]], axis=0)
    w = (np.arange(factor, dtype=np.float32) / factor).reshape(1, factor, *[1] * (volume.ndim - 1))
    out = volume[:, None] * (1 - w) + nxt[:, None] * w
    return out.reshape(volume.shape[0] * factor, *volume.shape[1:])


def orthogonal_maps(net, volume: np.ndarray, spec: dict, spacing, device: str = "cpu") -> tuple:
    """Average (foreground, centre) of a 2D network over the xy, xz and yz planes of a stack."""
    k = plane_factor(spec, spacing)
    align = alignment(spec, spacing)[1:]
    xy = _run_network(net, list(volume), align, device)
    fg = np.stack([m[0] for m in xy])
    centre = np.stack([m[1] for m in xy])
    up = upsample_z(volume, k)
    for axis in (1, 2):
        planes = list(np.moveaxis(up, axis, 0))
        res = _run_network(net, planes, align, device)
        fg += np.moveaxis(np.stack([m[0] for m in res]), 0, axis)[::k]
        centre += np.moveaxis(np.stack([m[1] for m in res]), 0, axis)[::k]
    return fg / 3, centre / 3


def predict_maps(
    net,
    crops: Sequence[np.ndarray],
    spec: dict,
    device: str = "cpu",
    spacing: Sequence[float] | None = None,
) -> list:
    """Run the network on a batch of normalised crops: (foreground, centre) maps per crop.

    Each crop is padded at its far end to the next multiple of the network's
    alignment (by reflection), so its result does not depend on the other
    crops of the batch; crops of equal padded shape run as one batch (split
    to at most :data:`MAX_BATCH_PX` pixels). Mixed precision (float16
    autocast) is used on CUDA. Orthogonal-view models run on the planes of
    each stack (:func:`orthogonal_maps`); ``spacing`` sets their z resampling.
    """
    if spec.get("views") == "orthogonal":
        return [orthogonal_maps(net, c, spec, spacing, device) for c in crops]
    return _run_network(net, crops, alignment(spec), device)
