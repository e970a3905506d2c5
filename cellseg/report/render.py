"""The HTML of the QC reports, rendered from the Jinja2 templates in ``templates/``.

``base.html.j2`` is the page and its style, ``macros.html.j2`` the pieces the
pages share (key-value tables, warnings, embedded figures); ``scan.html.j2``
is a scan's report, ``run.html.j2`` a run's. Every value is escaped
(autoescape); figures are embedded as base64 PNGs, so a page stands alone.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

#: The folder of the report's templates.
TEMPLATES = Path(__file__).parent / "templates"


def format_value(value: Any) -> str:
    """A value as the report shows it: 3 significant digits, "–" for none.

    Parameters
    ----------
    value : Any
        A number, a sequence of numbers (a shape), None or anything else.

    Returns
    -------
    str
        Floats below 1000 to 3 significant digits, larger ones with
        thousands separators; NaN, infinities and None as "–"; sequences
        joined with " × ".

    Examples
    --------
    >>> format_value(3.14159), format_value(12345.6), format_value(float("nan"))
    ('3.14', '12,346', '–')
    >>> format_value([512, 512]), format_value(None), format_value("yx")
    ('512 × 512', '–', 'yx')
    """
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return " × ".join(format_value(v) for v in value)
    if value is None:
        return "–"
    return str(value)


def _thousands(value: int) -> str:
    """An integer with thousands separators: ``12,345``."""
    return f"{value:,}"


def _base64(png: bytes) -> Markup:
    """PNG bytes as base64 text, safe in an attribute as it is."""
    return Markup(base64.b64encode(png).decode("ascii"))


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report's templates (made once).

    Returns
    -------
    jinja2.Environment
        Autoescaping, undefined names an error, with the filters ``fmt``
        (:func:`format_value`), ``thousands`` and ``base64`` (PNG bytes).
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=format_value, thousands=_thousands, base64=_base64)
    return env


def _written() -> str:
    """When a page is written, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M")


def render_scan_report(
    *,
    name: str,
    summary: dict[str, Any],
    warnings: Sequence[str],
    figures: dict[str, bytes],
    config: dict[str, Any],
    model: dict[str, Any],
    versions: dict[str, str],
    seconds: dict[str, float],
    classes: dict[str, Any] | None = None,
) -> str:
    """The HTML page of one scan's report (figures as PNG bytes, embedded).

    Parameters
    ----------
    name : str
        The scan's name.
    summary : dict
        As :func:`~cellseg.report.numbers.scan_summary` returns it.
    warnings : sequence of str
        As :func:`~cellseg.report.numbers.qc_warnings` returns them, and more.
    figures : dict of str to bytes
        PNGs by section: ``thumbnail``, ``crops``, ``histograms``, ``tiles``,
        ``seam``; a section without its figure is left out.
    config, model : dict
        Shown in one table, "Config and model".
    versions : dict of str to str
        Package versions (:func:`~cellseg.report.numbers.software_versions`).
    seconds : dict of str to float
        Run time per stage.
    classes : dict, optional
        The cells' classes (``cellseg.classes.class_summary``, with ``rules``
        and ``classifier``): section "Cell classes" (figure ``thresholds``).

    Returns
    -------
    str
        A whole HTML page.
    """
    seam = summary["seam"]
    if summary["size_column"] == "area_um2":
        size_label = "median area (µm²)"
    else:
        size_label = "median volume (µm³)"
    border = summary["border_fraction"]
    cards = [
        ("cells", _thousands(summary["n_cells"])),
        (summary["density_unit"], format_value(summary["density"])),
        (size_label, format_value(summary["median_size"])),
        ("median diameter (µm)", format_value(summary["median_diameter_um"])),
        (
            "touching the border",
            format_value(border * 100) + " %" if np.isfinite(border) else "–",
        ),
        ("seam score", format_value(seam["density_ratio"]) if seam["has_seams"] else "one tile"),
    ]
    run_times = (
        [(k, f"{v:.1f} s") for k, v in seconds.items()]
        + [("total", f"{sum(seconds.values()):.1f} s")]
        if seconds
        else [("run times", "not recorded")]
    )
    template = environment().get_template("scan.html.j2")
    return template.render(
        title=f"cellseg QC: {name}",
        written=_written(),
        name=name,
        summary=summary,
        seam=seam,
        cards=cards,
        warnings=list(warnings),
        figures=figures,
        run_times=run_times,
        settings={**config, **model},
        versions=versions,
        classes=classes,
    )


def render_run_report(
    *,
    scans: Sequence[dict[str, Any]],
    warnings: Sequence[str],
    versions: dict[str, str],
    table_link: str | None = None,
    figure: bytes | None = None,
    total: int | None = None,
) -> str:
    """The HTML page of a run's report: one row per scan, compared.

    Parameters
    ----------
    scans : sequence of dict
        One row per scan: ``name``, ``link`` (to its report), ``axes``,
        ``shape``, ``n_cells``, ``density``, ``density_unit``,
        ``median_diameter_um``, ``border_fraction``, ``seam_score``,
        ``seconds`` (run time) and ``n_warnings``.
    warnings : sequence of str
        Every scan's warnings, each naming its scan.
    versions : dict of str to str
        Package versions.
    table_link : str, optional
        Link to the combined table.
    figure : bytes, optional
        The scans compared (:func:`~cellseg.report.figures.figure_run`), PNG.
    total : int, optional
        Cells in the run; default the sum of the rows' ``n_cells``.

    Returns
    -------
    str
        A whole HTML page.

    Examples
    --------
    >>> page = render_run_report(scans=[], warnings=[], versions={"python": "3"})
    >>> "0 scan(s), 0 cells" in page and "No warnings" in page
    True
    """
    template = environment().get_template("run.html.j2")
    return template.render(
        title="cellseg run report",
        written=_written(),
        scans=list(scans),
        total=sum(s["n_cells"] for s in scans) if total is None else total,
        warnings=list(warnings),
        table_link=table_link,
        figure_png=figure,
        versions=versions,
    )
