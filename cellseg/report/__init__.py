"""QC reports: one self-contained ``report.html`` per scan and one for a run.

A scan's report shows at a glance whether its run went well: counts, a
thumbnail of the scan with the cells' outlines and the tile grid, zoomed
crops (the densest and the sparsest field, and one on a tile seam),
histograms of size, shape and intensity, cells per tile as a heat map, the
**seam score**, the config, model and software versions and the run time of
every stage, and warnings where something looks wrong. Figures are PNGs
embedded in the page, so the file can be mailed or archived alone.

- :mod:`~cellseg.report.numbers`: the numbers (seam score, counts, warnings,
  the scan's summary), pure functions on the cell table;
- :mod:`~cellseg.report.figures`: the figures, each a function returning PNG bytes;
- :mod:`~cellseg.report.render`: the HTML, from the Jinja2 templates in
  ``templates/``;
- :mod:`~cellseg.report.write`: :func:`write_report` and
  :func:`write_run_report` read a run's files and write the pages.
"""

from cellseg.report.figures import (
    figure_crops,
    figure_histograms,
    figure_run,
    figure_seam,
    figure_thumbnail,
    figure_tile_counts,
    outline_overlay,
)
from cellseg.report.numbers import (
    CROP_PX,
    PACKAGES,
    SEAM_MIN_CELLS,
    SEAM_RATIO_RANGE,
    SEAM_Z_MIN,
    crop_windows,
    expected_border_fraction,
    qc_warnings,
    report_columns,
    scan_summary,
    seam_distance,
    seam_score,
    seam_share,
    size_column,
    software_versions,
    tile_counts,
)
from cellseg.report.render import format_value, render_run_report, render_scan_report
from cellseg.report.write import read_crops, thumbnail_planes, write_report, write_run_report

__all__ = [
    "CROP_PX",
    "PACKAGES",
    "SEAM_MIN_CELLS",
    "SEAM_RATIO_RANGE",
    "SEAM_Z_MIN",
    "crop_windows",
    "expected_border_fraction",
    "figure_crops",
    "figure_histograms",
    "figure_run",
    "figure_seam",
    "figure_thumbnail",
    "figure_tile_counts",
    "format_value",
    "outline_overlay",
    "qc_warnings",
    "read_crops",
    "render_run_report",
    "render_scan_report",
    "report_columns",
    "scan_summary",
    "seam_distance",
    "seam_score",
    "seam_share",
    "size_column",
    "software_versions",
    "thumbnail_planes",
    "tile_counts",
    "write_report",
    "write_run_report",
]
