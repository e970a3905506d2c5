"""Per-cell morphology and intensity in physical units, chunk by chunk.

Two passes over the label image keep memory bounded by one chunk plus the
cells crossing it, whatever the scan's size:

1. every chunk is reduced to per-id partial sums (pixel count, coordinate
   sums, bounding box); partials of cells that cross chunk borders are
   combined into one row per cell;
2. every cell is assigned to the chunk holding its bounding box's first
   corner; per chunk, the union of its cells' boxes (grown by the ring width)
   is read once, and each cell is measured on its own crop. Chunks run in
   parallel threads.

Neighbour counts and nearest-neighbour distances come from the centroids
(:class:`scipy.spatial.cKDTree`), in µm.

Written to a file (:class:`TableWriter`, as the measure stage does), the table
is never whole in memory: measured rows wait in a scratch file beside it and
go to the Parquet file in ``cell_id`` order, one row group
(:data:`ROW_GROUP_ROWS` rows) at a time. What memory holds per cell is the
output of pass 1 (id, centroid, box, pixel count) and the centroids' k-d tree,
about 0.1 KB.

Column names follow one scheme (after CellProfiler's *AreaShape* and
*Intensity* modules): ``<feature>[_<axis>][_<unit>]`` for morphology and
``[ring_]intensity_<statistic>_<channel>`` for intensities, the unit as a
suffix (``_um``, ``_um2``, ``_um3``, ``_px``, ``_deg``) where there is one. The
full list, with units and meanings, is built by :func:`column_schema` and
documented in the README ("Cell table columns"); :func:`write_table` stores it
in the Parquet schema (per field ``unit`` and ``description``, and the whole
list as ``cellseg.columns``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_RING_WIDTH_UM = 2.0
DEFAULT_NEIGHBOR_RADIUS_UM = 20.0
#: Version of the table's columns; a measure stage with another version is redone.
TABLE_VERSION = 2

INTENSITY_STATS = ("mean", "median", "std", "min", "max", "integrated")
_STAT_TEXT = {
    "mean": "mean",
    "median": "median",
    "std": "standard deviation (population)",
    "min": "minimum",
    "max": "maximum",
    "integrated": "sum",
}


# ----------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Column:
    """One column of the cell table.

    Attributes
    ----------
    name : str
        Column name.
    unit : str
        Physical unit (``"µm"``, ``"µm²"``, ``"µm³"``, ``"px"``, ``"deg"``,
        ``"raw"`` for grey values, ``"raw·px"`` for sums of grey values), or
        ``""`` for a dimensionless number, count or flag.
    description : str
        What the value means.
    dtype : str
        NumPy dtype of the column.
    """

    name: str
    unit: str
    description: str
    dtype: str = "float64"


def channel_keys(names: Sequence[str]) -> list[str]:
    """Column-name keys of channels: lower case, ``[a-z0-9_]``, unique.

    Parameters
    ----------
    names : sequence of str
        Channel names from the scan's metadata.

    Returns
    -------
    list of str
        One key per channel; ``c<index>`` where a name gives nothing usable or
        repeats an earlier key.

    Examples
    --------
    >>> channel_keys(["DAPI", "Alexa 488", "", "dapi"])
    ['dapi', 'alexa_488', 'c2', 'c3']
    """
    keys: list[str] = []
    for i, name in enumerate(names):
        key = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
        if not key or key in keys:
            key = f"c{i}"
        if key[0].isdigit():
            key = f"c{key}"
        keys.append(key)
    return keys


def column_schema(
    axes: str,
    channels: Sequence[str] = (),
    *,
    ring_width_um: float = DEFAULT_RING_WIDTH_UM,
    neighbor_radius_um: float = DEFAULT_NEIGHBOR_RADIUS_UM,
) -> list[Column]:
    """The columns of the cell table of a scan, in order.

    Parameters
    ----------
    axes : str
        Spatial axes, ``"yx"`` or ``"zyx"``.
    channels : sequence of str
        Channel keys (see :func:`channel_keys`), one block of intensity columns each.
    ring_width_um, neighbor_radius_um : float
        Parameters quoted in the descriptions.

    Returns
    -------
    list of Column
    """
    nd = len(axes)
    two = nd == 2
    px = "pixel" if two else "voxel"
    cols = [Column("cell_id", "", "label value of the cell in labels/cells", "uint32")]
    cols += [
        Column(f"centroid_{a}_um", "µm", f"centroid along {a} from the scan origin ({px} 0 centre)")
        for a in axes
    ]
    cols += [Column(f"centroid_{a}_px", "px", f"centroid along {a} in {px} indices") for a in axes]
    for a in axes:
        cols.append(Column(f"bbox_{a}_start_px", "px", f"bounding box start along {a}", "int64"))
        cols.append(Column(f"bbox_{a}_stop_px", "px", f"bounding box stop along {a}", "int64"))
    cols.append(Column("n_pixels", "px", f"{px} count", "int64"))
    if two:
        cols += [
            Column("area_um2", "µm²", "area: pixel count × pixel area"),
            Column(
                "perimeter_um", "µm", "length of the outline (marching squares), holes included"
            ),
        ]
    else:
        cols += [
            Column("volume_um3", "µm³", "volume: voxel count × voxel volume"),
            Column("surface_area_um2", "µm²", "area of the surface mesh (marching cubes)"),
        ]
    what = "disk of the same area" if two else "ball of the same volume"
    cols.append(Column("equivalent_diameter_um", "µm", f"diameter of the {what}"))
    ellipse = "ellipse" if two else "ellipsoid"
    same = f"the {ellipse} with the same second moments"
    cols.append(Column("major_axis_length_um", "µm", f"longest axis of {same}"))
    if not two:
        cols.append(Column("middle_axis_length_um", "µm", f"middle axis of {same}"))
    cols.append(Column("minor_axis_length_um", "µm", f"shortest axis of {same}"))
    if two:
        cols.append(Column("eccentricity", "", f"eccentricity of {same} (0 = circle)"))
    cols.append(Column("elongation", "", "major / minor axis length (1 = round)"))
    if two:
        cols.append(
            Column(
                "orientation_deg",
                "deg",
                "angle from the y (row) axis to the major axis, -90..90, positive towards +x",
            )
        )
    else:
        cols += [
            Column("orientation_polar_deg", "deg", "angle between the major axis and z, 0..90"),
            Column(
                "orientation_azimuth_deg",
                "deg",
                "angle from y to the major axis' projection on the yx plane, -90..90",
            ),
        ]
    squares = "the cell's pixel squares" if two else "the cell's voxel boxes"
    cols += [
        Column(
            "solidity",
            "",
            f"{px} count / {px} centres inside the convex hull of the cell's {px} centres "
            "(1 for a digitised convex shape)",
        ),
        Column("extent", "", f"{px} count / bounding box {px} count"),
    ]
    if two:
        cols.append(Column("form_factor", "", "4π area / perimeter² (1 = disk)"))
    else:
        cols.append(Column("sphericity", "", "π^(1/3) (6 volume)^(2/3) / surface area (1 = ball)"))
    cols.append(Column("feret_diameter_max_um", "µm", f"largest caliper width of {squares}"))
    if two:
        cols.append(Column("feret_diameter_min_um", "µm", f"smallest caliper width of {squares}"))
    cols += [
        Column(
            "euler_number",
            "",
            "objects − holes (8-connected)"
            if two
            else "objects − tunnels + cavities (26-connected)",
            "int64",
        ),
        Column("touches_border", "", "the cell touches the edge of the scan (flag)", "bool"),
        Column(
            "n_neighbors",
            "",
            f"other cells whose centroid lies within {neighbor_radius_um:g} µm of this one's",
            "int64",
        ),
        Column("nearest_neighbor_distance_um", "µm", "distance to the nearest other centroid"),
        Column("nearest_neighbor_id", "", "cell_id of the nearest other cell (0: none)", "uint32"),
        Column(
            "ring_n_pixels",
            "px",
            f"background {px}s within {ring_width_um:g} µm of the cell (the ring)",
            "int64",
        ),
    ]
    for ch in channels:
        for stat in INTENSITY_STATS:
            unit = "raw·px" if stat == "integrated" else "raw"
            text = _STAT_TEXT[stat]
            cols.append(
                Column(f"intensity_{stat}_{ch}", unit, f"{text} of channel {ch} in the cell")
            )
        for stat in INTENSITY_STATS:
            unit = "raw·px" if stat == "integrated" else "raw"
            text = _STAT_TEXT[stat]
            cols.append(
                Column(f"ring_intensity_{stat}_{ch}", unit, f"{text} of channel {ch} in the ring")
            )
        cols.append(
            Column(
                f"intensity_mean_corrected_{ch}",
                "raw",
                f"mean of channel {ch} in the cell minus the ring's median (background-corrected)",
            )
        )
    return cols


# ----------------------------------------------------------------------------- one cell
def shape_features(mask: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Morphology of one cell from a boolean crop around it.

    Parameters
    ----------
    mask : ndarray of bool, (Y, X) or (Z, Y, X)
        The cell's pixels, cropped to its bounding box (a larger crop changes
        only ``extent``).
    spacing : sequence of float
        Pixel size in µm per axis.

    Returns
    -------
    dict
        The morphology columns of :func:`column_schema` that depend on the cell
        alone (no centroid, bounding box or neighbours).

    Examples
    --------
    >>> square = np.ones((4, 4), bool)
    >>> f = shape_features(square, (0.5, 0.5))
    >>> f["area_um2"], f["feret_diameter_min_um"], round(f["feret_diameter_max_um"], 3)
    (4.0, 2.0, 2.828)
    """
    from skimage.measure import euler_number

    mask = np.asarray(mask, dtype=bool)
    nd = mask.ndim
    spacing = np.asarray(spacing, dtype=np.float64)
    n = int(np.count_nonzero(mask))
    size = n * float(np.prod(spacing))
    two = nd == 2
    out: dict[str, float] = {}

    # second moments in µm: the ellipse (ellipsoid) with the same covariance
    coords = np.argwhere(mask) * spacing
    if n > 1:
        cov = np.atleast_2d(np.cov(coords, rowvar=False, bias=True))
        w, v = np.linalg.eigh(cov)
        w, v = np.clip(w[::-1], 0, None), v[:, ::-1]
    else:
        w, v = np.zeros(nd), np.eye(nd)
    lengths = np.sqrt((16.0 if two else 20.0) * w)
    padded = np.pad(mask, 1).astype(np.float32)
    if two:
        out["area_um2"] = size
        out["perimeter_um"] = outline_length(padded, spacing)
        out["equivalent_diameter_um"] = 2.0 * math.sqrt(size / math.pi)
    else:
        out["volume_um3"] = size
        out["surface_area_um2"] = surface_area(padded, spacing)
        out["equivalent_diameter_um"] = (6.0 * size / math.pi) ** (1.0 / 3.0)
    out["major_axis_length_um"] = float(lengths[0])
    if not two:
        out["middle_axis_length_um"] = float(lengths[1])
    out["minor_axis_length_um"] = float(lengths[-1])
    if two:
        out["eccentricity"] = float(math.sqrt(1.0 - w[1] / w[0])) if w[0] > 0 else 0.0
    out["elongation"] = float(lengths[0] / lengths[-1]) if lengths[-1] > 0 else math.nan
    major = v[:, 0]
    if two:
        out["orientation_deg"] = _fold_angle(math.degrees(math.atan2(major[1], major[0])))
    else:
        if major[0] < 0:
            major = -major
        out["orientation_polar_deg"] = math.degrees(math.acos(min(1.0, abs(float(major[0])))))
        out["orientation_azimuth_deg"] = _fold_angle(math.degrees(math.atan2(major[2], major[1])))

    convex, feret_max, feret_min = _hull_features(mask, spacing)
    out["solidity"] = n / max(n, convex)
    out["extent"] = n / float(mask.size)
    if two:
        perimeter = out["perimeter_um"]
        out["form_factor"] = 4.0 * math.pi * size / perimeter**2 if perimeter > 0 else math.nan
    else:
        surface = out["surface_area_um2"]
        out["sphericity"] = (
            math.pi ** (1.0 / 3.0) * (6.0 * size) ** (2.0 / 3.0) / surface
            if surface > 0
            else math.nan
        )
    out["feret_diameter_max_um"] = feret_max
    if two:
        out["feret_diameter_min_um"] = feret_min
    out["euler_number"] = int(euler_number(padded > 0, connectivity=nd))
    return out


def _row_ends(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leading indices and first / last pixel of every non-empty row of the last axis.

    Every vertex of the convex hull of points placed around pixels lies at one
    end of a row: hulls are built from these, not from every pixel.
    """
    rows = mask.reshape(-1, mask.shape[-1])
    keep = np.flatnonzero(rows.any(axis=1))
    first = rows[keep].argmax(axis=1)
    last = rows.shape[1] - 1 - rows[keep, ::-1].argmax(axis=1)
    lead = np.stack(np.unravel_index(keep, mask.shape[:-1]), axis=1)
    return lead.astype(np.float64), first.astype(np.float64), last.astype(np.float64)


def _hull_features(mask: np.ndarray, spacing: np.ndarray) -> tuple[int, float, float]:
    """Convex pixel count and Feret diameters of a cell.

    The hull is that of the pixel centres (its vertices are row ends, see
    :func:`_row_ends`): the convex count is the number of pixel centres in it,
    equal to the pixel count for any digitised convex shape. The Feret
    diameters are those of the union of the pixel squares, the Minkowski sum
    of that hull and one pixel: along a direction ``u`` its width is the
    hull's plus ``sum(spacing * |u|)``, and the smallest width (2D) lies
    across a hull edge or an axis.

    Returns
    -------
    convex : int
        Pixel centres in the hull (at least the pixel count).
    feret_max, feret_min : float
        Largest and smallest caliper width in µm (``feret_min`` NaN in 3D).
    """
    from scipy.spatial import ConvexHull, QhullError

    nd = mask.ndim
    lead, first, last = _row_ends(mask)
    points = np.concatenate([np.column_stack([lead, first]), np.column_stack([lead, last])])
    points = points * spacing
    varying = np.ptp(points, axis=0) > 0
    normals = [np.eye(nd)]
    vertices = points
    convex = int(mask.size) if varying.sum() <= 1 else int(np.count_nonzero(mask))
    if varying.sum() >= 2:
        sub = np.flatnonzero(varying)
        try:
            hull = ConvexHull(points[:, sub])
        except QhullError:  # centres on a line or a tilted plane: no volume to count
            hull = None
            centred = points - points.mean(axis=0)
            normals.append(np.linalg.svd(centred, full_matrices=False)[2][-1:])
        if hull is not None:
            vertices = points[hull.vertices]
            facet = np.zeros((len(hull.equations), nd))
            facet[:, sub] = hull.equations[:, :-1]
            normals.append(facet)
            sub_shape = tuple(mask.shape[a] for a in sub)
            convex = _count_centres_in_hull(hull.equations, sub_shape, spacing[sub])
    # largest width: over pairs of hull vertices, each axis gap grown by one pixel
    feret_max = 0.0
    for start in range(0, len(vertices), 256):
        gap = np.abs(vertices[start : start + 256, None, :] - vertices[None, :, :]) + spacing
        feret_max = max(feret_max, float(np.sqrt((gap**2).sum(axis=-1)).max()))
    feret_min = math.nan
    if nd == 2:
        u = np.concatenate(normals)
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        proj = vertices @ u.T
        width = proj.max(axis=0) - proj.min(axis=0) + np.abs(u) @ spacing
        feret_min = float(width.min())
    return max(convex, int(np.count_nonzero(mask))), feret_max, feret_min


_TAUBIN = (0.5, -0.53)  # λ, μ
_TAUBIN_ITERATIONS = 10
_MIN_SMOOTH_VERTICES = 100


def _taubin(points: np.ndarray, neighbours_mean) -> np.ndarray:
    """Taubin (λ|μ) smoothing: removes the pixel staircase without shrinking the shape."""
    for _ in range(_TAUBIN_ITERATIONS):
        for factor in _TAUBIN:
            points = points + factor * (neighbours_mean(points) - points)
    return points


def _taubin_closed_curve(points: np.ndarray) -> np.ndarray:
    """:func:`_taubin` on a closed polyline, as one circular filter (FFT)."""
    n = len(points)
    cos = np.cos(2 * np.pi * np.fft.rfftfreq(n))
    gain = np.ones_like(cos)
    for factor in _TAUBIN:
        gain = gain * (1 - factor * (1 - cos))
    gain = gain**_TAUBIN_ITERATIONS
    # the mean and the fundamental (the outline's ellipse) pass unchanged, so an
    # outline of a few pixels keeps its size
    gain[: min(2, len(gain))] = 1.0
    return np.fft.irfft(np.fft.rfft(points, axis=0) * gain[:, None], n=n, axis=0)


def outline_length(padded: np.ndarray, spacing: Sequence[float]) -> float:
    """Perimeter of a 2D mask in µm: marching-squares outlines, Taubin-smoothed.

    The outlines of the mask at level 0.5 follow the pixel staircase; smoothing
    each closed outline (in µm) removes the staircase, so a digitised disk
    measures within about 1 % of its circumference. Holes count.

    Parameters
    ----------
    padded : ndarray, (Y, X)
        The mask with at least one background pixel around it.
    spacing : sequence of float
        Pixel size in µm per axis.
    """
    from skimage.measure import find_contours

    spacing = np.asarray(spacing, dtype=np.float64)
    total = 0.0
    for contour in find_contours(padded, 0.5, fully_connected="high"):
        ring = contour[:-1] * spacing
        if len(ring) > 2:
            ring = _taubin_closed_curve(ring)
        step = np.diff(np.vstack([ring, ring[:1]]), axis=0)
        total += float(np.sqrt((step**2).sum(axis=1)).sum())
    return total


def surface_area(padded: np.ndarray, spacing: Sequence[float]) -> float:
    """Surface area of a 3D mask in µm²: a marching-cubes mesh, Taubin-smoothed.

    The mesh of the mask at level 0.5 (in µm, so anisotropic voxels are
    handled) follows the voxel staircase; Taubin smoothing of its vertices
    removes it, so a digitised ball of radius 4 voxels or more measures within
    about 1 % of its sphere. Meshes of fewer than 100 vertices (cells of a few
    voxels) are left as they are.

    Parameters
    ----------
    padded : ndarray, (Z, Y, X)
        The mask with at least one background voxel around it.
    spacing : sequence of float
        Voxel size in µm per axis.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    verts, faces, _, _ = marching_cubes(
        padded, 0.5, spacing=tuple(float(s) for s in spacing), allow_degenerate=False
    )
    n = len(verts)
    if n >= _MIN_SMOOTH_VERTICES:  # a mesh of a few voxels is all staircase: keep it
        from scipy import sparse

        # the mean of each vertex's neighbours as one sparse matrix (rows sum to 1)
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        src = np.concatenate([edges[:, 0], edges[:, 1]])
        dst = np.concatenate([edges[:, 1], edges[:, 0]])
        order = np.argsort(src, kind="stable")
        degree = np.bincount(src, minlength=n)
        indptr = np.concatenate([[0], np.cumsum(degree)])
        weights = 1.0 / np.maximum(degree, 1)[src[order]]
        mean = sparse.csr_matrix((weights, dst[order], indptr), shape=(n, n))
        verts = _taubin(verts, lambda p: mean @ p)
    return float(mesh_surface_area(verts, faces))


def _fold_angle(deg: float) -> float:
    """An undirected axis' angle folded into (-90, 90]."""
    while deg > 90.0:
        deg -= 180.0
    while deg <= -90.0:
        deg += 180.0
    return deg


def _count_centres_in_hull(equations: np.ndarray, shape: Sequence[int], spacing: np.ndarray) -> int:
    """Pixel centres of a ``shape`` grid inside a convex hull (``n·p + b <= 0``).

    Along each row of the last axis the hull is an interval, bounded by the
    facets that face the row's two ends: counting whole rows at once keeps
    the work at rows × facets, not pixels × facets.
    """
    nd = len(shape)
    normals, offsets = equations[:, :-1], equations[:, -1]
    lead = (
        np.stack(
            [g.ravel() for g in np.meshgrid(*[np.arange(n) for n in shape[:-1]], indexing="ij")],
            axis=1,
        )
        * spacing[: nd - 1]
    )
    tol = 1e-9 * float(spacing.max())
    rhs = -(lead @ normals[:, :-1].T + offsets)  # (rows, facets): n_last · x <= rhs
    nx = normals[:, -1]
    up, down, flat = nx > 1e-12, nx < -1e-12, np.abs(nx) <= 1e-12
    hi = np.min(np.where(up, rhs / np.where(up, nx, 1.0), np.inf), axis=1)
    lo = np.max(np.where(down, rhs / np.where(down, nx, 1.0), -np.inf), axis=1)
    blocked = np.any(flat & (rhs < -tol), axis=1)
    step = float(spacing[-1])
    first = np.clip(np.ceil(lo / step - 1e-9), 0, shape[-1])
    last = np.clip(np.floor(hi / step + 1e-9), -1, shape[-1] - 1)
    counts = np.where(blocked, 0, np.maximum(0, last - first + 1))
    return int(counts.sum())


def intensity_stats(values: np.ndarray) -> tuple[float, ...]:
    """Mean, median, std, min, max and sum of some grey values (NaN when none; sum 0).

    Examples
    --------
    >>> intensity_stats(np.array([1.0, 2.0, 6.0]))
    (3.0, 2.0, 2.160246899469287, 1.0, 6.0, 9.0)
    """
    if values.size == 0:
        return (math.nan,) * 5 + (0.0,)
    v = values.astype(np.float64, copy=False)
    return (
        float(v.mean()),
        float(np.median(v)),
        float(v.std()),
        float(v.min()),
        float(v.max()),
        float(v.sum()),
    )


def ring_mask(
    mask: np.ndarray, labels: np.ndarray, spacing: Sequence[float], width_um: float
) -> np.ndarray:
    """Background pixels within ``width_um`` of a cell (its ring).

    Parameters
    ----------
    mask : ndarray of bool
        The cell, in a crop that reaches ``width_um`` beyond it where the scan allows.
    labels : ndarray of int, same shape
        The label image on the same crop: pixels of other cells are left out.
    spacing : sequence of float
        Pixel size in µm per axis.
    width_um : float
        Ring width in µm (centre to centre).

    Returns
    -------
    ndarray of bool
    """
    from scipy import ndimage as ndi

    if width_um <= 0 or mask.all():
        return np.zeros(mask.shape, bool)
    dist = ndi.distance_transform_edt(~mask, sampling=tuple(float(s) for s in spacing))
    return (dist > 0) & (dist <= width_um * (1 + 1e-9)) & (labels == 0)


def neighbor_features(
    centroids_um: np.ndarray, ids: np.ndarray, radius_um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour counts and nearest neighbours from cell centroids.

    Parameters
    ----------
    centroids_um : ndarray, (n, ndim)
        Centroids in µm.
    ids : ndarray, (n,)
        Cell ids.
    radius_um : float
        Neighbourhood radius in µm.

    Returns
    -------
    n_neighbors : ndarray of int64
        Other centroids within ``radius_um``.
    distance_um : ndarray of float64
        Distance to the nearest other centroid (NaN for a lone cell).
    nearest_id : ndarray of uint32
        Its id (0 for a lone cell).

    Examples
    --------
    >>> n, d, k = neighbor_features(np.array([[0.0, 0.0], [0.0, 10.0]]), np.array([1, 2]), 20)
    >>> n.tolist(), d.tolist(), k.tolist()
    ([1, 1], [10.0, 10.0], [2, 1])
    """
    points = np.asarray(centroids_um, dtype=np.float64)
    return _Neighbors(lambda lo, hi: points[lo:hi], ids, radius_um).block(0, len(ids))


class _Neighbors:
    """Neighbour features of a range of cells at a time, from a k-d tree of their surroundings.

    The tree of a range ``lo:hi`` holds only the cells whose centroids lie in
    the range's bounding box grown by the radius; a cell whose nearest
    neighbour is not found inside that box is searched again in a box four
    times wider, until the box holds every cell. The results equal those of
    one tree over all cells, but when ranges of ids are near each other in
    space (as stitched ids are, tile by tile) a tree holds a few tiles' cells,
    not the scan's.

    Parameters
    ----------
    centroids : callable
        ``centroids(lo, hi)``: the centroids in µm of cells ``lo:hi``, ``(hi - lo, ndim)``.
    ids : ndarray, (n,)
        Cell ids.
    radius_um : float
        Neighbourhood radius in µm.
    """

    SCAN_ROWS = 65_536  # cells whose centroids are made at a time to find those in a box

    def __init__(
        self, centroids: Callable[[int, int], np.ndarray], ids: np.ndarray, radius_um: float
    ) -> None:
        self.centroids = centroids
        self.ids = np.asarray(ids, dtype=np.uint32)
        self.radius_um = float(radius_um)

    def _inside(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices and centroids of the cells whose centroids lie in the box ``[lo, hi]``."""
        found, points = [], []
        for start in range(0, len(self.ids), self.SCAN_ROWS):
            c = self.centroids(start, min(len(self.ids), start + self.SCAN_ROWS))
            inside = np.flatnonzero(np.all((c >= lo) & (c <= hi), axis=1))
            found.append(inside + start)
            points.append(c[inside])
        return np.concatenate(found), np.concatenate(points)

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three neighbour columns of cells ``lo:hi``."""
        from scipy.spatial import cKDTree

        n = hi - lo
        count = np.zeros(n, np.int64)
        dist = np.full(n, np.nan)
        nearest = np.zeros(n, np.uint32)
        if n <= 0 or len(self.ids) < 2:
            return count, dist, nearest
        query = np.asarray(self.centroids(lo, hi), dtype=np.float64)
        rows = np.arange(n)
        reach = self.radius_um * (1 + 1e-9) + 1e-9
        first = True
        while len(rows):
            q = query[rows]
            index, points = self._inside(q.min(axis=0) - reach, q.max(axis=0) + reach)
            whole = len(index) == len(self.ids)
            tree = cKDTree(points)
            if first:  # every centroid within the radius of a query is in the box
                count[:] = np.asarray(tree.query_ball_point(q, self.radius_um, return_length=True))
                count -= 1
                first = False
            d, k = tree.query(q, k=2)
            me = np.searchsorted(index, lo + rows)
            # the nearest other cell (a cell at the very same centroid may come first)
            other = np.where(k[:, 0] == me, 1, 0)
            d_other = d[np.arange(len(rows)), other]
            k_other = k[np.arange(len(rows)), other]
            # exact when no cell outside the box can be nearer: the box reaches
            # at least `reach` beyond every query
            sure = d_other <= reach if not whole else np.ones(len(rows), bool)
            found = sure & np.isfinite(d_other)
            dist[rows[found]] = d_other[found]
            nearest[rows[found]] = self.ids[index[k_other[found]]]
            rows = rows[~sure]
            reach *= 4
        return count, dist, nearest


# ----------------------------------------------------------------------------- pass 1
def _block_partials(
    labels: np.ndarray, origin: Sequence[int], coords: type = np.int64
) -> dict[str, np.ndarray] | None:
    """Per-id partial sums of one chunk: id, pixel count, coordinate sums, box (global).

    The box is in dtype `coords` (:func:`cellseg.tiling.box_dtype` of the image).
    """
    from scipy import ndimage as ndi

    uniq, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if uniq.size == 0 or (uniq.size == 1 and uniq[0] == 0):
        return None
    if uniq[0] != 0:
        inv = inv + 1
        uniq = np.concatenate([[0], uniq])
    n = uniq.size
    nd = labels.ndim
    flat = inv.ravel()
    counts = np.bincount(flat, minlength=n)
    sums = np.empty((n - 1, nd), np.float64)
    grids = np.indices(labels.shape, sparse=True)
    for ax, g in enumerate(grids):
        coord = np.broadcast_to(g, labels.shape).ravel()
        sums[:, ax] = np.bincount(flat, weights=coord, minlength=n)[1:] + origin[ax] * counts[1:]
    slices = ndi.find_objects(inv)
    starts = np.array([[s[ax].start + origin[ax] for ax in range(nd)] for s in slices], coords)
    stops = np.array([[s[ax].stop + origin[ax] for ax in range(nd)] for s in slices], coords)
    return {
        "cell_id": uniq[1:],
        "n_pixels": counts[1:].astype(np.int64),
        "sums": sums,
        "starts": starts.reshape(-1, nd),
        "stops": stops.reshape(-1, nd),
    }


class _Partials:
    """Pass 1's per-id sums, gathered chunk by chunk (see :func:`_block_partials`).

    While the ids are dense, as stitching numbers them (the largest id at
    most :data:`_DENSE_SLACK` times the partial rows seen, or below
    :data:`_DENSE_MIN`), the sums are added into arrays indexed by id as each
    chunk comes: memory holds one row per id, not one per chunk that a cell
    crosses. Sparse ids keep the chunks' partials and combine them at the end.
    """

    def __init__(self, nd: int, coords: type) -> None:
        self.nd, self.coords = nd, coords
        self.rows = 0  # partial rows seen (at least the distinct ids)
        self.dense: dict[str, np.ndarray] | None = self._dense(0)
        self.parts: list[dict[str, np.ndarray]] = []

    def _dense(self, size: int) -> dict[str, np.ndarray]:
        nd, coords = self.nd, self.coords
        return {
            "n_pixels": np.zeros(size, np.int64),
            "sums": np.zeros((size, nd), np.float64),
            "starts": np.full((size, nd), np.iinfo(coords).max, coords),
            "stops": np.zeros((size, nd), coords),
        }

    def add(self, part: dict[str, np.ndarray]) -> None:
        """Add one chunk's partials (its ids unique, ascending)."""
        ids = part["cell_id"]
        self.rows += len(ids)
        if self.dense is not None:
            top = int(ids[-1]) + 1
            if top > max(_DENSE_MIN, _DENSE_SLACK * self.rows):
                self.parts.append(self._present(self.dense))
                self.dense = None
            else:
                size = len(self.dense["n_pixels"])
                if top > size:
                    self._grow(max(top, 2 * size))
        if self.dense is None:
            self.parts.append(part)
            return
        d = self.dense
        d["n_pixels"][ids] += part["n_pixels"]
        d["sums"][ids] += part["sums"]
        d["starts"][ids] = np.minimum(d["starts"][ids], part["starts"])
        d["stops"][ids] = np.maximum(d["stops"][ids], part["stops"])

    def _grow(self, size: int) -> None:
        bigger = self._dense(size)
        for key, values in self.dense.items():
            bigger[key][: len(values)] = values
        self.dense = bigger

    @staticmethod
    def _present(dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The rows of ids with pixels, as one partial (the dense arrays are consumed)."""
        ids = np.flatnonzero(dense["n_pixels"])
        out = {"cell_id": ids.astype(np.uint32)}
        for key in ("n_pixels", "sums", "starts", "stops"):
            out[key] = dense.pop(key)[ids]
        return out

    def columns(self, axes: str) -> dict[str, np.ndarray]:
        """Per-cell id, centroid (px), bounding box and pixel count, sorted by id.

        The partials are consumed. The coordinate sums are whole numbers
        (exact in float64), so the order in which partials were added does not
        change them. The box keeps dtype `coords`; the centroid in µm is
        :func:`_centroid_um` of the one in px.
        """
        if self.dense is not None:
            rows = self._present(self.dense)
            self.dense = None
        else:
            rows = _combine(self.parts, self.nd, self.coords)
            self.parts = []
        out = {"cell_id": rows.pop("cell_id")}
        count = np.maximum(rows["n_pixels"], 1).astype(np.float64)
        sums = rows.pop("sums")
        for ax, name in enumerate(axes):
            out[f"centroid_{name}_px"] = sums[:, ax] / count
        del sums, count
        starts, stops = rows.pop("starts"), rows.pop("stops")
        for ax, name in enumerate(axes):
            out[f"bbox_{name}_start_px"] = np.ascontiguousarray(starts[:, ax])
            out[f"bbox_{name}_stop_px"] = np.ascontiguousarray(stops[:, ax])
        out["n_pixels"] = rows.pop("n_pixels")
        return out


#: Ids below this are always summed in dense arrays (see :class:`_Partials`).
_DENSE_MIN = 1 << 20
#: Dense while the largest id is at most this many times the partial rows seen.
_DENSE_SLACK = 4


def _combine(parts: list[dict[str, np.ndarray]], nd: int, coords: type) -> dict[str, np.ndarray]:
    """One row per id from chunks' partials (consumed, field by field), sorted by id."""
    if not parts:
        return {
            "cell_id": np.zeros(0, np.uint32),
            "n_pixels": np.zeros(0, np.int64),
            "sums": np.zeros((0, nd), np.float64),
            "starts": np.zeros((0, nd), coords),
            "stops": np.zeros((0, nd), coords),
        }
    ids = np.concatenate([p.pop("cell_id") for p in parts])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    first = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    out = {"cell_id": ids[first].astype(np.uint32)}
    del ids

    def reduce(ufunc: np.ufunc, key: str) -> np.ndarray:
        # each field leaves the partials as it is reduced: memory holds them once
        values = np.concatenate([p.pop(key) for p in parts])
        return ufunc.reduceat(values[order], first, axis=0)

    out["n_pixels"] = reduce(np.add, "n_pixels")
    out["sums"] = reduce(np.add, "sums")
    out["starts"] = reduce(np.minimum, "starts")
    out["stops"] = reduce(np.maximum, "stops")
    return out


def _centroid_um(
    base: dict[str, np.ndarray], axis: str, spacing: float, lo: int, hi: int
) -> np.ndarray:
    """Centroids in µm of cells ``lo:hi``: those in px times the pixel size (as one product)."""
    return base[f"centroid_{axis}_px"][lo:hi] * spacing


def _read(array: Any, index: tuple) -> np.ndarray:
    """Read a region of a numpy, zarr or dask array into memory."""
    part = array[index]
    if hasattr(part, "compute"):
        import dask.local

        # the function, not the name "synchronous": see cellseg.parallel._local_config
        part = part.compute(scheduler=dask.local.get_sync)
    return np.asarray(part)


class _Channel:
    """Channel ``c`` of a ``(C, *shape)`` array, indexed lazily like the label image."""

    def __init__(self, array: Any, c: int) -> None:
        self.array, self.c = array, c
        self.shape = tuple(array.shape[1:])

    def __getitem__(self, index: tuple) -> Any:
        return self.array[(self.c, *index)]


def _channel_list(intensity_image: Any, shape: tuple[int, ...]) -> list[Any]:
    """The channels of an intensity image as a list of arrays of the label image's shape."""
    if intensity_image is None:
        return []
    if len(intensity_image.shape) == len(shape):
        channels = [intensity_image]
    else:
        channels = [_Channel(intensity_image, c) for c in range(intensity_image.shape[0])]
    for ch in channels:
        if tuple(ch.shape) != shape:
            raise ValueError(
                f"intensity image {tuple(intensity_image.shape)} does not match labels {shape}"
            )
    return channels


def _cell_boxes(
    label_image: Any,
    *,
    axes: str,
    chunks: Sequence[int],
    threads: int | None = 1,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """Pass 1: id, centroid, bounding box and pixel count of every cell, chunk by chunk.

    Chunks run on `threads` threads, or on the dask.distributed workers inside
    :func:`cellseg.parallel.dask_scheduler` with an address. Returns one array
    per column, one row per cell id, sorted by id.
    """
    from cellseg.parallel import map_chunks
    from cellseg.pipeline import progress
    from cellseg.tiling import box_dtype

    shape = tuple(label_image.shape)
    coords = box_dtype(shape)
    grid = [range(0, n, c) for n, c in zip(shape, chunks)]
    blocks = list(itertools.product(*grid))

    def partials(origin: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        sl = tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, chunks, shape))
        lab = _read(label_image, sl)
        return _block_partials(lab, origin, coords) if lab.any() else None

    gathered = _Partials(len(shape), coords)
    bar = progress(total=len(blocks), desc="measure boxes", enabled=show_progress)
    for part in map_chunks(partials, blocks, threads=threads):
        bar.update(1)
        if part is not None:
            gathered.add(part)
    bar.close()
    return gathered.columns(axes)


# ----------------------------------------------------------------------------- pass 2
def _measure_group(
    group: tuple[np.ndarray, np.ndarray, np.ndarray],
    label_image: Any,
    channels: Any,
    *,
    spacing: tuple[float, ...],
    shape: tuple[int, ...],
    pad: tuple[int, ...],
    ring_width_um: float,
    n_values: int,
) -> np.ndarray:
    """Measure the cells of one chunk on crops of one region read for them all.

    `group` holds the cells' ids and box starts and stops; the rows come back as
    one float array (8 bytes per value, ids and counts exact).
    """
    ids, starts, stops = group
    lo = np.maximum(starts - np.array(pad), 0)
    hi = np.minimum(stops + np.array(pad), np.array(shape))
    r0, r1 = lo.min(axis=0), hi.max(axis=0)
    region = tuple(slice(int(a), int(b)) for a, b in zip(r0, r1))
    labels = _read(label_image, region)
    image = [_read(ch, region) for ch in channels]
    rows = []
    for k, cell in enumerate(ids):
        crop = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(lo[k], hi[k], r0))
        inner = tuple(slice(int(s - a), int(e - a)) for s, e, a in zip(starts[k], stops[k], lo[k]))
        lab = labels[crop]
        mask = lab == cell
        feats = shape_features(mask[inner], spacing)
        ring = ring_mask(mask, lab, spacing, ring_width_um)
        row = [int(cell), *feats.values(), int(np.count_nonzero(ring))]
        for channel in image:
            values = channel[crop]
            inside = intensity_stats(values[mask])
            around = intensity_stats(values[ring])
            row += [*inside, *around, inside[0] - around[1]]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), n_values)


class _RowStore:
    """Rows of float64 values put by row number in any order, read back in ranges.

    In memory, or in a scratch file (``path``): then only the rows being put or
    read are held, and the file is removed by :meth:`close`.
    """

    def __init__(self, n_rows: int, n_values: int, path: Path | None = None) -> None:
        self.n_values = n_values
        self.row_bytes = 8 * n_values
        self.path = path
        self.fd: int | None = None
        self.array: np.ndarray | None = None
        if path is None:
            self.array = np.zeros((n_rows, n_values), np.float64)
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def put(self, index: np.ndarray, rows: np.ndarray) -> None:
        """Store ``rows[k]`` as row ``index[k]``; runs of consecutive rows are written at once."""
        if self.array is not None:
            self.array[index] = rows
            return
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), len(index)]):
            data = memoryview(rows[a:b]).cast("B")
            offset = int(index[a]) * self.row_bytes
            while len(data):
                written = os.pwrite(self.fd, data, offset)
                data, offset = data[written:], offset + written

    def get(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi``."""
        if self.array is not None:
            return self.array[lo:hi]
        out = np.empty((hi - lo, self.n_values), np.float64)
        view = memoryview(out).cast("B")
        offset = lo * self.row_bytes
        while len(view):
            read = os.preadv(self.fd, [view], offset)
            if read <= 0:
                raise OSError(f"{self.path}: rows {lo}:{hi} were not all written")
            view, offset = view[read:], offset + read
        return out

    def close(self) -> None:
        """Release the rows (remove the scratch file)."""
        self.array = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            Path(self.path).unlink(missing_ok=True)


def measure_cells(
    label_image: Any,
    intensity_image: Any = None,
    *,
    spacing: Sequence[float],
    axes: str | None = None,
    chunks: Sequence[int] | None = None,
    channel_names: Sequence[str] | None = None,
    ring_width_um: float = DEFAULT_RING_WIDTH_UM,
    neighbor_radius_um: float = DEFAULT_NEIGHBOR_RADIUS_UM,
    threads: int | None = 1,
    show_progress: bool = False,
    out: TableWriter | None = None,
) -> pd.DataFrame | None:
    """Measure every cell of a label image: morphology, neighbours, intensities.

    Parameters
    ----------
    label_image : array-like of int, (Y, X) or (Z, Y, X)
        Labels (numpy, zarr or dask); 0 is background.
    intensity_image : array-like, optional
        The scan's channels, ``(C, *shape)``, or one channel of the label
        image's shape. None: no intensity columns.
    spacing : sequence of float
        Pixel size in µm per axis.
    axes : str, optional
        Axis names, default ``"yx"`` or ``"zyx"``.
    chunks : sequence of int, optional
        Block shape to process at a time (default the label image's chunks, or
        the whole image).
    channel_names : sequence of str, optional
        One name per channel (default ``c0``, ``c1``, ...); made into column
        keys by :func:`channel_keys`.
    ring_width_um : float
        Width of the ring around each cell (background / cytoplasm proxy).
    neighbor_radius_um : float
        Radius for ``n_neighbors``.
    threads : int, optional
        Chunks measured in parallel (None: all cores).
    show_progress : bool
        Show progress bars.
    out : TableWriter, optional
        Write the table there, :data:`ROW_GROUP_ROWS` rows at a time, instead
        of returning it. The measured rows wait in a scratch file beside the
        table (:meth:`TableWriter.scratch_path`) until they can be written in
        ``cell_id`` order, so memory holds a few small arrays per cell (ids,
        boxes, centroids and their k-d tree), not the table.

    Returns
    -------
    pandas.DataFrame or None
        One row per cell id, sorted by id; the columns of :func:`column_schema`.
        None when `out` is given.

    Examples
    --------
    >>> lab = np.zeros((4, 6), np.uint32); lab[1:3, 1:4] = 7
    >>> t = measure_cells(lab, np.ones((4, 6)), spacing=(0.5, 0.5))
    >>> t[["cell_id", "centroid_y_um", "centroid_x_um", "area_um2"]].values.tolist()
    [[7.0, 0.75, 1.0, 1.5]]
    """
    from cellseg.parallel import map_chunks
    from cellseg.pipeline import progress

    shape = tuple(int(n) for n in label_image.shape)
    nd = len(shape)
    axes = axes or ("yx" if nd == 2 else "zyx")
    spacing = tuple(float(s) for s in spacing)
    if len(axes) != nd or len(spacing) != nd:
        raise ValueError(f"axes {axes!r} and spacing {spacing} do not match a {nd}D image")
    channels = _channel_list(intensity_image, shape)
    n_channels = len(channels)
    names = list(channel_names) if channel_names is not None else []
    if len(names) != n_channels:
        names = [f"c{i}" for i in range(n_channels)]
    keys = channel_keys(names)
    chunks = _chunk_shape(label_image, chunks, shape)

    base = _cell_boxes(
        label_image,
        axes=axes,
        chunks=chunks,
        threads=threads,
        show_progress=show_progress,
    )
    schema = column_schema(
        axes, keys, ring_width_um=ring_width_um, neighbor_radius_um=neighbor_radius_um
    )
    shape_names = list(shape_features(np.ones((1,) * nd, bool), spacing))
    measured = ["cell_id", *shape_names, "ring_n_pixels"]
    for k in keys:
        measured += [f"intensity_{s}_{k}" for s in INTENSITY_STATS]
        measured += [f"ring_intensity_{s}_{k}" for s in INTENSITY_STATS]
        measured.append(f"intensity_mean_corrected_{k}")
    position = {name: j for j, name in enumerate(measured)}

    # Cells are measured per chunk (the chunk holding their box's first corner),
    # chunks in order; within a chunk in id order.
    n = len(base["cell_id"])
    starts = np.stack([base[f"bbox_{a}_start_px"] for a in axes], axis=1).reshape(n, nd)
    stops = np.stack([base[f"bbox_{a}_stop_px"] for a in axes], axis=1).reshape(n, nd)
    grid = tuple(-(-s // c) for s, c in zip(shape, chunks))
    home = np.ravel_multi_index(tuple((starts // np.array(chunks)).T), grid) if n else []
    order = np.argsort(home, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(np.asarray(home)[order])) + 1) if n else []
    del home, starts, stops  # each group's ids and boxes are gathered when it is measured
    pad = tuple(int(math.ceil(ring_width_um / s)) if ring_width_um > 0 else 0 for s in spacing)

    def run(index: np.ndarray) -> np.ndarray:
        group = (
            base["cell_id"][index],
            np.stack([base[f"bbox_{a}_start_px"][index] for a in axes], axis=1),
            np.stack([base[f"bbox_{a}_stop_px"][index] for a in axes], axis=1),
        )
        return _measure_group(
            group,
            label_image,
            channels,
            spacing=spacing,
            shape=shape,
            pad=pad,
            ring_width_um=ring_width_um,
            n_values=len(measured),
        )

    store = _RowStore(n, len(measured), None if out is None else out.scratch_path("rows"))
    try:
        bar = progress(total=n, desc="measure cells", enabled=show_progress)
        for index, rows in zip(groups, map_chunks(run, groups, threads=threads)):
            store.put(index, rows)
            bar.update(len(rows))
        bar.close()
        del groups, order

        def centroids(lo: int, hi: int) -> np.ndarray:
            return np.stack(
                [_centroid_um(base, a, s, lo, hi) for a, s in zip(axes, spacing)], axis=1
            ).reshape(hi - lo, nd)

        neighbors = _Neighbors(centroids, base["cell_id"], neighbor_radius_um)

        def block(lo: int, hi: int) -> pd.DataFrame:
            rows = store.get(lo, hi)
            touches = np.zeros(hi - lo, bool)
            for a, size in zip(axes, shape):
                touches |= (base[f"bbox_{a}_start_px"][lo:hi] == 0) | (
                    base[f"bbox_{a}_stop_px"][lo:hi] == size
                )
            count, dist, nearest = neighbors.block(lo, hi)
            values: dict[str, np.ndarray] = {
                "touches_border": touches,
                "n_neighbors": count,
                "nearest_neighbor_distance_um": dist,
                "nearest_neighbor_id": nearest,
            }
            for a, s in zip(axes, spacing):
                values[f"centroid_{a}_um"] = _centroid_um(base, a, s, lo, hi)
            for c in schema:
                if c.name in values:
                    continue
                if c.name in base:
                    values[c.name] = base[c.name][lo:hi]
                elif c.name in position:
                    values[c.name] = rows[:, position[c.name]]
            return pd.DataFrame({c.name: values[c.name].astype(c.dtype) for c in schema})

        if out is None:
            return block(0, n)
        for lo in range(0, max(n, 1), ROW_GROUP_ROWS):
            out.write(block(lo, min(n, lo + ROW_GROUP_ROWS)))
        return None
    finally:
        store.close()


def _chunk_shape(label_image: Any, chunks: Sequence[int] | None, shape: tuple) -> tuple[int, ...]:
    if chunks is None:
        chunks = getattr(label_image, "chunks", None)
        if chunks is not None and isinstance(chunks[0], tuple):
            chunks = tuple(c[0] for c in chunks)
        chunks = chunks or shape
    return tuple(max(1, int(c)) for c in chunks)


# ----------------------------------------------------------------------------- I/O
#: Rows per row group of a cell table's Parquet file. The measure stage holds
#: about one row group of the table at a time.
ROW_GROUP_ROWS = 8_192


class TableWriter:
    """A cell table written to Parquet in row groups as its rows come, atomically.

    Rows go to a temporary file beside `path` (``.<name>.tmp-<pid>``), which
    replaces `path` when the writer is closed; on an error it is removed, and
    temporaries of killed processes are removed when the next writer opens.
    Row groups hold :data:`ROW_GROUP_ROWS` rows (every :meth:`write` but the
    last should give a multiple of it), so the file does not depend on how the
    rows were divided into writes.

    Use as a context manager::

        with TableWriter(path, metadata, columns) as writer:
            writer.write(first_rows)
            writer.write(more_rows)

    Parameters
    ----------
    path : Path
        Destination ``.parquet`` file.
    metadata : dict, optional
        Key/value metadata of the file (scan, config, model, version, ...).
    columns : iterable of Column, optional
        Units and descriptions: stored per field (``unit``, ``description``)
        and as the JSON list ``cellseg.columns``.
    """

    def __init__(
        self,
        path: Path,
        metadata: dict[str, str] | None = None,
        columns: Iterable[Column] | None = None,
    ) -> None:
        from cellseg.io import _remove_stale_siblings

        self.path = Path(path)
        self.metadata = dict(metadata or {})
        self.docs = {c.name: c for c in columns or ()}
        self.n_rows = 0
        self._writer: Any = None
        self._schema: Any = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_siblings(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def scratch_path(self, what: str) -> Path:
        """A scratch file beside the table, removed with the writer's temporaries."""
        return self.tmp.with_name(f"{self.tmp.name}-{what}")

    def _documented_schema(self, schema: Any, names: Sequence[str]) -> Any:
        import pyarrow as pa

        meta = dict(schema.metadata or {})
        meta.update({k.encode(): str(v).encode() for k, v in self.metadata.items()})
        if self.docs:
            listed = [asdict(self.docs[n]) for n in names if n in self.docs]
            meta[b"cellseg.columns"] = json.dumps(listed, ensure_ascii=False).encode()
        fields = []
        for field in schema:
            col = self.docs.get(field.name)
            if col is not None:
                field = field.with_metadata({"unit": col.unit, "description": col.description})
            fields.append(field)
        return pa.schema(fields, metadata=meta)

    def write(self, table: pd.DataFrame) -> None:
        """Append rows (the same columns and dtypes every time)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = pa.Table.from_pandas(table, preserve_index=False)
        if self._writer is None:
            self._schema = self._documented_schema(arrow.schema, list(table.columns))
            self._writer = pq.ParquetWriter(self.tmp, self._schema)
        arrow = pa.Table.from_arrays(arrow.columns, schema=self._schema)
        self._writer.write_table(arrow, row_group_size=ROW_GROUP_ROWS)
        self.n_rows += len(table)

    def close(self) -> None:
        """Finish the file and move it to `path`."""
        if self._writer is None:
            raise ValueError(f"{self.path}: no rows were given, not even an empty table")
        self._writer.close()
        self._writer = None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Remove what was written."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def write_table(
    table: pd.DataFrame,
    path: Path,
    metadata: dict[str, str] | None = None,
    columns: Iterable[Column] | None = None,
) -> None:
    """Write a cell table to Parquet atomically, with its documentation in the schema.

    The same file as :class:`TableWriter` given the rows in parts.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table.
    path : Path
        Destination ``.parquet`` file; written to a temporary name, then renamed.
    metadata : dict, optional
        Key/value metadata of the file (scan, config, model, version, ...).
    columns : iterable of Column, optional
        Units and descriptions: stored per field (``unit``, ``description``)
        and as the JSON list ``cellseg.columns``.
    """
    with TableWriter(path, metadata, columns) as writer:
        writer.write(table)


def read_table_metadata(path: Path) -> dict[str, Any]:
    """The ``cellseg.*`` metadata of a cell table, JSON values decoded.

    Returns
    -------
    dict
        Keys without the ``cellseg.`` prefix (``scan``, ``version``, ``columns``, ...).
    """
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        if not key.startswith("cellseg."):
            continue
        text = v.decode()
        try:
            out[key[len("cellseg.") :]] = json.loads(text)
        except ValueError:
            out[key[len("cellseg.") :]] = text
    return out


def read_table_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Some columns of a cell table, read a row group at a time into numpy arrays.

    The same frame as ``pandas.read_parquet(path, columns=columns)``, with
    under half of its memory: that holds the Arrow table and its pandas copy
    at once, and Arrow buffers every row group's bytes and keeps what it
    freed; here memory holds the columns and one row group.

    Parameters
    ----------
    path : Path
        A Parquet table (``cells.parquet``).
    columns : sequence of str
        Columns to read, in this order.

    Returns
    -------
    pandas.DataFrame
        With a RangeIndex. Integer columns with missing values become
        float64 with NaN, as in pandas (boolean ones too, where pandas gives
        objects; a cell table has none).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(columns)
    table = pq.ParquetFile(path, pre_buffer=False)  # not every row group's bytes at once
    n = table.metadata.num_rows
    dtypes = table.schema_arrow.empty_table().select(columns).to_pandas().dtypes
    out = {c: np.empty(n, dtypes[c]) for c in columns}
    at = 0
    for batch in table.iter_batches(columns=columns, batch_size=ROW_GROUP_ROWS, use_threads=False):
        k = batch.num_rows
        for c in columns:
            values = batch.column(c)
            if values.null_count and out[c].dtype.kind not in "fO":
                out[c] = out[c].astype(np.float64)  # as pandas: missing values are NaN
            if values.null_count and out[c].dtype.kind == "f":
                values = values.cast("float64").fill_null(float("nan"))
            out[c][at : at + k] = values.to_numpy(zero_copy_only=False)
        at += k
    pa.default_memory_pool().release_unused()
    return pd.DataFrame(out, copy=False)
