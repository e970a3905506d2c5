"""The napari reader and sample data: a result opens as aligned image + labels + table."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from cellseg.napari._reader import napari_get_reader, read_result

display = pytest.mark.usefixtures("qt_display")


def camera(viewer):
    from cellseg.napari._widget import camera

    return camera(viewer)


def _by_type(layers):
    return {kind: [(d, m) for d, m, k in layers if k == kind] for kind in ("image", "labels")}


def test_reader_claims_only_cellseg_results(result2d, tmp_path):
    assert napari_get_reader(str(result2d)) is read_result
    assert napari_get_reader(str(result2d / "slide.ome.zarr")) is read_result
    assert napari_get_reader([str(result2d)]) is read_result
    assert napari_get_reader([str(result2d), str(result2d)]) is None
    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader(str(tmp_path / "missing.zarr")) is None
    assert napari_get_reader(str(result2d / "cells.parquet")) is None
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / "zarr.json").write_text(json.dumps({"node_type": "group", "attributes": {}}))
    assert napari_get_reader(str(plain)) is None
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    assert napari_get_reader(str(tmp_path / "bad.zarr")) is None


def test_reader_layers_are_lazy_multiscale_and_in_micrometres(result2d):
    import dask.array as da

    layers = _by_type(read_result(result2d))
    [(image, imeta)] = layers["image"]
    [(labels, lmeta)] = layers["labels"]
    assert [lv.shape for lv in image] == [(200, 200), (100, 100), (50, 50)]
    assert [lv.shape for lv in labels] == [(200, 200), (100, 100), (50, 50)]
    assert all(isinstance(lv, da.Array) for lv in image + labels)
    assert image[0].dtype == np.uint16 and labels[0].dtype == np.uint32
    assert imeta["scale"] == lmeta["scale"] == [0.5, 0.5]
    assert imeta["multiscale"] and lmeta["multiscale"]
    assert lmeta["name"] == "cells" and lmeta["visible"]
    info = json.loads((result2d / "work" / "ingest.json").read_text())
    assert imeta["contrast_limits"] == [info["stats"]["low"], info["stats"]["high"]]
    table = pd.read_parquet(result2d / "cells.parquet")
    features = lmeta["features"]
    assert features["index"].tolist() == table["cell_id"].tolist()
    pd.testing.assert_frame_equal(features.drop(columns="index"), table)


@display
def test_viewer_opens_2d_result_aligned_with_table(make_napari_viewer, result2d):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(result2d, plugin="cellseg")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    image, labels = layers
    assert image.multiscale and labels.multiscale
    assert image.level_shapes.tolist() == labels.level_shapes.tolist()
    assert tuple(image.scale) == tuple(labels.scale) == (0.5, 0.5)
    np.testing.assert_allclose(image.extent.world, labels.extent.world)
    assert labels.data[0].dtype == np.uint32
    table = pd.read_parquet(result2d / "cells.parquet")
    pd.testing.assert_frame_equal(labels.features.drop(columns="index"), table)
    # each cell's table centroid, in µm, lands on that cell in the labels and the image
    level0 = np.asarray(labels.data[0])
    hits = []
    for row in table.itertuples():
        y, x = int(round(row.centroid_y_px)), int(round(row.centroid_x_px))
        if level0[y, x] != row.cell_id:
            continue  # a concave cell: its centroid lies outside it
        world = (row.centroid_y_um, row.centroid_x_um)
        assert np.round(labels.world_to_data(world)).astype(int).tolist() == [y, x]
        assert np.round(image.world_to_data(world)).astype(int).tolist() == [y, x]
        hits.append(row)
    assert len(hits) > 0.9 * len(table)
    # hovering a cell at full resolution shows its row of the table
    for row in hits[:3]:
        world = (row.centroid_y_um, row.centroid_x_um)
        camera(viewer).center = world
        camera(viewer).zoom = 40
        labels.refresh()
        assert labels.data_level == 0
        status = labels.get_status(world, world=True)["coordinates"]
        assert f"cell_id: {row.cell_id}" in status and "area_um2:" in status


@display
def test_viewer_opens_3d_result(make_napari_viewer, result3d):
    viewer = make_napari_viewer()
    image, labels = viewer.open(result3d / "stack.ome.zarr", plugin="cellseg")
    assert image.data[0].shape == labels.data[0].shape == (12, 64, 64)
    assert labels.data[1].shape == (12, 32, 32)
    assert tuple(image.scale) == tuple(labels.scale) == (2.0, 0.5, 0.5)
    np.testing.assert_allclose(image.extent.world, labels.extent.world)
    assert viewer.dims.ndim == 3
    table = pd.read_parquet(result3d / "cells.parquet")
    pd.testing.assert_frame_equal(labels.features.drop(columns="index"), table)
    assert "volume_um3" in labels.features
    row = table.iloc[len(table) // 2]
    z, y, x = (int(round(row[f"centroid_{a}_px"])) for a in "zyx")
    world = tuple(row[f"centroid_{a}_um"] for a in "zyx")
    assert np.round(labels.world_to_data(world)).astype(int).tolist() == [z, y, x]
    assert np.round(image.world_to_data(world)).astype(int).tolist() == [z, y, x]


@display
def test_multichannel_scan_opens_one_layer_per_channel(make_napari_viewer, tmp_path):
    import tifffile

    from cellseg.stages import segment
    from cellseg.synth import synthesize_scan

    nuclei, _ = synthesize_scan((96, 96), spacing=(0.5, 0.5), seed=2)
    other = (nuclei[::-1] // 2).astype(nuclei.dtype)
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(
        path,
        np.stack([other, nuclei]),
        ome=True,
        metadata={
            "axes": "CYX",
            "Channel": {"Name": ["membrane", "DAPI"]},
            "PhysicalSizeY": 0.5,
            "PhysicalSizeX": 0.5,
        },
    )
    segment(path, tmp_path / "two", channel="DAPI", backend="classical", show_progress=False)
    viewer = make_napari_viewer()
    layers = viewer.open(tmp_path / "two", plugin="cellseg")
    assert [layer.name for layer in layers] == ["two [membrane]", "two [DAPI]", "cells"]
    membrane, dapi, cells = layers
    assert membrane.data.shape == dapi.data.shape == cells.data.shape == (96, 96)
    assert tuple(dapi.scale) == tuple(cells.scale) == (0.5, 0.5)
    assert np.array_equal(np.asarray(dapi.data), nuclei)
    assert dapi.metadata["cellseg"]["segmented_channel"] == 1


def _empty_result(root, n: int):
    """A cellseg result of an n × n scan with no pixel written (metadata only)."""
    import zarr

    def pyramid(group, name, dtype, axes, lead):
        shape, datasets, k = n, [], 0
        while True:
            scale = [0.5 * 2**k] * 2
            group.create_array(
                str(k), shape=(*lead, shape, shape), chunks=(*[1] * len(lead), 512, 512),
                dtype=dtype, fill_value=0,
            )  # fmt: skip
            datasets.append(
                {
                    "path": str(k),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0] * len(lead) + scale}
                    ],
                }
            )
            if shape <= 1024:
                break
            shape, k = (shape + 1) // 2, k + 1
        ome = {
            "version": "0.5",
            "multiscales": [{"axes": axes, "datasets": datasets, "name": name}],
        }
        return ome

    space = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    image = root / "big.ome.zarr"
    group = zarr.open_group(str(image), mode="w", zarr_format=3)
    ome = pyramid(group, "big", "uint16", [{"name": "c", "type": "channel"}, *space], (1,))
    ome["omero"] = {"channels": [{"label": "DAPI", "color": "FFFFFF"}]}
    group.attrs.update({"ome": ome, "cellseg": {"name": "big", "channel": 0}})
    labels = zarr.open_group(str(image / "labels"), mode="w", zarr_format=3)
    labels.attrs.update({"ome": {"version": "0.5", "labels": ["cells"]}})
    cells = zarr.open_group(str(image / "labels" / "cells"), mode="w", zarr_format=3)
    cells.attrs.update({"ome": pyramid(cells, "cells", "uint32", space, ())})
    pd.DataFrame({"cell_id": np.array([1], np.uint32), "area_um2": [10.0]}).to_parquet(
        root / "cells.parquet"
    )
    return root


@display
def test_a_40k_scan_opens_in_seconds(make_napari_viewer, tmp_path):
    result = _empty_result(tmp_path, 40_000)
    viewer = make_napari_viewer(show=True)
    start = time.perf_counter()
    image, labels = viewer.open(result, plugin="cellseg")
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    seconds = time.perf_counter() - start
    assert image.level_shapes[0].tolist() == [40_000, 40_000]
    assert labels.level_shapes[0].tolist() == [40_000, 40_000]
    assert image.data_level == len(image.data) - 1  # the whole scan on screen: coarsest level
    assert shot.ndim == 3
    assert seconds < 20, seconds


@display
def test_sample_data_opens_a_segmented_scan(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSEG_SAMPLE_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    layers = viewer.open_sample("cellseg", "synthetic-2d")
    assert [layer.name for layer in layers] == ["synthetic2d", "cells"]
    image, cells = layers
    assert image.data.shape == cells.data.shape == (256, 256)
    table = pd.read_parquet(tmp_path / "synthetic2d" / "cells.parquet")
    assert len(table) > 20
    pd.testing.assert_frame_equal(cells.features.drop(columns="index"), table)
    start = time.perf_counter()
    viewer.open_sample("cellseg", "synthetic-2d")  # kept: the second time is instant
    assert time.perf_counter() - start < 5


def test_core_and_reader_import_without_napari_or_qt():
    import subprocess
    import sys

    code = (
        "import sys, cellseg.cli, cellseg.review, "
        "cellseg.napari._reader, cellseg.napari._review, cellseg.napari._sample_data\n"
        "heavy = sorted(m for m in ('napari', 'qtpy', 'PyQt6', 'vispy') if m in sys.modules)\n"
        "sys.exit(str(heavy) if heavy else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@display
def test_brightfield_scan_opens_as_one_rgb_layer(make_napari_viewer, tmp_path):
    import tifffile

    from cellseg.napari._reader import is_brightfield
    from cellseg.stages import segment
    from cellseg.synth import synthesize_scan

    nuclei, _ = synthesize_scan((96, 96), spacing=(0.5, 0.5), seed=2)
    stain = nuclei.astype(float) / nuclei.max()  # haematoxylin-purple nuclei on white glass
    rgb = np.stack([255 - 120 * stain, 255 - 170 * stain, 255 - 60 * stain], -1).astype(np.uint8)
    path = tmp_path / "he.ome.tif"
    tifffile.imwrite(
        path, rgb, ome=True, photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5},
    )  # fmt: skip
    segment(path, tmp_path / "he", modality="brightfield", backend="classical", show_progress=False)
    assert json.loads((tmp_path / "he" / "work" / "ingest.json").read_text())["modality"] == (
        "brightfield"
    )
    viewer = make_napari_viewer()
    layers = viewer.open(tmp_path / "he", plugin="cellseg")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    image, cells = layers
    assert image.rgb and image.name == "he" and cells.name == "cells"
    assert np.array_equal(np.asarray(image.data), rgb)
    assert cells.data.shape == (96, 96) and cells.data.max() > 0
    assert tuple(image.scale) == tuple(cells.scale) == (0.5, 0.5)
    np.testing.assert_allclose(image.extent.world, cells.extent.world)
    assert list(image.contrast_limits) == [0, 255]
    assert viewer.layers[-1] is cells  # the cells over the slide
    # without a recorded modality: 8-bit R, G, B channels are RGB, other scans are not
    assert is_brightfield(tmp_path, {}, np.uint8, ["R", "G", "B"])
    assert not is_brightfield(tmp_path, {}, np.uint16, ["R", "G", "B"])
    assert not is_brightfield(tmp_path, {}, np.uint8, ["DAPI", "GFP", "RFP"])
    assert not is_brightfield(tmp_path, {"modality": "fluorescence"}, np.uint8, ["R", "G", "B"])
