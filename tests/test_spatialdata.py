"""SpatialData export: written and read back with ``spatialdata.read_zarr``.

spatialdata lives in its own venv (``make spatialdata-venv``, which ``make test``
builds): it needs Python >= 3.12 for its current release and would move pins of
.venv. The export and the read-back run there in a subprocess; the results
are compared here with the scans' own labels and tables.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cellseg.cli import main

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-spatialdata" / "bin" / "python"

READ_BACK = """
import json, sys
import numpy as np, spatialdata as sd, zarr
from spatialdata.transformations import get_transformation
store = sd.read_zarr(sys.argv[1])
sources = json.loads(sys.argv[2])
out = {"images": sorted(store.images), "labels": sorted(store.labels),
       "shapes": sorted(store.shapes), "tables": sorted(store.tables), "scans": {}}
table = store.tables["cells"]
out["attrs"] = dict(table.uns["spatialdata_attrs"])
for scan, image in sources.items():
    labels = store.labels[f"{scan}_labels"]
    src = zarr.open_group(image, mode="r")
    levels = [labels[k].to_dataset()["image"].values for k in labels]
    rows = table.obs["region"] == f"{scan}_labels"
    shapes = store.shapes[f"{scan}_outlines"]
    scale = get_transformation(labels, to_coordinate_system=scan).scale.tolist()
    out["scans"][scan] = {
        "level0_equal": bool(np.array_equal(levels[0], src["labels/cells/0"][:])),
        "level_shapes": [list(lv.shape) for lv in levels],
        "image_equal": bool(np.array_equal(
            store.images[f"{scan}_image"]["scale0"].to_dataset()["image"].values, src["0"][:])),
        "scale": scale,
        "coordinate_systems": sorted(sd.transformations.get_transformation(
            labels, get_all=True)),
        "cell_ids": table.obs.loc[rows, "cell_id"].astype(int).tolist(),
        "spatial": table.obsm["spatial"][rows.to_numpy()].tolist(),
        "geometry": sorted(set(shapes.geometry.geom_type)),
        "shape_ids": shapes.index.astype(int).tolist(),
        "areas": shapes.geometry.area.tolist(),
        "centres": [[p.x, p.y] if p.geom_type == "Point" else None for p in shapes.geometry],
        "radius": shapes["radius"].tolist() if "radius" in shapes else None,
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def spatialdata_python():
    if not PYTHON.exists():
        pytest.skip(
            f"{PYTHON.parent.parent.name} is not built (`make spatialdata-venv`; needs the "
            "package index): the SpatialData read-back is skipped"
        )
    return PYTHON


@pytest.mark.slow
def test_store_reads_back_with_images_labels_outlines_and_annotating_table(
    spatialdata_python, result2d, result3d, tmp_path
):
    store = tmp_path / "cells.zarr"
    proc = subprocess.run(
        [str(spatialdata_python), "-m", "cellseg.cli", "-q", "export", str(result2d),
         str(result3d), "--format", "spatialdata", "-o", str(store)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sources = {"slide": str(result2d / "slide.ome.zarr"), "stack": str(result3d / "stack.ome.zarr")}
    proc = subprocess.run(
        [str(spatialdata_python), "-c", READ_BACK, str(store), json.dumps(sources)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["images"] == ["slide_image", "stack_image"]
    assert out["labels"] == ["slide_labels", "stack_labels"]
    assert out["shapes"] == ["slide_outlines", "stack_outlines"]
    assert out["tables"] == ["cells"]
    assert out["attrs"] == {
        "region": ["slide_labels", "stack_labels"],
        "region_key": "region",
        "instance_key": "cell_id",
    }
    for scan, outdir, spacing in (
        ("slide", result2d, [0.5, 0.5]),
        ("stack", result3d, [2.0, 0.5, 0.5]),
    ):
        got = out["scans"][scan]
        table = pd.read_parquet(outdir / "cells.parquet")
        labels = zarr.open_group(str(outdir / f"{scan}.ome.zarr" / "labels" / "cells"), mode="r")
        n_levels = len(labels.attrs["ome"]["multiscales"][0]["datasets"])
        # the pyramid is spatialdata's own, with the levels of the scan's
        assert got["level0_equal"] and n_levels >= 2
        assert got["level_shapes"] == [list(labels[str(i)].shape) for i in range(n_levels)]
        assert got["image_equal"]
        assert got["scale"] == spacing and got["coordinate_systems"] == [scan]
        assert got["cell_ids"] == table["cell_id"].tolist() == got["shape_ids"]
        axes = ["x", "y"] + (["z"] if len(spacing) == 3 else [])
        steps = dict(zip(["z", "y", "x"][-len(spacing) :], spacing))
        expected = np.stack(
            [(table[f"centroid_{a}_px"] + 0.5) * steps[a] for a in axes], axis=1
        )  # µm, pixel corners on the grid
        spatial = np.array(got["spatial"], float)[:, : len(axes)]
        np.testing.assert_allclose(spatial, expected)
        if scan == "slide":
            # polygons along pixel edges: each one's area is the cell's pixel count
            assert set(got["geometry"]) <= {"Polygon", "MultiPolygon"}
            np.testing.assert_allclose(got["areas"], table["n_pixels"])
        else:
            assert got["geometry"] == ["Point"]
            centres = np.array(got["centres"])
            np.testing.assert_allclose(centres[:, 0], table["centroid_x_px"] + 0.5)
            np.testing.assert_allclose(
                got["radius"], table["equivalent_diameter_um"] / 2 / steps["x"]
            )


def test_without_spatialdata_the_export_is_a_one_line_error(result2d, tmp_path, capsys):
    try:
        import spatialdata  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("spatialdata is installed in this environment")
    out = tmp_path / "cells.zarr"
    assert main(["export", str(result2d), "--format", "spatialdata", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "make spatialdata-venv" in err and not out.exists()
    assert zarr.open_group(str(result2d / "slide.ome.zarr"), mode="r")  # input untouched
