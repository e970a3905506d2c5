"""What real scans need: robust normalisation, the nucleus size, a backend registry,
training within a time budget."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.errors import ConfigError
from cellseg.metrics import match_instances
from cellseg.normalize import compute_scan_stats, normalize
from cellseg.segmentation import BackendBase, get_backend, register_backend
from cellseg.segmentation.base import BACKENDS
from cellseg.segmentation.sizing import blob_diameters_um, equivalent_diameters_um
from cellseg.synth import synthesize_scan


def _discs(shape, centres, radius, value, image=None):
    image = np.zeros(shape, np.float32) if image is None else image
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return image


# ----------------------------------------------------------------------------- normalisation
def test_a_few_saturated_nuclei_do_not_move_the_normalisation():
    image, labels = synthesize_scan((512, 512), seed=3, density=0.3, bit_depth=16)
    before = compute_scan_stats(image)
    bright = image.astype(np.float32)
    top = float(np.iinfo(np.uint16).max)
    # three mitotic-like nuclei at full scale, far brighter than the rest
    bright = _discs(bright.shape, [(60, 60), (250, 400), (450, 120)], 9, top, bright)
    after = compute_scan_stats(bright)
    assert after["high"] == pytest.approx(before["high"], rel=0.05)
    assert after["low"] == pytest.approx(before["low"], rel=0.05)
    # a high percentile of the pixels would have moved by a large factor
    assert after["percentiles"]["99.8"] > 3 * before["percentiles"]["99.8"]
    # the typical nucleus lands at the same place, about half-way up
    typical = np.median(normalize(image, before)[labels > 0])
    assert 0.2 < typical < 0.6
    assert np.median(normalize(bright, after)[labels > 0]) == pytest.approx(typical, rel=0.05)


def test_normalisation_falls_back_to_percentiles_without_objects():
    flat = np.random.default_rng(0).normal(100, 1, (64, 64)).astype(np.float32)
    flat[0, 0] = 100.5  # not constant
    stats = compute_scan_stats(flat)
    assert stats["high"] > stats["low"]


# ----------------------------------------------------------------------------- size
def test_blob_diameters_split_touching_nuclei_and_ignore_texture():
    yy, xx = np.mgrid[:120, :160]
    mask = np.zeros((120, 160), bool)
    for cy, cx in [(40, 40), (40, 77), (85, 60), (80, 120)]:  # the first two touch
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 20**2
    holes = mask & (np.random.default_rng(1).random(mask.shape) < 0.05)
    found = blob_diameters_um(mask & ~holes, (0.5, 0.5))
    assert len(found) == 4
    np.testing.assert_allclose(np.median(found), 20.0, rtol=0.1)


@pytest.mark.parametrize(
    "shape, spacing, diameter",
    [
        ((320, 320), (1.0, 1.0), (14.0, 18.0)),  # no pixel size: 16 px nuclei
        ((384, 384), (0.25, 0.25), (13.0, 16.0)),  # large nuclei, ~58 px: far from 24
        ((24, 192, 192), (1.0, 0.4, 0.4), (8.0, 10.0)),  # a stack
    ],
)
def test_the_diameter_estimate_is_within_20_percent(shape, spacing, diameter):
    image, truth = synthesize_scan(
        shape, spacing=spacing, seed=8, diameter_um=diameter, density=0.35
    )
    true_d = float(np.median(equivalent_diameters_um(truth, spacing)))
    backend = get_backend("model", ndim=len(shape))
    est = backend.estimate_diameter_um(image, spacing, compute_scan_stats(image))
    assert est == pytest.approx(true_d, rel=0.2), (est, true_d)


def test_a_scan_without_pixel_size_is_measured_by_default(tmp_path):
    import tifffile

    from cellseg.layout import read_json, work_dir
    from cellseg.stages import ingest, plan

    image, _ = synthesize_scan((256, 256), spacing=(1.0, 1.0), seed=2, diameter_um=(30, 36))
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image)  # a plain TIFF: no pixel size
    out = tmp_path / "out"
    ingest(path, out)
    assert read_json(work_dir(out) / "ingest.json", "ingest")["spacing_source"] == "default"
    content = plan(out)
    assert content["backend"]["diameter"] == "auto"
    assert content["backend"]["options"]["diameter_um"] == pytest.approx(33, rel=0.2)


# ----------------------------------------------------------------------------- registry
def test_a_backend_is_one_class_and_one_registration(scan2d):
    from cellseg.stages import segment_array

    @register_backend("thresholds-test")
    class Thresholds(BackendBase):
        """Connected parts above half the normalised range."""

        def max_diameter_um(self) -> float:
            return 16.0

        def margin_px(self, spacing):
            return (1,) * len(spacing)

        def predict(self, crops, spacing, stats):
            from scipy import ndimage as ndi

            return [ndi.label(c > 0.5)[0].astype(np.int32) for c in crops]

    try:
        image, truth, spacing = scan2d
        be = get_backend("thresholds-test", ndim=2)
        assert be.name == "thresholds-test" and be.per_tile_cpu
        labels = segment_array(image, spacing=spacing, tile_size=64, backend=be)
        assert match_instances(truth, labels, 0.5)["tp"] > 0
        with pytest.raises(ConfigError, match="takes no model"):
            get_backend("thresholds-test", "nuclei2d")
    finally:
        BACKENDS.pop("thresholds-test")
    with pytest.raises(ConfigError, match="choose one of: classical, model"):
        get_backend("thresholds-test")


# ----------------------------------------------------------------------------- training time
@pytest.mark.slow
def test_max_minutes_stops_training_in_time_and_keeps_the_best(tmp_path, tiny_unet):
    from cellseg.segmentation.network import read_spec
    from cellseg.segmentation.training import train

    budget_min = 0.4
    cfg = {
        "spatial_dims": 2,
        "out": str(tmp_path / "m"),
        "model": {"architecture": tiny_unet},
        "data": {"synthetic": {"n_images": 2, "shape": [64, 64]}},
        "validation": {"synthetic": {"n_images": 1, "shape": [64, 64]}},
        "training": {
            "epochs": 10_000,
            "steps_per_epoch": 5,
            "batch_size": 2,
            "patch": [32, 32],
            "max_minutes": budget_min,
        },
    }
    summary = train(cfg, show_progress=False)
    # the budget covers the whole run; the last validation and save may pass it a little
    assert summary["seconds"] < 60 * budget_min + 10, summary["seconds"]
    history = [h for h in summary["history"] if h["loss"] is not None]
    assert 1 <= len(history) < 10_000
    best = max(h["val_ap50"] for h in summary["history"])
    spec = read_spec(tmp_path / "m")
    assert spec["training"]["val_ap50"] == best
    assert spec["training"]["config"]["training"]["max_minutes"] == budget_min
