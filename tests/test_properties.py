"""Property tests (hypothesis, derandomised): ingest of random scans, tiling against one tile.

Few examples each, so that they stay fast; ``derandomize=True`` makes every run
try the same examples, so a failure is reproducible.
"""

from __future__ import annotations

import json

import numpy as np
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellseg.cli import main
from cellseg.io import open_image
from cellseg.metrics import match_instances
from cellseg.stages import segment_array

SETTINGS = settings(
    derandomize=True,
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64"]


@st.composite
def scans(draw):
    """A random scan: 2D or 3D, maybe channels, any numeric dtype and byte order."""
    ndim = draw(st.sampled_from([2, 3]))
    spatial = [draw(st.integers(2, 6))] if ndim == 3 else []  # one plane is 2D
    spatial += [draw(st.integers(2, 40)), draw(st.integers(2, 40))]
    fmt = draw(st.sampled_from(["npy", "tif"]))
    channels = draw(st.integers(1, 3)) if fmt == "tif" else 1  # .npy names no axes
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):
        dtype = dtype.newbyteorder(">")
    seed = draw(st.integers(0, 2**16))
    shape = ([channels] if channels > 1 else []) + spatial
    values = np.random.default_rng(seed).integers(0, 100, shape)
    values.reshape(-1)[0] = 100  # never constant
    values.reshape(-1)[-1] = 0
    return values.astype(dtype), ndim, channels, fmt


@SETTINGS
@given(case=scans())
def test_ingest_keeps_every_pixel(tmp_path_factory, case):
    data, ndim, channels, fmt = case
    folder = tmp_path_factory.mktemp("p")
    path = folder / f"scan.{fmt}"
    if fmt == "npy":
        np.save(path, data)
    else:
        axes = ("C" if channels > 1 else "") + ("ZYX" if ndim == 3 else "YX")
        tifffile.imwrite(path, data, metadata={"axes": axes}, photometric="minisblack")
    pixel = ["--pixel-size", *(["2"] if ndim == 3 else []), "0.5", "0.5"]
    assert main(["-q", "ingest", str(path), "-o", str(folder / "out"), *pixel]) == 0
    info = json.loads((folder / "out" / "work" / "ingest.json").read_text())
    assert info["shape"] == list(data.shape[-ndim:])
    assert info["spacing"] == ([2.0] if ndim == 3 else []) + [0.5, 0.5]
    got = np.asarray(open_image(folder / "out" / info["image"]).data[0])
    want = data[0] if channels > 1 else data
    np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))


@st.composite
def disc_scenes(draw):
    """Bright discs on a noisy background, some on seams; and a tiling of it."""
    h, w = draw(st.integers(48, 120)), draw(st.integers(48, 120))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, draw(st.integers(1, 8)) + 1):
        r = rng.integers(3, 7)
        cy, cx = rng.integers(r, h - r), rng.integers(r, w - r)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (truth == 0)
        truth[disc] = k
    image = (truth > 0) * 700.0 + 100 + rng.normal(0, 8, (h, w))
    image = np.clip(image, 0, None).astype(np.uint16)
    tile = draw(st.integers(16, 64))
    overlap = draw(st.one_of(st.none(), st.integers(8, 24)))
    return image, tile, overlap


@SETTINGS
@given(scene=disc_scenes())
def test_tiled_equals_one_tile(scene):
    image, tile, overlap = scene
    whole = segment_array(image, tile_size=max(image.shape), backend="classical")
    tiled = segment_array(image, tile_size=tile, overlap=overlap, backend="classical")
    if whole.max() == 0:
        assert tiled.max() == 0
        return
    result = match_instances(whole, tiled, 0.5)
    assert result["f1"] >= 0.99, (tile, overlap, result)
    # ids are one per cell: no id appears in two separate pieces
    assert len(np.unique(tiled)) - 1 == result["n_pred"]
