"""bioimage.io model packages: exporting a cellseg model, and loading one safely.

A package (``cellseg export-model NAME|PATH -o FILE.zip``) follows the
bioimage.io model format 0.5 and holds

- ``rdf.yaml``: the description: axes (batch, channel, y, x) with the model's
  pixel size in µm, the test tensors, the weights, covers, documentation,
  citations, the licence and, under ``config.cellseg``, the model folder's own
  ``model.json`` (post-processing, diameters, views), from which cellseg
  rebuilds the whole model;
- ``weights.pt``: the network's state dict (``torch.save``), the original
  weights, with the architecture as a source file (``cellseg_unet.py``) and a
  callable name and keyword arguments that bioimage.io tools import;
- ``weights_torchscript.pt``: the same network as TorchScript, for tools that
  run TorchScript (derived from the state dict);
- ``test_input.npy`` / ``test_output.npy``: a normalised synthetic image and
  the network's maps of it (after the sigmoid), computed with cellseg;
- ``cover.png``, ``README.md``, ``environment.yaml`` (the weights' software).

A 3D (orthogonal-view) model's network is 2D: its package holds that 2D
network, whose input is one plane (a stack's planes go along the batch axis);
cellseg applies it to the xy, xz and yz planes of a stack and averages the
three, which its ``config.cellseg`` records (``"views": "orthogonal"``), so
``--model FILE.zip`` segments stacks as the model folder does.

Loading (``--model FILE.zip`` or the unpacked folder) runs no code from the
package: the state dict is read with ``torch.load(..., weights_only=True)``
into an architecture from an allow-list (:data:`ARCHITECTURES`: cellseg's U-Net
and MONAI's ``UNet``), built by cellseg itself from keyword arguments of plain
values. The architecture source file and the TorchScript weights are never
imported or loaded; a package without state-dict weights, with another
architecture, or with weights from the internet is refused with a
:class:`~cellseg.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import textwrap
import warnings
import zipfile
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from cellseg.atomic import atomic_path
from cellseg.errors import ConfigError
from cellseg.segmentation.network import (
    load_model,
    network_dims,
    read_spec,
    resolve_model_path,
)

#: bioimage.io model format written.
FORMAT_VERSION = "0.5.4"
#: Names of the description file inside a package, in the order they are looked for.
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: The architecture source file written into a package, and its callable.
ARCH_FILE = "cellseg_unet.py"
ARCH_CALLABLE = "cellseg_unet"
#: Architectures cellseg loads state dicts into: (where from, callable) -> how it is built.
#: ``file`` is a package's own source file, matched by the callable's name only: the
#: file is never imported, cellseg builds the network itself.
ARCHITECTURES = {
    ("file", ARCH_CALLABLE): "monai.networks.nets.UNet",
    ("monai.networks.nets", "UNet"): "monai.networks.nets.UNet",
}
#: Keyword arguments of MONAI's UNet that a package may set (plain values only).
UNET_KWARGS = frozenset(
    {
        "spatial_dims",
        "in_channels",
        "out_channels",
        "channels",
        "strides",
        "kernel_size",
        "up_kernel_size",
        "num_res_units",
        "act",
        "norm",
        "dropout",
        "bias",
        "adn_ordering",
    }
)
#: Edge in pixels of the test image of a package.
TEST_EDGE = 96
#: Citations of a package: the network and the library it comes from.
CITATIONS = [
    {
        "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for "
        "Biomedical Image Segmentation. MICCAI 2015.",
        "doi": "10.1007/978-3-319-24574-4_28",
    },
    {
        "text": "Kerfoot et al. Left-Ventricle Quantification Using Residual U-Net. "
        "STACOM 2018 (MONAI's UNet with residual units).",
        "doi": "10.1007/978-3-030-12029-0_40",
    },
    {
        "text": "Cardoso et al. MONAI: An open-source framework for deep learning in "
        "healthcare. 2022.",
        "doi": "10.48550/arXiv.2211.02701",
    },
]

ARCH_SOURCE = '''"""The cellseg nuclei network: MONAI's U-Net with cellseg's keyword arguments."""

from monai.networks.nets import UNet


def cellseg_unet(
    spatial_dims, in_channels, out_channels, channels, strides, num_res_units, norm
):
    """MONAI's UNet; outputs are logits (the package's postprocessing applies a sigmoid)."""
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
    )
'''


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def network_kwargs(spec: dict) -> dict:
    """Keyword arguments of the architecture callable for a model's ``model.json``.

    Examples
    --------
    >>> from cellseg.segmentation.network import default_spec
    >>> network_kwargs(default_spec(3))["spatial_dims"]  # orthogonal views: a 2D network
    2
    """
    arch = spec["architecture"]
    return {
        "spatial_dims": network_dims(spec),
        "in_channels": int(spec["in_channels"]),
        "out_channels": len(spec["heads"]),
        "channels": [int(c) for c in arch["channels"]],
        "strides": [s if isinstance(s, int) else [int(v) for v in s] for s in arch["strides"]],
        "num_res_units": int(arch["num_res_units"]),
        "norm": arch["norm"],
    }


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def _test_image(spec: dict, edge: int = TEST_EDGE) -> np.ndarray:
    """A normalised synthetic nuclei image at the model's in-plane pixel size, (C, Y, X)."""
    from cellseg.normalize import compute_scan_stats, normalize
    from cellseg.synth import synthesize_scan

    pixel = [float(p) for p in spec.get("pixel_size_um", [0.5, 0.5])][-2:]
    image, _ = synthesize_scan((edge, edge), spacing=tuple(pixel), seed=0)
    norm = normalize(image, compute_scan_stats(image, source="test image"))
    return np.repeat(norm[None], int(spec["in_channels"]), axis=0).astype(np.float32)


def _cover(image: np.ndarray, maps: np.ndarray) -> bytes:
    """A 2:1 PNG: the test image beside its foreground map."""
    import matplotlib  # heavy: only for the cover

    matplotlib.use("Agg", force=False)
    from matplotlib import image as mpimg

    left = np.clip(image[0], 0, 1)
    right = np.clip(maps[0], 0, 1)
    buf = io.BytesIO()
    mpimg.imsave(buf, np.concatenate([left, right], axis=1), cmap="gray", format="png")
    return buf.getvalue()


def _axes(spec: dict, channel_names: list[str], *, output: bool) -> list[dict]:
    pixel = [float(p) for p in spec.get("pixel_size_um", [0.5, 0.5])][-2:]
    stride = _stride(spec)
    axes: list[dict] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": channel_names},
    ]
    for name, size in zip(("y", "x"), pixel):
        axis: dict[str, Any] = {"type": "space", "id": name, "unit": "micrometer", "scale": size}
        if output:
            axis["size"] = {"tensor_id": "image", "axis_id": name}
        else:
            axis["size"] = {"min": 2 * stride, "step": stride}
        axes.append(axis)
    return axes


_README = textwrap.dedent(
    """\
    # cellseg {name} {version}

    Nuclei segmentation network of cellseg: a MONAI U-Net that predicts two maps
    per pixel, `foreground` (probability of lying inside a nucleus) and `centre`
    (distance to the nucleus' own edge divided by its largest such distance: 1 at
    the centre, 0 at the edge). cellseg turns them into instance labels: seeds at
    the maxima of the smoothed centre map, grown over the foreground by a watershed.

    ## Input

    {channels} channel(s) normalised as cellseg does (`cellseg.normalize`): {normalisation}.
    Trained at {pixel} µm per pixel (nuclei about {diameter_px:g} px across); spatial
    edges a multiple of {stride} (the network's stride).

    ## Output

    `foreground` and `centre`, after a sigmoid, in [0, 1].

    ## Use with cellseg

        cellseg segment SCAN -o OUTDIR --model THIS.zip

    cellseg loads only the state dict (`weights.pt`, `torch.load(...,
    weights_only=True)`) into its own U-Net; `cellseg_unet.py` and the TorchScript
    weights are for other tools.
    {stack}
    ## Validation

    {validation}

    ## Training data

    {data}.

    ## Licence

    BSD-3-Clause, as cellseg.
    """
)

_README_3D = """
## 3D

This is an orthogonal-view 3D model. Its network is 2D, and this package holds that
network: its input is one plane (put a stack's planes along the batch axis). cellseg
applies it to the xy, xz and yz planes of a stack, the z axis resampled to nearly
isotropic voxels, and averages the three views before post-processing;
`config.cellseg` in `rdf.yaml` records this, so `cellseg segment STACK --model
THIS.zip` segments stacks as the model folder does.
"""


def _readme(spec: dict, name: str) -> str:
    training = spec.get("training") or {}
    if isinstance(training.get("val_ap50"), (int, float)):
        validation = (
            f"Instance AP at IoU 0.5 on held-out synthetic images: {training['val_ap50']:.3f} "
            "(cellseg's training validation); `cellseg evaluate` measures it on your labels."
        )
    else:
        validation = "Run `cellseg evaluate` against your own labels to measure its accuracy."
    return _README.format(
        name=name,
        version=spec.get("version", ""),
        channels=int(spec["in_channels"]),
        normalisation=spec.get("normalisation", "see cellseg.normalize"),
        pixel=" × ".join(f"{p:g}" for p in spec.get("pixel_size_um", [])),
        diameter_px=float(spec.get("diameter_px", 24.0)),
        stride=_stride(spec),
        stack=_README_3D if spec.get("views") == "orthogonal" else "",
        validation=validation,
        data=str(training.get("data", "synthetic nuclei from cellseg.synth")).rstrip("."),
    )


def _stride(spec: dict) -> int:
    stride = 1
    for s in spec["architecture"]["strides"]:
        stride *= int(s if isinstance(s, int) else s[-1])
    return stride


def build_package(model: str | Path) -> dict[str, bytes]:
    """The files of a bioimage.io package of a cellseg model, by name in the package.

    Parameters
    ----------
    model : str or path
        A shipped model's name or a model folder (with ``model.json``).

    Returns
    -------
    dict of str to bytes
        ``rdf.yaml`` and the files it names.
    """
    import torch  # heavy: only when a package is built

    path = resolve_model_path(str(model), 2)
    spec = read_spec(path)
    net, _ = load_model(str(path), "cpu")
    image = _test_image(spec)
    x = torch.from_numpy(image[None])
    with torch.inference_mode():
        maps = torch.sigmoid(net(x)).numpy()
    with warnings.catch_warnings():
        # torch marks TorchScript deprecated; bioimage.io tools still run it
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net, x, check_trace=False)
        script_buf = io.BytesIO()
        torch.jit.save(traced, script_buf)
    files: dict[str, bytes] = {}

    def add(name: str, data: bytes) -> dict:
        files[name] = data
        return {"source": name, "sha256": _sha256(data)}

    def npy(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array, dtype=np.float32))
        return buf.getvalue()

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = add("weights.pt", buf.getvalue())
    script = add("weights_torchscript.pt", script_buf.getvalue())
    torch_version = torch.__version__.split("+")[0]
    env = {
        "name": "cellseg-model",
        "channels": ["conda-forge", "nodefaults"],
        "dependencies": ["python>=3.10", f"pytorch=={torch_version}", "monai>=1.4", "numpy"],
    }
    name = str(spec.get("name") or Path(path).name)
    channel_names = list(spec.get("channel_names") or ["nuclei"])[: int(spec["in_channels"])]
    channel_names += [f"channel{i}" for i in range(len(channel_names), int(spec["in_channels"]))]
    cellseg_spec = {k: v for k, v in spec.items() if k != "path"}
    rdf = {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": f"cellseg {name}",
        "description": (
            "Nuclei segmentation (foreground and centre maps) of cellseg, a tiled, "
            "seam-exact instance segmentation workflow"
            + (" (the 2D network of an orthogonal-view 3D model)" if spec.get("views") else "")
        ),
        "version": str(spec.get("version", "0.0.0")),
        "authors": [{"name": "cellseg contributors"}],
        "cite": CITATIONS,
        "license": "BSD-3-Clause",
        "tags": ["nuclei", "instance-segmentation", "fluorescence", "unet", "cellseg"]
        + ["3d" if spec.get("views") else "2d"],
        "documentation": add("README.md", _readme(spec, name).encode()),
        "covers": [add("cover.png", _cover(image, maps[0]))],
        "inputs": [
            {
                "id": "image",
                "description": "normalised image (cellseg.normalize)",
                "axes": _axes(spec, channel_names, output=False),
                "test_tensor": add("test_input.npy", npy(image[None])),
                "data": {"type": "float32"},
            }
        ],
        "outputs": [
            {
                "id": "maps",
                "description": "foreground probability and normalised distance to the edge",
                "axes": _axes(spec, list(spec["heads"]), output=True),
                "test_tensor": add("test_output.npy", npy(maps)),
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "sigmoid"}],
            }
        ],
        "weights": {
            "pytorch_state_dict": dict(
                weights,
                architecture=dict(
                    add(ARCH_FILE, ARCH_SOURCE.encode()),
                    callable=ARCH_CALLABLE,
                    kwargs=network_kwargs(spec),
                ),
                pytorch_version=torch_version,
                dependencies=add("environment.yaml", yaml.safe_dump(env).encode()),
            ),
            "torchscript": dict(script, pytorch_version=torch_version, parent="pytorch_state_dict"),
        },
        "timestamp": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "config": {"cellseg": json.loads(json.dumps(cellseg_spec))},
    }
    # the postprocessing sigmoid turns the network's logits into the test output's maps:
    # the exported network stays the one cellseg runs (logits), the maps are after it
    files["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False).encode()
    return files


def export_model(model: str | Path, output: str | Path) -> Path:
    """Write a bioimage.io model package (a ``.zip``) of a cellseg model, atomically.

    Parameters
    ----------
    model : str or path
        A shipped model's name (``nuclei2d``, ``nuclei3d``, ...) or a model folder.
    output : path
        The package to write, e.g. ``nuclei2d.zip``.

    Returns
    -------
    Path
        The written package.
    """
    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise ConfigError(f"{output}: a bioimage.io package is a .zip file; name it *.zip.")
    files = build_package(model)
    with atomic_path(output) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in ["rdf.yaml", *sorted(n for n in files if n != "rdf.yaml")]:
                zf.writestr(name, files[name])
    return output


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def is_package(path: str | Path) -> bool:
    """Whether `path` is a bioimage.io package: a zip file or a folder with ``rdf.yaml``."""
    path = Path(path)
    if path.is_file():
        return zipfile.is_zipfile(path)
    return path.is_dir() and any((path / n).exists() for n in RDF_NAMES)


#: Largest file cellseg unpacks from a model package (weights of its U-Nets are a few MB).
MAX_MEMBER_BYTES = 1 << 30


class _Package:
    """Read-only access to the files of a zipped or unpacked package."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.zip = zipfile.ZipFile(self.path) if self.path.is_file() else None

    def names(self) -> set[str]:
        if self.zip is not None:
            return set(self.zip.namelist())
        return {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()}

    def read(self, name: str, what: str) -> bytes:
        name = str(name)
        rel = PurePosixPath(name)
        if "://" in name or rel.is_absolute() or ".." in rel.parts:
            raise ConfigError(
                f"{self.path}: its {what} is {name!r}, not a file inside the package; cellseg "
                "loads only files packed with the model (nothing is downloaded)."
            )
        if name not in self.names():
            raise ConfigError(f"{self.path}: the package has no file {name!r} ({what}).")
        if self.zip is not None:
            size = self.zip.getinfo(name).file_size
            if size > MAX_MEMBER_BYTES:  # a zip bomb: refused before it is inflated
                raise ConfigError(
                    f"{self.path}: its {what} {name!r} unpacks to {size} bytes, more than a "
                    f"model file may ({MAX_MEMBER_BYTES}); the package is not a cellseg model."
                )
            return self.zip.read(name)
        return (self.path / rel).read_bytes()


def _checked(package: _Package, entry: dict, what: str) -> bytes:
    data = package.read(entry.get("source", ""), what)
    sha = entry.get("sha256")
    if sha and _sha256(data) != sha:
        raise ConfigError(f"{package.path}: {what} {entry['source']!r} does not match its sha256.")
    return data


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def read_package(path: str | Path) -> tuple[dict, dict, dict]:
    """Check a package and read it: (rdf, cellseg spec, architecture kwargs).

    Raises
    ------
    ConfigError
        When it is not a bioimage.io 0.5 model package of a cellseg model, has no
        state-dict weights, or names an architecture outside :data:`ARCHITECTURES`.
    """
    package = _Package(Path(path))
    name = next((n for n in RDF_NAMES if n in package.names()), None)
    if name is None:
        raise ConfigError(f"{path}: not a bioimage.io package (no rdf.yaml inside).")
    rdf = yaml.safe_load(package.read(name, "description"))
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ConfigError(f"{path}: its {name} does not describe a model.")
    if not str(rdf.get("format_version", "")).startswith("0.5."):
        raise ConfigError(
            f"{path}: bioimage.io format {rdf.get('format_version')!r}; cellseg reads 0.5.x "
            "packages (update older ones with `bioimageio update-format`)."
        )
    weights = rdf.get("weights") or {}
    entry = weights.get("pytorch_state_dict")
    if not entry:
        raise ConfigError(
            f"{path}: the package has no PyTorch state-dict weights (it has "
            f"{', '.join(weights) or 'none'}); cellseg loads only state dicts into known "
            "architectures, never TorchScript or other executable formats."
        )
    arch = entry.get("architecture") or {}
    where = "file" if "source" in arch else str(arch.get("import_from", ""))
    key = (where, str(arch.get("callable", "")))
    if key not in ARCHITECTURES:
        allowed = ", ".join(f"{a}:{b}" for a, b in ARCHITECTURES)
        raise ConfigError(
            f"{path}: architecture {key[0]}:{key[1]} is not one cellseg builds (allowed: "
            f"{allowed}); its code is not run."
        )
    kwargs = dict(arch.get("kwargs") or {})
    unknown = sorted(set(kwargs) - UNET_KWARGS)
    if unknown or not _plain(kwargs):
        raise ConfigError(
            f"{path}: architecture arguments {unknown or 'of other than plain values'} are not "
            "accepted."
        )
    spec = (rdf.get("config") or {}).get("cellseg")
    if not isinstance(spec, dict) or "heads" not in spec:
        raise ConfigError(
            f"{path}: not a cellseg model package (no config.cellseg): its outputs are not "
            "the foreground and centre maps cellseg post-processes."
        )
    if int(kwargs.get("spatial_dims", 0)) != network_dims(spec) or int(
        kwargs.get("out_channels", 0)
    ) != len(spec["heads"]):
        raise ConfigError(f"{path}: the architecture does not fit config.cellseg.")
    return rdf, dict(spec), kwargs


def read_package_spec(path: str | Path) -> dict:
    """The cellseg spec (``model.json``) a package carries in ``config.cellseg``."""
    return read_package(path)[1]


@lru_cache(maxsize=4)
def load_package(path: str, device: str = "cpu"):
    """Load a package's network once per process: (network in eval mode, spec).

    Only the state dict is read (``torch.load(..., weights_only=True)``), into
    MONAI's UNet built by cellseg from the package's keyword arguments.
    """
    import torch
    from monai.networks.nets import UNet

    rdf, spec, kwargs = read_package(path)
    entry = rdf["weights"]["pytorch_state_dict"]
    data = _checked(_Package(Path(path)), entry, "state-dict weights")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and friends
        raise ConfigError(
            f"{path}: {entry['source']} is not a plain state dict and was not loaded "
            f"({type(exc).__name__})."
        ) from None
    for k in ("channels", "strides", "kernel_size", "up_kernel_size"):
        if isinstance(kwargs.get(k), list):
            kwargs[k] = tuple(tuple(v) if isinstance(v, list) else v for v in kwargs[k])
    try:
        net = UNet(**kwargs)
        net.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: the weights do not fit the architecture ({exc})") from None
    net.eval().to(device)
    return net, spec


def model_spec(path: str | Path) -> dict:
    """``model.json`` of a model folder, or ``config.cellseg`` of a bioimage.io package."""
    return read_package_spec(path) if is_package(path) else read_spec(Path(path))


def open_model(path: str | Path, device: str = "cpu"):
    """(network in eval mode, spec) of a model folder or a bioimage.io package."""
    if is_package(path):
        return load_package(str(path), device)
    return load_model(str(path), device)
