"""The instance model: representation, training, loading, shipped models, tile invariance."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.errors import ConfigError
from cellseg.metrics import match_instances
from cellseg.segmentation.network import (
    alignment,
    build_network,
    default_spec,
    load_state,
    models_dir,
    read_spec,
)
from cellseg.segmentation.targets import labels_to_targets, targets_to_labels


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
    back = targets_to_labels(fg, centre, spacing=spacing, min_size=1)
    r = match_instances(labels, back, 0.5)
    # touching cells come back separated
    assert r["recall"] >= 0.97 and r["precision"] >= 0.97, r
    assert r["mean_matched_iou"] >= 0.85, r
    if case == "disks":
        assert r["tp"] == 4 and r["fp"] == 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_shallow_basins_merge_as_h_maxima_seeds_would(ndim):
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from cellseg.segmentation.targets import merge_shallow_basins

    shape = (96, 96) if ndim == 2 else (20, 40, 40)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        land = ndi.gaussian_filter(rng.random(shape), 3)
        land = (land - land.min()) / (land.max() - land.min())
        markers, n = ndi.label(land >= ndi.maximum_filter(land, 3))
        merged = merge_shallow_basins(watershed(-land, markers), land, n, 0.1)
        kept, n_kept = ndi.label(h_maxima(land, 0.1))
        assert n > n_kept > 2
        # one basin left per h-maximum, each holding its own
        owners = {int(merged[kept == k][0]) for k in range(1, n_kept + 1)}
        assert len(np.unique(merged)) == len(owners) == n_kept


def test_prominence_keeps_a_bumpy_nucleus_whole_and_touching_ones_apart():
    labels = _touching_disks()
    fg, centre = labels_to_targets(labels)
    yy, xx = np.mgrid[:60, :80]
    # the big nucleus as a network sees a large textured one: a plateau with bumps
    bumps = 0.04 * np.sin(yy / 1.3) * np.sin(xx / 1.3)
    plateau = np.minimum(2 * centre, 0.6) + bumps
    centre = np.where(labels == 1, plateau, centre).clip(0, 1).astype(np.float32)
    split = targets_to_labels(fg, centre, smooth_px=0.5, peak_radius_px=2, min_size=1)
    assert len(np.unique(split[labels == 1])) > 1  # without prominence: pieces
    whole = targets_to_labels(
        fg, centre, smooth_px=0.5, peak_radius_px=2, min_size=1, prominence=0.15
    )
    r = match_instances(labels, whole, 0.5)
    assert r["tp"] == 4 and r["fp"] == 0, r


def test_targets_have_a_valley_between_touching_cells():
    labels = _touching_disks()
    _, centre = labels_to_targets(labels)
    # the contact line between cells 1 and 2 is an edge of both: low centre value
    contact = (labels == 1) & np.roll(labels == 2, -1, axis=1)
    assert contact.any() and centre[contact].max() < 0.2


def test_a_tiny_model_learns():
    import torch

    from cellseg.segmentation.training import _augment, sample_batch

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


def test_training_command_writes_a_model_and_resumes(tmp_path, tiny_unet):
    from cellseg.segmentation.training import train

    cfg = {
        "spatial_dims": 2,
        "out": str(tmp_path / "m"),
        "model": {"architecture": tiny_unet},
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
    # the starting model competes (epoch 0): fine-tuning never ships a worse model
    assert s4["history"][0]["epoch"] == 0 and s4["history"][0]["loss"] is None
    assert s4["best_val_ap50"] == max(h["val_ap50"] for h in s4["history"])
    assert s4["best_val_ap50"] >= s4["history"][0]["val_ap50"]
    assert read_spec(tmp_path / "tuned")["training"]["val_ap50"] == s4["best_val_ap50"]


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
    from cellseg.segmentation import get_backend

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
    from cellseg.segmentation.network import file_sha256

    assert spec["sha256"] == file_sha256(folder / "model.safetensors")
    assert alignment(spec)[-1] == 8


def test_shipped_2d_model_finds_nuclei(scan2d):
    from cellseg.segmentation import get_backend
    from cellseg.stages import segment_array

    image, truth, spacing = scan2d
    labels = segment_array(image, spacing=spacing, tile_size=4096, backend=get_backend("model"))
    r = match_instances(truth, labels, 0.5)
    assert r["ap"] >= 0.8, r


def test_shipped_3d_model_finds_nuclei(scan3d):
    from cellseg.segmentation import get_backend
    from cellseg.stages import segment_array

    image, truth, spacing = scan3d
    labels = segment_array(image, spacing=spacing, tile_size=4096, backend=get_backend("model"))
    r = match_instances(truth, labels, 0.5)
    assert r["ap"] >= 0.8, r


@pytest.mark.parametrize("tile_size", [64, 96])
def test_model_backend_is_tile_invariant_2d(scan2d, tile_size):
    from cellseg.segmentation import get_backend
    from cellseg.stages import segment_array

    image, _, spacing = scan2d
    be = get_backend("model")
    whole = segment_array(image, spacing=spacing, tile_size=4096, backend=be)
    tiled = segment_array(image, spacing=spacing, tile_size=tile_size, backend=be)
    r = match_instances(whole, tiled, 0.5)
    assert whole.max() > 100 and r["f1"] >= 0.99, r


def test_flips_average_the_maps_of_mirrored_crops():
    """With flips, the maps are the mean of the maps of each mirrored crop, mirrored back."""
    from cellseg.segmentation.bioimageio import open_model
    from cellseg.segmentation.inference import flip_sets, predict_maps
    from cellseg.segmentation.network import resolve_model_path

    spec = read_spec(resolve_model_path(None, 2))
    net, _ = open_model(resolve_model_path(None, 2), "cpu")
    rng = np.random.default_rng(3)
    crop = rng.random((48, 64)).astype(np.float32)  # multiples of the stride: no padding
    ((fg, centre),) = predict_maps(net, [crop], spec, flips=True)
    parts = []
    for axes in flip_sets(2):
        ((f, c),) = predict_maps(net, [np.flip(crop, axes).copy()], spec)
        parts.append((np.flip(f, axes), np.flip(c, axes)))
    np.testing.assert_allclose(fg, np.mean([f for f, _ in parts], axis=0), atol=1e-5)
    np.testing.assert_allclose(centre, np.mean([c for _, c in parts], axis=0), atol=1e-5)
    ((plain, _),) = predict_maps(net, [crop], spec)
    assert np.abs(plain - fg).max() > 1e-3  # the mirrored passes do change the maps


def test_flipped_model_finds_nuclei_and_tiles_agree(scan2d):
    """Mirrored padded crops keep every pixel's place in the network's stride: with
    flips, tiles (crops of any size at the scan's edges) still equal one tile."""
    from cellseg.segmentation import get_backend
    from cellseg.stages import segment_array

    image, truth, spacing = scan2d
    be = get_backend("model", flips=True)
    whole = segment_array(image, spacing=spacing, tile_size=4096, backend=be)
    tiled = segment_array(image, spacing=spacing, tile_size=72, backend=be)
    assert match_instances(truth, whole, 0.5)["ap"] >= 0.8
    r = match_instances(whole, tiled, 0.5)
    assert whole.max() > 100 and r["f1"] >= 0.99, r


def test_nuclei_of_the_usual_size_are_not_zoomed(scan2d):
    """A diameter of 12-30 px (the shipped models' ``unzoomed_diameter_px``) leaves crops
    as they are, with the post-processing of unknown size; outside it they are zoomed."""
    from cellseg.segmentation import get_backend
    from cellseg.stages import segment_array

    image, _, spacing = scan2d  # 0.5 µm pixels
    be = get_backend("model", diameter_um=9.0)  # 18 px
    assert be.zoom_fractions(spacing) == (1, 1) and not be.sized(spacing)
    plain = segment_array(image, spacing=spacing, tile_size=4096, backend=get_backend("model"))
    known = segment_array(image, spacing=spacing, tile_size=4096, backend=be)
    np.testing.assert_array_equal(known, plain)
    for diameter_um, up in ((5.5, True), (15.5, False)):  # 11 px and 31 px
        be = get_backend("model", diameter_um=diameter_um)
        zoom = be.zoom_fractions(spacing)[0]
        assert (zoom > 1 if up else zoom < 1) and be.sized(spacing), (diameter_um, zoom)


@pytest.mark.parametrize("diameter_um, up", [(5.0, True), (17.0, False)])
def test_rescaled_crops_share_one_grid(scan2d, diameter_um, up):
    """With a diameter, crops are zoomed by a fraction and tiles still equal one tile."""
    from cellseg.segmentation import get_backend
    from cellseg.stages import segment_array

    image, _, spacing = scan2d
    be = get_backend("model", diameter_um=diameter_um)
    zoom = be.zoom_fractions(spacing)
    assert zoom[0] == zoom[1] and zoom[0].denominator > 1 and (zoom[0] > 1) == up, zoom
    assert all(a % z.denominator == 0 for a, z in zip(be.alignment(spacing), zoom))
    whole = segment_array(image, spacing=spacing, tile_size=4096, backend=be)
    tiled = segment_array(image, spacing=spacing, tile_size=80, backend=be)
    r = match_instances(whole, tiled, 0.5)
    assert whole.max() > 50 and r["f1"] >= 0.99, r


def test_zoom_crop_lands_on_the_global_grid():
    from fractions import Fraction

    from cellseg.segmentation.model_backend import zoom_crop

    rng = np.random.default_rng(0)
    scan = rng.random((42, 35)).astype(np.float32)
    zoom = (Fraction(7, 4), Fraction(2, 3))
    whole = zoom_crop(scan, zoom)
    assert whole.shape == (44 * 7 // 4, 36 * 2 // 3)  # padded to multiples of 4 and 3
    crop = zoom_crop(scan[8:40, 9:33], zoom)  # starts on multiples of the denominators
    inner = (slice(2, crop.shape[0] - 2), slice(2, crop.shape[1] - 2))
    offset = (slice(14 + 2, 14 + crop.shape[0] - 2), slice(6 + 2, 6 + crop.shape[1] - 2))
    np.testing.assert_allclose(crop[inner], whole[offset], atol=1e-6)


@pytest.fixture(scope="module")
def whole3d(scan3d):
    from cellseg.segmentation import get_backend
    from cellseg.stages import segment_array

    image, _, spacing = scan3d
    return segment_array(image, spacing=spacing, tile_size=4096, backend=get_backend("model"))


@pytest.mark.slow
@pytest.mark.parametrize("tile_size", [(6, 48, 64)])  # seams along z, y and x
def test_model_backend_is_tile_invariant_3d(scan3d, whole3d, tile_size):
    from cellseg.segmentation import get_backend
    from cellseg.stages import segment_array

    image, _, spacing = scan3d
    be = get_backend("model")
    whole = whole3d
    tiled = segment_array(image, spacing=spacing, tile_size=tile_size, backend=be)
    r = match_instances(whole, tiled, 0.5)
    assert whole.max() > 20 and r["f1"] >= 0.99, r


def test_upsample_z_is_local_and_linear():
    from cellseg.segmentation.inference import upsample_z

    rng = np.random.default_rng(0)
    vol = rng.random((9, 5, 4)).astype(np.float32)
    up = upsample_z(vol, 4)
    assert up.shape == (36, 5, 4)
    np.testing.assert_allclose(up[::4], vol)  # the original planes are kept
    np.testing.assert_allclose(up[4 * 2 + 1], 0.75 * vol[2] + 0.25 * vol[3], rtol=1e-6)
    # a crop of the result equals the result of the crop (away from the crop's far end)
    np.testing.assert_allclose(upsample_z(vol[3:8], 4)[:16], up[12:28])
    assert upsample_z(vol, 1) is not None and np.array_equal(upsample_z(vol, 1), vol)


def test_orthogonal_model_geometry():
    from cellseg.segmentation.network import network_dims, plane_factor

    spec = default_spec(3)
    assert spec["views"] == "orthogonal" and network_dims(spec) == 2
    assert plane_factor(spec, (2.0, 0.5, 0.5)) == 4
    assert plane_factor(spec, (0.5, 0.5, 0.5)) == 1
    assert plane_factor(spec, (50.0, 0.5, 0.5)) == spec["max_plane_factor"]
    # z crops start where the 4x finer z grid meets the network's stride of 8
    assert alignment(spec, (2.0, 0.5, 0.5)) == (2, 8, 8)
    assert alignment(spec, (3.0, 1.0, 1.0)) == (8, 8, 8)
    assert alignment(spec, (1.0, 0.5, 0.5)) == (4, 8, 8)


def test_random_plane_resamples_xz_planes():
    from cellseg.segmentation.training import random_plane

    img = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
    lab = np.zeros((4, 6, 5), np.int32)
    lab[1:3, 2:4, 1:4] = 7
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(30):
        im, lb, sp = random_plane(img, lab, (2.0, 0.5, 0.5), rng, 4)
        assert im.shape == lb.shape and im.ndim == 2
        seen.add(im.shape)
        if im.shape[0] == 16:  # an xz or yz plane, z 4x finer
            assert sp == (0.5, 0.5)
            # label planes follow the nearest original plane
            rows = np.flatnonzero(lb.any(axis=1))
            if rows.size:
                assert rows.min() == 2 and rows.max() == 9
        else:
            assert im.shape == (6, 5) and sp == (0.5, 0.5)
    assert {(6, 5), (16, 5), (16, 6)} <= seen


def test_a_2d_model_starts_an_orthogonal_3d_model(tmp_path, tiny_unet):
    from cellseg.segmentation.training import train

    arch = tiny_unet
    base = {
        "spatial_dims": 2,
        "out": str(tmp_path / "m2"),
        "model": {"architecture": arch},
        "data": {"synthetic": {"n_images": 1, "shape": [64, 64]}},
        "validation": {"synthetic": {"n_images": 0}},
        "training": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "patch": [32, 32]},
    }
    train(base, show_progress=False)
    cfg = {
        "spatial_dims": 3,
        "out": str(tmp_path / "m3"),
        "init": str(tmp_path / "m2"),
        "data": {"synthetic": {"n_images": 1, "shape": [8, 48, 48]}},
        "validation": {"synthetic": {"n_images": 1, "shape": [8, 48, 48]}},
        "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch": [32, 32]},
    }
    summary = train(cfg, show_progress=False)
    spec = read_spec(tmp_path / "m3")
    assert spec["spatial_dims"] == 3 and spec["views"] == "orthogonal"
    assert spec["architecture"]["channels"] == [8, 8, 16, 16]
    # the starting model is validated too (epoch 0) and the best one is kept
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    assert spec["training"]["val_ap50"] == max(h["val_ap50"] for h in summary["history"])
    cfg["training"]["patch"] = [8, 32, 32]
    cfg["out"] = str(tmp_path / "m3b")
    with pytest.raises(ConfigError, match="2 axes"):
        train(cfg, show_progress=False)


def test_equivalent_diameters_skip_border_objects():
    from cellseg.segmentation.sizing import equivalent_diameters_um

    lab = np.zeros((40, 40), np.int32)
    lab[10:20, 10:20] = 1  # 100 px of 0.5 µm: 25 µm²
    lab[0:5, 0:5] = 2  # touches the border: not measured
    d = equivalent_diameters_um(lab, (0.5, 0.5))
    np.testing.assert_allclose(d, [2 * np.sqrt(25 / np.pi)])
    vol = np.zeros((10, 10, 10), np.int32)
    vol[2:5, 2:6, 2:6] = 3  # 48 voxels of 2 x 1 x 1 µm
    np.testing.assert_allclose(
        equivalent_diameters_um(vol, (2.0, 1.0, 1.0)), [np.cbrt(6 * 96 / np.pi)]
    )


@pytest.mark.parametrize("pixel", [0.5, 0.2])
def test_diameter_is_estimated_at_any_pixel_size(pixel):
    from cellseg.normalize import compute_scan_stats
    from cellseg.segmentation import get_backend
    from cellseg.segmentation.sizing import equivalent_diameters_um
    from cellseg.synth import synthesize_scan

    side = int(160 * 0.5 / pixel)
    image, truth = synthesize_scan(
        (side, side), spacing=(pixel, pixel), seed=5, diameter_um=(7.0, 9.0), density=0.4
    )
    true_d = float(np.median(equivalent_diameters_um(truth, (pixel, pixel))))
    backend = get_backend("model", ndim=2)
    est = backend.estimate_diameter_um(image, (pixel, pixel), compute_scan_stats(image))
    assert est == pytest.approx(true_d, rel=0.2), (est, true_d)
