"""The OME-Zarr the pipeline writes, and its NGFF 0.4 / 0.5 copies, pass ome-zarr-models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr_models.v04.image import Image as Image04
from ome_zarr_models.v04.image_label import ImageLabel as ImageLabel04
from ome_zarr_models.v04.labels import Labels as Labels04
from ome_zarr_models.v05.image import Image as Image05
from ome_zarr_models.v05.image_label import ImageLabel as ImageLabel05
from ome_zarr_models.v05.labels import Labels as Labels05

from cellseg import review as C
from cellseg.cli import main

MODELS = {
    "0.4": (2, Image04, Labels04, ImageLabel04),
    "0.5": (3, Image05, Labels05, ImageLabel05),
}


def _validate(path, version: str, labels: list[str]) -> None:
    """Validate an image group, its labels group and each label image; check levels."""
    zarr_format, image_model, labels_model, label_model = MODELS[version]
    group = zarr.open_group(str(path), mode="r", zarr_format=zarr_format)
    image = image_model.from_zarr(group)
    multiscale = image.attributes.multiscales[0] if version == "0.4" else None
    multiscale = multiscale or image.attributes.ome.multiscales[0]
    assert [d.path for d in multiscale.datasets] == [
        str(i) for i in range(len(multiscale.datasets))
    ]
    listed = labels_model.from_zarr(group["labels"]).attributes
    listed = listed.labels if version == "0.4" else listed.ome.labels
    assert sorted(listed) == sorted(labels)
    for name in labels:
        label = label_model.from_zarr(group["labels"][name])
        attrs = label.attributes if version == "0.4" else label.attributes.ome
        assert len(attrs.multiscales[0].datasets) == len(multiscale.datasets)
        assert group["labels"][name]["0"].dtype == np.uint32


@pytest.mark.parametrize("fixture", ["result2d", "result3d"])
def test_pipeline_output_validates_as_ngff_05(fixture, request):
    outdir = request.getfixturevalue(fixture)
    image = next(outdir.glob("*.ome.zarr"))
    _validate(image, "0.5", ["cells"])


def test_corrected_labels_validate(result2d, copy_result):
    outdir = copy_result(result2d)
    image = outdir / "slide.ome.zarr"
    table = pd.read_parquet(outdir / "cells.parquet")
    box = C.box_around_cells(((20, 60), (20, 60)), table, "yx", (200, 200))
    before = C.read_region(image, box)
    cid = int(np.unique(before[before > 0])[0])
    C.apply_edit(image, box, C.delete_cells(before, [cid]), before=before)
    _validate(image, "0.5", ["cells", C.CORRECTED])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("fixture", ["result2d", "result3d"])
def test_export_copy_validates_and_keeps_every_level(fixture, version, request, tmp_path):
    outdir = request.getfixturevalue(fixture)
    source = zarr.open_group(str(next(outdir.glob("*.ome.zarr"))), mode="r")
    out = tmp_path / "copy.ome.zarr"
    argv = ["export", str(outdir), "--format", "ome-zarr", "-o", str(out)]
    assert main([*argv, "--ome-zarr-version", version]) == 0
    _validate(out, version, ["cells"])
    copy = zarr.open_group(str(out), mode="r")
    assert copy.metadata.zarr_format == MODELS[version][0]
    for level in range(len(source["labels/cells"].attrs["ome"]["multiscales"][0]["datasets"])):
        for path in (str(level), f"labels/cells/{level}"):
            np.testing.assert_array_equal(copy[path][:], source[path][:])
    meta = copy.attrs["multiscales"] if version == "0.4" else copy.attrs["ome"]["multiscales"]
    src_meta = source.attrs["ome"]["multiscales"]
    assert meta[0]["datasets"] == src_meta[0]["datasets"]  # the scales in µm per level
    assert meta[0]["axes"] == src_meta[0]["axes"]
    assert dict(copy.attrs["cellseg"]) == dict(source.attrs["cellseg"])


def test_export_copy_default_is_04_and_errors_are_one_line(result2d, tmp_path, capsys):
    out = tmp_path / "viewer.ome.zarr"
    assert main(["export", str(result2d), "--format", "ome-zarr", "-o", str(out)]) == 0
    assert (out / ".zattrs").exists() and not (out / "zarr.json").exists()  # Zarr v2
    assert main(["export", str(result2d), "--format", "ome-zarr"]) == 2
    assert main(["export", str(tmp_path), "--format", "ome-zarr", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "give the copy's path" in err and "not a cellseg result" in err
