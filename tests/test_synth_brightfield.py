"""Tests of the synthetic brightfield (H&E, IHC) scans: truth, stains, files, training input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from cellseg.cli import main
from cellseg.errors import ConfigError
from cellseg.normalize import compute_scan_stats, normalize
from cellseg.segmentation.training import load_config, synthetic_images
from cellseg.stain import REFERENCE, concentrations, estimate_stains
from cellseg.synth import (
    BrightfieldParams,
    brightfield_training_pair,
    sample_brightfield_params,
    synthesize_brightfield,
    write_brightfield_scan,
)

SHAPE = (192, 192)


@pytest.fixture(scope="module")
def he():
    """A small H&E scan with glass, stain vectors turned from the references."""
    return synthesize_brightfield(
        SHAPE, seed=5, spacing=(0.5, 0.5), tissue_fraction=0.7, stain_angle_deg=8.0
    )


def _angle_deg(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(min(1.0, cos)))


def test_same_seed_gives_identical_scans():
    a = synthesize_brightfield((96, 128), seed=3, stain="hdab")
    b = synthesize_brightfield((96, 128), seed=3, stain="hdab")
    c = synthesize_brightfield((96, 128), seed=4, stain="hdab")
    assert a.image.tobytes() == b.image.tobytes()
    assert a.labels.tobytes() == b.labels.tobytes()
    assert np.array_equal(a.dab_positive, b.dab_positive)
    assert a.image.tobytes() != c.image.tobytes()
    rng_a, rng_b = np.random.default_rng(8), np.random.default_rng(8)
    pa = brightfield_training_pair(rng_a, (64, 64))
    pb = brightfield_training_pair(rng_b, (64, 64))
    assert pa[0].tobytes() == pb[0].tobytes() and pa[2] == pb[2]


def test_labels_are_the_haematoxylin_nuclei(he):
    labels = he.labels
    n = int(labels.max())
    assert he.image.shape == SHAPE + (3,) and he.image.dtype == np.uint8
    assert labels.dtype == np.uint32 and n >= 20
    assert np.array_equal(np.unique(labels[labels > 0]), np.arange(1, n + 1))
    assert he.cell_kind.shape == (n,)
    # Unmixed with the vectors it was rendered with, the nuclei carry the haematoxylin.
    hema = concentrations(he.image, he.stains)[..., 0]
    inside = hema[labels > 0].mean()
    ring = ndi.binary_dilation(labels > 0, iterations=4) & ~ndi.binary_dilation(labels > 0)
    outside = hema[ring & he.tissue].mean()
    assert inside > 2.5 * outside, (inside, outside)
    per_nucleus = ndi.mean(hema, labels, np.arange(1, n + 1))
    assert np.median(per_nucleus) > 2.0 * outside
    # No nucleus on glass.
    assert not np.any(labels[~he.tissue])


def test_glass_is_near_white(he):
    glass = ndi.binary_erosion(~he.tissue, iterations=6)
    assert glass.sum() > 500
    pixels = he.image[glass].astype(float)
    background = np.asarray(he.params.background)
    assert np.all(np.abs(np.median(pixels, axis=0) - background) < 4)
    assert np.percentile(pixels.min(axis=1), 1) > 225
    # ... and tissue is not: a clear drop in light where nuclei are.
    assert he.image[he.labels > 0].mean() < 170


def test_stain_vectors_are_turned_and_recovered(he):
    vectors = np.asarray(he.stains["vectors"])
    for row, reference in zip(vectors[:2], REFERENCE["he"][:2], strict=True):
        assert _angle_deg(row, reference) <= 8.0 + 1e-6
        assert np.isclose(np.linalg.norm(row), 1.0)
    estimated = estimate_stains(he.image, kind="he")
    assert estimated["estimated"]
    assert _angle_deg(estimated["vectors"][0], vectors[0]) < 12.0


@pytest.mark.parametrize("pattern", ["nuclear", "membrane"])
def test_dab_fraction_and_positive_cells(pattern):
    s = synthesize_brightfield(
        (256, 256),
        seed=2,
        spacing=(0.5, 0.5),
        stain="hdab",
        dab_fraction=0.3,
        dab_pattern=pattern,
        tissue_fraction=1.0,
        lymphoid_fraction=0.4,
        nest_fraction=0.4,
        fat_fraction=0.0,
        jpeg_quality=None,
    )
    n = int(s.labels.max())
    assert n >= 100
    assert abs(s.dab_fraction - 0.3) < 3 * math.sqrt(0.3 * 0.7 / n)
    assert s.dab_positive.size == np.count_nonzero(s.dab_amount)
    assert np.all(s.dab_amount[s.dab_positive - 1] >= s.params.dab_strength[0])
    assert s.stains["names"] == ["hematoxylin", "dab"]
    dab = concentrations(s.image, s.stains)[..., 1]
    positive = np.isin(s.labels, s.dab_positive)
    negative = (s.labels > 0) & ~positive
    if pattern == "nuclear":
        # DAB sits in the positive nuclei and nowhere else.
        assert dab[positive].mean() > 4 * max(dab[negative].mean(), 0.02)
    else:
        # DAB rings the positive cells: more of it just around their nuclei.
        near = ndi.binary_dilation(positive, iterations=3) & (s.labels == 0)
        near_negative = ndi.binary_dilation(negative, iterations=3) & (s.labels == 0) & ~near
        assert dab[near].mean() > 2 * dab[near_negative].mean()
    he = synthesize_brightfield((64, 64), seed=2, stain="he", dab_fraction=0.3)
    assert he.dab_positive.size == 0 and he.dab_fraction == 0.0


def test_sampled_params_cover_the_documented_ranges():
    rng = np.random.default_rng(1)
    draws = [sample_brightfield_params(rng, "hdab") for _ in range(40)]
    assert all(0.22 <= p.spacing[0] <= 0.55 for p in draws)
    assert all(p.stain_angle_deg <= 12.0 for p in draws)
    assert len({p.dab_pattern for p in draws}) == 3
    heldout = sample_brightfield_params(rng, "he", "heldout")
    assert heldout.stain_angle_deg >= 12.0 and heldout.dab_fraction == 0.0


def test_training_pair_is_the_haematoxylin_image_inference_sees():
    image, labels, spacing = brightfield_training_pair(3, (96, 96), stain="he")
    assert image.dtype == np.float32 and image.shape == labels.shape == (96, 96)
    assert labels.dtype == np.uint32 and image.min() >= 0.0
    assert len(spacing) == 2 and 0.22 <= spacing[0] <= 0.55
    if labels.max():
        assert image[labels > 0].mean() > 2 * image[labels == 0].mean()
    # Through the training config: validated, rendered, normalised like fluorescence.
    cfg = load_config(
        {
            "out": "unused",
            "data": {
                "synthetic": [
                    {"n_images": 1, "shape": [64, 64], "modality": "brightfield", "stain": "hdab"}
                ]
            },
            "validation": {"synthetic": {"n_images": 1, "modality": "brightfield"}},
        }
    )
    src = cfg["data"]["synthetic"][0]
    ((img, lab, sp),) = synthetic_images(
        1, src["shape"], src["setting"], 7, modality=src["modality"], stain=src["stain"]
    )
    rng = np.random.default_rng(7)
    raw, raw_labels, raw_spacing = brightfield_training_pair(rng, (64, 64), stain="hdab")
    assert np.array_equal(lab, raw_labels.astype(np.int32)) and sp == raw_spacing
    # One normalisation path for both modalities: the scan-level one.
    assert np.array_equal(img, normalize(raw, compute_scan_stats(raw)))
    with pytest.raises(ConfigError, match="brightfield"):
        synthetic_images(1, [8, 32, 32], "train", 0, modality="brightfield")
    with pytest.raises(ConfigError, match="brightfield"):
        synthetic_images(1, [32, 32], "classic", 0, modality="brightfield")
    with pytest.raises(ConfigError):
        load_config({"out": "x", "data": {"synthetic": {"modality": "phase"}}})


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="unknown brightfield"):
        synthesize_brightfield((32, 32), hue=3)
    with pytest.raises(ConfigError, match="stain"):
        synthesize_brightfield((32, 32), stain="pas")
    with pytest.raises(ConfigError, match="dab_fraction"):
        synthesize_brightfield((32, 32), dab_fraction=1.5)
    with pytest.raises(ConfigError, match="shape"):
        synthesize_brightfield((4, 32, 32))
    with pytest.raises(ConfigError, match="params"):
        synthesize_brightfield((32, 32), params=object())
    glass = synthesize_brightfield((48, 48), tissue_fraction=0.0, params=BrightfieldParams())
    assert glass.labels.max() == 0 and not glass.tissue.any()


def test_written_scan_and_slide_carry_pixel_size(tmp_path):
    image_path, labels_path = write_brightfield_scan(
        tmp_path / "he.ome.tif",
        tmp_path / "he_labels.tif",
        shape=(80, 96),
        seed=1,
        spacing=(0.25, 0.25),
    )
    sample = synthesize_brightfield((80, 96), seed=1, spacing=(0.25, 0.25))
    assert np.array_equal(tifffile.imread(image_path), sample.image)
    assert np.array_equal(tifffile.imread(labels_path), sample.labels)
    with tifffile.TiffFile(image_path) as tif:
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata
    # The CLI's whole slide: a tiled JPEG pyramid with its microns per pixel.
    slide = tmp_path / "slide.svs"
    code = main(
        [
            "-q",
            "synth",
            str(slide),
            "--modality",
            "brightfield",
            "--stain",
            "hdab",
            "--slide",
            "--shape",
            "600",
            "700",
            "--pixel-size",
            "0.5",
            "0.5",
            "--seed",
            "2",
        ]
    )
    assert code == 0
    with tifffile.TiffFile(slide) as tif:
        assert tif.is_svs and "MPP = 0.5" in tif.pages[0].description
        assert tif.pages[0].is_tiled and tif.pages[0].compression == 7  # JPEG
        rgb = tif.pages[0].asarray()
    labels = tifffile.imread(tmp_path / "slide_labels.tif")
    assert rgb.shape == (600, 700, 3) and labels.shape == (600, 700)
    # Glass all around the tissue: the border is bright and free of nuclei.
    border = np.ones(labels.shape, bool)
    border[40:-40, 40:-40] = False
    assert not labels[border].any() and rgb[border].mean() > 225
    assert main(["-q", "synth", str(tmp_path / "f.tif"), "--shape", "32", "32", "--slide"]) == 2
