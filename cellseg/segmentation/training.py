"""``cellseg train``: train or fine-tune an instance model from a YAML config.

Data come from our synthetic generator, from folders of image/label pairs, or
both. Every epoch the model is validated (AP at IoU 0.5 after the full
post-processing) on held-out images, the best model folder is kept, and a
checkpoint lets a killed run resume where it stopped.

Config (every key optional except ``spatial_dims`` and ``out``)::

    spatial_dims: 2                 # 2 or 3
    out: models/my_nuclei           # model folder written (best model) + checkpoint.pt
    init: nuclei2d                  # fine-tune from a shipped model or a model folder
    seed: 0
    data:
      synthetic: {n_images: 64, shape: [256, 256], setting: train}
      # or a list of sources; a 3D source with `planes: K` gives a 2D network
      # K random xy / xz / yz planes of each stack (as an orthogonal-view model sees them);
      # `modality: brightfield` (with `stain: he|hdab`) renders H&E / IHC scans and
      # gives their haematoxylin image (cellseg.synth.brightfield_training_pair)
      folders: [data/annotated]     # images/ + labels/ with equal file names,
                                    # or <name>.tif beside <name>_labels.tif
    validation:
      synthetic: {n_images: 8, shape: [256, 256], setting: heldout, seed: 1000}
      folders: []
    training: {epochs: 20, steps_per_epoch: 50, batch_size: 8, patch: [128, 128],
               learning_rate: 0.002, max_minutes: null}

``training.max_minutes`` bounds the wall time (data preparation and
validation included): the epoch running when the budget, less the time of one
validation, is spent is cut short and is the last; the best epoch is kept.

A 3D model is an orthogonal-view model (:mod:`cellseg.model`): it trains on
random xy, xz and yz planes of the stacks, so its ``patch`` is 2D, and a 2D
model can ``init`` it. It is validated on whole stacks, as it will be used.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage as ndi

from cellseg import synth
from cellseg.atomic import atomic_write_json
from cellseg.config import validate_training_config
from cellseg.errors import ConfigError, InputError
from cellseg.io import read_scan
from cellseg.layout import fingerprint
from cellseg.metrics import match_instances
from cellseg.normalize import compute_scan_stats, normalize
from cellseg.progress import progress
from cellseg.segmentation.inference import predict_maps, upsample_z
from cellseg.segmentation.network import (
    build_network,
    default_spec,
    load_state,
    network_dims,
    plane_factor,
    read_spec,
    resolve_device,
    resolve_model_path,
    save_model,
)
from cellseg.segmentation.targets import labels_to_targets, postprocess

log = logging.getLogger("cellseg")


def load_config(path: str | Path | dict) -> dict:
    """Read a training config, validate it against its schema and fill in the defaults.

    The schema is ``cellseg/data/training.schema.yaml`` (unknown keys are errors);
    the sizes that depend on ``spatial_dims`` are chosen here.
    """
    if isinstance(path, dict):
        raw = path
    else:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path} does not exist; give a training config YAML.")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:  # e.g. a !!python tag
            raise ConfigError(
                f"{path}: not a plain YAML config ({str(exc).splitlines()[0]}); write plain "
                "keys and values (tags such as !!python/... are never run)."
            ) from None
    cfg = validate_training_config(raw)
    nd = int(cfg["spatial_dims"])
    if not cfg["out"]:
        raise ConfigError("the training config needs `out`: the model folder to write.")
    shape = [256, 256] if nd == 2 else [24, 96, 96]
    # 3D models are orthogonal-view models by default: they train on 2D planes
    patch = [128, 128]
    for part in ("data", "validation"):
        sources = cfg[part]["synthetic"]
        for source in sources if isinstance(sources, list) else [sources] if sources else []:
            source["shape"] = source.get("shape") or shape
    cfg["training"]["patch"] = cfg["training"]["patch"] or patch
    return cfg


# ----------------------------------------------------------------------------- data
SETTINGS = ("train", "heldout", "wide", "classic", "mixed")
MODALITIES = ("fluorescence", "brightfield")


def synthetic_sources(sources, seed: int) -> list:
    """The samples of one or several ``data.synthetic`` sources (see the module notes).

    A 3D source with ``planes: K`` becomes ``K`` random orthogonal planes of each
    stack, (image, labels, spacing) samples for a 2D network.
    """
    if not sources:
        return []
    out = []
    for k, src in enumerate(sources if isinstance(sources, list) else [sources]):
        if int(src.get("n_images") or 0) <= 0:
            continue
        src_seed = int(src["seed"]) if src.get("seed") is not None else seed + 7919 * k
        samples = synthetic_images(
            src["n_images"],
            src["shape"],
            src.get("setting", "train"),
            src_seed,
            modality=src.get("modality") or "fluorescence",
            stain=src.get("stain") or "he",
        )
        planes = int(src.get("planes") or 0)
        if planes and len(src["shape"]) == 3:
            spec3 = default_spec(3)  # the plane resampling of an orthogonal-view model
            rng = np.random.default_rng(src_seed + 1)
            samples = [
                random_plane(img, lab, spacing, rng, plane_factor(spec3, spacing))
                for img, lab, spacing in samples
                for _ in range(planes)
            ]
        out += samples
    return out


def synthetic_images(
    n: int,
    shape: Sequence[int],
    setting: str,
    seed: int,
    *,
    modality: str = "fluorescence",
    stain: str = "he",
) -> list:
    """``n`` synthetic (normalised image, labels, spacing) samples.

    Settings: ``train`` and ``heldout`` draw every generator knob at random
    (:func:`cellseg.synth.training_pair`; ``heldout`` from ranges not used in
    training); ``classic`` varies only nucleus size and density around the
    generator's defaults (the look of the demo scans); ``mixed`` alternates
    ``train`` and ``classic``. ``modality="brightfield"`` renders H&E
    (``stain="he"``) or IHC (``"hdab"``) scans, ``train`` or ``heldout``, and
    takes their haematoxylin image as inference does
    (:func:`cellseg.synth.brightfield_training_pair`); every image is then
    normalised the same way (:func:`normalise_sample`).
    """
    if setting not in SETTINGS:
        raise ConfigError(f"unknown synthetic setting {setting!r}; use one of {SETTINGS}.")
    if modality not in MODALITIES:
        raise ConfigError(f"unknown synthetic modality {modality!r}; use one of {MODALITIES}.")
    brightfield = modality == "brightfield"
    if brightfield and (setting not in ("train", "heldout") or len(shape) != 2):
        raise ConfigError(
            f"brightfield synthetic images are 2D with setting train or heldout, "
            f"got shape {list(shape)} and setting {setting!r}."
        )
    rng = np.random.default_rng(seed)
    out = []
    for k in range(int(n)):
        kind = setting if setting != "mixed" else ("train", "classic")[k % 2]
        if brightfield:
            img, lab, spacing = synth.brightfield_training_pair(
                rng, tuple(shape), stain=stain, setting=kind
            )
        elif kind == "classic":
            spacing = synth.default_spacing(len(shape))
            lo = float(rng.uniform(4, 9))
            img, lab = synth.synthesize_scan(
                tuple(shape),
                spacing=spacing,
                seed=int(rng.integers(1 << 31)),
                diameter_um=(lo, lo * float(rng.uniform(1.3, 2.0))),
                density=float(rng.uniform(0.15, 0.6)),
            )
        else:
            img, lab, spacing = synth.training_pair(rng, tuple(shape), len(shape), setting=kind)
        img = normalise_sample(np.asarray(img, np.float32))
        out.append((img, np.asarray(lab, np.int32), tuple(spacing)))
    return out


def folder_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """Image/label file pairs of a training folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of training images.")
    pairs = []
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        for img in sorted((folder / "images").iterdir()):
            lab = folder / "labels" / img.name
            if lab.exists():
                pairs.append((img, lab))
    else:
        for lab in sorted(folder.glob("*_labels.*")):
            stem = lab.name.replace("_labels", "")
            img = lab.with_name(stem)
            if img.exists():
                pairs.append((img, lab))
    if not pairs:
        raise InputError(
            f"{folder} has no image/label pairs: use images/ and labels/ sub-folders with "
            "equal file names, or <name>.tif beside <name>_labels.tif."
        )
    return pairs


def folder_images(folders: Sequence[str | Path], spatial_dims: int) -> list:
    """Read every pair of the folders as (normalised image, labels, spacing).

    Crops exported by ``cellseg export-training`` carry their scan's intensity
    statistics in ``index.json``; they are normalised with those, as the scan
    was. Other images are normalised on their own.
    """
    out = []
    for folder in folders:
        index = Path(folder) / "index.json"
        scan_stats = {}
        if index.exists():
            for sample in json.loads(index.read_text()).get("samples", []):
                if sample.get("normalization"):
                    scan_stats[Path(sample["image"]).name] = sample["normalization"]
        for img_path, lab_path in folder_pairs(folder):
            scan = read_scan(img_path)
            lab = read_scan(lab_path)
            if len(scan.axes) != spatial_dims:
                raise InputError(f"{img_path} is {len(scan.axes)}D; this model is {spatial_dims}D.")
            img = np.asarray(scan.data[0].compute(), np.float32)
            labels = np.asarray(lab.data[0].compute()).astype(np.int32)
            if img.shape != labels.shape:
                raise InputError(f"{img_path} and {lab_path} have different shapes.")
            stats = scan_stats.get(img_path.name)
            img = normalize(img, stats) if stats else normalise_sample(img)
            out.append((img, labels, scan.spacing))
    return out


def normalise_sample(img: np.ndarray) -> np.ndarray:
    """The scan-level normalisation applied to one whole training image."""
    return normalize(img, compute_scan_stats(img))


def _augment():
    from monai.transforms import (  # heavy: MONAI loads torch
        Compose,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    return Compose(
        [
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=-1),
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=-2),
            RandScaleIntensityd(keys="image", factors=0.3, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3),
            RandGaussianNoised(keys="image", std=0.03, prob=0.3),
        ]
    )


def intensity_jitter(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random intensity changes that real scans show and the generator may not.

    Per-nucleus brightness factors (log-normal, blended over a pixel at the
    edges), a gamma curve on the positive part, and a jitter of the
    normalisation's low and high points (as another scan's statistics would
    give). Each is applied with some probability; the labels do not change.

    Examples
    --------
    >>> x = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    >>> intensity_jitter(x, np.zeros((4, 4), int), np.random.default_rng(0)).shape
    (4, 4)
    """
    x = np.asarray(x, np.float32)
    n = int(labels.max())
    if n and rng.random() < 0.4:
        factor = np.exp(rng.normal(0.0, 0.5, n + 1)).astype(np.float32)
        factor[0] = 1.0
        x = x * ndi.gaussian_filter(factor[labels], 1.0)
    if rng.random() < 0.3:
        gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        pos = np.maximum(x, 0.0)
        x = np.where(x > 0, pos**gamma, x).astype(np.float32)
    if rng.random() < 0.5:
        x = (x - np.float32(rng.normal(0.0, 0.03))) * np.float32(np.exp(rng.normal(0.0, 0.35)))
    return x.astype(np.float32, copy=False)


def random_plane(
    img: np.ndarray,
    lab: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    factor: int,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """One random xy, xz or yz plane of a stack, as an orthogonal-view model sees it.

    xz and yz planes are resampled along z ``factor`` times finer
    (:func:`cellseg.model.upsample_z` for the image, nearest plane for the labels).
    """
    axis = int(rng.integers(3))
    i = int(rng.integers(img.shape[axis]))
    if axis == 0:
        return img[i], lab[i], (float(spacing[1]), float(spacing[2]))
    im, lb = np.take(img, i, axis=axis), np.take(lab, i, axis=axis)
    nz = im.shape[0]
    nearest = np.minimum((np.arange(nz * factor) / factor + 0.5).astype(int), nz - 1)
    other = float(spacing[3 - axis])
    return upsample_z(im, factor), lb[nearest], (float(spacing[0]) / factor, other)


def sample_batch(
    pool: list,
    rng: np.random.Generator,
    batch: int,
    patch: Sequence[int],
    aug,
    spec: dict | None = None,
):
    """Random patches of the pool, augmented, with their targets: (x, y) arrays.

    With the ``spec`` of an orthogonal-view model, each patch comes from a
    random plane of a random stack (:func:`random_plane`).
    """
    planes = spec is not None and spec.get("views") == "orthogonal"
    xs, ys = [], []
    for _ in range(batch):
        img, lab, spacing = pool[int(rng.integers(len(pool)))]
        if planes:
            img, lab, spacing = random_plane(img, lab, spacing, rng, plane_factor(spec, spacing))
        sl = []
        for n, p in zip(img.shape, patch):
            start = int(rng.integers(0, max(n - p, 0) + 1))
            sl.append(slice(start, start + p))
        sl = tuple(sl)
        x, y = img[sl], lab[sl]
        pad = [(0, max(p - n, 0)) for n, p in zip(x.shape, patch)]
        # labels mirror with the image: a padded nucleus is still a nucleus
        x, y = np.pad(x, pad, mode="reflect"), np.pad(y, pad, mode="reflect")
        if len(patch) == 2 and rng.random() < 0.5:
            x, y = np.swapaxes(x, 0, 1), np.swapaxes(y, 0, 1)
        x = intensity_jitter(x, y, rng)
        d = aug({"image": x[None].copy(), "label": y[None].copy()})
        x = np.asarray(d["image"])[0]
        y = np.asarray(d["label"])[0].astype(np.int32)
        xs.append(x)
        ys.append(labels_to_targets(y, spacing))
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys).astype(np.float32)


# ----------------------------------------------------------------------------- evaluation
def validate(net, spec: dict, val: list, device: str) -> float:
    """Mean AP at IoU 0.5 of the model (with post-processing) on validation images."""
    import torch  # heavy, and only needed to train

    net.eval()
    aps = []
    with torch.inference_mode():
        for img, lab, spacing in val:
            (maps,) = predict_maps(net, [img], spec, device, spacing=spacing)
            pred = postprocess(maps, spec, spacing)
            aps.append(match_instances(lab, pred, 0.5)["ap"])
    net.train()
    return float(np.mean(aps)) if aps else 0.0


# ----------------------------------------------------------------------------- training
def train(config: str | Path | dict, *, device: str = "auto", show_progress: bool = True) -> dict:
    """Train a model as the config says; returns a summary (best AP50, epochs, paths).

    Resumable: ``<out>/checkpoint.pt`` holds weights, optimiser state, epoch and
    random states; a rerun with the same config continues after the last epoch.
    """
    import torch  # heavy, and only needed to train

    t0 = time.perf_counter()
    cfg = load_config(config)
    nd = int(cfg["spatial_dims"])
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    if cfg["init"]:
        init = resolve_model_path(cfg["init"], nd)
        spec = read_spec(init)
        if int(spec["spatial_dims"]) != nd:
            # a 2D model initialises an orthogonal-view 3D model: same network
            base = dict(default_spec(nd), **cfg["model"])
            if network_dims(base) != network_dims(spec):
                raise ConfigError(
                    f"init model {init} is {spec['spatial_dims']}D; it cannot start a "
                    f"{nd}D model with a {network_dims(base)}D network."
                )
            spec = dict(base, architecture=spec["architecture"])
        else:
            # the weights fix the architecture; metadata (post-processing, version,
            # name, sizes) may be set anew
            spec.update({k: v for k, v in cfg["model"].items() if k != "architecture"})
        spec.pop("training", None)
        spec.pop("sha256", None)
        net = build_network(spec)
        net.load_state_dict(load_state(init))
    else:
        spec = default_spec(nd)
        for k, v in cfg["model"].items():
            spec[k] = v
        net = build_network(spec)
    patch = cfg["training"]["patch"]
    if len(patch) != network_dims(spec):
        raise ConfigError(
            f"training.patch {patch} must have {network_dims(spec)} axes for this model "
            "(an orthogonal-view 3D model trains on 2D planes)."
        )
    net.to(device).train()
    tr_cfg = cfg["training"]
    opt = torch.optim.AdamW(net.parameters(), lr=float(cfg["training"]["learning_rate"]))
    epochs = int(cfg["training"]["epochs"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))

    t0 = time.perf_counter()
    max_seconds = None if tr_cfg["max_minutes"] is None else 60.0 * float(tr_cfg["max_minutes"])
    pool = synthetic_sources(cfg["data"]["synthetic"], seed)
    pool += folder_images(cfg["data"]["folders"], nd)
    # a source without a seed of its own gets one apart from the training data's
    val = synthetic_sources(cfg["validation"]["synthetic"], seed + 1000)
    val += folder_images(cfg["validation"]["folders"], nd)
    if not pool and int(cfg["training"]["epochs"]) > 0:
        raise ConfigError("the training config gives no training data (data.synthetic / folders).")
    log.info(
        "train: %d training and %d validation images (%.1f s)",
        len(pool),
        len(val),
        time.perf_counter() - t0,
    )

    cfg_fp = fingerprint(cfg)
    ckpt_path = out / "checkpoint.pt"
    start, best, history = 0, -float("inf"), []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck.get("config") == cfg_fp:
            net.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            torch.set_rng_state(ck["torch_rng"])
            rng.bit_generator.state = json.loads(ck["numpy_rng"])
            start, best = int(ck["epoch"]) + 1, float(ck["best"])
            history = json.loads(ck["history"])
            log.info("train: resuming after epoch %d (best AP50 %.3f)", start, best)
        else:
            log.info("train: %s is from another config; starting over", ckpt_path)

    def keep_if_best(epoch: int, ap: float) -> None:
        nonlocal best
        if ap <= best:
            return
        best = ap
        spec_out = dict(spec)
        spec_out["training"] = {
            "config": cfg,
            "data": "synthetic nuclei from cellseg.synth (and the folders in the config); "
            "no external images or labels",
            "best_epoch": epoch,
            "val_ap50": ap,
        }
        save_model(out, net, spec_out)

    if start == 0 and cfg["init"] and val:
        # the starting model competes too: training never ships a worse one
        ap = validate(net, spec, val, device)
        history.append({"epoch": 0, "loss": None, "val_ap50": ap})
        log.info("train: initial model val AP50 %.3f", ap)
        keep_if_best(0, ap)

    aug = _augment()
    aug.set_random_state(seed=seed)
    bce = torch.nn.BCEWithLogitsLoss()
    tr = cfg["training"]
    stopped_early = False
    val_seconds = 0.0
    for epoch in range(start, epochs):
        losses = []
        for _ in progress(
            range(int(tr["steps_per_epoch"])),
            desc=f"epoch {epoch + 1}/{epochs}",
            enabled=show_progress,
        ):
            spent = time.perf_counter() - t0 + val_seconds
            if max_seconds is not None and spent > max_seconds and losses:
                stopped_early = True
                break
            x, y = sample_batch(pool, rng, int(tr["batch_size"]), tr["patch"], aug, spec)
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            logits = net(x)
            loss = bce(logits[:, 0], y[:, 0]) + 2.0 * bce(logits[:, 1], y[:, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        t_val = time.perf_counter()
        ap = validate(net, spec, val, device) if val else -float(np.mean(losses))
        val_seconds = time.perf_counter() - t_val
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_ap50": ap})
        log.info("train: epoch %d loss %.4f val AP50 %.3f", epoch + 1, np.mean(losses), ap)
        keep_if_best(epoch + 1, ap)
        ck = {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "epoch": epoch,
            "best": best,
            "config": cfg_fp,
            "history": json.dumps(history),
        }
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save(ck, tmp)
        tmp.replace(ckpt_path)
        spent = time.perf_counter() - t0 + val_seconds
        if stopped_early or (max_seconds is not None and spent > max_seconds):
            log.info("train: stopped after epoch %d: training.max_minutes reached", epoch + 1)
            break
    summary = {
        "out": str(out),
        "best_val_ap50": best,
        "epochs": epochs,
        "history": history,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "training.json", summary)
    return summary
