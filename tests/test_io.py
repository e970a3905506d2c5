"""Tests for cellseg.io: reading scans, the format registry, OME-Zarr images and labels."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from cellseg import io
from cellseg.atomic import atomic_write_bytes, atomic_write_json
from cellseg.errors import InputError
from cellseg.io.omezarr import _halved
from cellseg.io.readers import READERS, find_reader, supported_formats
from cellseg.layout import SCAN_SUFFIXES

RNG = np.random.default_rng(0)


def _image(shape: tuple[int, ...], dtype=np.uint16) -> np.ndarray:
    return RNG.integers(0, 1000, size=shape).astype(dtype)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_ome_zarr(path: Path, data: np.ndarray, **kwargs) -> None:
    options = {
        "axes": "zyx" if data.ndim == 4 else "yx",
        "spacing": (2.0, 0.5, 0.25) if data.ndim == 4 else (0.5, 0.25),
        "channel_names": [f"ch{i}" for i in range(data.shape[0])],
        "chunks": (1,) + (16,) * (data.ndim - 1),
    }
    options.update(kwargs)
    chunks = tuple(options["chunks"])
    chunks = (1,) * (data.ndim - len(chunks)) + chunks
    io.write_image(path, da.from_array(data, chunks=chunks), **options)


def _read_nodes(path: Path) -> list:
    return list(Reader(parse_url(str(path)))())


# --------------------------------------------------------------------------------------
# Reading: every format, 2D and 3D, with and without channels
# --------------------------------------------------------------------------------------

# (array shape, expected data shape (C, *spatial), expected axes) under the plain-array rule
PLAIN_CASES = [
    ((20, 30), (1, 20, 30), "yx"),
    ((4, 20, 30), (1, 4, 20, 30), "zyx"),
    ((2, 4, 20, 30), (2, 4, 20, 30), "zyx"),
    ((1, 2, 4, 20, 30), (2, 4, 20, 30), "zyx"),  # singleton T dropped
    ((2, 1, 20, 30), (2, 20, 30), "yx"),  # single plane: 2D with channels
    ((1, 1, 2, 1, 4, 20, 30), (2, 4, 20, 30), "zyx"),  # leading singletons dropped
]


@pytest.mark.parametrize(("shape", "expected", "axes"), PLAIN_CASES)
def test_read_plain_tiff(tmp_path, shape, expected, axes):
    image = _image(shape)
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    scan = io.read_scan(path)
    assert scan.data.shape == expected
    assert scan.axes == axes
    assert scan.spacing == (1.0,) * len(axes)
    assert scan.spacing_source == "default"
    assert scan.channel_names == tuple(f"c{i}" for i in range(expected[0]))
    np.testing.assert_array_equal(scan.data.compute(), image.reshape(expected))


def test_read_tiled_compressed_tiff_is_lazy_and_chunked(tmp_path):
    image = _image((3, 64, 48))
    path = tmp_path / "tiled.tiff"
    tifffile.imwrite(path, image, tile=(16, 16), compression="zlib", photometric="minisblack")
    scan = io.read_scan(path)
    assert scan.data.chunksize == (1, 1, 16, 16)
    np.testing.assert_array_equal(scan.data.compute()[0], image)


def test_read_multipage_tiff_from_other_writers(tmp_path):
    # pages without tifffile's shape metadata form an "I" series: a Z stack
    image = _image((3, 20, 30))
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for plane in image:
            tif.write(plane, metadata=None, contiguous=False, photometric="minisblack")
    scan = io.read_scan(path)
    assert scan.axes == "zyx"
    np.testing.assert_array_equal(scan.data.compute()[0], image)


def test_read_plain_tiff_resolution_in_centimetres(tmp_path):
    path = tmp_path / "calibrated.tif"
    # 20000 pixels per cm = 0.5 µm pixels
    tifffile.imwrite(path, _image((20, 30)), resolution=(20000, 40000), resolutionunit="CENTIMETER")
    scan = io.read_scan(path)
    assert scan.spacing == pytest.approx((0.25, 0.5))
    assert scan.spacing_source == "metadata"


@pytest.mark.parametrize(
    ("shape", "axes", "expected", "spatial"),
    [
        ((20, 30), "YX", (1, 20, 30), "yx"),
        ((2, 20, 30), "CYX", (2, 20, 30), "yx"),
        ((4, 20, 30), "ZYX", (1, 4, 20, 30), "zyx"),
        ((2, 4, 20, 30), "CZYX", (2, 4, 20, 30), "zyx"),
    ],
)
def test_read_ome_tiff(tmp_path, shape, axes, expected, spatial):
    image = _image(shape)
    path = tmp_path / "scan.ome.tif"
    metadata = {"axes": axes, "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    if "C" in axes:
        metadata["Channel"] = {"Name": ["DAPI", "GFP"]}
    tifffile.imwrite(path, image, metadata=metadata)
    scan = io.read_scan(path)
    assert scan.data.shape == expected
    assert scan.axes == spatial
    assert scan.spacing == ((2.0, 0.5, 0.25) if spatial == "zyx" else (0.5, 0.25))
    assert scan.spacing_source == "metadata"
    if "C" in axes:
        assert scan.channel_names == ("DAPI", "GFP")
    np.testing.assert_array_equal(scan.data.compute(), image.reshape(expected))


def test_read_ome_tiff_zcyx_and_nanometres(tmp_path):
    image = _image((4, 2, 20, 30))  # Z C Y X
    path = tmp_path / "zcyx.ome.tiff"
    metadata = {
        "axes": "ZCYX",
        "PhysicalSizeX": 250.0,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 250.0,
        "PhysicalSizeYUnit": "nm",
        "PhysicalSizeZ": 0.001,
        "PhysicalSizeZUnit": "mm",
        "Channel": {"Name": ["nuclei", "membrane"]},
    }
    tifffile.imwrite(path, image, metadata=metadata)
    scan = io.read_scan(path)
    assert scan.data.shape == (2, 4, 20, 30)
    assert scan.spacing == pytest.approx((1.0, 0.25, 0.25))
    assert scan.channel_names == ("nuclei", "membrane")
    np.testing.assert_array_equal(scan.data.compute(), np.moveaxis(image, 1, 0))


@pytest.mark.parametrize(
    ("shape", "axes", "expected", "spatial"),
    [
        ((20, 30), "YX", (1, 20, 30), "yx"),
        ((4, 20, 30), "ZYX", (1, 4, 20, 30), "zyx"),
        ((2, 20, 30), "CYX", (2, 20, 30), "yx"),
        ((4, 2, 20, 30), "ZCYX", (2, 4, 20, 30), "zyx"),
    ],
)
def test_read_imagej_tiff(tmp_path, shape, axes, expected, spatial):
    image = _image(shape)
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(
        path,
        image,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": axes, "spacing": 3.0, "unit": "micron"},
    )
    scan = io.read_scan(path)
    assert scan.data.shape == expected
    assert scan.axes == spatial
    assert scan.spacing == pytest.approx((3.0, 0.5, 0.5) if spatial == "zyx" else (0.5, 0.5))
    assert scan.spacing_source == "metadata"
    reference = np.moveaxis(image, 1, 0) if axes == "ZCYX" else image
    np.testing.assert_array_equal(scan.data.compute(), reference.reshape(expected))


def test_read_imagej_tiff_in_nanometres(tmp_path):
    path = tmp_path / "nm.tif"
    tifffile.imwrite(
        path, _image((20, 30)), imagej=True, resolution=(1 / 200, 1 / 100), metadata={"unit": "nm"}
    )
    assert io.read_scan(path).spacing == pytest.approx((0.1, 0.2))


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(("shape", "expected", "axes"), PLAIN_CASES)
def test_read_plain_zarr_array(tmp_path, zarr_format, shape, expected, axes):
    image = _image(shape)
    path = tmp_path / "scan.zarr"
    array = zarr.create_array(
        str(path), shape=shape, chunks=(8,) * len(shape), dtype=image.dtype, zarr_format=zarr_format
    )
    array[...] = image
    scan = io.read_scan(path)
    assert scan.data.shape == expected
    assert scan.axes == axes
    assert scan.spacing_source == "default"
    np.testing.assert_array_equal(scan.data.compute(), image.reshape(expected))


def test_read_zarr_group_with_single_array(tmp_path):
    image = _image((4, 20, 30))
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("raw", shape=image.shape, chunks=(2, 10, 10), dtype=image.dtype)[...] = image
    scan = io.read_scan(path)
    assert scan.axes == "zyx"
    np.testing.assert_array_equal(scan.data.compute()[0], image)


@pytest.mark.parametrize(
    "shape", [(1, 20, 30), (3, 20, 30), (1, 4, 20, 30), (2, 4, 20, 30)], ids=str
)
def test_read_ome_zarr_written_by_write_image(tmp_path, shape):
    image = _image(shape)
    path = tmp_path / "scan.ome.zarr"
    _write_ome_zarr(path, image)
    scan = io.read_scan(path)
    assert scan.data.shape == shape
    assert scan.axes == ("zyx" if len(shape) == 4 else "yx")
    assert scan.spacing == ((2.0, 0.5, 0.25) if len(shape) == 4 else (0.5, 0.25))
    assert scan.spacing_source == "metadata"
    assert scan.channel_names == tuple(f"ch{i}" for i in range(shape[0]))
    np.testing.assert_array_equal(scan.data.compute(), image)
    opened = io.open_image(path)
    assert opened.spacing == scan.spacing
    assert opened.channel_names == scan.channel_names
    np.testing.assert_array_equal(opened.data.compute(), image)


def test_read_ome_zarr_ngff_04(tmp_path):
    from ome_zarr.format import FormatV04

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # raised by ome_zarr on import
        from ome_zarr.writer import write_multiscale

    image = _image((2, 3, 20, 30))
    path = tmp_path / "v04.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "nanometer"},
        {"name": "x", "type": "space", "unit": "nanometer"},
    ]
    write_multiscale(
        [image, image[:, :, ::2, ::2]],
        group,
        fmt=FormatV04(),
        axes=axes,
        scale={"z": 3.0, "y": 400.0, "x": 200.0},
        metadata={"omero": {"channels": [{"label": "A"}, {"label": "B"}]}},
    )
    scan = io.read_scan(path)
    assert scan.axes == "zyx"
    assert scan.spacing == pytest.approx((3.0, 0.4, 0.2))
    assert scan.channel_names == ("A", "B")
    np.testing.assert_array_equal(scan.data.compute(), image)


@pytest.mark.parametrize(("shape", "expected", "axes"), PLAIN_CASES)
def test_read_npy(tmp_path, shape, expected, axes):
    image = _image(shape, np.float32)
    path = tmp_path / "scan.npy"
    np.save(path, image)
    scan = io.read_scan(path)
    assert scan.data.shape == expected
    assert scan.axes == axes
    assert scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data.compute(), image.reshape(expected))


def test_read_scan_accepts_str_path(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, _image((20, 30)))
    scan = io.read_scan(str(path))
    assert scan.path == path
    assert scan.spatial_shape == (20, 30)
    assert scan.n_channels == 1


# --------------------------------------------------------------------------------------
# Pixel size and channels
# --------------------------------------------------------------------------------------


def test_pixel_size_override_beats_metadata(tmp_path):
    path = tmp_path / "scan.ome.tif"
    tifffile.imwrite(path, _image((4, 20, 30)), metadata={"axes": "ZYX", "PhysicalSizeX": 0.25})
    scan = io.read_scan(path, pixel_size=[1.5, 0.3, 0.3])
    assert scan.spacing == (1.5, 0.3, 0.3)
    assert scan.spacing_source == "override"


def test_partial_metadata_fills_missing_axis_with_default(tmp_path):
    path = tmp_path / "scan.ome.tif"
    tifffile.imwrite(
        path,
        _image((4, 20, 30)),
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25},
    )
    scan = io.read_scan(path)
    assert scan.spacing == (1.0, 0.25, 0.25)
    assert scan.spacing_source == "metadata"


@pytest.mark.parametrize("pixel_size", [(0.5,), (1.0, 0.5, 0.5, 0.5)])
def test_pixel_size_of_wrong_length(tmp_path, pixel_size):
    path = tmp_path / "wrong_len.npy"
    np.save(path, _image((4, 20, 30)))
    with pytest.raises(InputError, match="3 values") as info:
        io.read_scan(path, pixel_size=pixel_size)
    assert path.name in str(info.value)


@pytest.mark.parametrize("pixel_size", [(0.0, 0.5), (-1.0, 0.5), (float("nan"), 0.5)])
def test_pixel_size_not_positive(tmp_path, pixel_size):
    path = tmp_path / "bad_size.npy"
    np.save(path, _image((20, 30)))
    with pytest.raises(InputError, match="positive") as info:
        io.read_scan(path, pixel_size=pixel_size)
    assert path.name in str(info.value)


def test_metadata_pixel_size_not_positive(tmp_path):
    path = tmp_path / "zero_size.ome.tif"
    tifffile.imwrite(path, _image((20, 30)), metadata={"axes": "YX", "PhysicalSizeX": 0.0})
    with pytest.raises(InputError, match="pixel-size") as info:
        io.read_scan(path)
    assert path.name in str(info.value)
    # an explicit pixel size makes the scan usable
    assert io.read_scan(path, pixel_size=(0.5, 0.5)).spacing == (0.5, 0.5)


def test_channel_index_by_index_and_name(tmp_path):
    path = tmp_path / "channels.ome.tif"
    metadata = {"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP", "RFP"]}}
    tifffile.imwrite(path, _image((3, 20, 30)), metadata=metadata)
    scan = io.read_scan(path)
    assert io.channel_index(scan, None) == 0
    assert io.channel_index(scan, 2) == 2
    assert io.channel_index(scan, np.int64(1)) == 1
    assert io.channel_index(scan, "GFP") == 1
    assert io.channel_index(scan, "2") == 2


@pytest.mark.parametrize("channel", [3, -1, "Cy5", "7"])
def test_channel_index_errors_list_channels(tmp_path, channel):
    path = tmp_path / "channels.ome.tif"
    metadata = {"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP", "RFP"]}}
    tifffile.imwrite(path, _image((3, 20, 30)), metadata=metadata)
    scan = io.read_scan(path)
    with pytest.raises(InputError) as info:
        io.channel_index(scan, channel)
    message = str(info.value)
    assert path.name in message
    for name in ("DAPI", "GFP", "RFP"):
        assert name in message


# --------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    cases = {}
    cases["missing"] = tmp_path / "does_not_exist.tif"
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(200)))
    cases["corrupt tiff"] = corrupt
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not a numpy file")
    cases["corrupt npy"] = garbage
    broken_zarr = tmp_path / "broken.zarr"
    broken_zarr.mkdir()
    (broken_zarr / "zarr.json").write_text("{not json")
    cases["corrupt zarr"] = broken_zarr
    png = tmp_path / "scan.png"
    png.write_bytes(b"\x89PNG")
    cases["unsupported"] = png
    folder = tmp_path / "not_a_zarr"
    folder.mkdir()
    cases["plain directory"] = folder
    for name, array in {
        "1d": np.zeros(10, np.uint8),
        "6d": np.zeros((2, 2, 2, 2, 4, 4), np.uint8),
        "6d_with_singleton": np.zeros((2, 2, 1, 2, 2, 4, 4), np.uint8),
        "movie": np.zeros((2, 2, 2, 4, 4), np.uint8),
        "objects": np.array([[None, 1], [2, 3]], dtype=object),
        "empty": np.zeros((0, 10), np.uint8),
        "empty3d": np.zeros((3, 0, 10), np.uint8),
        "strings": np.array([["a", "b"], ["c", "d"]]),
        "complex": np.zeros((4, 4), np.complex64),
        "bool": np.zeros((4, 4), bool),
    }.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        cases[name] = path
    two = tmp_path / "two_arrays.zarr"
    group = zarr.open_group(str(two), mode="w")
    group.create_array("a", shape=(4, 4), dtype="u1")
    group.create_array("b", shape=(4, 4), dtype="u1")
    cases["ambiguous zarr group"] = two
    tiff5d = tmp_path / "five_d.ome.tif"
    tifffile.imwrite(
        tiff5d,
        np.zeros((2, 2, 2, 4, 4), np.uint8),
        photometric="minisblack",
        metadata={"axes": "TCZYX"},
    )
    cases["tiff time series"] = tiff5d
    empty_tiff = tmp_path / "empty_pages.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zero-size TIFFs are nonconformant
        tifffile.imwrite(empty_tiff, np.zeros((0, 4, 4), np.uint8))
    cases["empty tiff"] = empty_tiff
    return cases


BAD_INPUTS = [
    "missing",
    "corrupt tiff",
    "corrupt npy",
    "corrupt zarr",
    "unsupported",
    "plain directory",
    "1d",
    "6d",
    "6d_with_singleton",
    "movie",
    "objects",
    "empty",
    "empty3d",
    "strings",
    "complex",
    "bool",
    "ambiguous zarr group",
    "tiff time series",
    "empty tiff",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_input_error_naming_file(tmp_path, case):
    path = _bad_inputs(tmp_path)[case]
    with pytest.raises(InputError) as info:
        io.read_scan(path)
    assert path.name in str(info.value)


def test_bad_input_messages_say_what_is_wrong(tmp_path):
    cases = _bad_inputs(tmp_path)
    expected = {
        "missing": "no such file",
        "unsupported": ".png",
        "1d": "1 dimension",
        "6d": "6 non-singleton dimensions",
        "corrupt npy": "not a NumPy .npy file",
        "objects": "pickled",
        "movie": "2 time points",
        "tiff time series": "2 time points",
        "6d_with_singleton": "6 non-singleton dimensions",
        "empty": "empty",
        "strings": "integer or floating-point",
        "ambiguous zarr group": "'a', 'b'",
    }
    for case, fragment in expected.items():
        with pytest.raises(InputError, match=fragment):
            io.read_scan(cases[case])


def test_reader_registry_picks_readers_by_name_and_lists_formats(tmp_path):
    for name, expected in {"a.ome.TIF": "tiff", "b.tiff": "tiff", "c.npy": "npy"}.items():
        (tmp_path / name).write_bytes(b"")
        assert find_reader(tmp_path / name).name == expected
    store = tmp_path / "store.ome.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    assert find_reader(store).name == "zarr"
    assert supported_formats() == (
        "TIFF / OME-TIFF / ImageJ TIFF (.tif, .tiff), Zarr / OME-Zarr (.zarr), NumPy (.npy), "
        "whole-slide image (.svs, .ndpi, .scn, .bif, .mrxs, .vms, .dcm)"
    )
    (tmp_path / "file.zarr").write_bytes(b"")
    with pytest.raises(InputError, match="a Zarr store must be a directory; this is a file"):
        find_reader(tmp_path / "file.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=r"not a Zarr store \(no zarr.json, .zgroup or .zarray"):
        find_reader(tmp_path / "folder")


def test_every_scan_suffix_has_a_reader_and_every_reader_a_scan_suffix():
    """``cellseg.layout.SCAN_SUFFIXES`` (scan names) and the reader registry agree."""
    extensions = {"." + suffix.rsplit(".", 1)[-1] for suffix in SCAN_SUFFIXES}
    assert extensions == {suffix for reader in READERS for suffix in reader.suffixes}


def test_open_image_rejects_non_ome_zarr(tmp_path):
    path = tmp_path / "plain.zarr"
    zarr.create_array(str(path), shape=(4, 4), dtype="u1")
    with pytest.raises(InputError, match="plain.zarr"):
        io.open_image(path)
    with pytest.raises(InputError, match="missing.ome.zarr"):
        io.open_image(tmp_path / "missing.ome.zarr")


# --------------------------------------------------------------------------------------
# write_image: the OME-Zarr pyramid
# --------------------------------------------------------------------------------------


def test_write_image_pyramid_read_by_ome_zarr(tmp_path):
    # 2100 px tall: levels of 2100, 1050 and 525 px (stop once the largest edge <= 1024)
    image = _image((2, 3, 2100, 40), np.uint8)
    path = tmp_path / "scan.ome.zarr"
    _write_ome_zarr(
        path,
        image,
        spacing=(2.0, 0.5, 0.25),
        channel_names=["DAPI", "GFP"],
        chunks=(1, 1, 256, 32),
        attrs={"source": "scan.tif", "count": np.int64(3)},
    )
    nodes = _read_nodes(path)
    node = nodes[0]
    assert [d.shape for d in node.data] == [(2, 3, 2100, 40), (2, 3, 1050, 20), (2, 3, 525, 10)]
    assert [d.dtype for d in node.data] == [np.uint8] * 3
    assert node.metadata["axes"] == [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[1.0, 2.0, 0.5, 0.25], [1.0, 2.0, 1.0, 0.5], [1.0, 2.0, 2.0, 1.0]]
    assert node.metadata["channel_names"] == ["DAPI", "GFP"]
    level0 = np.asarray(node.data[0])
    np.testing.assert_array_equal(level0, image)
    expected = np.rint(image.reshape(2, 3, 1050, 2, 20, 2).mean(axis=(3, 5))).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(node.data[1]), expected)
    assert io.read_image_attrs(path) == {"source": "scan.tif", "count": 3}
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    assert group.attrs["ome"]["version"] == "0.5"
    assert group["0"].chunks == (1, 1, 256, 32)
    assert group["2"].chunks == (1, 1, 256, 10)


def test_write_image_small_image_has_one_level(tmp_path):
    path = tmp_path / "small.ome.zarr"
    _write_ome_zarr(path, _image((1, 20, 30)))
    assert [d.shape for d in _read_nodes(path)[0].data] == [(1, 20, 30)]


def test_write_image_odd_edges_average_the_last_pixel_with_itself(tmp_path):
    image = np.zeros((1, 1025, 3), np.float32)
    image[0, -1, :] = [4.0, 8.0, 12.0]
    image[0, :, -1] += 1.0
    path = tmp_path / "odd.ome.zarr"
    _write_ome_zarr(path, image, chunks=(1, 100, 3))
    level1 = zarr.open_group(str(path), mode="r")["1"][...]
    assert level1.shape == (1, 513, 2)
    assert level1.dtype == np.float32
    np.testing.assert_allclose(level1[0, -1], [6.0, 13.0])  # mean(4, 8), 12 + 1
    np.testing.assert_allclose(level1[0, 0], [0.0, 1.0])


def test_write_image_keeps_float_dtype_and_values(tmp_path):
    image = RNG.random((1, 4, 20, 30)).astype(np.float64)
    path = tmp_path / "float.ome.zarr"
    _write_ome_zarr(path, image, chunks=(7, 7, 7))
    scan = io.open_image(path)
    assert scan.data.dtype == np.float64
    np.testing.assert_array_equal(scan.data.compute(), image)
    assert zarr.open_group(str(path), mode="r")["0"].chunks == (1, 4, 7, 7)


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------


def _paint(labels: zarr.Array) -> np.ndarray:
    """Paint chunk-aligned regions, one through a pickled copy (another process)."""
    truth = np.zeros(labels.shape, np.uint32)
    truth[..., :256, :32] = RNG.integers(0, 50, size=truth[..., :256, :32].shape)
    truth[..., 512:768, 32:] = 4_000_000_000
    labels[..., :256, :32] = truth[..., :256, :32]
    other = pickle.loads(pickle.dumps(labels))
    other[..., 512:768, 32:] = truth[..., 512:768, 32:]
    return truth


@pytest.mark.parametrize("spatial", ["yx", "zyx"])
def test_labels_pyramid_is_nearest_subsample(tmp_path, spatial):
    shape = (2100, 40) if spatial == "yx" else (3, 2100, 40)
    path = tmp_path / "scan.ome.zarr"
    spacing = (0.5, 0.25) if spatial == "yx" else (2.0, 0.5, 0.25)
    chunks = (256, 32) if spatial == "yx" else (1, 256, 32)
    _write_ome_zarr(path, _image((1, *shape), np.uint8), spacing=spacing, chunks=chunks)
    labels = io.create_labels(path, "cells", shape, chunks)
    assert labels.dtype == np.uint32
    truth = _paint(labels)
    io.finalize_labels(path, "cells", attrs={"n_cells": 51})

    assert not (path / "labels" / ".cells.tmp").exists()
    for level in range(3):
        array = io.open_labels(path, "cells", level)
        step = 2**level
        assert array.dtype == np.uint32
        np.testing.assert_array_equal(array[...], truth[..., ::step, ::step])
    with pytest.raises(InputError):
        io.open_labels(path, "cells", 3)

    group = zarr.open_group(str(path / "labels" / "cells"), mode="r")
    ome = group.attrs["ome"]
    assert ome["image-label"]["source"] == {"image": "../../"}
    image_scales = [
        d["coordinateTransformations"][0]["scale"]
        for d in zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0]["datasets"]
    ]
    label_scales = [
        d["coordinateTransformations"][0]["scale"] for d in ome["multiscales"][0]["datasets"]
    ]
    assert label_scales == [s[1:] for s in image_scales]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == list(spatial)
    assert group.attrs["cellseg"] == {"n_cells": 51}
    labels_group = zarr.open_group(str(path / "labels"), mode="r")
    assert labels_group.attrs["ome"]["labels"] == ["cells"]

    nodes = _read_nodes(path)
    label_nodes = [n for n in nodes if "labels/cells" in str(n.zarr)]
    assert label_nodes
    label_node = label_nodes[0]
    assert [d.shape for d in label_node.data] == [
        truth[..., :: 2**k, :: 2**k].shape for k in range(3)
    ]
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), truth)


def test_labels_with_channel_axis_shape(tmp_path):
    path = tmp_path / "scan.ome.zarr"
    _write_ome_zarr(path, _image((1, 20, 30)))
    labels = io.create_labels(path, "cells", (1, 20, 30), (1, 16, 16))
    labels[0, :16, :16] = 3
    io.finalize_labels(path, "cells")
    array = io.open_labels(path)
    assert array.shape == (1, 20, 30)
    assert array.metadata.dimension_names == ("c", "y", "x")


def test_create_labels_checks_shape(tmp_path):
    path = tmp_path / "scan.ome.zarr"
    _write_ome_zarr(path, _image((1, 20, 30)))
    with pytest.raises(ValueError, match="spatial shape"):
        io.create_labels(path, "cells", (20, 31), (16, 16))
    with pytest.raises(InputError, match="missing.ome.zarr"):
        io.create_labels(tmp_path / "missing.ome.zarr", "cells", (20, 30), (16, 16))


def test_open_labels_missing(tmp_path):
    path = tmp_path / "scan.ome.zarr"
    _write_ome_zarr(path, _image((1, 20, 30)))
    with pytest.raises(InputError, match="scan.ome.zarr"):
        io.open_labels(path, "cells")
    with pytest.raises(InputError, match="create_labels|stitch"):
        io.finalize_labels(path, "cells")


def test_labels_rerun_replaces_and_lists_once(tmp_path):
    path = tmp_path / "scan.ome.zarr"
    _write_ome_zarr(path, _image((1, 20, 30)))
    first = io.create_labels(path, "cells", (20, 30), (16, 16))
    first[:16, :16] = 1
    io.finalize_labels(path, "cells")
    # stale temporary from an interrupted run
    stale = io.create_labels(path, "cells", (20, 30), (16, 16))
    stale[:16, :16] = 99
    (path / "labels" / ".cells.tmp" / "junk").write_text("left over")
    second = io.create_labels(path, "cells", (20, 30), (16, 16))
    assert second[0, 0] == 0
    second[16:, 16:] = 2
    io.finalize_labels(path, "cells")
    result = io.open_labels(path)[...]
    assert result[0, 0] == 0 and result[-1, -1] == 2
    other = io.create_labels(path, "nuclei", (20, 30), (16, 16))
    other[:16, :16] = 5
    io.finalize_labels(path, "nuclei")
    labels_group = zarr.open_group(str(path / "labels"), mode="r")
    assert labels_group.attrs["ome"]["labels"] == ["cells", "nuclei"]
    assert sorted(p.name for p in (path / "labels").iterdir()) == ["cells", "nuclei", "zarr.json"]


# --------------------------------------------------------------------------------------
# Atomicity
# --------------------------------------------------------------------------------------


def test_stale_temp_dirs_do_not_break_a_rerun(tmp_path):
    path = tmp_path / "scan.ome.zarr"
    dead = tmp_path / f"scan.ome.zarr.tmp-{_dead_pid()}"
    own = tmp_path / f"scan.ome.zarr.tmp-{os.getpid()}"
    for stale in (dead, own):
        stale.mkdir()
        (stale / "zarr.json").write_text("{broken")
    image = _image((1, 20, 30))
    _write_ome_zarr(path, image)
    np.testing.assert_array_equal(io.open_image(path).data.compute(), image)
    assert not dead.exists() and not own.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.ome.zarr"]


def test_existing_output_is_replaced_whole(tmp_path):
    path = tmp_path / "scan.ome.zarr"
    _write_ome_zarr(path, _image((2, 4, 40, 50)), attrs={"run": 1})
    labels = io.create_labels(path, "cells", (4, 40, 50), (2, 16, 16))
    labels[...] = 1
    io.finalize_labels(path, "cells")
    new = _image((1, 20, 30))
    _write_ome_zarr(path, new, attrs={"run": 2})
    scan = io.open_image(path)
    assert scan.data.shape == (1, 20, 30)
    np.testing.assert_array_equal(scan.data.compute(), new)
    assert io.read_image_attrs(path) == {"run": 2}
    assert not (path / "labels").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.ome.zarr"]


def test_failed_write_keeps_existing_output(tmp_path):
    path = tmp_path / "scan.ome.zarr"
    old = _image((1, 20, 30))
    _write_ome_zarr(path, old)

    def explode(block):
        raise RuntimeError("disk full")

    broken = da.from_array(_image((1, 20, 30)), chunks=10).map_blocks(explode, dtype=np.uint16)
    with pytest.raises(RuntimeError, match="disk full"):
        io.write_image(
            path, broken, axes="yx", spacing=(1, 1), channel_names=["c0"], chunks=(1, 16, 16)
        )
    np.testing.assert_array_equal(io.open_image(path).data.compute(), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.ome.zarr"]


def test_atomic_write_json_and_bytes(tmp_path):
    path = tmp_path / "work" / "ingest.json"
    obj = {"shape": (3, 4), "spacing": np.array([0.5, 0.25]), "n": np.int64(7), "p": Path("a")}
    atomic_write_json(path, obj)
    assert json.loads(path.read_text()) == {
        "shape": [3, 4],
        "spacing": [0.5, 0.25],
        "n": 7,
        "p": "a",
    }
    atomic_write_json(path, {"unit": "µm"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"unit": "µm"}
    atomic_write_bytes(path, b"raw")
    assert path.read_bytes() == b"raw"
    assert [p.name for p in path.parent.iterdir()] == ["ingest.json"]
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert path.read_bytes() == b"raw"
    assert [p.name for p in path.parent.iterdir()] == ["ingest.json"]


@pytest.mark.parametrize(
    "shape, source_chunks, chunks",
    [
        ((5, 6), (2, 2), (2, 2)),
        ((3, 37, 41), (2, 5, 7), (2, 4, 3)),
        ((4, 9, 9), (4, 9, 9), (4, 5, 5)),
    ],
)
def test_halved_level_reads_chunk_by_chunk_and_equals_subsampling(shape, source_chunks, chunks):
    import zarr

    labels = np.random.default_rng(1).integers(0, 1000, shape).astype(np.uint32)
    source = zarr.create_array(store={}, shape=shape, chunks=source_chunks, dtype=labels.dtype)
    source[...] = labels
    level = _halved(source, chunks)
    assert level.chunksize == tuple(min(c, n) for c, n in zip(chunks, level.shape))
    assert np.array_equal(level.compute(), labels[..., ::2, ::2])
