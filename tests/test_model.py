"""The instance model: representation, training, loading, shipped models, tile invariance."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.errors import ConfigError
from cellseg.metrics import match_instances
from cellseg.model import (
    alignment,
    build_network,
    default_spec,
    labels_to_targets,
    load_state,
    models_dir,
    read_spec,
    targets_to_labels,
)


def _touching_disks():
    lab = np.zeros((60, 80), np.int32)
    yy, xx = np.mgrid[:60, :80]
    for k, (cy, cx, r) in enumerate([(30, 20, 12), (30, 43, 11), (12, 62, 9), (45, 62, 10)], 1):
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = k
    return lab


@pytest.mark.parametrize("case", ["disks", "synth2d", "synth3d"])
def test_representation_round_trip(case, scan2d, scan3d):
    if case == "disks":
        labels, spacing = _touching_disks(), (1.0, 1.0)
    elif case == "synth2d":
        _, labels, spacing = scan2d
    else:
        _, labels, spacing = scan3d
    fg, centre = labels_to_targets(labels, spacing)
    assert fg.max() == 1 and centre.max() <= 1 and centre[labels == 0].max() == 0
    back = targets_to_labels(fg, centre, min_size=1)
    r = match_instances(labels, back, 0.5)
    # touching cells come back separated
    assert r["recall"] >= 0.97 and r["precision"] >= 0.97, r
    assert r["mean_matched_iou"] >= 0.85, r
    if case == "disks":
        assert r["tp"] == 4 and r["fp"] == 0


def test_targets_have_a_valley_between_touching_cells():
    labels = _touching_disks()
    _, centre = labels_to_targets(labels)
    # the contact line between cells 1 and 2 is an edge of both: low centre value
    contact = (labels == 1) & np.roll(labels == 2, -1, axis=1)
    assert contact.any() and centre[contact].max() < 0.2


def test_a_tiny_model_learns():
    import torch

    from cellseg.train import _augment, sample_batch

    torch.manual_seed(0)
    spec = default_spec(2)
    spec["architecture"]["channels"] = [8, 16, 32, 32]
    net = build_network(spec)
    labels = _touching_disks()
    img = (labels > 0).astype(np.float32) * 0.8 + 0.1
    rng = np.random.default_rng(0)
    x, y = sample_batch([(img, labels, (1.0, 1.0))], rng, 4, (48, 48), _augment())
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    bce = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(25):
        out = net(x)
        loss = bce(out[:, 0], y[:, 0]) + bce(out[:, 1], y[:, 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_training_command_writes_a_model_and_resumes(tmp_path):
    from cellseg.train import train

    cfg = {
        "spatial_dims": 2,
        "out": str(tmp_path / "m"),
        "model": {
            "architecture": {
                "class": "monai.networks.nets.UNet",
                "channels": [8, 8, 16, 16],
                "strides": [2, 2, 2],
                "num_res_units": 0,
                "norm": "batch",
            }
        },
        "data": {"synthetic": {"n_images": 1, "shape": [64, 64]}},
        "validation": {"synthetic": {"n_images": 1, "shape": [64, 64]}},
        "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch": [32, 32]},
    }
    s1 = train(cfg, show_progress=False)
    assert (tmp_path / "m" / "model.safetensors").exists()
    spec = read_spec(tmp_path / "m")
    assert spec["spatial_dims"] == 2 and spec["training"]["best_epoch"] == 1
    assert len(s1["history"]) == 1
    cfg["training"]["epochs"] = 2  # another config: starts over, 2 epochs
    s2 = train(cfg, show_progress=False)
    assert [h["epoch"] for h in s2["history"]] == [1, 2]
    s3 = train(cfg, show_progress=False)  # same config, finished: nothing to redo
    assert s3["history"] == s2["history"]

    # fine-tune the model on a folder of the layout `cellseg export-training` writes
    from cellseg.synth import write_synthetic_scan

    data = tmp_path / "labelled"
    for k in range(2):
        write_synthetic_scan(
            data / "images" / f"s_{k}.tif", data / "labels" / f"s_{k}.tif", shape=(64, 64), seed=k
        )
    tune = {
        "spatial_dims": 2,
        "out": str(tmp_path / "tuned"),
        "init": str(tmp_path / "m"),
        "data": {"synthetic": {"n_images": 0}, "folders": [str(data)]},
        "validation": {"synthetic": {"n_images": 0}, "folders": [str(data)]},
        "training": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "patch": [32, 32]},
    }
    s4 = train(tune, show_progress=False)
    assert read_spec(tmp_path / "tuned")["architecture"]["channels"] == [8, 8, 16, 16]
    assert 0.0 <= s4["best_val_ap50"] <= 1.0


def test_loading_refuses_a_pickle(tmp_path):
    import argparse

    import torch

    bad = tmp_path / "model.pt"
    torch.save({"model": argparse.Namespace(payload="any object")}, bad)
    with pytest.raises(ConfigError, match="not a plain weights file"):
        load_state(bad)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(2)}, good)
    assert set(load_state(good)) == {"w"}


def test_unknown_model_is_a_clear_error():
    from cellseg.backends import get_backend

    be = get_backend("model", "no-such-model")
    with pytest.raises(ConfigError, match="shipped models"):
        be.margin_px((0.5, 0.5))


@pytest.mark.parametrize("name,nd", [("nuclei2d", 2), ("nuclei3d", 3)])
def test_shipped_models_are_small_and_described(name, nd):
    folder = models_dir() / name
    spec = read_spec(folder)
    assert spec["spatial_dims"] == nd
    for key in ("pixel_size_um", "diameter_um", "heads", "normalisation", "training", "version"):
        assert key in spec
    size = (folder / "model.safetensors").stat().st_size
    assert size < 10 * 1024 * 1024
    from cellseg.model import file_sha256

    assert spec["sha256"] == file_sha256(folder / "model.safetensors")
    assert alignment(spec)[-1] == 8


def test_shipped_2d_model_finds_nuclei(scan2d):
    from cellseg.backends import get_backend
    from cellseg.pipeline import segment_array

    image, truth, spacing = scan2d
    labels = segment_array(image, spacing=spacing, tile_size=4096, backend=get_backend("model"))
    r = match_instances(truth, labels, 0.5)
    assert r["ap"] >= 0.8, r


@pytest.mark.xfail(
    reason="the shipped 3D model separates crowded, thin (3-5 plane) nuclei poorly; "
    "classical stays the 3D default until it reaches the target",
    strict=False,
)
def test_shipped_3d_model_finds_nuclei(scan3d):
    from cellseg.backends import get_backend
    from cellseg.pipeline import segment_array

    image, truth, spacing = scan3d
    labels = segment_array(image, spacing=spacing, tile_size=4096, backend=get_backend("model"))
    r = match_instances(truth, labels, 0.5)
    assert r["ap"] >= 0.8, r


@pytest.mark.parametrize("tile_size", [64, 96])
def test_model_backend_is_tile_invariant_2d(scan2d, tile_size):
    from cellseg.backends import get_backend
    from cellseg.pipeline import segment_array

    image, _, spacing = scan2d
    be = get_backend("model")
    whole = segment_array(image, spacing=spacing, tile_size=4096, backend=be)
    tiled = segment_array(image, spacing=spacing, tile_size=tile_size, backend=be)
    r = match_instances(whole, tiled, 0.5)
    assert whole.max() > 100 and r["f1"] >= 0.99, r


def test_model_backend_is_tile_invariant_3d(scan3d):
    from cellseg.backends import get_backend
    from cellseg.pipeline import segment_array

    image, _, spacing = scan3d
    be = get_backend("model")
    whole = segment_array(image, spacing=spacing, tile_size=4096, backend=be)
    tiled = segment_array(image, spacing=spacing, tile_size=(16, 48, 48), backend=be)
    r = match_instances(whole, tiled, 0.5)
    assert whole.max() > 20 and r["f1"] >= 0.99, r
