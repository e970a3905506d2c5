"""Tests of the synthetic nuclei scans: determinism, label invariants, realism, files."""

from __future__ import annotations

import doctest
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from cellseg import synth
from cellseg.errors import ConfigError
from cellseg.synth import default_spacing, synthesize_scan, write_synthetic_scan

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


def test_docstring_examples() -> None:
    result = doctest.testmod(synth, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
