"""The cell table's columns: names, units, descriptions and dtypes.

Adding a column starts here: :func:`column_schema` lists every column of a
scan's table in order, and the README ("Cell table columns") documents the
same list. The values come from :mod:`cellseg.measure.shape` (morphology of
one cell), :mod:`cellseg.measure.intensity` (intensities of the cell and its
ring), :mod:`cellseg.measure.neighbours` and the passes over the label image
(:mod:`cellseg.measure.chunks`, :mod:`cellseg.measure.cells`).

Column names follow one scheme (after CellProfiler's *AreaShape* and
*Intensity* modules): ``<feature>[_<axis>][_<unit>]`` for morphology and
``[ring_]intensity_<statistic>_<channel>`` for intensities (in brightfield
scans also ``[ring_]od_<statistic>_<stain>`` and ``[ring_]rgb_mean_<r|g|b>``,
:func:`brightfield_columns`), the unit as a
suffix (``_um``, ``_um2``, ``_um3``, ``_px``, ``_deg``) where there is one.
:func:`cellseg.measure.table.write_table` stores the list in the Parquet
schema (per field ``unit`` and ``description``, and the whole list as
``cellseg.columns``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_RING_WIDTH_UM = 2.0
DEFAULT_NEIGHBOR_RADIUS_UM = 20.0
#: Version of the table's columns; a measure stage with another version is redone.
TABLE_VERSION = 3

INTENSITY_STATS = ("mean", "median", "std", "min", "max", "integrated")
#: Statistics of the stains' optical densities in brightfield scans.
OD_STATS = ("mean", "median", "std", "max")
_STAT_TEXT = {
    "mean": "mean",
    "median": "median",
    "std": "standard deviation (population)",
    "min": "minimum",
    "max": "maximum",
    "integrated": "sum",
}


@dataclass(frozen=True)
class Column:
    """One column of the cell table.

    Attributes
    ----------
    name : str
        Column name.
    unit : str
        Physical unit (``"µm"``, ``"µm²"``, ``"µm³"``, ``"px"``, ``"deg"``,
        ``"raw"`` for grey values, ``"raw·px"`` for sums of grey values,
        ``"OD"`` for optical densities), or
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
    stains: Sequence[str] | None = None,
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
    stains : sequence of str, optional
        A brightfield scan's stain names (``["hematoxylin", "eosin"]``, ...):
        its :func:`brightfield_columns` come last.

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
    if stains is not None:
        cols += brightfield_columns(stains)
    return cols


def brightfield_columns(stains: Sequence[str]) -> list[Column]:
    """The columns of a brightfield scan: stains' optical densities and RGB means.

    Per stain (haematoxylin and eosin, or haematoxylin and DAB) the statistics
    :data:`OD_STATS` of its amount in optical-density units
    (:func:`cellseg.stain.concentrations`), then the mean red, green and blue;
    in the cell, then in its ring.

    Parameters
    ----------
    stains : sequence of str
        The scan's stain names (its stain dict's ``names``).

    Returns
    -------
    list of Column

    Examples
    --------
    >>> [c.name for c in brightfield_columns(["hematoxylin", "dab"])][:5]
    ['od_mean_hematoxylin', 'od_median_hematoxylin', 'od_std_hematoxylin', 'od_max_hematoxylin', \
'od_mean_dab']
    """
    cols = []
    for prefix, where in (("", "the cell"), ("ring_", "the ring")):
        for name in stains:
            for stat in OD_STATS:
                cols.append(
                    Column(
                        f"{prefix}od_{stat}_{name}",
                        "OD",
                        f"{_STAT_TEXT[stat]} of the {name} amount (optical density) in {where}",
                    )
                )
        for colour, word in zip("rgb", ("red", "green", "blue")):
            cols.append(
                Column(f"{prefix}rgb_mean_{colour}", "raw", f"mean {word} value in {where}")
            )
    return cols
