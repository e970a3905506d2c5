"""Per-cell morphology and intensity in physical units, chunk by chunk.

Two passes over the label image keep memory bounded by one chunk plus the
cells crossing it, whatever the scan's size:

1. every chunk is reduced to per-id partial sums (pixel count, coordinate
   sums, bounding box); partials of cells that cross chunk borders are
   combined into one row per cell (:mod:`cellseg.measure.chunks`);
2. every cell is assigned to the chunk holding its bounding box's first
   corner; per chunk, the union of its cells' boxes (grown by the ring width)
   is read once, and all its cells are measured at once: per-label reductions
   over the region's pixels, outlines traced with OpenCV (2D), meshes per cell
   smoothed together (3D) (:mod:`cellseg.measure.regions`). Chunks run in
   parallel threads (:mod:`cellseg.measure.cells`).

Neighbour counts and nearest-neighbour distances come from the centroids
(:class:`scipy.spatial.cKDTree`), in µm.

Written to a file (:class:`TableWriter`, as the measure stage does), the table
is never whole in memory: measured rows wait in a scratch file beside it and
go to the Parquet file in ``cell_id`` order, one row group
(:data:`ROW_GROUP_ROWS` rows) at a time. What memory holds per cell is the
output of pass 1 (id, centroid, box, pixel count) and the centroids' k-d tree,
about 0.1 KB.

Where things are:

========================================  ==============================================
:mod:`~cellseg.measure.columns`           the column schema: names, units, descriptions,
                                          dtypes (:func:`column_schema`); add a column here
:mod:`~cellseg.measure.regions`           every cell of a region at once (:func:`measure_region`)
:mod:`~cellseg.measure.outlines`          2D outlines, hulls, Feret diameters of many cells
:mod:`~cellseg.measure.surfaces`          3D surfaces, Euler numbers, hulls of many cells
:mod:`~cellseg.measure.shape`             morphology of one cell crop (:func:`shape_features`),
                                          the reference the region functions agree with
:mod:`~cellseg.measure.intensity`         intensities of a cell and of its ring
:mod:`~cellseg.measure.neighbours`        neighbour counts and nearest neighbours (k-d tree)
:mod:`~cellseg.measure.chunks`            pass 1 over the label image; chunk readers
:mod:`~cellseg.measure.cells`             pass 2 and :func:`measure_cells`
:mod:`~cellseg.measure.table`             the Parquet table: :class:`TableWriter`, readers
========================================  ==============================================

The full list of columns, with units and meanings, is built by
:func:`column_schema` and documented in the README ("Cell table columns");
:func:`write_table` stores it in the Parquet schema (per field ``unit`` and
``description``, and the whole list as ``cellseg.columns``).
"""

from cellseg.measure.cells import measure_cells
from cellseg.measure.columns import (
    DEFAULT_NEIGHBOR_RADIUS_UM,
    DEFAULT_RING_WIDTH_UM,
    INTENSITY_STATS,
    OD_STATS,
    TABLE_VERSION,
    Column,
    brightfield_columns,
    channel_keys,
    column_schema,
)
from cellseg.measure.intensity import intensity_stats, ring_mask
from cellseg.measure.neighbours import neighbor_features
from cellseg.measure.shape import outline_length, shape_features, surface_area
from cellseg.measure.table import (
    ROW_GROUP_ROWS,
    TableWriter,
    read_table_columns,
    read_table_metadata,
    write_table,
)

__all__ = [
    "DEFAULT_NEIGHBOR_RADIUS_UM",
    "DEFAULT_RING_WIDTH_UM",
    "INTENSITY_STATS",
    "OD_STATS",
    "ROW_GROUP_ROWS",
    "TABLE_VERSION",
    "Column",
    "TableWriter",
    "brightfield_columns",
    "channel_keys",
    "column_schema",
    "intensity_stats",
    "measure_cells",
    "neighbor_features",
    "outline_length",
    "read_table_columns",
    "read_table_metadata",
    "ring_mask",
    "shape_features",
    "surface_area",
    "write_table",
]
