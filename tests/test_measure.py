"""Per-cell measurements against values computed by hand on constructed shapes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skimage.measure import regionprops

from cellseg.measure import (
    OD_STATS,
    channel_keys,
    column_schema,
    measure_cells,
    neighbor_features,
    read_table_columns,
    read_table_metadata,
    write_table,
)
from cellseg.measure.neighbours import Neighbors

REPO = Path(__file__).resolve().parents[1]


def disk(shape, centre, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def ball(shape, centre, radii_um, spacing):
    """Voxels whose centre lies in the ellipsoid of `radii_um` (µm) around `centre` (voxels)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d = sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grids, centre, spacing, radii_um))
    return d <= 1.0


def one_cell(mask, spacing, cell_id=1, **kwargs):
    """The table row of a single cell drawn into a label image."""
    labels = mask.astype(np.uint32) * cell_id
    table = measure_cells(labels, None, spacing=spacing, **kwargs)
    assert len(table) == 1
    return table.iloc[0]


# ----------------------------------------------------------------------------- 2D shapes
def test_disk():
    r, s = 20, 0.5
    row = one_cell(disk((61, 61), (30, 30), r), (s, s))
    n = row["n_pixels"]
    assert row["area_um2"] == n * s * s
    assert row["area_um2"] == pytest.approx(math.pi * (r * s) ** 2, rel=0.01)
    assert row["centroid_y_um"] == pytest.approx(30 * s) and row["centroid_x_px"] == 30
    assert (row["bbox_y_start_px"], row["bbox_y_stop_px"]) == (10, 51)
    assert row["perimeter_um"] == pytest.approx(2 * math.pi * r * s, rel=0.02)
    assert row["equivalent_diameter_um"] == pytest.approx(2 * r * s, rel=0.005)
    # the second moments of a disk: a circle of the same diameter
    assert row["major_axis_length_um"] == pytest.approx(2 * r * s, rel=0.01)
    assert row["minor_axis_length_um"] == pytest.approx(row["major_axis_length_um"])
    assert row["eccentricity"] == pytest.approx(0, abs=1e-6)
    assert row["elongation"] == pytest.approx(1)
    assert row["form_factor"] == pytest.approx(1, abs=0.04)
    assert row["solidity"] == 1.0  # a digitised disk is digitally convex
    assert row["extent"] == pytest.approx(n / 41**2)
    # calipers of the pixel squares: the 41 rows and columns of the disk, one pixel each
    assert row["feret_diameter_min_um"] == pytest.approx((2 * r + 1) * s, abs=0.35)
    assert (2 * r + 1) * s <= row["feret_diameter_max_um"] <= (2 * r + math.sqrt(2)) * s
    assert row["euler_number"] == 1
    assert not row["touches_border"]


def test_square():
    a, s = 40, 0.25
    mask = np.zeros((50, 50), bool)
    mask[5 : 5 + a, 5 : 5 + a] = True
    row = one_cell(mask, (s, s))
    assert row["area_um2"] == a * a * s * s
    # marching squares cuts the corners (4(a-1) + 2√2 px); smoothing rounds them a little
    assert 0.97 * 4 * a * s < row["perimeter_um"] <= (4 * (a - 1) + 2 * math.sqrt(2)) * s
    assert row["feret_diameter_max_um"] == pytest.approx(a * math.sqrt(2) * s)
    assert row["feret_diameter_min_um"] == pytest.approx(a * s)
    assert row["solidity"] == 1.0 and row["extent"] == 1.0
    # variance of a uniform grid of a centres: (a² - 1) / 12 px²
    axis = 4 * math.sqrt((a * a - 1) / 12) * s
    assert row["major_axis_length_um"] == pytest.approx(axis)
    assert row["minor_axis_length_um"] == pytest.approx(axis)
    assert row["eccentricity"] == pytest.approx(0, abs=1e-6)
    assert row["equivalent_diameter_um"] == pytest.approx(2 * math.sqrt(a * a / math.pi) * s)
    assert row["form_factor"] == pytest.approx(math.pi / 4, rel=0.05)


def test_ellipse_axes_and_orientation():
    """Semi-axes 30 and 10 px, the major axis turned 30° from y towards +x."""
    a, b, theta = 30.0, 10.0, math.radians(30)
    yy, xx = np.mgrid[-40:41, -40:41].astype(float)
    u = yy * math.cos(theta) + xx * math.sin(theta)  # along the major axis
    v = -yy * math.sin(theta) + xx * math.cos(theta)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    row = one_cell(mask, (1.0, 1.0))
    assert row["area_um2"] == pytest.approx(math.pi * a * b, rel=0.01)
    assert row["major_axis_length_um"] == pytest.approx(2 * a, rel=0.01)
    assert row["minor_axis_length_um"] == pytest.approx(2 * b, rel=0.02)
    assert row["eccentricity"] == pytest.approx(math.sqrt(1 - (b / a) ** 2), abs=0.005)
    assert row["elongation"] == pytest.approx(a / b, rel=0.03)
    assert row["orientation_deg"] == pytest.approx(30, abs=0.5)
    # Ramanujan's approximation of the ellipse's circumference
    h = ((a - b) / (a + b)) ** 2
    circumference = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
    assert row["perimeter_um"] == pytest.approx(circumference, rel=0.02)
    assert row["feret_diameter_max_um"] == pytest.approx(2 * a + 1, abs=0.8)
    assert row["feret_diameter_min_um"] == pytest.approx(2 * b + 1, abs=0.8)
    assert row["solidity"] == 1.0
    # the same convention as scikit-image
    props = regionprops(mask.astype(np.uint8))[0]
    assert row["orientation_deg"] == pytest.approx(math.degrees(props.orientation), abs=1e-6)
    assert row["major_axis_length_um"] == pytest.approx(props.axis_major_length)


def test_holes_and_concavity():
    # an annulus: one object, one hole
    ring = disk((41, 41), (20, 20), 15) & ~disk((41, 41), (20, 20), 7)
    row = one_cell(ring, (1.0, 1.0))
    assert row["euler_number"] == 0
    # both outlines count: 2π (15 + 7) px
    assert row["perimeter_um"] == pytest.approx(2 * math.pi * (15 + 7), rel=0.03)
    # an L of 7 pixels inside a 4 × 4 bounding box: its hull holds 10 pixel centres
    ell = np.zeros((6, 6), bool)
    ell[1:5, 1] = True
    ell[4, 1:5] = True
    row = one_cell(ell, (1.0, 1.0))
    assert row["solidity"] == pytest.approx(7 / 10)
    assert row["extent"] == pytest.approx(7 / 16)
    assert row["euler_number"] == 1


def test_tiny_and_thin_cells_do_not_break():
    for mask in (np.ones((1, 1), bool), np.eye(6, dtype=bool), np.ones((1, 7), bool)):
        labels = np.pad(mask, 2).astype(np.uint32)
        row = measure_cells(labels, None, spacing=(1.0, 1.0)).iloc[0]
        assert row["solidity"] == 1.0
        assert row["perimeter_um"] > 0 and np.isfinite(row["form_factor"])
    single = measure_cells(np.pad(np.ones((1, 1), np.uint32), 2), None, spacing=(1.0, 1.0))
    assert single["feret_diameter_max_um"].item() == pytest.approx(math.sqrt(2))
    assert single["perimeter_um"].item() == pytest.approx(2 * math.sqrt(2))  # the diamond
    assert np.isnan(single["elongation"].item())


# ----------------------------------------------------------------------------- 3D shapes
def test_ball():
    r = 10
    mask = ball((25, 25, 25), (12, 12, 12), (r, r, r), (1, 1, 1))
    row = one_cell(mask, (1.0, 1.0, 1.0))
    assert row["volume_um3"] == mask.sum()
    assert row["volume_um3"] == pytest.approx(4 / 3 * math.pi * r**3, rel=0.01)
    assert row["surface_area_um2"] == pytest.approx(4 * math.pi * r**2, rel=0.02)
    assert row["sphericity"] == pytest.approx(1, abs=0.03)
    for axis in ("major", "middle", "minor"):
        assert row[f"{axis}_axis_length_um"] == pytest.approx(2 * r, rel=0.01)
    assert row["equivalent_diameter_um"] == pytest.approx(2 * r, rel=0.005)
    assert row["solidity"] == 1.0
    assert 2 * r + 1 <= row["feret_diameter_max_um"] <= 2 * r + math.sqrt(3)
    assert row["euler_number"] == 1
    shell = mask & ~ball((25, 25, 25), (12, 12, 12), (5, 5, 5), (1, 1, 1))
    assert one_cell(shell, (1.0, 1.0, 1.0))["euler_number"] == 2  # one cavity


def test_box_anisotropic():
    """4 × 6 × 10 voxels of 2 × 0.5 × 0.5 µm: an 8 × 3 × 5 µm box."""
    n, s = (4, 6, 10), (2.0, 0.5, 0.5)
    mask = np.zeros((8, 10, 14), bool)
    mask[2:6, 2:8, 2:12] = True
    row = one_cell(mask, s)
    size = [k * v for k, v in zip(n, s)]
    assert row["volume_um3"] == pytest.approx(np.prod(size))
    assert row["feret_diameter_max_um"] == pytest.approx(math.sqrt(sum(v * v for v in size)))
    assert row["solidity"] == 1.0 and row["extent"] == 1.0
    # variance of k voxel centres spaced s apart: s² (k² - 1) / 12; axis = √(20 var)
    axes = sorted((math.sqrt(20 * v * v * (k * k - 1) / 12) for k, v in zip(n, s)), reverse=True)
    assert row["major_axis_length_um"] == pytest.approx(axes[0])
    assert row["middle_axis_length_um"] == pytest.approx(axes[1])
    assert row["minor_axis_length_um"] == pytest.approx(axes[2])
    # the major axis (z: 8 µm) lies along z
    assert row["orientation_polar_deg"] == pytest.approx(0, abs=1e-6)
    # the box's surface, its edges rounded by a voxel or so
    box_area = 2 * (size[0] * size[1] + size[1] * size[2] + size[0] * size[2])
    assert 0.85 * box_area < row["surface_area_um2"] < box_area


def test_anisotropic_ellipsoid_with_known_radii():
    radii, s = (6.0, 4.0, 2.5), (1.0, 0.25, 0.25)
    mask = ball((17, 41, 25), (8, 20, 12), radii, s)
    row = one_cell(mask, s)
    assert row["volume_um3"] == pytest.approx(4 / 3 * math.pi * np.prod(radii), rel=0.02)
    assert row["major_axis_length_um"] == pytest.approx(2 * radii[0], rel=0.02)
    assert row["middle_axis_length_um"] == pytest.approx(2 * radii[1], rel=0.02)
    assert row["minor_axis_length_um"] == pytest.approx(2 * radii[2], rel=0.02)
    assert row["elongation"] == pytest.approx(radii[0] / radii[2], rel=0.03)
    assert row["orientation_polar_deg"] == pytest.approx(0, abs=1)
    # Knud Thomsen's formula for the ellipsoid's surface (within about 1 %)
    p = 1.6075
    a, b, c = radii
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    assert row["surface_area_um2"] == pytest.approx(area, rel=0.03)
    # along z the extent is 2 × 6 µm plus one voxel (1 µm)
    assert row["feret_diameter_max_um"] == pytest.approx(2 * radii[0] + s[0], abs=0.05)
    assert row["equivalent_diameter_um"] == pytest.approx(2 * np.prod(radii) ** (1 / 3), rel=0.01)


def test_orientation_3d():
    """An ellipsoid lying in the yx plane, its major axis 30° from y towards x."""
    theta = math.radians(30)
    zz, yy, xx = np.mgrid[-6:7, -30:31, -30:31].astype(float)
    u = yy * math.cos(theta) + xx * math.sin(theta)
    v = -yy * math.sin(theta) + xx * math.cos(theta)
    mask = (u / 25) ** 2 + (v / 8) ** 2 + (zz / 5) ** 2 <= 1
    row = one_cell(mask, (1.0, 1.0, 1.0))
    assert row["orientation_polar_deg"] == pytest.approx(90, abs=0.5)
    assert row["orientation_azimuth_deg"] == pytest.approx(30, abs=0.5)


# ----------------------------------------------------------------------------- context
def test_border_and_neighbours():
    shape, s = (60, 80), 0.5
    labels = np.zeros(shape, np.uint32)
    labels[disk(shape, (5, 30), 8)] = 1  # cut by the top edge
    labels[disk(shape, (30, 20), 6)] = 2
    labels[disk(shape, (30, 40), 6)] = 3  # 20 px = 10 µm from cell 2
    labels[disk(shape, (30, 79), 5)] = 4  # cut by the right edge
    table = measure_cells(labels, None, spacing=(s, s), neighbor_radius_um=12.0).set_index(
        "cell_id"
    )
    assert table["touches_border"].to_dict() == {1: True, 2: False, 3: False, 4: True}
    assert table.loc[2, "nearest_neighbor_distance_um"] == pytest.approx(10.0)
    assert table.loc[2, "nearest_neighbor_id"] == 3 and table.loc[3, "nearest_neighbor_id"] == 2
    assert table.loc[2, "n_neighbors"] == 1  # cell 1's centroid is farther than 12 µm
    wider = measure_cells(labels, None, spacing=(s, s), neighbor_radius_um=100.0)
    assert (wider["n_neighbors"] == 3).all()
    # 3D: a cell on the first plane touches the border
    vol = np.zeros((6, 20, 20), np.uint32)
    vol[0:2, 5:9, 5:9] = 1
    vol[2:5, 10:14, 10:14] = 2
    t3 = measure_cells(vol, None, spacing=(2.0, 0.5, 0.5))
    assert t3["touches_border"].tolist() == [True, False]


def test_neighbor_features_edge_cases():
    n, d, k = neighbor_features(np.zeros((1, 2)), np.array([5]), 10.0)
    assert n.tolist() == [0] and np.isnan(d).all() and k.tolist() == [0]
    pts = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 20.0]])
    n, d, k = neighbor_features(pts, np.array([7, 8, 9]), 6.0)
    assert n.tolist() == [1, 1, 0]
    assert d.tolist() == [5.0, 5.0, 20.0]
    assert k.tolist() == [8, 7, 7]


def test_neighbours_range_by_range_equal_a_brute_force_search():
    """Ranges of ids scattered in space, lone cells and twins at one centroid."""
    rng = np.random.default_rng(3)
    pts = np.concatenate(
        [
            rng.uniform(0, 200, (300, 3)),
            [[1000.0, 0, 0], [1000.0, 900, 0]],  # far from the rest and from each other
            [[50.0, 50, 50], [50.0, 50, 50]],  # two cells at one centroid
        ]
    )
    pts = pts[rng.permutation(len(pts))]
    ids = np.arange(1, len(pts) + 1) * 3
    radius = 25.0
    nb = Neighbors(lambda lo, hi: pts[lo:hi], ids, radius)
    nb.SCAN_ROWS = 37
    parts = [nb.block(lo, min(len(pts), lo + 17)) for lo in range(0, len(pts), 17)]
    count, dist, nearest = (np.concatenate(p) for p in zip(*parts))
    full = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    assert count.tolist() == (full <= radius).sum(axis=1).tolist()
    assert np.allclose(dist, full.min(axis=1))
    # the nearest is a nearest (cells tied with the twins may name either twin)
    row = np.searchsorted(ids, nearest)
    assert np.array_equal(ids[row], nearest)
    assert np.array_equal(full[np.arange(len(pts)), row], full.min(axis=1))
    twins = np.flatnonzero(np.all(pts == 50.0, axis=1))
    assert nearest[twins].tolist() == ids[twins[::-1]].tolist()
    assert dist[twins].tolist() == [0.0, 0.0]
    assert count.sum() > len(pts)  # the radius finds neighbours


def test_units_follow_the_pixel_size():
    rng = np.random.default_rng(0)
    labels = np.zeros((16, 40, 40), np.uint32)
    labels[ball(labels.shape, (8, 14, 14), (5, 8, 6), (1, 1, 1))] = 1
    labels[ball(labels.shape, (7, 28, 26), (4, 5, 9), (1, 1, 1))] = 2
    image = rng.normal(100, 10, labels.shape)
    base = measure_cells(labels, image, spacing=(1, 1, 1), neighbor_radius_um=1e6)
    f = (2.0, 0.5, 0.5)
    scaled = measure_cells(labels, image, spacing=f, neighbor_radius_um=1e6)
    assert np.allclose(scaled["volume_um3"], base["volume_um3"] * 0.5)
    for ax, k in zip("zyx", f):
        assert np.allclose(scaled[f"centroid_{ax}_um"], base[f"centroid_{ax}_um"] * k)
        assert np.array_equal(scaled[f"centroid_{ax}_px"], base[f"centroid_{ax}_px"])
    iso = measure_cells(labels, image, spacing=(3, 3, 3))
    for col in ("major_axis_length_um", "feret_diameter_max_um", "equivalent_diameter_um"):
        assert np.allclose(iso[col], base[col] * 3)
    assert np.allclose(iso["surface_area_um2"], base["surface_area_um2"] * 9)
    assert np.allclose(iso["volume_um3"], base["volume_um3"] * 27)
    for col in ("sphericity", "solidity", "extent", "elongation", "euler_number"):
        assert np.allclose(iso[col], base[col])
    assert np.array_equal(iso["intensity_mean_c0"], base["intensity_mean_c0"])
    # 2D: a 10 × 10 px square of 1 × 0.5 µm pixels is a 10 × 5 µm rectangle
    sq = np.zeros((14, 14), np.uint32)
    sq[2:12, 2:12] = 1
    row = measure_cells(sq, None, spacing=(1.0, 0.5)).iloc[0]
    assert row["area_um2"] == 50
    assert row["feret_diameter_min_um"] == pytest.approx(5)
    assert row["feret_diameter_max_um"] == pytest.approx(math.hypot(10, 5))
    assert row["orientation_deg"] == pytest.approx(0)  # longer along y
    assert row["eccentricity"] == pytest.approx(math.sqrt(1 - 0.25), abs=1e-6)


# ----------------------------------------------------------------------------- intensity
def test_intensities_and_ring():
    """A 4 × 4 cell of values 1..16 on a background of 10, a neighbour beside it."""
    labels = np.zeros((12, 12), np.uint32)
    labels[4:8, 4:8] = 1
    labels[4:8, 9:11] = 2  # one pixel gap to cell 1's right edge
    dapi = np.full(labels.shape, 10.0)
    dapi[4:8, 4:8] = np.arange(1, 17).reshape(4, 4)
    dapi[4:8, 9:11] = 500.0
    gfp = 2 * dapi + 1
    table = measure_cells(
        labels,
        np.stack([dapi, gfp]),
        spacing=(1.0, 1.0),
        channel_names=["DAPI", "GFP"],
        ring_width_um=1.0,
    ).set_index("cell_id")
    cell = table.loc[1]
    values = np.arange(1, 17, dtype=float)
    assert cell["intensity_mean_dapi"] == pytest.approx(values.mean())
    assert cell["intensity_median_dapi"] == pytest.approx(8.5)
    assert cell["intensity_std_dapi"] == pytest.approx(values.std())
    assert (cell["intensity_min_dapi"], cell["intensity_max_dapi"]) == (1.0, 16.0)
    assert cell["intensity_integrated_dapi"] == 136.0
    assert cell["intensity_mean_gfp"] == pytest.approx(2 * values.mean() + 1)
    # ring of 1 µm: the 4 × 4 edge-adjacent pixels (diagonals are √2 away), all background
    assert cell["ring_n_pixels"] == 16
    assert cell["ring_intensity_mean_dapi"] == 10.0 and cell["ring_intensity_std_dapi"] == 0
    assert cell["ring_intensity_integrated_gfp"] == 16 * 21.0
    assert cell["intensity_mean_corrected_dapi"] == pytest.approx(values.mean() - 10)
    # cell 2 (4 × 2): its 12 edge-adjacent pixels, the gap column included; rings may overlap
    assert table.loc[2, "ring_n_pixels"] == 2 * 4 + 2 * 2
    wider = measure_cells(labels, dapi, spacing=(1.0, 1.0), ring_width_um=1.5).set_index("cell_id")
    # 1.5 µm adds the 4 diagonal corners (√2 away); 2 µm away is cell 1, never ring
    assert wider.loc[1, "ring_n_pixels"] == 16 + 4
    assert wider.loc[2, "ring_n_pixels"] == 12 + 4
    wide = measure_cells(labels, dapi, spacing=(1.0, 1.0), ring_width_um=2.0).set_index("cell_id")
    # 2 µm adds 2 pixels above and 2 below; to the left it reaches cell 1's right column,
    # left out (other cells are not background), to the right the edge of the scan
    assert wide.loc[2, "ring_n_pixels"] == 12 + 4 + 2 + 2
    assert wide.loc[2, "ring_intensity_max_c0"] == 10.0
    none = measure_cells(labels, dapi, spacing=(1.0, 1.0), ring_width_um=0.0)
    assert (none["ring_n_pixels"] == 0).all()
    assert none["ring_intensity_mean_c0"].isna().all()
    assert none["intensity_mean_corrected_c0"].isna().all()


def test_channel_keys():
    assert channel_keys(["DAPI", "Alexa 488", "", "dapi", "488"]) == [
        "dapi",
        "alexa_488",
        "c2",
        "c3",
        "c488",
    ]


# ----------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("ndim", [2, 3])
def test_chunked_equals_whole(ndim, scan2d, scan3d):
    image, labels, spacing = scan2d if ndim == 2 else scan3d
    channels = np.stack([image, image[::-1].copy()])
    whole = measure_cells(labels, channels, spacing=spacing)
    assert len(whole) == len(np.unique(labels)) - 1 > 20
    chunks = (48, 40) if ndim == 2 else (6, 32, 40)
    chunked = measure_cells(labels, channels, spacing=spacing, chunks=chunks, threads=2)
    pd.testing.assert_frame_equal(whole, chunked, check_exact=True)
    lazy = measure_cells(
        da.from_array(labels, chunks=chunks),
        da.from_array(channels, chunks=(1, *chunks)),
        spacing=spacing,
    )
    pd.testing.assert_frame_equal(whole, lazy, check_exact=True)


def test_processes_measure_file_backed_scans_as_threads_do(tmp_path, scan3d, monkeypatch):
    import zarr

    from cellseg import parallel
    from cellseg.measure.cells import _processes_can_read, _worth_processes

    image, labels, spacing = scan3d
    chunks = (6, 32, 40)
    on_disk = {}
    for name, array in (("labels", labels), ("image", np.stack([image, image[::-1]]))):
        z = zarr.open_array(
            str(tmp_path / f"{name}.zarr"),
            mode="w",
            shape=array.shape,
            chunks=array.shape[:-3] + chunks,
            dtype=array.dtype,
        )
        z[:] = array
        on_disk[name] = z
    threads = measure_cells(labels, on_disk["image"], spacing=spacing, chunks=chunks, threads=2)
    assert len(threads) == len(np.unique(labels)) - 1 > 20
    procs = measure_cells(
        on_disk["labels"],
        on_disk["image"],
        spacing=spacing,
        chunks=chunks,
        threads=2,
        processes=True,
    )
    pd.testing.assert_frame_equal(threads, procs, check_exact=True)
    # automatic (the two rules measure_cells applies): where the program allows it,
    # file-backed arrays and enough work only
    big = 10**6
    assert _worth_processes(big, 3)
    assert not _worth_processes(len(threads), 3)
    monkeypatch.setitem(parallel._PROCESSES, "allowed", False)  # (the CLI allows them)
    assert not _processes_can_read(2, on_disk["labels"], [on_disk["image"]])
    monkeypatch.setitem(parallel._PROCESSES, "allowed", True)
    assert _processes_can_read(2, on_disk["labels"], [on_disk["image"]])
    assert not _processes_can_read(2, labels, [on_disk["image"]])  # pixels would be copied
    assert not _processes_can_read(1, on_disk["labels"], [])


def test_sparse_ids_give_the_same_table(scan3d):
    """Ids far apart (edited or user labels) are summed sparsely, with the same result."""
    image, labels, spacing = scan3d
    dense = measure_cells(labels, image, spacing=spacing, chunks=(6, 32, 40))
    # ids of the lower half jump by 3e9: the first chunks sum densely, then sparsely
    ids = np.unique(labels)[1:]
    far = ids[len(ids) // 2 :]
    remapped = labels.astype(np.uint32)
    remapped[np.isin(labels, far)] += np.uint32(3_000_000_000)
    for chunks in [(6, 32, 40), None]:
        sparse = measure_cells(remapped, image, spacing=spacing, chunks=chunks, threads=2)
        shift = np.where(np.isin(dense["cell_id"], far), 3_000_000_000, 0).astype(np.uint32)
        assert np.array_equal(sparse["cell_id"], dense["cell_id"] + shift)
        near = dense["nearest_neighbor_id"].to_numpy()
        near_shift = np.where(np.isin(near, far), 3_000_000_000, 0).astype(np.uint32)
        assert np.array_equal(sparse["nearest_neighbor_id"], near + near_shift)
        same = [c for c in dense.columns if c not in ("cell_id", "nearest_neighbor_id")]
        pd.testing.assert_frame_equal(dense[same], sparse[same], check_exact=True)


def test_empty_label_image():
    table = measure_cells(np.zeros((8, 8), np.uint32), np.ones((8, 8)), spacing=(1, 1))
    assert len(table) == 0
    names = [c.name for c in column_schema("yx", ["c0"])]
    assert list(table.columns) == names
    assert table["cell_id"].dtype == np.uint32 and table["touches_border"].dtype == bool


# ----------------------------------------------------------------------------- schema
def _readme_columns(axes: str, channels: list[str], stains: list[str] = ()) -> dict[str, str]:
    """The columns the README's table lists for a scan, with their units."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Cell table columns", 1)[1].split("\n#", 1)[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([^`]+)`(?:\s*\((2D|3D|brightfield)\))?\s*\|\s*([^|]*)\|", line)
        if not m:
            continue
        name, dims, unit = m.group(1), m.group(2), m.group(3).strip()
        if dims == "brightfield" and not stains:
            continue
        if dims in ("2D", "3D") and dims != f"{len(axes)}D":
            continue
        names = [name]
        if "<ax>" in name:
            names = [n.replace("<ax>", a) for n in names for a in axes]
        if "<ch>" in name:
            names = [n.replace("<ch>", c) for n in names for c in channels]
        if "<stat>" in name:
            names = [n.replace("<stat>", t) for n in names for t in OD_STATS]
        if "<stain>" in name:
            names = [n.replace("<stain>", t) for n in names for t in stains]
        if "<rgb>" in name:
            names = [n.replace("<rgb>", t) for n in names for t in "rgb"]
        for n in names:
            out[n] = "" if unit in ("–", "-") else unit
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_readme_matches_parquet_schema(tmp_path, ndim):
    shape = (30, 30) if ndim == 2 else (8, 30, 30)
    spacing = (0.5, 0.5) if ndim == 2 else (2.0, 0.5, 0.5)
    labels = np.zeros(shape, np.uint32)
    labels[..., 5:12, 5:12] = 1
    labels[..., 15:25, 14:20] = 2
    image = np.ones((2, *shape))
    axes = "yx" if ndim == 2 else "zyx"
    table = measure_cells(labels, image, spacing=spacing, channel_names=["DAPI", "GFP"])
    path = tmp_path / "cells.parquet"
    write_table(
        table,
        path,
        metadata={"cellseg.scan": "s"},
        columns=column_schema(axes, ["dapi", "gfp"]),
    )
    schema = pq.read_schema(path)
    documented = _readme_columns(axes, ["dapi", "gfp"])
    assert set(documented) == set(schema.names)
    for field in schema:
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        assert meta["unit"] == documented[field.name], field.name
        assert meta["description"]
    meta = read_table_metadata(path)
    assert meta["scan"] == "s"
    assert [c["name"] for c in meta["columns"]] == schema.names


class RecordingArray:
    """A label image that records the size of every region read from it."""

    def __init__(self, array, chunks):
        self.array, self.chunks, self.shape = array, chunks, array.shape
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, index):
        part = self.array[index]
        self.reads.append(part.shape)
        return part


def test_reads_are_bounded_by_a_chunk_and_its_cells(scan2d):
    _, labels, spacing = scan2d
    chunks = (64, 64)
    recorder = RecordingArray(labels, chunks)
    table = measure_cells(recorder, None, spacing=spacing, chunks=chunks, ring_width_um=2.0)
    assert len(table) == len(np.unique(labels)) - 1
    extent = max(
        int((table[f"bbox_{a}_stop_px"] - table[f"bbox_{a}_start_px"]).max()) for a in "yx"
    )
    pad = math.ceil(2.0 / spacing[0])
    bound = chunks[0] + extent + 2 * pad
    assert max(max(shape) for shape in recorder.reads) <= bound < min(labels.shape)


def test_table_columns_read_by_row_group_equal_pandas(tmp_path):
    """Columns read a row group at a time: pandas' frame, missing values included."""
    n = 50
    table = pa.table(
        {
            "cell_id": pa.array(np.arange(1, n + 1), pa.uint32()),
            "area_um2": pa.array([None if i % 7 == 3 else i * 0.5 for i in range(n)]),
            "count": pa.array([None if i == 11 else i for i in range(n)], pa.int64()),
            "touches_border": pa.array([i % 3 == 0 for i in range(n)]),
            "small": pa.array(np.linspace(0, 1, n), pa.float32()),
        }
    )
    path = tmp_path / "cells.parquet"
    pq.write_table(table, path, row_group_size=8)  # 7 row groups, the last one short
    columns = ["touches_border", "count", "area_um2", "small", "cell_id"]
    got = read_table_columns(path, columns)
    pd.testing.assert_frame_equal(got, pd.read_parquet(path, columns=columns))
    assert list(got.columns) == columns
    assert np.isnan(got["area_um2"][3]) and got["area_um2"][4] == 2.0
    assert np.isnan(got["count"][11]) and got["count"][12] == 12.0


# ----------------------------------------------------------------------------- fixtures
DATA = Path(__file__).resolve().parent / "data"

#: Relative accuracy of each column against the fixture tables (measured cell by
#: cell before measuring went region-wide); the rest agree to 1e-9. Surfaces:
#: float32 marching-cubes vertices, smoothed in another order.
_FIXTURE_RTOL = {"surface_area_um2": 1e-5, "sphericity": 1e-5}
#: Axis lengths of flat cells are square roots of round-off (about 1e-8 µm), which
#: differ with the BLAS build: compared to this absolute tolerance (µm).
_FIXTURE_ATOL = {f"{a}_axis_length_um": 1e-6 for a in ("major", "middle", "minor")}


def _fixture(ndim):
    data = np.load(DATA / f"measure_{ndim}d.npz")
    return data["labels"], data["image"], tuple(float(s) for s in data["spacing"])


def _measure_fixture(ndim, **kwargs):
    labels, image, spacing = _fixture(ndim)
    names = [f"ch{c}" for c in range(len(image))]
    return measure_cells(labels, image, spacing=spacing, channel_names=names, **kwargs)


def _angle_gap(a, b):
    """Difference of undirected axes' angles in degrees (0..90)."""
    d = np.abs(a - b) % 180.0
    return np.minimum(d, 180.0 - d)


@pytest.mark.parametrize("ndim", [2, 3])
def test_table_equals_the_fixture(ndim, monkeypatch):
    """The same values on one chunk, on many chunks, and with each chunk's cells cut
    into slabs of 7 cells (see ``MAX_GROUP_CELLS``)."""
    from cellseg.measure import cells

    expected = pd.read_parquet(DATA / f"measure_{ndim}d.parquet")
    chunked = {"chunks": (40, 48) if ndim == 2 else (8, 40, 32), "threads": 2}
    for kwargs, most in (({}, None), (chunked, None), ({"threads": 2}, 7)):
        if most:
            monkeypatch.setitem(cells.MAX_GROUP_CELLS, ndim, most)
        table = _measure_fixture(ndim, **kwargs)
        assert list(table.columns) == list(expected.columns)
        assert list(table.dtypes) == list(expected.dtypes)
        np.testing.assert_array_equal(table["cell_id"], expected["cell_id"])
        # ill-defined orientations: round cells, and in 3D a major axis along z
        round_ = (table["elongation"] < 1 + 1e-6).to_numpy()
        for name in expected.columns:
            new, old = table[name].to_numpy(), expected[name].to_numpy()
            if name.startswith("orientation"):
                keep = ~round_
                if name == "orientation_azimuth_deg":
                    keep &= expected["orientation_polar_deg"].to_numpy() > 1e-3
                assert _angle_gap(new[keep], old[keep]).max() < 1e-6, name
                continue
            if new.dtype.kind in "biu":
                np.testing.assert_array_equal(new, old, err_msg=name)
                continue
            rtol = _FIXTURE_RTOL.get(name, 1e-9)
            atol = _FIXTURE_ATOL.get(name, 1e-9)
            np.testing.assert_allclose(new, old, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("ndim", [2, 3])
def test_table_agrees_with_regionprops(ndim):
    from skimage.measure import regionprops_table

    labels, image, spacing = _fixture(ndim)
    table = _measure_fixture(ndim).set_index("cell_id")
    props = ["label", "area", "centroid", "bbox", "equivalent_diameter_area"]
    props += ["axis_major_length", "axis_minor_length", "extent", "euler_number"]
    props += ["intensity_mean", "intensity_min", "intensity_max", "intensity_std"]
    if ndim == 2:
        props += ["eccentricity"]
    ref = pd.DataFrame(
        regionprops_table(labels, np.moveaxis(image, 0, -1), properties=props, spacing=spacing)
    ).set_index("label")
    t = table.loc[ref.index]
    axes = "yx" if ndim == 2 else "zyx"
    size = "area_um2" if ndim == 2 else "volume_um3"
    close = {
        size: "area",
        "equivalent_diameter_um": "equivalent_diameter_area",
        "major_axis_length_um": "axis_major_length",
        "minor_axis_length_um": "axis_minor_length",
        "extent": "extent",
        **({"eccentricity": "eccentricity"} if ndim == 2 else {}),
    }
    for a, ax in enumerate(axes):
        close[f"centroid_{ax}_um"] = f"centroid-{a}"
    for c in range(len(image)):
        for stat in ("mean", "min", "max", "std"):
            close[f"intensity_{stat}_ch{c}"] = f"intensity_{stat}-{c}"
    for ours, theirs in close.items():
        np.testing.assert_allclose(t[ours], ref[theirs], rtol=1e-6, atol=1e-6, err_msg=ours)
    for a, ax in enumerate(axes):
        np.testing.assert_array_equal(t[f"bbox_{ax}_start_px"], ref[f"bbox-{a}"])
        np.testing.assert_array_equal(t[f"bbox_{ax}_stop_px"], ref[f"bbox-{a + ndim}"])
    np.testing.assert_array_equal(t["euler_number"], ref["euler_number"])


# ----------------------------------------------------------------------------- brightfield
def test_brightfield_stain_columns_by_hand():
    from cellseg.stain import reference_stains

    stains = reference_stains("he")
    # a nucleus of 4 pixels (two colours), its ring of 1 µm: 8 glass-ish pixels
    rgb = np.full((3, 6, 6), 240, np.uint8)
    labels = np.zeros((6, 6), np.uint32)
    labels[2:4, 2:4] = 5
    colours = {(2, 2): (90, 60, 150), (2, 3): (90, 60, 150), (3, 2): (120, 80, 170)}
    colours[(3, 3)] = (60, 40, 120)
    for (y, x), c in colours.items():
        rgb[:, y, x] = c
    ring_colour = (230, 160, 200)
    ring = [(1, 2), (1, 3), (4, 2), (4, 3), (2, 1), (3, 1), (2, 4), (3, 4)]
    for y, x in ring:
        rgb[:, y, x] = ring_colour
    table = measure_cells(
        labels,
        rgb,
        spacing=(1.0, 1.0),
        channel_names=["R", "G", "B"],
        ring_width_um=1.0,
        stains=stains,
    )
    row = table.iloc[0]
    # Beer-Lambert by hand: OD = -log10(I / 255); amounts solve OD = amounts @ vectors
    vectors = np.asarray(stains["vectors"], dtype=np.float64)

    def amounts(colour):
        od = -np.log10(np.maximum(np.asarray(colour, float), 1) / 255.0)
        return np.linalg.solve(vectors.T, od)

    inside = np.array([amounts(c) for c in colours.values()])
    for j, name in enumerate(["hematoxylin", "eosin"]):
        v = inside[:, j]
        assert row[f"od_mean_{name}"] == pytest.approx(v.mean(), abs=1e-5)
        assert row[f"od_median_{name}"] == pytest.approx(np.median(v), abs=1e-5)
        assert row[f"od_std_{name}"] == pytest.approx(v.std(), abs=1e-5)
        assert row[f"od_max_{name}"] == pytest.approx(v.max(), abs=1e-5)
        around = amounts(ring_colour)[j]
        assert row[f"ring_od_mean_{name}"] == pytest.approx(around, abs=1e-5)
        assert row[f"ring_od_max_{name}"] == pytest.approx(around, abs=1e-5)
        assert row[f"ring_od_std_{name}"] == pytest.approx(0, abs=1e-5)
    assert inside[:, 0].mean() > amounts(ring_colour)[0]  # the nucleus is the bluer
    rgb_means = np.mean(list(colours.values()), axis=0)
    for j, c in enumerate("rgb"):
        assert row[f"rgb_mean_{c}"] == pytest.approx(rgb_means[j])
        assert row[f"ring_rgb_mean_{c}"] == pytest.approx(ring_colour[j])
    assert row["ring_n_pixels"] == 8
    assert "od_mean_dab" not in table
    names = [c.name for c in column_schema("yx", ["r", "g", "b"], stains=stains["names"])]
    assert list(table.columns) == names
    assert names[-1] == "ring_rgb_mean_b"


def test_brightfield_columns_in_readme(tmp_path):
    labels = np.zeros((12, 12), np.uint32)
    labels[3:8, 3:8] = 1
    rgb = np.full((3, 12, 12), 200, np.uint8)
    stains = {"names": ["hematoxylin", "dab"], "vectors": np.eye(3).tolist()}
    table = measure_cells(labels, rgb, spacing=(0.5, 0.5), channel_names="rgb", stains=stains)
    path = tmp_path / "cells.parquet"
    write_table(table, path, columns=column_schema("yx", ["r", "g", "b"], stains=stains["names"]))
    schema = pq.read_schema(path)
    documented = _readme_columns("yx", ["r", "g", "b"], stains["names"])
    assert set(documented) == set(schema.names)
    for field in schema:
        assert field.metadata[b"unit"].decode() == documented[field.name], field.name
