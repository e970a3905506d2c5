"""Tiles without cells are not segmented, and the labels do not change for it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellseg.background import background_tiles, pooled
from cellseg.io import open_labels
from cellseg.layout import image_path, read_json, work_dir
from cellseg.stages import ingest, plan, segment_tiles, stitch
from cellseg.synth import synthesize_scan
from cellseg.tiling import plan_tiles


def test_pooled_means_by_hand():
    assert pooled(np.arange(6.0).reshape(2, 3), (2, 2)).tolist() == [[2.0, 3.5]]
    assert pooled(np.ones((3, 4, 4)), (1, 2, 2)).shape == (3, 2, 2)


def test_background_tiles_skip_noise_and_keep_a_dim_spot():
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 5.0, (256, 256)).astype(np.float32)
    image[:, :64] += 400.0  # bright nuclei everywhere on the left
    image[220:226, 220:226] += 30.0  # one dim spot: 6 sigma of the pixels, far below nuclei
    stats = {"nucleus_level": 500.0, "otsu": 300.0}
    tiles = plan_tiles((256, 256), (64, 64), (16, 16))
    skipped, summary = background_tiles(image, (1, 1), tiles, (8, 8), (256, 256), stats)
    assert 99.0 < summary["background"] < 101.0 and 2.0 < summary["noise"] < 3.5
    # threshold: 6 sigma of 2x2 means (2.5) above the background, below 5 % of the nuclei
    assert summary["threshold"] == pytest.approx(summary["background"] + 6 * summary["noise"])
    grid = {t.index: t.grid for t in tiles}
    kept = {grid[i] for i in range(len(tiles))} - {grid[i] for i in skipped}
    # the nuclei's column (and its neighbours within the margin), and the dim spot's tile
    assert kept == {(r, c) for r in range(4) for c in (0, 1)} | {(3, 3)}
    # no nucleus level in the statistics: nothing is judged
    assert (
        background_tiles(image, (1, 1), tiles, (8, 8), (256, 256), {"nucleus_level": None})[0] == []
    )


def _scan(kind: str) -> np.ndarray:
    """A synthetic scan whose right half is background noise only."""
    if kind == "clean":
        image, truth = synthesize_scan((128, 320), spacing=(0.5, 0.5), seed=3)
    else:  # dim nuclei near the noise floor
        image, truth = synthesize_scan(
            (128, 320),
            spacing=(0.5, 0.5),
            seed=3,
            nucleus_e=40.0,
            background_e=30.0,
            dim_fraction=0.6,
        )
    far = ~ndi.binary_dilation(truth > 0, iterations=12)
    rng = np.random.default_rng(0)
    image = image.copy()
    noise = rng.normal(image[far].mean(), image[far].std(), image[:, 160:].shape)
    image[:, 160:] = np.clip(noise, 0, None).round().astype(image.dtype)
    return image


@pytest.mark.parametrize("kind, n_skipped", [("clean", 4), ("noise floor", 0)])
def test_skipping_background_tiles_leaves_the_labels_unchanged(tmp_path, kind, n_skipped):
    np.save(tmp_path / "scan.npy", _scan(kind))
    labels = {}
    for skip in (True, False):
        out = tmp_path / f"skip-{skip}"
        ingest(tmp_path / "scan.npy", out, pixel_size=(0.5, 0.5))
        content = plan(out, tile_size=64, backend="model", tiles_per_batch=6, skip_background=skip)
        for batch in content["batches"]:
            segment_tiles(out, batch, device="cpu", show_progress=False)
        stitch(out, show_progress=False)
        info = read_json(work_dir(out) / "ingest.json", "ingest")
        labels[skip] = np.asarray(open_labels(image_path(out, info))[:])
        if skip:
            # the skipped tiles are listed, and no batch holds them
            assert len(content["background_tiles"]) == n_skipped
            batched = {i for part in content["batch_tiles"].values() for i in part}
            assert batched.isdisjoint(content["background_tiles"])
            assert len(batched) + n_skipped == len(content["tiles"])
        else:
            assert "background_tiles" not in content
    assert labels[True].max() > 20
    np.testing.assert_array_equal(labels[True], labels[False])
