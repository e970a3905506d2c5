"""GeoJSON of the cells for QuPath: label image → pixel-edge polygons → FeatureCollection.

One GeoJSON Feature per cell of a 2D label image, in the form QuPath's
*File → Import objects from file* reads (``cellseg export OUTDIR --format
geojson``, where :func:`cellseg.export.export_geojson` picks the label image:
``labels/cells_corrected`` once a review saved corrections, else
``labels/cells``):

- ``geometry``: the cell's outline as a ``Polygon`` (a cell in several pieces:
  a ``MultiPolygon``), its vertices at pixel corners in full-resolution pixel
  coordinates ``x, y`` (the image's top-left corner is ``0, 0``, pixel
  ``(row, col)`` covers ``[col, col + 1] × [row, row + 1]``), holes as interior
  rings, collinear vertices merged. The outline follows pixel edges, so a
  polygon's area is exactly the cell's pixel count. Exterior rings turn
  counterclockwise in ``x, y`` taken as numbers, holes clockwise (RFC 7946);
  pieces are 4-connected (pixels that touch only at a corner are two pieces
  touching at a point).
- ``id``: the cell id (the label value, ``cell_id`` of the table);
- ``properties.objectType``: ``"detection"``;
- ``properties.measurements``: the numeric columns of the cell's row of the
  table (``cell_id`` included, to find the row again; booleans as 0 / 1; NaN
  left out);
- ``properties.classification``: ``{"name", "color": [r, g, b]}`` where
  ``OUTDIR/classes.parquet`` (keyed by ``cell_id``, a ``class`` column and an
  optional ``color`` column, ``#rrggbb`` or ``[r, g, b]``) gives the cell a
  class. Without a colour, QuPath's own colours for its standard classes
  (``Positive``, ``Negative``, ``1+``, ``Tumor``, ...), else one derived from the
  name, the same in every scan.

The label image is read a region at a time: cells are grouped by the tile
(:data:`TILE` pixels) their bounding box starts in, and each group's region,
the union of its cells' boxes (from the table), is read once, so memory
stays bounded by a tile plus the largest cell, never the scan. Features are
written one at a time to a temporary file renamed into place when whole.
3D scans are refused: QuPath's objects are 2D.

The outlines are traced with OpenCV's ``findContours`` (Suzuki's border
following, outer borders with their holes) on the cell's mask upscaled
twice, whose border pixels map exactly onto the corners of the original
pixels.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cellseg.atomic import atomic_path
from cellseg.errors import InputError
from cellseg.progress import progress

__all__ = [
    "CLASSES_FILE",
    "TILE",
    "cell_features",
    "class_color",
    "mask_polygons",
    "polygon_area",
    "read_classes",
    "write_geojson",
]

#: Edge in pixels of the tiles the cells are grouped by (rounded to the label chunks).
TILE = 1024
#: The cell classes of a scan, keyed by ``cell_id`` (``class``, optional ``color``).
CLASSES_FILE = "classes.parquet"

#: QuPath's colours of its standard classes.
QUPATH_COLORS: dict[str, tuple[int, int, int]] = {
    "Positive": (200, 50, 50),
    "Negative": (90, 90, 180),
    "1+": (255, 215, 0),
    "2+": (225, 150, 50),
    "3+": (200, 50, 50),
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
}

_BBOX = ("bbox_y_start_px", "bbox_y_stop_px", "bbox_x_start_px", "bbox_x_stop_px")

# ---------------------------------------------------------------------------- outlines


def mask_polygons(mask: np.ndarray, offset: Sequence[int] = (0, 0)) -> list[list[np.ndarray]]:
    """The outline of a 2D mask along pixel edges: one polygon per 4-connected piece.

    Parameters
    ----------
    mask : (M, N) array of bool
        The pixels of one object.
    offset : (row, col)
        Position of ``mask[0, 0]`` in the image; added to the vertices.

    Returns
    -------
    list of list of (K, 2) int64 arrays
        Per piece (in raster order of its first pixel), its exterior ring then
        its holes; each ring closed (first vertex repeated last), vertices
        ``x, y`` at pixel corners, no collinear or repeated vertex.

    Examples
    --------
    >>> ring = np.ones((3, 3), bool)
    >>> ring[1, 1] = False
    >>> [shell, hole] = mask_polygons(ring, offset=(10, 20))[0]
    >>> shell.tolist()
    [[20, 10], [23, 10], [23, 13], [20, 13], [20, 10]]
    >>> hole.tolist()
    [[21, 11], [21, 12], [22, 12], [22, 11], [21, 11]]
    >>> polygon_area(mask_polygons(ring)[0])
    8.0
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask_polygons takes a 2D mask, got shape {mask.shape}")
    n, pieces = cv2.connectedComponents(mask.view(np.uint8), connectivity=4)
    if n == 2:  # one piece, the common case
        boxes, pieces = [(slice(0, mask.shape[0]), slice(0, mask.shape[1]))], mask
    else:
        boxes = ndi.find_objects(pieces)
    polygons = []
    for k, box in enumerate(boxes, start=1):
        if box is None:
            continue
        rings = _piece_rings(pieces[box] == k)
        shift = np.array([offset[1] + box[1].start, offset[0] + box[0].start], np.int64)
        polygons.append([ring + shift for ring in rings])
    return polygons


def _piece_rings(piece: np.ndarray) -> list[np.ndarray]:
    """Exterior ring and holes of one 4-connected piece, in the piece's corner coordinates.

    Upscaled twice, each pixel is a 2 × 2 block; the border pixels that
    ``findContours`` follows (outer border and hole borders alike) then sit at
    upscaled indices ``2c - 1`` or ``2c`` next to corner ``c`` (two pixels of
    padding: ``u + 2``), so ``(u + 1) // 2 - 1`` is the corner. Diagonal steps
    collapse onto one corner, leaving only axis-aligned edges along the
    pixels' sides.
    """
    up = cv2.resize(piece.view(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    up = cv2.copyMakeBorder(up, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    shells, holes = [], []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        ring = _simplify((contour[:, 0, :].astype(np.int64) + 1) // 2 - 1)
        if len(ring) < 4:  # cannot happen for a non-empty piece; guards degenerate input
            continue
        if parent < 0:
            shells.append(_oriented(ring, positive=True))
        else:
            holes.append(_oriented(ring, positive=False))
    # A 4-connected piece is one 8-connected component: one exterior ring.
    return shells[:1] + holes


def _simplify(points: np.ndarray) -> np.ndarray:
    """The cyclic axis-aligned path `points` as a closed ring, no repeated or collinear point.

    A vertex stays where the path turns: its incoming and outgoing edges are
    not both vertical or both horizontal.
    """
    nxt = np.concatenate([points[1:], points[:1]])
    points = points[(points != nxt).any(axis=1)]
    if not len(points):
        return points
    nxt = np.concatenate([points[1:], points[:1]])
    vertical = nxt[:, 0] == points[:, 0]  # the edge leaving each vertex
    turns = vertical != np.concatenate([vertical[-1:], vertical[:-1]])
    points = points[turns]
    return np.concatenate([points, points[:1]])


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _oriented(ring: np.ndarray, *, positive: bool) -> np.ndarray:
    return ring if (_signed_area(ring) > 0) == positive else ring[::-1].copy()


def polygon_area(polygon: Sequence[Any]) -> float:
    """Area of a polygon given as rings (exterior first, then holes), by the shoelace formula.

    Parameters
    ----------
    polygon : sequence of (K, 2) arrays or nested lists
        Closed rings of ``x, y`` vertices, as in a GeoJSON ``Polygon``.

    Examples
    --------
    >>> shell = [[0, 0], [4, 0], [4, 3], [0, 3], [0, 0]]
    >>> hole = [[1, 1], [1, 2], [2, 2], [2, 1], [1, 1]]
    >>> polygon_area([shell, hole])
    11.0
    """
    areas = [abs(_signed_area(np.asarray(ring, np.float64))) for ring in polygon]
    return areas[0] - sum(areas[1:]) if areas else 0.0


def _geometry(polygons: list[list[np.ndarray]]) -> dict[str, Any]:
    coords = [[ring.tolist() for ring in polygon] for polygon in polygons]
    if len(coords) == 1:
        return {"type": "Polygon", "coordinates": coords[0]}
    return {"type": "MultiPolygon", "coordinates": coords}


# ---------------------------------------------------------------------------- classes


def class_color(name: str) -> list[int]:
    """The colour QuPath shows a class in: its own for standard classes, else one from the name.

    Examples
    --------
    >>> class_color("Positive")
    [200, 50, 50]
    >>> class_color("my class") == class_color("my class")
    True
    """
    if name in QUPATH_COLORS:
        return list(QUPATH_COLORS[name])
    seed = zlib.crc32(name.encode("utf-8"))
    rng = np.random.default_rng(seed)
    return [int(v) for v in rng.integers(40, 230, size=3)]


def _parse_color(value: Any, name: str) -> list[int]:
    if isinstance(value, str) and value.strip():
        text = value.strip().lstrip("#")
        if len(text) == 6:
            try:
                return [int(text[i : i + 2], 16) for i in (0, 2, 4)]
            except ValueError:
                pass
    elif value is not None and not isinstance(value, str):
        rgb = np.asarray(value).ravel()
        if rgb.size == 3 and np.all(np.isfinite(rgb.astype(float))):
            return [int(np.clip(v, 0, 255)) for v in rgb]
    return class_color(name)


def read_classes(outdir: str | Path) -> pd.DataFrame | None:
    """The cells' classes from ``OUTDIR/classes.parquet``, or None if there is none.

    Returns
    -------
    pandas.DataFrame or None
        Indexed by ``cell_id``: ``name`` and ``color`` (``[r, g, b]``) of each
        classified cell (cells without a class left out).

    Raises
    ------
    InputError
        If the file has no ``cell_id`` or ``class`` column.
    """
    path = Path(outdir) / CLASSES_FILE
    if not path.exists():
        return None
    table = pd.read_parquet(path)
    missing = [c for c in ("cell_id", "class") if c not in table]
    if missing:
        raise InputError(f"{path}: has no {' or '.join(missing)} column; run `cellseg classify`")
    table = table[table["class"].notna()].drop_duplicates("cell_id", keep="last")
    names = table["class"].astype(str).tolist()
    colors = table["color"].tolist() if "color" in table else [None] * len(names)
    return pd.DataFrame(
        {
            "name": names,
            "color": [_parse_color(c, n) for c, n in zip(colors, names)],
        },
        index=pd.Index(table["cell_id"].to_numpy(np.int64), name="cell_id"),
    )


# ---------------------------------------------------------------------------- features


def _measurements(rows: pd.DataFrame) -> list[dict[str, float | int]]:
    """Each row's numeric columns as name → value; NaN and infinities left out."""
    columns = []
    for name in rows.columns:
        values = rows[name]
        if pd.api.types.is_bool_dtype(values):
            columns.append((name, values.astype(np.int64).tolist(), None))
        elif pd.api.types.is_integer_dtype(values):
            columns.append((name, values.astype(np.int64).tolist(), None))
        elif pd.api.types.is_float_dtype(values):
            array = values.to_numpy(np.float64)
            columns.append((name, array.tolist(), np.isfinite(array).tolist()))
    return [
        {name: vals[i] for name, vals, ok in columns if ok is None or ok[i]}
        for i in range(len(rows))
    ]


def cell_features(
    label_image: Any,
    table: pd.DataFrame,
    classes: pd.DataFrame | None = None,
    *,
    tile: int = TILE,
    show_progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """GeoJSON Features of the cells of a 2D label image, one per row of its table.

    Parameters
    ----------
    label_image : (Y, X) array-like
        The full-resolution label image (a zarr array is read a region at a time).
    table : pandas.DataFrame
        Its cell table: ``cell_id``, ``bbox_{y,x}_{start,stop}_px`` and the measurements.
    classes : pandas.DataFrame, optional
        :func:`read_classes`: ``name`` and ``color`` by ``cell_id``.
    tile : int
        Edge of the tiles the cells are grouped by, in pixels.
    show_progress : bool
        Show a progress bar over the tiles.

    Yields
    ------
    dict
        One Feature per cell, in tile order (row by row), by ``cell_id`` within a tile.

    Raises
    ------
    InputError
        If the label image is not 2D, the table lacks boxes, or a cell of the
        table is not where its box says (the table is older than the labels).
    """
    shape = tuple(int(s) for s in label_image.shape)
    if len(shape) != 2:
        raise InputError(
            f"GeoJSON outlines are 2D; this label image is {len(shape)}D {shape}: "
            "export the cell table as csv or anndata instead"
        )
    missing = [c for c in ("cell_id", *_BBOX) if c not in table]
    if missing:
        raise InputError(f"the cell table has no {', '.join(missing)} column(s); measure it again")
    chunks = getattr(label_image, "chunks", None)
    if chunks:
        edge = max(int(c) for c in chunks)
        tile = max(edge, tile // edge * edge)
    ids = table["cell_id"].to_numpy(np.int64)
    y0, y1, x0, x1 = (table[c].to_numpy(np.int64) for c in _BBOX)
    counts = table["n_pixels"].to_numpy(np.int64) if "n_pixels" in table else None
    tiles_x = -(-shape[1] // tile)
    keys = (y0 // tile) * tiles_x + x0 // tile
    order = np.lexsort((ids, keys))
    starts = np.flatnonzero(np.r_[True, np.diff(keys[order]) != 0])
    groups = np.split(order, starts[1:]) if len(order) else []
    for rows in progress(groups, desc="geojson", enabled=show_progress):
        ry0, ry1, rx0, rx1 = y0[rows].min(), y1[rows].max(), x0[rows].min(), x1[rows].max()
        region = np.asarray(label_image[ry0:ry1, rx0:rx1])
        measured = _measurements(table.iloc[rows])
        for k, i in enumerate(rows):
            crop = region[y0[i] - ry0 : y1[i] - ry0, x0[i] - rx0 : x1[i] - rx0] == ids[i]
            n = int(np.count_nonzero(crop))
            if n == 0 or (counts is not None and n != counts[i]):
                raise InputError(
                    f"cell {ids[i]} of the table is not in the label image as measured "
                    f"({n} pixels in its box); the table is older than the labels: "
                    "run `cellseg measure` again"
                )
            properties: dict[str, Any] = {
                "objectType": "detection",
                "measurements": measured[k],
            }
            if classes is not None and ids[i] in classes.index:
                cls = classes.loc[ids[i]]
                properties["classification"] = {"name": cls["name"], "color": cls["color"]}
            yield {
                "type": "Feature",
                "id": int(ids[i]),
                "geometry": _geometry(mask_polygons(crop, offset=(y0[i], x0[i]))),
                "properties": properties,
            }


# ---------------------------------------------------------------------------- files


def write_geojson(
    label_image: Any,
    table: pd.DataFrame,
    output: str | Path,
    *,
    classes: pd.DataFrame | None = None,
    show_progress: bool = True,
) -> Path:
    """Write the cells of a label image as a QuPath-importable GeoJSON FeatureCollection.

    Features (:func:`cell_features`) are written one at a time to a temporary
    file, renamed to `output` when whole.

    Parameters
    ----------
    label_image : (Y, X) array-like
        The full-resolution label image.
    table : pandas.DataFrame
        Its cell table.
    output : path
        The GeoJSON file.
    classes : pandas.DataFrame, optional
        :func:`read_classes`.
    show_progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        `output`.

    Raises
    ------
    InputError
        For a 3D label image, or a table that does not match it.
    """
    output = Path(output)
    features = cell_features(label_image, table, classes, show_progress=show_progress)
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for k, feature in enumerate(features):
            if k:
                f.write(",\n")
            f.write(json.dumps(feature, separators=(",", ":"), allow_nan=False))
        f.write("\n]}\n")
    return output
