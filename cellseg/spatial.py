"""SpatialData stores of cellseg results (``cellseg export OUTDIR... --format spatialdata``).

One Zarr store (read with ``spatialdata.read_zarr``, shown by
napari-spatialdata) holds, for every scan ``<scan>``, in a coordinate system
of its own named ``<scan>`` (scans are not registered to each other; units µm):

- ``<scan>_image``: the image, ``c, (z,) y, x``, with its pyramid (Y and X
  halved per level, as the scan's OME-Zarr);
- ``<scan>_labels``: the cell labels (the corrected labels once a review saved
  corrections and measured them, else ``labels/cells``), with the same pyramid;
- ``<scan>_outlines``: the cells as shapes, indexed by ``cell_id``. 2D scans:
  **polygons** along the pixel edges of each cell (:func:`cellseg.geojson.mask_polygons`,
  holes kept, a cell in pieces a MultiPolygon). 3D scans: **circles** (spatialdata
  shapes are 2D): at the centroid's x, y with the radius of the cell's
  equivalent sphere;

and one table ``cells``: the cell tables of all scans as AnnData
(:func:`cellseg.export.to_anndata`: features in ``X``, identifiers in
``obs``), annotating the label images: ``obs["region"]`` names the scan's
labels element, ``obs["cell_id"]`` (the instance key) its label value.
``obsm["spatial"]`` holds the centroids in µm (``x, y[, z]``) in the scan's
coordinate system of the store, where pixel corners lie on the grid (pixel
``i`` spans ``[i, i + 1)`` times the pixel size): the table's
``centroid_*_um`` plus half a pixel.

spatialdata is imported only here, when a store is written; it needs Python
3.12 or newer for its current release, and moves pins of cellseg's main
environment, so ``make spatialdata-venv`` builds it a venv of its own. The
store is written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from cellseg.atomic import remove_path, remove_stale_siblings, replace_path, temp_sibling
from cellseg.errors import InputError
from cellseg.geojson import cell_features
from cellseg.io import open_labels
from cellseg.io.metadata import ome_attrs

__all__ = ["TABLE", "element_name", "write_spatialdata"]

#: Name of the cell table in the store.
TABLE = "cells"


def element_name(scan: str, kind: str) -> str:
    """The store's element name of a scan's ``image``, ``labels`` or ``outlines``.

    Examples
    --------
    >>> element_name("slide 1.ome", "labels")
    'slide_1_ome_labels'
    """
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', str(scan))}_{kind}"


def _image_info(image: Path) -> dict[str, Any]:
    """Axes, level-0 pixel size and pyramid levels of an OME-Zarr image of cellseg."""
    group = zarr.open_group(str(image), mode="r")
    multiscale = ome_attrs(group)["multiscales"][0]
    axes = [a["name"] for a in multiscale["axes"]]
    scale = next(
        t["scale"]
        for t in multiscale["datasets"][0]["coordinateTransformations"]
        if t["type"] == "scale"
    )
    spatial = [a for a in axes if a in ("z", "y", "x")]
    spacing = {a: float(scale[axes.index(a)]) for a in spatial}
    return {
        "group": group,
        "axes": axes,
        "spatial": spatial,
        "spacing": spacing,
        "levels": [d["path"] for d in multiscale["datasets"]],
    }


def _scale_factors(levels: int, spatial: Sequence[str]) -> list | None:
    """spatialdata's pyramid of ``levels`` levels: Y and X halved per level, not Z."""
    if levels < 2:
        return None
    if "z" in spatial:
        return [{"z": 1, "y": 2, "x": 2}] * (levels - 1)
    return [2] * (levels - 1)


def _outlines(label_image: Any, table: pd.DataFrame, spacing: dict[str, float], transform: Any):
    """The cells as a GeoDataFrame: polygons (2D) or circles (3D), indexed by ``cell_id``."""
    import geopandas as gpd  # heavy, with spatialdata
    from shapely.geometry import Point, shape
    from spatialdata.models import ShapesModel

    ids = table["cell_id"].to_numpy(np.int64)
    if label_image.ndim == 2:
        features = cell_features(label_image, table)
        geometry = {int(f["id"]): shape(f["geometry"]) for f in features}
        frame = gpd.GeoDataFrame(
            geometry=[geometry[int(i)] for i in ids], index=pd.Index(ids, name="cell_id")
        )
    else:
        # circles in the xy plane: spatialdata's shapes are 2D
        x = table["centroid_x_px"].to_numpy(float) + 0.5
        y = table["centroid_y_px"].to_numpy(float) + 0.5
        radius = table["equivalent_diameter_um"].to_numpy(float) / 2 / spacing["x"]
        frame = gpd.GeoDataFrame(
            {"radius": radius},
            geometry=[Point(a, b) for a, b in zip(x, y)],
            index=pd.Index(ids, name="cell_id"),
        )
    return ShapesModel.parse(frame, transformations=transform)


def write_spatialdata(
    scans: Sequence[tuple[str, Path, str, pd.DataFrame]],
    adata: Any,
    output: str | Path,
) -> Path:
    """Write several scans' images, labels, outlines and cell table as one SpatialData store.

    Parameters
    ----------
    scans : sequence of (name, image, labels, table)
        Per scan: its name, its OME-Zarr image, the label image's name
        (``cells`` or ``cells_corrected``) and its cell table.
    adata : anndata.AnnData
        The joined cell table (:func:`cellseg.export.to_anndata` of the tables
        with a ``scan`` column), in the order of `scans`.
    output : path
        The store to write (``.zarr``); an existing one is replaced when the
        new one is whole.

    Returns
    -------
    Path
        The written store.
    """
    try:
        import spatialdata as sd  # heavy, and installed apart (see the module notes)
    except ImportError:
        raise InputError(
            "the spatialdata export needs the spatialdata package: pip install "
            "'cellseg[spatialdata]' (spatialdata >= 0.8 needs Python >= 3.12), or run it "
            "from the venv that `make spatialdata-venv` builds (.venv-spatialdata)"
        ) from None
    import dask.array as da
    from spatialdata.models import (
        Image2DModel,
        Image3DModel,
        Labels2DModel,
        Labels3DModel,
        TableModel,
    )
    from spatialdata.transformations import Scale

    output = Path(output)
    images, labels, shapes = {}, {}, {}
    regions, spatial = [], []
    for name, image, label_name, table in scans:
        info = _image_info(image)
        axes, space = info["axes"], info["spatial"]
        if name in regions:
            raise InputError(f"scan name {name!r} repeats; each scan goes in once")
        transform = {
            name: Scale([info["spacing"][a] for a in space], axes=tuple(space)),
        }
        three = "z" in space
        pixels = da.from_zarr(info["group"][info["levels"][0]])
        if "c" not in axes:
            pixels = pixels[None]
        factors = _scale_factors(len(info["levels"]), space)
        model = Image3DModel if three else Image2DModel
        images[element_name(name, "image")] = model.parse(
            pixels, dims=("c", *space), transformations=transform, scale_factors=factors
        )
        label_image = open_labels(image, label_name)
        lmodel = Labels3DModel if three else Labels2DModel
        labels[element_name(name, "labels")] = lmodel.parse(
            da.from_zarr(label_image),
            dims=tuple(space),
            transformations=transform,
            scale_factors=factors,
        )
        flat = Scale([info["spacing"]["x"], info["spacing"]["y"]], axes=("x", "y"))
        shapes[element_name(name, "outlines")] = _outlines(
            label_image, table, info["spacing"], {name: flat}
        )
        regions.append(name)
        order = [a for a in ("x", "y", "z") if a in space]
        centroids = np.stack(
            [(table[f"centroid_{a}_px"].to_numpy(float) + 0.5) * info["spacing"][a] for a in order],
            axis=1,
        )
        spatial.append(centroids)
    adata = adata.copy()
    region = [element_name(str(s), "labels") for s in adata.obs["scan"].astype(str)]
    adata.obs["region"] = pd.Categorical(
        region, categories=[element_name(n, "labels") for n in regions]
    )
    adata.obs["cell_id"] = adata.obs["cell_id"].astype(np.int64)
    width = max(c.shape[1] for c in spatial)
    adata.obsm["spatial"] = np.concatenate(
        [np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values=np.nan) for c in spatial]
    )
    table = TableModel.parse(
        adata,
        region=[element_name(n, "labels") for n in regions],
        region_key="region",
        instance_key="cell_id",
    )
    store = sd.SpatialData(images=images, labels=labels, shapes=shapes, tables={TABLE: table})
    tmp = temp_sibling(output)
    remove_stale_siblings(output)
    remove_path(tmp)
    try:
        store.write(tmp)
        replace_path(tmp, output)
    except BaseException:
        remove_path(tmp)
        raise
    return output
