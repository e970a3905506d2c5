"""`cellseg export`: CSV, AnnData and one table for several scans."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cellseg.cli import main
from cellseg.export import export_tables, to_anndata
from cellseg.measure import column_schema, measure_cells, read_table_metadata, write_table


def write_scan_table(folder, name, ndim):
    """A scan folder with a small measured cells.parquet (two channels)."""
    shape = (40, 50) if ndim == 2 else (6, 40, 50)
    spacing = (0.5, 0.5) if ndim == 2 else (2.0, 0.5, 0.5)
    axes = "yx" if ndim == 2 else "zyx"
    labels = np.zeros(shape, np.uint32)
    labels[..., 5:15, 5:12] = 1
    labels[..., 20:30, 25:40] = 2
    labels[..., 30:38, 5:10] = 3
    rng = np.random.default_rng(ndim)
    image = rng.uniform(0, 100, (2, *shape))
    table = measure_cells(labels, image, spacing=spacing, channel_names=["DAPI", "GFP"])
    out = folder / name
    write_table(
        table,
        out / "cells.parquet",
        metadata={"cellseg.scan": name, "cellseg.version": "0.1.0", "cellseg.axes": axes},
        columns=column_schema(axes, ["dapi", "gfp"]),
    )
    return out, table


@pytest.fixture
def scans(tmp_path):
    flat, t2 = write_scan_table(tmp_path, "flat", 2)
    stack, t3 = write_scan_table(tmp_path, "stack", 3)
    return flat, t2, stack, t3


def test_csv(scans, capsys):
    flat, table, _, _ = scans
    assert main(["export", str(flat)]) == 0
    out = flat / "cells.csv"
    assert str(out) in capsys.readouterr().out
    back = pd.read_csv(out)
    assert list(back.columns) == list(table.columns)
    assert np.allclose(back["area_um2"], table["area_um2"])
    assert back["touches_border"].tolist() == table["touches_border"].tolist()
    assert not list(flat.glob(".*tmp*"))


def test_anndata(scans, tmp_path):
    ad = pytest.importorskip("anndata")
    flat, table, _, _ = scans
    out = tmp_path / "flat.h5ad"
    assert main(["export", str(flat / "cells.parquet"), "--format", "anndata", "-o", str(out)]) == 0
    adata = ad.read_h5ad(out)
    assert adata.n_obs == len(table)
    assert list(adata.obs_names) == [str(i) for i in table["cell_id"]]
    assert "area_um2" in adata.var_names and "intensity_mean_gfp" in adata.var_names
    assert "cell_id" not in adata.var_names and "bbox_y_start_px" in adata.obs
    assert adata.var.loc["area_um2", "unit"] == "µm²"
    assert adata.var.loc["perimeter_um", "description"]
    assert np.allclose(adata[:, "area_um2"].X.ravel(), table["area_um2"], rtol=1e-6)
    # centroids in µm as x, y for scanpy / squidpy
    xy = table[["centroid_x_um", "centroid_y_um"]].to_numpy()
    assert np.allclose(adata.obsm["spatial"], xy)
    assert list(adata.uns["spatial_axes"]) == ["x", "y"]
    assert adata.uns["cellseg"]["flat"]["scan"] == "flat"


def test_anndata_3d_spatial_order(scans):
    _, _, stack, table = scans
    adata = to_anndata(table, [read_table_metadata(stack / "cells.parquet")])
    xyz = table[["centroid_x_um", "centroid_y_um", "centroid_z_um"]].to_numpy()
    assert np.allclose(adata.obsm["spatial"], xyz)
    assert adata.var.loc["volume_um3", "unit"] == "µm³"


def test_joined_table_of_several_scans(scans, tmp_path):
    flat, t2, stack, t3 = scans
    out = tmp_path / "results" / "cells.parquet"
    assert main(["export", str(flat), str(stack), "-o", str(out)]) == 0
    joined = pd.read_parquet(out)
    assert joined.columns[0] == "scan"
    assert joined["scan"].astype(str).tolist() == ["flat"] * len(t2) + ["stack"] * len(t3)
    assert set(joined.columns) == {"scan"} | set(t2.columns) | set(t3.columns)
    # a 2D scan has no volume, a 3D scan no area
    assert joined.loc[joined.scan == "flat", "volume_um3"].isna().all()
    assert np.allclose(joined.loc[joined.scan == "stack", "volume_um3"], t3["volume_um3"])
    # units and descriptions travel with the columns
    schema = pq.read_schema(out)
    assert schema.field("volume_um3").metadata[b"unit"].decode() == "µm³"
    meta = read_table_metadata(out)
    assert meta["scans"] == ["flat", "stack"] and meta["version"] == "0.1.0"
    # anndata of the joined table: obs names carry the scan
    adata = export_tables([flat, stack], tmp_path / "all.h5ad")
    import anndata as ad

    a = ad.read_h5ad(adata)
    assert a.obs_names[0] == "flat:1" and a.obs["scan"].nunique() == 2


def test_single_scan_parquet_gets_a_scan_column(scans, tmp_path):
    flat, table, _, _ = scans
    out = export_tables([flat], tmp_path / "cells.parquet", fmt="parquet")
    joined = pd.read_parquet(out)
    assert (joined["scan"] == "flat").all() and len(joined) == len(table)


def test_export_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "no cell table" in capsys.readouterr().err
