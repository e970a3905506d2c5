"""Whole-slide images and tissue detection: readers, the tissue mask, glass tiles skipped.

Slides are written here with :func:`cellseg.synth.slide.write_slide` (tiled,
JPEG-compressed pyramids with scanner-style metadata) from a simple tissue
image whose tissue is known exactly.
"""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from cellseg.errors import InputError
from cellseg.io import open_slide, read_scan, slide_info
from cellseg.io.readers import find_reader
from cellseg.io.slide import is_slide_tiff
from cellseg.layout import scan_name
from cellseg.synth.slide import write_slide
from cellseg.tiling import plan_tiles
from cellseg.tissue import (
    TissueMask,
    fill_glass,
    find_tissue,
    load_tissue,
    tiles_with_tissue,
    tissue_mask,
)

GLASS = (238, 236, 241)


def tissue_slide(shape, seed=0, nuclei=True):
    """A pink tissue section (two pieces) with purple nuclei on glass, and its tissue mask."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    truth = ((yy - 0.45 * h) / (0.3 * h)) ** 2 + ((xx - 0.4 * w) / (0.25 * w)) ** 2 < 1
    truth |= ((yy - 0.72 * h) / (0.12 * h)) ** 2 + ((xx - 0.78 * w) / (0.12 * w)) ** 2 < 1
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = GLASS
    rgb[truth] = (226, 107, 220)  # eosin, 0.35 OD along its reference vector
    if nuclei:
        for y, x in rng.uniform((0, 0), (h, w), (h * w // 400, 2)).astype(int):
            if truth[y, x]:
                disk = (yy[y - 4 : y + 5, x - 4 : x + 5] - y) ** 2 + (
                    xx[y - 4 : y + 5, x - 4 : x + 5] - x
                ) ** 2 <= 12
                # haematoxylin, 0.8 OD along its reference vector
                rgb[y - 4 : y + 5, x - 4 : x + 5][disk] = (72, 66, 141)
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


@pytest.fixture(scope="module")
def slide_image():
    return tissue_slide((640, 896), seed=1)


PYRAMID = [(640, 896), (320, 448), (160, 224), (80, 112)]
FLAVOURS = {
    "svs": ("slide.svs", 40.0, "aperio", [(640, 896), (160, 224)]),
    "ndpi-like": ("slide.ndpi", 40.0, "hamamatsu", [(640, 896), (160, 224)]),
    "pyramidal-tiff": (
        "slide.tif",
        None,
        "generic-tiff",
        [(640, 896), (320, 448), (160, 224), (80, 112)],
    ),
    "ome-tiff": (
        "slide.ome.tif",
        None,
        "ome-tiff",
        [(640, 896), (320, 448), (160, 224), (80, 112)],
    ),
}


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_slide_readers_metadata_levels_and_lazy_regions(tmp_path, slide_image, flavour):
    rgb, _ = slide_image
    name, power, vendor, shapes = FLAVOURS[flavour]
    path = write_slide(tmp_path / name, rgb, 0.25, flavour=flavour, tile=128)
    assert find_reader(path).name == ("tiff" if name.endswith(".tif") else "slide")
    assert is_slide_tiff(path)
    slide = open_slide(path)
    assert slide.vendor == vendor
    assert slide.spacing == {"Y": 0.25, "X": 0.25}
    assert slide.objective_power == power
    assert [lvl.shape for lvl in slide.levels] == shapes
    assert [lvl.downsample for lvl in slide.levels] == [
        (shapes[0][0] / s[0], shapes[0][1] / s[1]) for s in shapes
    ]
    assert slide.levels[0].tile == (128, 128)
    # chunked by the file's tiles: a region read decodes only the tiles under it
    assert slide.data.chunksize == (128, 128, 3)

    scan = read_scan(path)
    assert scan.data.shape == (3, 640, 896) and scan.data.dtype == np.uint8
    assert scan.spacing == (0.25, 0.25) and scan.spacing_source == "metadata"
    assert scan.channel_names == ("red", "green", "blue")
    full = scan.data.compute()
    region = scan.data[:, 100:420, 250:700].compute()
    np.testing.assert_array_equal(region, full[:, 100:420, 250:700])
    # the pixels are the written ones, up to the JPEG compression
    assert np.abs(full.transpose(1, 2, 0).astype(int) - rgb).mean() < 4  # JPEG error

    lower = open_slide(path, level=len(shapes) - 1)
    assert lower.data.shape == (*shapes[-1], 3)
    assert slide_info(path)["levels"][-1]["shape"] == list(shapes[-1])
    with pytest.raises(InputError, match="level 9 does not exist"):
        open_slide(path, level=9)


def test_scan_names_drop_slide_suffixes():
    assert scan_name("a/b/case-17.svs") == "case-17"
    assert scan_name("case.NDPI") == "case"


def test_plain_rgb_tiff_stays_with_the_tiff_reader(tmp_path):
    import tifffile

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    assert not is_slide_tiff(path)
    assert slide_info(path) is None
    assert read_scan(path).data.shape == (3, 64, 64)


def test_openslide_reads_the_same_pixels(tmp_path, slide_image, monkeypatch):
    pytest.importorskip("openslide")
    import cellseg.io.slide as slide_module

    rgb, _ = slide_image
    path = write_slide(tmp_path / "s.svs", rgb, 0.5, tile=128)
    expected = open_slide(path).data.compute()

    def refuse(path, level):
        raise ValueError("not read with tiffslide")

    monkeypatch.setattr(slide_module, "_open_with_tiffslide", refuse)
    slide = open_slide(path)
    assert slide.reader == "openslide"
    assert slide.spacing == {"Y": 0.5, "X": 0.5} and slide.objective_power == 20.0
    assert [lvl.shape for lvl in slide.levels] == [(640, 896), (160, 224)]
    got = slide.data[:300, 100:700].compute()
    assert np.abs(got.astype(int) - expected[:300, 100:700]).mean() < 1


def test_formats_without_openslide_say_what_to_install(tmp_path, monkeypatch):
    import cellseg.io.slide as slide_module

    monkeypatch.setattr(slide_module, "_openslide_module", lambda: None)
    path = tmp_path / "case.mrxs"
    path.write_bytes(b"not a slide")
    with pytest.raises(InputError, match=r"through OpenSlide.*pip install 'cellseg\[openslide\]'"):
        read_scan(path)


def test_truncated_or_corrupt_slide_gives_a_clear_error(tmp_path, slide_image):
    rgb, _ = slide_image
    whole = write_slide(tmp_path / "whole.svs", rgb, 0.5, tile=128).read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cut.svs: is truncated or incomplete"):
        read_scan(cut)
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="junk.svs: cannot be read as a whole-slide image"):
        read_scan(junk)


# --------------------------------------------------------------------------------------
# Tissue
# --------------------------------------------------------------------------------------


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_tissue_mask_matches_the_known_tissue(tmp_path):
    rgb, truth = tissue_slide((1024, 1536), seed=2)
    path = write_slide(tmp_path / "s.svs", rgb, 0.5, tile=256)
    scan = read_scan(path)
    tissue = find_tissue(path, scan, "brightfield")
    assert tissue.downsample == (4.0, 4.0)  # the file's level 1, not a full read
    assert tissue.shape == (1024, 1536)
    assert iou(tissue.region(((0, 1024), (0, 1536))), truth) >= 0.9
    assert abs(tissue.fraction - truth.mean()) < 0.02
    assert np.allclose(tissue.background, GLASS, atol=3)
    assert find_tissue(path, scan, "fluorescence") is None
    blank = write_slide(tmp_path / "blank.svs", np.full((512, 512, 3), GLASS, np.uint8), 0.5)
    assert find_tissue(blank, read_scan(blank), "brightfield") is None  # nothing skipped


def test_tissue_mask_cleans_up_and_keeps_a_slide_of_only_tissue():
    rgb, truth = tissue_slide((300, 400), seed=3)
    rgb[20:23, 20:23] = (120, 60, 140)  # a speck of dust on glass
    hole = (slice(130, 136), slice(150, 156))  # a small hole in the tissue
    rgb[hole] = GLASS
    mask = tissue_mask(rgb, pixel_size_um=2.0)
    assert not mask[20:23, 20:23].any()
    assert mask[hole].all()
    assert iou(mask, truth) >= 0.9
    glass = np.full((200, 200, 3), GLASS, np.uint8)
    assert not tissue_mask(glass).any()
    only_tissue = np.full((200, 200, 3), (226, 158, 198), np.uint8)
    only_tissue[::7, ::9] = (95, 60, 150)
    assert tissue_mask(only_tissue).all()


def test_tiles_with_tissue_and_glass_fill_reads_no_glass_chunk():
    mask = np.zeros((16, 16), bool)
    mask[2:5, 3:6] = True  # full-res rows 16-40, columns 24-48 (8 px per mask pixel)
    tissue = TissueMask(mask, (128, 128), (240.0, 230.0, 235.0))
    tiles = plan_tiles((128, 128), 32, 8)
    assert tiles_with_tissue(tissue, tiles, margin=0) == [0, 1, 4, 5]

    class Counting:
        shape, dtype, ndim = (3, 128, 128), np.dtype(np.uint8), 3

        def __init__(self):
            self.reads = 0

        def __getitem__(self, index):
            shape = [len(range(*s.indices(n))) for s, n in zip(index, self.shape)]
            self.reads += min(shape) > 0  # not dask's look at an empty corner
            return np.full(shape, 7)

    source = Counting()
    data = da.from_array(source, chunks=(3, 32, 32), asarray=False)
    out = fill_glass(data, tissue, (32, 32)).compute()
    assert source.reads == 4  # the 4 chunks with tissue (their margin included)
    assert (out[:, :64, :64] == 7).all()
    assert (out[:, 64:, :] == np.array([240, 230, 235], np.uint8)[:, None, None]).all()


def test_ingest_and_plan_skip_glass_and_no_nucleus_is_found_on_glass(tmp_path):
    from cellseg.stages.ingest import ingest
    from cellseg.stages.plan import plan
    from cellseg.stages.segment_tiles import segment_tiles
    from cellseg.stages.stitch import stitch

    rgb, truth = tissue_slide((768, 1024), seed=4)
    glass, _ = tissue_slide((768, 512), seed=5)
    glass[:] = GLASS  # a strip of bare glass on the right: whole image chunks of glass
    rgb, truth = np.concatenate([rgb, glass], axis=1), np.pad(truth, ((0, 0), (0, 512)))
    path = write_slide(tmp_path / "case.svs", rgb, 0.5, tile=256)
    out = tmp_path / "out"
    info = ingest(path, out, modality="brightfield")
    assert info["slide"]["objective_power"] == 20.0 and info["spacing"] == [0.5, 0.5]
    assert [lvl["shape"] for lvl in info["slide"]["levels"]] == [[768, 1536], [192, 384]]
    assert abs(info["tissue"]["fraction"] - truth.mean()) < 0.02
    image = out / info["image"]
    label = zarr.open_array(str(image / "labels" / "tissue" / "0"), mode="r")[:]
    assert label.shape == truth.shape and iou(label > 0, truth) >= 0.9
    assert load_tissue(image).fraction == pytest.approx(info["tissue"]["fraction"], abs=0.01)
    # glass-only chunks of the image copy hold the glass colour
    copy = zarr.open_array(str(image / "0"), mode="r")
    background = np.rint(info["tissue"]["background"]).astype(np.uint8)
    assert (copy[:, :, -512:] == background[:, None, None]).all()
    error = np.abs(copy[:, :, :512].astype(int) - rgb[:, :512].transpose(2, 0, 1))
    assert error.mean() < 4  # JPEG

    content = plan(out, tile_size=128, backend="classical")
    skipped = set(content["skipped_tiles"])
    kept = {i for b in content["batch_tiles"].values() for i in b}
    assert skipped and kept and not skipped & kept
    assert len(skipped) + len(kept) == len(content["tiles"])
    for t in content["tiles"]:
        (y0, y1), (x0, x1) = t["core"]
        share = truth[y0:y1, x0:x1].mean()
        if t["index"] in skipped:
            assert share == 0
        elif share > 0.05:
            assert t["index"] in kept
    saved = json.loads((out / "work" / "tiles.json").read_text())
    assert saved["skipped_tiles"] == sorted(skipped)

    for batch in content["batches"]:
        segment_tiles(out, batch, show_progress=False)
    summary = stitch(out, show_progress=False)
    labels = zarr.open_array(str(image / "labels" / "cells" / "0"), mode="r")[:]
    assert summary["n_cells"] > 50
    assert not labels[~truth].any() or (labels[~truth] > 0).mean() < 0.002
    ids = np.unique(labels[labels > 0])
    centres = np.rint(ndi.center_of_mass(labels > 0, labels, ids)).astype(int)
    assert truth[centres[:, 0], centres[:, 1]].all()  # no nucleus on glass
