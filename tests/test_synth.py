"""Tests of the synthetic nuclei scans: determinism, label invariants, realism, files."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from cellseg import synth
from cellseg.errors import ConfigError
from cellseg.synth import (
    SynthParams,
    default_spacing,
    sample_params,
    synthesize_sample,
    synthesize_scan,
    training_pair,
    write_synthetic_scan,
)

SHAPE_2D = (192, 192)
SHAPE_3D = (12, 96, 96)
OME_NS = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}


@pytest.fixture(scope="module", params=["2d", "3d"])
def scan(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    shape = SHAPE_2D if request.param == "2d" else SHAPE_3D
    return synthesize_scan(shape, seed=7)


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (a < b) of different labels with face-adjacent pixels."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        touch = (a > 0) & (b > 0) & (a != b)
        low = np.minimum(a[touch], b[touch])
        high = np.maximum(a[touch], b[touch])
        pairs.update(zip(low.tolist(), high.tolist(), strict=True))
    return pairs


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("shape", [SHAPE_2D, SHAPE_3D])
def test_same_seed_gives_identical_arrays(shape: tuple[int, ...]) -> None:
    image_a, labels_a = synthesize_scan(shape, seed=3)
    image_b, labels_b = synthesize_scan(shape, seed=3)
    assert image_a.tobytes() == image_b.tobytes()
    assert labels_a.tobytes() == labels_b.tobytes()


@pytest.mark.parametrize("shape", [SHAPE_2D, SHAPE_3D])
def test_different_seed_gives_different_scan(shape: tuple[int, ...]) -> None:
    image_a, labels_a = synthesize_scan(shape, seed=3)
    image_b, labels_b = synthesize_scan(shape, seed=4)
    assert not np.array_equal(image_a, image_b)
    assert not np.array_equal(labels_a, labels_b)


# --------------------------------------------------------------------------- types and shapes


def test_dtypes_and_shapes(scan: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = scan
    assert image.dtype == np.uint16
    assert labels.dtype == np.uint32
    assert image.shape == labels.shape
    assert image.shape in (SHAPE_2D, SHAPE_3D)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_other_image_dtypes(dtype: type) -> None:
    image16, labels16 = synthesize_scan((96, 96), seed=2)
    image, labels = synthesize_scan((96, 96), seed=2, dtype=dtype)
    assert image.dtype == dtype
    np.testing.assert_array_equal(labels, labels16)
    if dtype == np.uint8:
        assert 0 < image.max() <= 255
        assert image[labels > 0].mean() > image[labels == 0].mean()
    else:
        # Same camera counts, before rounding and clipping to 16 bits.
        np.testing.assert_allclose(image, image16, atol=0.5 + 1e-3)


def test_default_spacing() -> None:
    assert default_spacing(2) == (0.5, 0.5)
    assert default_spacing(3) == (2.0, 0.5, 0.5)


# --------------------------------------------------------------------------- labels


def test_ids_are_consecutive(scan: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = scan
    ids = np.unique(labels)
    assert ids[0] == 0
    assert ids.size > 20
    np.testing.assert_array_equal(ids[1:], np.arange(1, ids.size))


def test_ids_follow_raster_order_of_first_pixel(scan: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = scan
    values, first = np.unique(labels.ravel(), return_index=True)
    assert np.all(np.diff(first[values > 0]) > 0)


def test_each_label_is_one_connected_piece(scan: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = scan
    for index, box in enumerate(ndi.find_objects(labels)):
        _, n_pieces = ndi.label(labels[box] == index + 1)  # face connectivity
        assert n_pieces == 1, f"label {index + 1} has {n_pieces} pieces"


def test_some_nuclei_touch_and_some_are_isolated(scan: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = scan
    pairs = _touching_pairs(labels)
    assert len(pairs) >= 5
    neighbours = np.bincount(np.asarray(list(pairs)).ravel(), minlength=labels.max() + 1)[1:]
    assert neighbours.max() >= 3  # a crowded nucleus
    assert np.count_nonzero(neighbours == 0) >= 3  # free-standing nuclei


def test_nuclei_are_visible_and_sized_as_asked() -> None:
    _, labels = synthesize_scan(SHAPE_2D, seed=5, spacing=(0.5, 0.5))
    areas_px = np.bincount(labels.ravel())[1:]
    assert areas_px.min() >= 20
    # Equivalent diameters of the nuclei away from the border, in µm.
    inner = labels[16:-16, 16:-16]
    inner_ids = np.unique(inner[inner > 0])
    diameters = 2 * np.sqrt(areas_px[inner_ids - 1] * 0.25 / np.pi)
    assert 6.0 <= np.median(diameters) <= 11.0
    assert diameters.max() <= 11.0 * 1.3


def test_spacing_scales_nuclei_in_pixels() -> None:
    _, fine = synthesize_scan((128, 128), seed=1, spacing=(0.25, 0.25))
    _, coarse = synthesize_scan((128, 128), seed=1, spacing=(1.0, 1.0))
    median_fine = np.median(np.bincount(fine.ravel())[1:])
    median_coarse = np.median(np.bincount(coarse.ravel())[1:])
    assert 8 < median_fine / median_coarse < 24  # 16 in theory, cut nuclei aside


def test_nuclei_span_few_planes_with_anisotropic_voxels() -> None:
    _, labels = synthesize_scan((24, 64, 64), seed=2, spacing=(2.0, 0.5, 0.5))
    boxes = ndi.find_objects(labels)
    planes = np.array([b[0].stop - b[0].start for b in boxes])
    rows = np.array([b[1].stop - b[1].start for b in boxes])
    assert np.median(planes) <= 8
    assert np.median(rows) >= 2 * np.median(planes)


def test_density_controls_coverage() -> None:
    covers = [(synthesize_scan((256, 256), seed=0, density=d)[1] > 0).mean() for d in (0.2, 0.5)]
    assert 0.1 < covers[0] < 0.3
    assert 0.35 < covers[1] < 0.6


# --------------------------------------------------------------------------- image


def test_nuclei_are_brighter_than_background(scan: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = scan
    image = image.astype(np.float64)
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()
    # Each nucleus against the background around it (a margin away from all nuclei).
    far = ~ndi.binary_dilation(labels > 0, iterations=2)
    n = int(labels.max())
    means = ndi.mean(image, labels, np.arange(1, n + 1))
    for index, box in enumerate(ndi.find_objects(labels)):
        around = tuple(slice(max(b.start - 8, 0), b.stop + 8) for b in box)
        background = image[around][far[around]]
        if background.size:
            assert means[index] > 1.5 * background.mean(), f"nucleus {index + 1} too dim"


def test_image_is_noisy_blurred_and_uneven() -> None:
    image, labels = synthesize_scan((256, 256), seed=4, density=0.2)
    image = image.astype(np.float64)
    background = labels == 0
    # Camera noise: background pixels vary from pixel to pixel.
    assert image[background].std() > 3
    # Brightness differs between nuclei.
    means = ndi.mean(image, labels, np.arange(1, labels.max() + 1))
    assert means.std() / means.mean() > 0.15
    # Blur: the image is smooth across a nucleus boundary, not a step.
    edge = ndi.binary_dilation(labels > 0) & background
    assert image[edge].mean() > np.median(image[background])


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (64,)},
        {"shape": (2, 2, 64, 64)},
        {"shape": (0, 64)},
        {"shape": (64, 64), "spacing": (0.5,)},
        {"shape": (64, 64), "spacing": (0.5, -1.0)},
        {"shape": (64, 64), "density": 0.0},
        {"shape": (64, 64), "density": 1.5},
        {"shape": (64, 64), "diameter_um": (11.0, 6.0)},
        {"shape": (64, 64), "diameter_um": (0.0, 6.0)},
        {"shape": (64, 64), "dtype": bool},
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict) -> None:
    shape = kwargs.pop("shape")
    with pytest.raises(ConfigError):
        synthesize_scan(shape, **kwargs)


# --------------------------------------------------------------------------- files


def _ome_pixels(path) -> ElementTree.Element:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        root = ElementTree.fromstring(tif.ome_metadata)
    pixels = root.find(".//ome:Pixels", OME_NS)
    assert pixels is not None
    return pixels


@pytest.mark.parametrize(
    ("shape", "spacing", "axes"),
    [((80, 96), (0.4, 0.3), "YX"), ((6, 48, 64), (1.5, 0.25, 0.3), "ZYX")],
)
def test_write_round_trip(tmp_path, shape, spacing, axes) -> None:
    image_path, labels_path = write_synthetic_scan(
        tmp_path / "scan.ome.tif", tmp_path / "truth.tif", shape=shape, spacing=spacing, seed=9
    )
    image, labels = synthesize_scan(shape, spacing=spacing, seed=9)
    assert (image_path, labels_path) == (tmp_path / "scan.ome.tif", tmp_path / "truth.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.ome.tif", "truth.tif"]
    for path, expected in ((image_path, image), (labels_path, labels)):
        with tifffile.TiffFile(path) as tif:
            assert tif.series[0].axes == axes
            data = tif.asarray()
        assert data.dtype == expected.dtype
        np.testing.assert_array_equal(data, expected)
        pixels = _ome_pixels(path)
        assert float(pixels.get("PhysicalSizeX")) == spacing[-1]
        assert float(pixels.get("PhysicalSizeY")) == spacing[-2]
        assert pixels.get("PhysicalSizeXUnit") == "µm"
        if len(shape) == 3:
            assert float(pixels.get("PhysicalSizeZ")) == spacing[0]
            assert pixels.get("PhysicalSizeZUnit") == "µm"


def test_write_default_spacing_and_no_labels(tmp_path) -> None:
    image_path, labels_path = write_synthetic_scan(
        tmp_path / "sub" / "scan.ome.tif", shape=(4, 32, 32), density=0.3
    )
    assert labels_path is None
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["scan.ome.tif"]
    pixels = _ome_pixels(image_path)
    sizes = tuple(float(pixels.get(f"PhysicalSize{a}")) for a in "ZYX")
    assert sizes == default_spacing(3)


def test_written_files_are_reproducible(tmp_path) -> None:
    for folder in ("a", "b"):
        write_synthetic_scan(
            tmp_path / folder / "scan.ome.tif", tmp_path / folder / "truth.tif", shape=(64, 64)
        )
    for name in ("scan.ome.tif", "truth.tif"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_failed_write_leaves_previous_file_and_no_partial(tmp_path, monkeypatch) -> None:
    target = tmp_path / "scan.ome.tif"
    target.write_bytes(b"previous")

    def broken_imwrite(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_scan(target, shape=(32, 32))
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["scan.ome.tif"]


# --------------------------------------------------------------------------- parameters


def test_default_params_reproduce_plain_call() -> None:
    image, labels = synthesize_scan((96, 96), seed=5)
    image_p, labels_p = synthesize_scan((96, 96), seed=5, params=SynthParams())
    assert image.tobytes() == image_p.tobytes()
    assert labels.tobytes() == labels_p.tobytes()
    # Overrides replace fields of the given params.
    params = SynthParams(density=0.2)
    _, a = synthesize_scan((96, 96), seed=5, params=params, diameter_um=(8.0, 9.0))
    _, b = synthesize_scan((96, 96), seed=5, density=0.2, diameter_um=(8.0, 9.0))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"no_such_knob": 1},
        {"dividing_fraction": 1.5},
        {"texture_strength": (0.3, 0.1)},
        {"psf_sigma_um": -1.0},
        {"bit_depth": 0},
        {"params": "not params"},
    ],
)
def test_bad_params_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        synthesize_scan((32, 32), **kwargs)


def test_sample_params_rejects_bad_setting() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError):
        sample_params(rng, 2, setting="test")
    with pytest.raises(ConfigError):
        sample_params(rng, 4)
    with pytest.raises(ConfigError):
        training_pair(rng, (32, 32), 3)


def _median_diameter(p: SynthParams) -> float:
    return float(np.sqrt(p.diameter_um[0] * p.diameter_um[1]))


def test_sample_params_cover_wide_ranges() -> None:
    rng = np.random.default_rng(0)
    ps = [sample_params(rng, 2) for _ in range(300)]

    def values(name):
        return np.array([getattr(p, name) for p in ps], dtype=float)

    d_um = np.array([_median_diameter(p) for p in ps])
    d_px = d_um / np.array([p.spacing[0] for p in ps])
    assert d_um.min() < 5 and d_um.max() > 14
    # training concentrates on the sizes the models see after rescaling
    assert 12 <= d_px.min() < 14 and 44 < d_px.max() <= 48
    density = values("density")
    assert density.min() < 0.04 and density.max() > 0.6
    assert values("nucleus_e").min() < 30 and values("nucleus_e").max() > 1500
    assert values("read_noise").max() > 10
    assert values("aspect_sigma").max() > 0.35 and values("irregularity").max() > 0.1
    assert values("cluster_gap").min() < 0.5  # packed clusters press nuclei together
    for name in (
        "dividing_fraction",
        "fragmented_fraction",
        "dim_fraction",
        "nucleoli_count",
        "debris_density",
        "haze_density",
        "glow",
        "contact_dimming",
        "bright_fraction",
        "cytoplasm",
        "vignetting",
        "spot_count",
    ):
        v = values(name)
        assert np.any(v == 0) and np.any(v > 0), name
    assert values("edge_dimming").min() < 0 < values("edge_dimming").max()
    psf_px = values("psf_sigma_um") / np.array([p.spacing[0] for p in ps])
    assert psf_px.min() < 0.5 and psf_px.max() > 2
    assert {p.bit_depth for p in ps} == {8, 10, 12, 16}
    assert all(p.dtype == np.float32 and p.fast for p in ps)
    # 3D: anisotropic voxels and blur, flattened nuclei spanning a few planes.
    ps3 = [sample_params(rng, 3) for _ in range(100)]
    anisotropy = np.array([p.spacing[0] / p.spacing[1] for p in ps3])
    assert anisotropy.min() >= 1 and anisotropy.max() > 3
    assert all(p.psf_z_sigma_um >= p.psf_sigma_um for p in ps3)
    assert min(p.flatten_z for p in ps3) < 0.6
    planes = [_median_diameter(p) * p.flatten_z / p.spacing[0] for p in ps3]
    assert min(planes) >= 2.5


def test_heldout_setting_differs_from_train() -> None:
    rng = np.random.default_rng(1)
    for ndim in (2, 3):
        train = [sample_params(rng, ndim, "train") for _ in range(100)]
        heldout = [sample_params(rng, ndim, "heldout") for _ in range(100)]
        # Another diameter band, another chromatin style, another camera.
        assert max(map(_median_diameter, train)) <= min(map(_median_diameter, heldout))
        assert all(not p.excess_noise for p in train)
        assert all(p.spot_count > 0 and p.excess_noise for p in heldout)
        assert np.median([p.nucleus_e for p in heldout]) < np.median([p.nucleus_e for p in train])


def test_wide_setting_spans_microscope_sizes() -> None:
    rng = np.random.default_rng(2)
    for ndim, (lo, hi) in ((2, (6, 100)), (3, (6, 60))):
        ps = [sample_params(rng, ndim, "wide") for _ in range(300)]
        d_px = np.array([_median_diameter(p) / p.spacing[-1] for p in ps])
        assert lo <= d_px.min() < 1.3 * lo and 0.8 * hi < d_px.max() <= hi
    ps3 = [sample_params(rng, 3) for _ in range(200)]
    for name in ("depth_attenuation", "defocus"):
        v = np.array([getattr(p, name) for p in ps3])
        assert np.any(v == 0) and v.max() > 0.3, name


def _nucleus_means(sample) -> np.ndarray:
    n = int(sample.labels.max())
    return np.asarray(ndi.mean(sample.image, sample.labels, np.arange(1, n + 1)))


def test_bright_fraction_gives_a_heavy_tail() -> None:
    kw = dict(seed=3, density=0.4, brightness_sigma=0.1, texture_strength=(0.0, 0.0))
    plain = synthesize_sample((192, 192), **kw)
    tail = synthesize_sample((192, 192), bright_fraction=0.1, bright_brightness=(8.0, 12.0), **kw)
    ratio = lambda s: _nucleus_means(s) / np.median(_nucleus_means(s))  # noqa: E731
    assert ratio(plain).max() < 2.0
    bright = ratio(tail) > 4.0
    assert 0.03 < bright.mean() < 0.25, bright.mean()  # a few, not most


def test_cytoplasm_lights_the_background_near_nuclei_only() -> None:
    kw = dict(seed=4, density=0.15, background_field=0.0, background_gradient=0.0)
    plain = synthesize_sample((192, 192), **kw)
    cyto = synthesize_sample((192, 192), cytoplasm=0.3, **kw)
    assert np.array_equal(plain.labels, cyto.labels)
    dist = ndi.distance_transform_edt(cyto.labels == 0)
    near = (dist > 2) & (dist < 6)
    far = dist > 20
    gain = cyto.image.astype(float) - plain.image.astype(float)
    assert gain[near].mean() > 10 * max(abs(gain[far].mean()), 1.0)
    assert np.all(_nucleus_means(cyto) > np.percentile(cyto.image[near], 90))


def test_vignetting_and_depth_attenuation_dim_what_they_claim() -> None:
    flat = dict(seed=5, density=0.5, background_field=0.0, background_gradient=0.0)
    img = synthesize_sample((160, 160), vignetting=0.6, **flat).image.astype(float)
    assert img[:20, :20].mean() < 0.75 * img[70:90, 70:90].mean()
    kw = dict(flat, spacing=(1.0, 0.5, 0.5))
    deep = synthesize_sample((20, 96, 96), depth_attenuation=0.8, **kw)
    per_plane = [deep.image[z][deep.labels[z] > 0].mean() for z in (2, 17)]
    assert min(per_plane) < 0.6 * max(per_plane)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_bit_depth_saturates_at_full_scale(bits: int) -> None:
    sample = synthesize_sample(
        (96, 96), seed=6, bit_depth=bits, gain=4.0 * (2**bits - 1) / 900.0, camera_offset=0.0
    )
    full = 2**bits - 1
    assert sample.image.max() == full and np.count_nonzero(sample.image == full) > 50


@pytest.mark.parametrize("shape", [(64, 80), (8, 40, 48)])
def test_training_pair_is_deterministic(shape: tuple[int, ...]) -> None:
    a = training_pair(np.random.default_rng(4), shape)
    b = training_pair(np.random.default_rng(4), shape)
    c = training_pair(np.random.default_rng(5), shape)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[2] == b[2] and len(a[2]) == len(shape)
    assert a[0].dtype == np.float32 and a[1].dtype == np.uint32 and a[0].shape == shape
    assert a[0].tobytes() != c[0].tobytes()


def _assert_valid(sample) -> None:
    """Labels uint32, ids 1..N, one face-connected piece each, none on debris, all visible."""
    image, labels = sample.image.astype(np.float64), sample.labels
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    assert np.all(np.isfinite(image))
    n = int(labels.max())
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))
    for index, box in enumerate(ndi.find_objects(labels)):
        assert ndi.label(labels[box] == index + 1)[1] == 1
    assert not np.any(labels[sample.debris_mask])
    if sample.params.bit_depth is not None:
        assert image.min() >= 0 and image.max() <= 2**sample.params.bit_depth - 1
        assert np.all(image == np.round(image))
    # Visible: each nucleus's mean stands above the background around it.
    background = (labels == 0) & ~ndi.binary_dilation(
        (labels > 0) | sample.debris_mask, iterations=2
    )
    pairs = background[..., 1:] & background[..., :-1]
    if n == 0 or np.count_nonzero(pairs) < 50:
        return
    step = np.abs(np.diff(image, axis=-1))[pairs]
    noise = max(np.median(step) / 0.6745 / np.sqrt(2), 1e-6)
    means = ndi.mean(image, labels, np.arange(1, n + 1))
    for index, box in enumerate(ndi.find_objects(labels)):
        around = tuple(slice(max(b.start - 10, 0), b.stop + 10) for b in box)
        local = image[around][background[around]]
        if local.size >= 10:
            contrast = (means[index] - np.median(local)) / noise
            assert contrast > 0.5, f"nucleus {index + 1} invisible ({contrast:.2f} noise)"


@pytest.mark.parametrize(
    ("shape", "count", "crowded"), [((128, 128), 50, 60), ((16, 64, 64), 20, 40)]
)
def test_random_samples_have_valid_labels(shape: tuple[int, ...], count: int, crowded: int) -> None:
    rng = np.random.default_rng(0)
    nuclei = []
    for _ in range(count):
        params = sample_params(rng, len(shape))
        sample = synthesize_sample(shape, seed=rng, params=params)
        _assert_valid(sample)
        nuclei.append(int(sample.labels.max()))
    assert min(nuclei) < 10 and max(nuclei) > crowded  # sparse and crowded samples


def test_heldout_samples_have_valid_labels() -> None:
    rng = np.random.default_rng(3)
    for shape in [(128, 128)] * 5 + [(12, 48, 48)] * 3:
        params = sample_params(rng, len(shape), "heldout")
        _assert_valid(synthesize_sample(shape, seed=rng, params=params))


def test_debris_is_bright_and_unlabelled() -> None:
    plain = synthesize_sample((128, 128), seed=2, density=0.2, dtype=np.float32)
    dirty = synthesize_sample((128, 128), seed=2, density=0.2, dtype=np.float32, debris_density=0.5)
    # Debris is drawn after the nuclei: the labels are the same.
    np.testing.assert_array_equal(plain.labels, dirty.labels)
    assert not plain.debris_mask.any()
    assert dirty.debris_mask.sum() > 20
    assert not np.any(dirty.labels[dirty.debris_mask])
    assert not np.any(ndi.binary_dilation(dirty.labels > 0)[dirty.debris_mask])
    background = (dirty.labels == 0) & ~dirty.debris_mask
    assert dirty.image[dirty.debris_mask].mean() > dirty.image[background].mean() + 100


@pytest.mark.parametrize(("shape", "spacing"), [((160, 160), (0.4, 0.4)), ((16, 80, 80), None)])
def test_dividing_pairs_touch(shape: tuple[int, ...], spacing) -> None:
    pairs_seen = 0
    for seed in range(3):
        sample = synthesize_sample(shape, spacing=spacing, seed=seed, dividing_fraction=0.25)
        _assert_valid(sample)
        touching = _touching_pairs(sample.labels)
        sizes = np.bincount(sample.labels.ravel())
        for a, b in sample.dividing_pairs.tolist():
            assert (min(a, b), max(a, b)) in touching, (seed, a, b)
            # Daughters are smaller than a typical nucleus.
            assert max(sizes[a], sizes[b]) < np.percentile(sizes[1:], 90)
        pairs_seen += len(sample.dividing_pairs)
    assert pairs_seen >= 5


def test_fragments_are_small_labelled_bodies() -> None:
    whole = synthesize_sample((160, 160), seed=1, spacing=(0.3, 0.3), density=0.3)
    broken = synthesize_sample(
        (160, 160), seed=1, spacing=(0.3, 0.3), density=0.3, fragmented_fraction=0.3
    )
    _assert_valid(broken)
    assert broken.labels.max() > whole.labels.max()
    small = np.bincount(broken.labels.ravel())[1:] < 0.2 * np.median(
        np.bincount(whole.labels.ravel())[1:]
    )
    assert small.sum() >= 5


def test_docstring_examples() -> None:
    attempted = 0
    for info in pkgutil.iter_modules(synth.__path__, "cellseg.synth."):
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, info.name
        attempted += result.attempted
    assert attempted > 0
