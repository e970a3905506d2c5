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
from collections.abc import Iterable, Sequence
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
    from scipy.spatial import cKDTree

    n = len(ids)
    count = np.zeros(n, np.int64)
    dist = np.full(n, np.nan)
    nearest = np.zeros(n, np.uint32)
    if n < 2:
        return count, dist, nearest
    tree = cKDTree(np.asarray(centroids_um, dtype=np.float64))
    count = np.asarray(tree.query_ball_point(tree.data, radius_um, return_length=True)) - 1
    d, k = tree.query(tree.data, k=2)
    dist = d[:, 1].astype(np.float64)
    nearest = np.asarray(ids, dtype=np.uint32)[k[:, 1]]
    return count.astype(np.int64), dist, nearest


# ----------------------------------------------------------------------------- pass 1
def _block_partials(labels: np.ndarray, origin: Sequence[int]) -> pd.DataFrame | None:
    from scipy import ndimage as ndi

    uniq, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if uniq.size == 0 or (uniq.size == 1 and uniq[0] == 0):
        return None
    if uniq[0] != 0:
        inv = inv + 1
        uniq = np.concatenate([[0], uniq])
    n = uniq.size
    flat = inv.ravel()
    counts = np.bincount(flat, minlength=n)
    out = {"cell_id": uniq[1:], "n_pixels": counts[1:]}
    grids = np.indices(labels.shape, sparse=True)
    for ax, g in enumerate(grids):
        coord = np.broadcast_to(g, labels.shape).ravel()
        out[f"sum_{ax}"] = (
            np.bincount(flat, weights=coord, minlength=n)[1:] + origin[ax] * counts[1:]
        )
    slices = ndi.find_objects(inv)
    for ax in range(labels.ndim):
        out[f"start_{ax}"] = np.array([s[ax].start + origin[ax] for s in slices])
        out[f"stop_{ax}"] = np.array([s[ax].stop + origin[ax] for s in slices])
    return pd.DataFrame(out)


def _combine(parts: list[pd.DataFrame], spacing: Sequence[float], axes: str) -> pd.DataFrame:
    """Per-cell id, centroid, bounding box and pixel count from chunk partials."""
    nd = len(axes)
    agg = {"n_pixels": "sum"}
    for ax in range(nd):
        agg.update({f"sum_{ax}": "sum", f"start_{ax}": "min", f"stop_{ax}": "max"})
    if parts:
        g = pd.concat(parts, ignore_index=True).groupby("cell_id", sort=True).agg(agg)
        ids = g.index.to_numpy()
    else:
        g = pd.DataFrame({k: np.zeros(0) for k in agg})
        ids = np.zeros(0)
    out = {"cell_id": ids.astype(np.uint32)}
    count = g["n_pixels"].to_numpy().astype(np.float64)
    for ax, name in enumerate(axes):
        out[f"centroid_{name}_um"] = g[f"sum_{ax}"].to_numpy() / np.maximum(count, 1) * spacing[ax]
    for ax, name in enumerate(axes):
        out[f"centroid_{name}_px"] = g[f"sum_{ax}"].to_numpy() / np.maximum(count, 1)
    for ax, name in enumerate(axes):
        out[f"bbox_{name}_start_px"] = g[f"start_{ax}"].to_numpy().astype(np.int64)
        out[f"bbox_{name}_stop_px"] = g[f"stop_{ax}"].to_numpy().astype(np.int64)
    out["n_pixels"] = count.astype(np.int64)
    return pd.DataFrame(out)


def _read(array: Any, index: tuple) -> np.ndarray:
    """Read a region of a numpy, zarr or dask array into memory."""
    part = array[index]
    if hasattr(part, "compute"):
        part = part.compute(scheduler="synchronous")
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


def cell_boxes(
    label_image: Any,
    *,
    spacing: Sequence[float],
    axes: str,
    chunks: Sequence[int],
    threads: int | None = 1,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Pass 1: id, centroid, bounding box and pixel count of every cell, chunk by chunk.

    Chunks run on `threads` threads, or on the dask.distributed workers inside
    :func:`cellseg.parallel.dask_scheduler` with an address.

    Returns
    -------
    pandas.DataFrame
        One row per cell id, sorted by id.
    """
    from cellseg.parallel import map_chunks
    from cellseg.pipeline import progress

    shape = tuple(label_image.shape)
    grid = [range(0, n, c) for n, c in zip(shape, chunks)]
    blocks = list(itertools.product(*grid))

    def partials(origin: tuple[int, ...]) -> pd.DataFrame | None:
        sl = tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, chunks, shape))
        lab = _read(label_image, sl)
        return _block_partials(lab, origin) if lab.any() else None

    parts = []
    bar = progress(total=len(blocks), desc="measure boxes", enabled=show_progress)
    for part in map_chunks(partials, blocks, threads=threads):
        bar.update(1)
        if part is not None:
            parts.append(part)
    bar.close()
    return _combine(parts, spacing, axes)


# ----------------------------------------------------------------------------- pass 2
def _measure_group(
    boxes: pd.DataFrame,
    label_image: Any,
    channels: Any,
    *,
    axes: str,
    spacing: tuple[float, ...],
    shape: tuple[int, ...],
    pad: tuple[int, ...],
    ring_width_um: float,
) -> list[list[Any]]:
    """Measure the cells of one chunk on crops of one region read for them all."""
    starts = np.stack([boxes[f"bbox_{a}_start_px"].to_numpy() for a in axes], axis=1)
    stops = np.stack([boxes[f"bbox_{a}_stop_px"].to_numpy() for a in axes], axis=1)
    lo = np.maximum(starts - np.array(pad), 0)
    hi = np.minimum(stops + np.array(pad), np.array(shape))
    r0, r1 = lo.min(axis=0), hi.max(axis=0)
    region = tuple(slice(int(a), int(b)) for a, b in zip(r0, r1))
    labels = _read(label_image, region)
    image = [_read(ch, region) for ch in channels]
    rows = []
    for k, cell in enumerate(boxes["cell_id"].to_numpy()):
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
    return rows


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
) -> pd.DataFrame:
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

    Returns
    -------
    pandas.DataFrame
        One row per cell id, sorted by id; the columns of :func:`column_schema`.

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

    base = cell_boxes(
        label_image,
        spacing=spacing,
        axes=axes,
        chunks=chunks,
        threads=threads,
        show_progress=show_progress,
    )
    schema = column_schema(
        axes, keys, ring_width_um=ring_width_um, neighbor_radius_um=neighbor_radius_um
    )
    names_out = [c.name for c in schema]
    shape_names = list(shape_features(np.ones((1,) * nd, bool), spacing))
    measured = ["cell_id", *shape_names, "ring_n_pixels"]
    for k in keys:
        measured += [f"intensity_{s}_{k}" for s in INTENSITY_STATS]
        measured += [f"ring_intensity_{s}_{k}" for s in INTENSITY_STATS]
        measured.append(f"intensity_mean_corrected_{k}")

    starts = np.stack([base[f"bbox_{a}_start_px"].to_numpy() for a in axes], axis=1)
    home = [tuple(row) for row in (starts // np.array(chunks)).tolist()]
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(home):
        groups.setdefault(key, []).append(i)
    pad = tuple(int(math.ceil(ring_width_um / s)) if ring_width_um > 0 else 0 for s in spacing)
    work = [base.iloc[groups[key]] for key in sorted(groups)]

    def run(boxes: pd.DataFrame) -> list[list[Any]]:
        return _measure_group(
            boxes,
            label_image,
            channels,
            axes=axes,
            spacing=spacing,
            shape=shape,
            pad=pad,
            ring_width_um=ring_width_um,
        )

    # Each chunk's rows become one float array at once: 8 bytes per value, where
    # lists of Python numbers take about 40 (ids and counts are exact as floats).
    blocks: list[np.ndarray] = []
    bar = progress(total=len(base), desc="measure cells", enabled=show_progress)
    for part in map_chunks(run, work, threads=threads):
        if part:
            blocks.append(np.asarray(part, dtype=np.float64))
        bar.update(len(part))
    bar.close()

    rows = np.concatenate(blocks) if blocks else np.zeros((0, len(measured)))
    del blocks
    feats = pd.DataFrame(rows, columns=measured)
    feats = feats.sort_values("cell_id", kind="stable").reset_index(drop=True)
    table = base.copy()
    for col in measured[1:]:
        table[col] = feats[col].to_numpy() if len(feats) else np.zeros(0)
    table["touches_border"] = np.zeros(len(table), bool)
    for a, n in zip(axes, shape):
        table["touches_border"] |= (table[f"bbox_{a}_start_px"] == 0) | (
            table[f"bbox_{a}_stop_px"] == n
        )
    centroids = np.stack([table[f"centroid_{a}_um"].to_numpy() for a in axes], axis=1)
    count, dist, nearest = neighbor_features(
        centroids, table["cell_id"].to_numpy(), neighbor_radius_um
    )
    table["n_neighbors"] = count
    table["nearest_neighbor_distance_um"] = dist
    table["nearest_neighbor_id"] = nearest
    return pd.DataFrame({c.name: table[c.name].to_numpy().astype(c.dtype) for c in schema})[
        names_out
    ]


def _chunk_shape(label_image: Any, chunks: Sequence[int] | None, shape: tuple) -> tuple[int, ...]:
    if chunks is None:
        chunks = getattr(label_image, "chunks", None)
        if chunks is not None and isinstance(chunks[0], tuple):
            chunks = tuple(c[0] for c in chunks)
        chunks = chunks or shape
    return tuple(max(1, int(c)) for c in chunks)


# ----------------------------------------------------------------------------- I/O
def write_table(
    table: pd.DataFrame,
    path: Path,
    metadata: dict[str, str] | None = None,
    columns: Iterable[Column] | None = None,
) -> None:
    """Write a cell table to Parquet atomically, with its documentation in the schema.

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
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta.update({k.encode(): str(v).encode() for k, v in (metadata or {}).items()})
    docs = {c.name: c for c in columns or ()}
    if docs:
        listed = [asdict(docs[n]) for n in table.columns if n in docs]
        meta[b"cellseg.columns"] = json.dumps(listed, ensure_ascii=False).encode()
    fields = []
    for field in arrow.schema:
        col = docs.get(field.name)
        if col is not None:
            field = field.with_metadata({"unit": col.unit, "description": col.description})
        fields.append(field)
    arrow = pa.Table.from_arrays(arrow.columns, schema=pa.schema(fields, metadata=meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(arrow, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
