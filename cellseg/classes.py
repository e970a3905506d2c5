"""Cell classes: positive-cell rules on the cell table, ``OUTDIR/classes.parquet``, summaries.

A *rule* compares one column of the cell table with a threshold:

* brightfield IHC: the DAB optical density of the nucleus (``od_mean_dab``)
  or of its ring (``ring_od_mean_dab``), with three ascending thresholds that
  bin a cell into negative, 1+, 2+ and 3+ (defaults :data:`DAB_BINS`, the
  usual 0.2 / 0.4 / 0.6 OD);
* fluorescence: a marker channel's mean (``intensity_mean_<ch>``) or
  background-corrected mean (``intensity_mean_corrected_<ch>``) above a
  number, or above a threshold computed per scan from the cells' own values
  (:func:`auto_threshold`: ``otsu``, ``otsu-log`` (Otsu on the logarithm,
  for skewed intensities), ``li`` (minimum cross-entropy) or ``triangle``,
  from :mod:`skimage.filters`).

One rule gives QuPath's class names: ``Positive`` / ``Negative``, or
``Negative`` / ``1+`` / ``2+`` / ``3+`` with bins. Several rules give one class
per combination, named after the rules (``CD3+ CD8-``). A cell whose value is
missing (NaN) gets no class.

:func:`write_classes` stores the result in ``OUTDIR/classes.parquet``, keyed by
``cell_id``: ``class``, ``positive``, ``intensity_bin`` and, from a classifier
(:mod:`cellseg.classifier`), ``probability``; the rules, the thresholds used
and the values they were computed from (for the report's histogram) go to the
file's metadata (``cellseg.classify``). The cell table itself is never
rewritten: the report, napari and the exports join the classes on read.
:func:`class_summary` gives counts, percentages, densities per mm² of tissue,
the positive index (e.g. Ki-67) and the H-score.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cellseg.atomic import atomic_write_bytes
from cellseg.errors import ConfigError, InputError

log = logging.getLogger("cellseg")

#: The classes file of a scan, keyed by ``cell_id`` (the name ``cellseg.geojson`` reads).
CLASSES_FILE = "classes.parquet"
#: Metadata key of the classes file: rules, thresholds, classifier, source table.
META_KEY = b"cellseg.classify"
#: Thresholds computed per scan from the cells' values.
AUTO_METHODS = ("otsu", "otsu-log", "li", "triangle")
#: The automatic threshold of the ``marker:CH`` preset.
MARKER_METHOD = "li"
#: 1+ / 2+ / 3+ DAB thresholds in optical density (mean OD of the compartment).
DAB_BINS = (0.2, 0.4, 0.6)
#: Names of the intensity bins 0..3.
BIN_NAMES = ("Negative", "1+", "2+", "3+")
#: Values kept per rule in the metadata for the report's histogram.
MAX_HISTOGRAM_VALUES = 20000


@dataclass(frozen=True)
class Rule:
    """One positive-cell rule: ``column`` above ``threshold`` (or binned by ``bins``).

    Attributes
    ----------
    name : str
        Short name, used in class names of several rules (``CD3`` → ``CD3+``).
    column : str
        Column of the cell table compared.
    threshold : float or str
        A number, or an automatic method of :data:`AUTO_METHODS` computed from
        the cells' values of each scan. With `bins`, the first bin.
    bins : tuple of float, optional
        Three ascending thresholds: above the first 1+, the second 2+, the third 3+.
    """

    name: str
    column: str
    threshold: float | str
    bins: tuple[float, ...] | None = None


def parse_rule(spec: str | Mapping[str, Any]) -> Rule:
    """A rule from the command line's text or a YAML mapping.

    Texts: ``dab`` (nucleus DAB OD with the bins :data:`DAB_BINS`),
    ``dab-ring`` (the ring's DAB OD, same bins), ``marker:CH[:HOW]`` (channel
    ``CH``'s corrected mean above a threshold: a number or a method, default
    :data:`MARKER_METHOD`), or
    ``[NAME=]COLUMN>THRESHOLD`` where THRESHOLD is a number, an automatic
    method (:data:`AUTO_METHODS`) or three ascending numbers
    ``T1,T2,T3`` (bins). Mappings: ``name``, ``column`` (or ``preset``: one of
    the texts above), ``threshold``, ``bins``.

    Raises
    ------
    ConfigError
        If the rule cannot be read, naming what is wrong.

    Examples
    --------
    >>> parse_rule("dab")
    Rule(name='dab', column='od_mean_dab', threshold=0.2, bins=(0.2, 0.4, 0.6))
    >>> parse_rule("CD3=intensity_mean_corrected_cd3>otsu")
    Rule(name='CD3', column='intensity_mean_corrected_cd3', threshold='otsu', bins=None)
    """
    if isinstance(spec, Mapping):
        return _rule_from_mapping(spec)
    text = str(spec).strip()
    if text in ("dab", "dab-ring"):
        column = "od_mean_dab" if text == "dab" else "ring_od_mean_dab"
        return Rule(text, column, DAB_BINS[0], DAB_BINS)
    if text.startswith("marker:"):
        channel, _, how = text.removeprefix("marker:").partition(":")
        channel, how = channel.strip(), how.strip().lower() or MARKER_METHOD
        if not re.fullmatch(r"[a-z0-9_]+", channel):
            raise ConfigError(f"rule {text!r}: marker:CH takes a channel key such as cd3")
        threshold = how if how in AUTO_METHODS else _number(how, text)
        return Rule(channel.upper(), f"intensity_mean_corrected_{channel}", threshold)
    match = re.fullmatch(r"(?:([^=>]+)=)?\s*([A-Za-z0-9_]+)\s*>\s*([^>]+)", text)
    if not match:
        raise ConfigError(
            f"rule {text!r}: write dab, dab-ring, marker:CH or [NAME=]COLUMN>THRESHOLD "
            f"(THRESHOLD a number, one of {', '.join(AUTO_METHODS)}, or three numbers T1,T2,T3 "
            "for 1+/2+/3+)"
        )
    name, column, value = match.group(1), match.group(2), match.group(3).strip()
    parts = [v.strip() for v in value.split(",")]
    bins = None
    if len(parts) == 3:
        bins = tuple(_number(p, text) for p in parts)
        threshold: float | str = bins[0]
    elif len(parts) == 1:
        threshold = (
            parts[0].lower() if parts[0].lower() in AUTO_METHODS else _number(parts[0], text)
        )
    else:
        raise ConfigError(f"rule {text!r}: give one threshold or three (1+, 2+, 3+)")
    return _checked(Rule((name or column).strip(), column, threshold, bins), text)


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"rule {spec!r}: {text!r} is neither a number nor one of {', '.join(AUTO_METHODS)}"
        ) from None
    if not math.isfinite(value):
        raise ConfigError(f"rule {spec!r}: the threshold must be finite")
    return value


def _rule_from_mapping(spec: Mapping[str, Any]) -> Rule:
    known = {"name", "column", "preset", "threshold", "bins"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"rule {dict(spec)!r}: unknown key(s) {unknown}; known: {sorted(known)}")
    if "preset" in spec:
        rule = parse_rule(str(spec["preset"]))
        if "column" in spec:
            raise ConfigError(f"rule {dict(spec)!r}: give a preset or a column, not both")
    elif "column" in spec:
        rule = Rule(str(spec["column"]), str(spec["column"]), "otsu")
    else:
        raise ConfigError(f"rule {dict(spec)!r}: needs a column (or a preset such as dab)")
    name = str(spec.get("name", rule.name))
    bins = spec.get("bins", rule.bins)
    threshold = spec.get("threshold", rule.threshold if bins is None else None)
    if bins is not None:
        if not isinstance(bins, Sequence) or isinstance(bins, str) or len(bins) != 3:
            raise ConfigError(f"rule {name!r}: bins are three numbers (1+, 2+, 3+)")
        bins = tuple(_number(str(b), name) for b in bins)
        threshold = bins[0] if threshold is None else threshold
    if isinstance(threshold, str) and threshold.lower() in AUTO_METHODS:
        threshold = threshold.lower()
    else:
        threshold = _number(str(threshold), name)
    return _checked(Rule(name, rule.column, threshold, bins), name)


def _checked(rule: Rule, spec: str) -> Rule:
    if rule.bins is not None:
        b = rule.bins
        if not (b[0] < b[1] < b[2]):
            raise ConfigError(f"rule {spec!r}: the bins must ascend (1+ < 2+ < 3+), got {b}")
        if isinstance(rule.threshold, str) or rule.threshold != b[0]:
            raise ConfigError(f"rule {spec!r}: with bins the threshold is the first bin")
    if not rule.name:
        raise ConfigError(f"rule {spec!r}: the name is empty")
    return rule


def load_rules(path: str | Path) -> list[Rule]:
    """Rules from a YAML file: a list of rules, or a mapping with a ``rules`` list.

    Each entry is a text or a mapping that :func:`parse_rule` reads.

    Raises
    ------
    ConfigError
        If the file cannot be read or a rule is wrong (the message names the file).
    """
    import yaml  # only for a rules file

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the rules file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({exc})") from None
    if isinstance(content, dict):
        content = content.get("rules")
    if not isinstance(content, list) or not content:
        raise ConfigError(f"{path}: expected a list of rules (or a mapping with 'rules:')")
    try:
        return [parse_rule(entry) for entry in content]
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def auto_threshold(values: np.ndarray, method: str = "otsu") -> float:
    """A threshold computed from the cells' values of one scan.

    Parameters
    ----------
    values : ndarray
        One value per cell; NaN and infinite values are ignored.
    method : {"otsu", "otsu-log", "li", "triangle"}
        The :mod:`skimage.filters` method: Otsu's (between-class variance),
        Otsu's on the logarithm of the values (values at or below 0 count as
        the smallest positive one: for intensities whose positive cells spread
        over a wide range), Li's minimum cross-entropy, or the triangle method
        (for a dominant negative peak).

    Returns
    -------
    float
        The threshold (cells above it are positive); ``inf`` when every value
        is the same, so that no cell is positive.

    Raises
    ------
    ConfigError
        If the method is unknown.

    Examples
    --------
    >>> t = auto_threshold(np.r_[np.zeros(50), np.ones(50)])  # between the two groups
    >>> bool(0 <= t < 1)
    True
    """
    from skimage import filters  # scikit-image's filters load scipy.ndimage and more

    functions = {
        "otsu": filters.threshold_otsu,
        "otsu-log": filters.threshold_otsu,
        "li": filters.threshold_li,
        "triangle": filters.threshold_triangle,
    }
    if method not in functions:
        raise ConfigError(f"threshold method {method!r}: use one of {', '.join(functions)}")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0 or np.ptp(v) == 0:
        return math.inf
    if method == "otsu-log":
        floor = v[v > 0].min(initial=math.inf)
        if not math.isfinite(floor):
            return math.inf
        logs = np.log(np.maximum(v, floor))
        if np.ptp(logs) == 0:
            return math.inf
        return float(np.exp(filters.threshold_otsu(logs, nbins=256)))
    if method == "otsu":
        return float(functions[method](v, nbins=256))
    return float(functions[method](v))


def apply_rules(table: pd.DataFrame, rules: Sequence[Rule]) -> tuple[pd.DataFrame, list[dict]]:
    """Classify every cell of a table by the rules.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table (``cell_id`` and the rules' columns).
    rules : sequence of Rule
        One rule, or several (one class per combination).

    Returns
    -------
    classes : pandas.DataFrame
        ``cell_id``, ``class`` (None where a value is missing), ``positive``
        (the one rule's, or any rule's), ``intensity_bin`` (0..3, the first
        rule with bins; -1 where missing) and, for several rules,
        ``positive_<name>`` per rule.
    used : list of dict
        Per rule its ``name``, ``column``, ``method`` (``fixed`` or the
        automatic one), the ``threshold`` used, ``bins``, and the counts.

    Raises
    ------
    InputError
        If a rule's column is not in the table (the message lists similar ones).
    """
    if not rules:
        raise ConfigError("no rule to classify by: give --rule, --rules FILE or a classifier")
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ConfigError(f"rule names must differ, got {names}")
    ids = table["cell_id"].to_numpy(dtype=np.uint32)
    out = pd.DataFrame({"cell_id": ids})
    used, signs = [], []
    missing = np.zeros(len(table), dtype=bool)
    any_positive = np.zeros(len(table), dtype=bool)
    binned = None
    for rule in rules:
        if rule.column not in table:
            similar = [c for c in table.columns if rule.column.split("_")[-1] in c][:8]
            hint = f"; columns like it: {', '.join(similar)}" if similar else ""
            raise InputError(
                f"rule {rule.name!r}: the cell table has no column {rule.column!r}{hint}"
            )
        values = pd.to_numeric(table[rule.column], errors="coerce").to_numpy(dtype=np.float64)
        absent = ~np.isfinite(values)
        missing |= absent
        if isinstance(rule.threshold, str):
            method, threshold = rule.threshold, auto_threshold(values, rule.threshold)
        else:
            method, threshold = "fixed", float(rule.threshold)
        positive = (values > threshold) & ~absent
        any_positive |= positive
        entry = {
            "name": rule.name,
            "column": rule.column,
            "method": method,
            "threshold": threshold if math.isfinite(threshold) else None,
            "bins": list(rule.bins) if rule.bins else None,
            "n_positive": int(positive.sum()),
            "n_cells": int((~absent).sum()),
        }
        if rule.bins is not None and binned is None:
            edges = np.asarray([threshold, *rule.bins[1:]], dtype=np.float64)
            binned = np.where(absent, -1, np.searchsorted(edges, values, side="left")).astype(
                np.int8
            )
            # the number of edges strictly below the value: a value on an edge stays below it
            entry["bin_counts"] = [int((binned == b).sum()) for b in range(4)]
        used.append(entry)
        signs.append(positive)
        if len(rules) > 1:
            out[f"positive_{_key(rule.name)}"] = positive
    if len(rules) == 1:
        if rules[0].bins is not None:
            labels = np.asarray(BIN_NAMES, dtype=object)[np.clip(binned, 0, 3)]
        else:
            labels = np.where(signs[0], "Positive", "Negative").astype(object)
    else:
        labels = np.full(len(table), "", dtype=object)
        for rule, positive in zip(rules, signs):
            mark = np.where(positive, f"{rule.name}+", f"{rule.name}-").astype(object)
            labels = np.where(labels == "", mark, labels + " " + mark)
    labels = labels.astype(object)
    labels[missing] = None
    out["class"] = pd.Series(labels, dtype=object)
    out["positive"] = any_positive
    if binned is not None:
        out["intensity_bin"] = binned
    for entry, rule in zip(used, rules):
        values = pd.to_numeric(table[rule.column], errors="coerce").to_numpy(dtype=np.float64)
        entry["values"] = _histogram_values(values)
    return out, used


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "rule"


def _histogram_values(values: np.ndarray) -> list[float]:
    """The finite values (a fixed-seed sample of at most MAX_HISTOGRAM_VALUES), rounded."""
    v = values[np.isfinite(values)]
    if v.size > MAX_HISTOGRAM_VALUES:
        v = np.random.default_rng(0).choice(v, MAX_HISTOGRAM_VALUES, replace=False)
    return [round(float(x), 5) for x in v]


def combine_classes(first: pd.Series, second: pd.Series) -> pd.Series:
    """Derived classes ``"<first>: <second>"`` as in QuPath; one alone if the other is None."""
    a = first.astype(object).where(first.notna(), None)
    b = second.astype(object).where(second.notna(), None)
    out = [
        (f"{x}: {y}" if x is not None and y is not None else (x if y is None else y))
        for x, y in zip(a.tolist(), b.tolist())
    ]
    return pd.Series(out, index=first.index, dtype=object)


def classes_path(outdir: str | Path) -> Path:
    """``OUTDIR/classes.parquet``."""
    return Path(outdir) / CLASSES_FILE


def write_classes(outdir: str | Path, classes: pd.DataFrame, info: Mapping[str, Any]) -> Path:
    """Write ``OUTDIR/classes.parquet`` atomically, `info` in its metadata.

    Parameters
    ----------
    outdir : path
        The scan's output folder.
    classes : pandas.DataFrame
        ``cell_id`` and ``class`` at least (see :func:`apply_rules`).
    info : mapping
        What made the classes (rules, thresholds, classifier, table), JSON-able.

    Returns
    -------
    Path
    """
    missing = [c for c in ("cell_id", "class") if c not in classes]
    if missing:
        raise ValueError(f"classes need the columns {missing}")
    frame = classes.copy()
    frame["cell_id"] = frame["cell_id"].astype(np.uint32)
    frame["class"] = frame["class"].astype(object).where(frame["class"].notna(), None)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({META_KEY: json.dumps(dict(info)).encode("utf-8")})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    path = classes_path(outdir)
    atomic_write_bytes(path, sink.getvalue())
    return path


def read_classes_table(outdir: str | Path) -> tuple[pd.DataFrame, dict] | None:
    """``OUTDIR/classes.parquet`` and its metadata, or None if the scan has no classes.

    Raises
    ------
    InputError
        If the file is not a classes table.
    """
    path = classes_path(outdir)
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(
            f"{path}: not a Parquet table ({exc}); run `cellseg classify` again"
        ) from None
    frame = table.to_pandas()
    if "cell_id" not in frame or "class" not in frame:
        raise InputError(f"{path}: has no cell_id or class column; run `cellseg classify` again")
    raw = (table.schema.metadata or {}).get(META_KEY)
    return frame, (json.loads(raw) if raw else {})


def analysed_area(info: Mapping[str, Any]) -> tuple[float, str, str]:
    """The area (volume) that densities refer to, from a scan's ``ingest.json``.

    2D: the tissue's area in mm² (``tissue.fraction`` × the scan's area) when
    the scan has a tissue mask, else the scan's area; 3D: the scan's volume in mm³.

    Returns
    -------
    value : float
    unit : str
        ``"mm²"`` or ``"mm³"``.
    source : str
        ``"tissue"`` or ``"scan"``.

    Examples
    --------
    >>> analysed_area({"shape": [1000, 2000], "spacing": [0.5, 0.5], "tissue": {"fraction": 0.5}})
    (0.25, 'mm²', 'tissue')
    """
    shape = [int(s) for s in info["shape"]]
    spacing = [float(s) for s in info["spacing"]]
    axes = str(info.get("axes", "zyx"[-len(spacing) :]))
    spatial = shape[-len(spacing) :] if len(shape) >= len(spacing) else shape
    size = float(np.prod([n * s for n, s in zip(spatial, spacing)]))
    if len(axes) == 3:
        return size / 1e9, "mm³", "scan"
    fraction = (info.get("tissue") or {}).get("fraction")
    if fraction is not None and 0 < float(fraction) <= 1:
        return size / 1e6 * float(fraction), "mm²", "tissue"
    return size / 1e6, "mm²", "scan"


def class_summary(
    classes: pd.DataFrame,
    *,
    area: float | None = None,
    area_unit: str = "mm²",
    area_source: str = "scan",
) -> dict[str, Any]:
    """Counts, percentages and densities per class, positive index and H-score.

    Parameters
    ----------
    classes : pandas.DataFrame
        ``class`` and, where they apply, ``positive`` and ``intensity_bin``.
    area : float, optional
        The analysed area (volume) for densities (:func:`analysed_area`).
    area_unit, area_source : str
        Its unit and where it came from (``tissue`` or ``scan``).

    Returns
    -------
    dict
        ``n_cells``, ``n_classified``, ``classes`` (a list of ``name``,
        ``count``, ``percent`` of the classified cells, ``density``),
        ``density_unit``, ``area``, ``area_unit``, ``area_source``,
        ``positive_percent`` (the positive index, or None) and ``h_score``
        (Σ bin × percent of the cells in the bin, 0–300, or None).

    Examples
    --------
    >>> t = pd.DataFrame({"class": ["1+", "3+", "Negative", "Negative"],
    ...                   "positive": [True, True, False, False],
    ...                   "intensity_bin": [1, 3, 0, 0]})
    >>> s = class_summary(t)
    >>> s["positive_percent"], s["h_score"]
    (50.0, 100.0)
    """
    known = classes["class"].notna()
    n_classified = int(known.sum())
    counts = classes.loc[known, "class"].astype(str).value_counts()
    order = sorted(counts.index, key=lambda c: (_bin_rank(c), c))
    rows = []
    for name in order:
        count = int(counts[name])
        rows.append(
            {
                "name": name,
                "count": count,
                "percent": 100.0 * count / n_classified if n_classified else 0.0,
                "density": count / area if area else None,
            }
        )
    positive = None
    if "positive" in classes and n_classified:
        positive = 100.0 * float(classes.loc[known, "positive"].astype(bool).mean())
    h_score = None
    if "intensity_bin" in classes:
        bins = classes["intensity_bin"].to_numpy()
        bins = bins[bins >= 0]
        if bins.size:
            h_score = float(sum(b * 100.0 * np.mean(bins == b) for b in (1, 2, 3)))
    return {
        "n_cells": len(classes),
        "n_classified": n_classified,
        "classes": rows,
        "density_unit": f"cells/{area_unit}",
        "area": area,
        "area_unit": area_unit,
        "area_source": area_source,
        "positive_percent": positive,
        "h_score": h_score,
    }


def _bin_rank(name: str) -> int:
    return BIN_NAMES.index(name) if name in BIN_NAMES else len(BIN_NAMES)


def rules_info(rules: Iterable[Rule]) -> list[dict]:
    """Rules as JSON-able dicts (for metadata and logs)."""
    return [asdict(r) for r in rules]


def join_classes(table: pd.DataFrame, table_file: str | Path) -> pd.DataFrame:
    """A cell table with its cells' ``class`` joined on ``cell_id`` (a categorical column).

    The classes are those of ``classes.parquet`` beside `table_file`, when
    they were made from that very table (``cells.parquet`` or
    ``cells_corrected.parquet``); otherwise, or without classes, the table is
    returned as it is. Cells without a class get a missing value.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table (``cell_id``).
    table_file : path
        Where the table was read from.

    Returns
    -------
    pandas.DataFrame
    """
    table_file = Path(table_file)
    found = read_classes_table(table_file.parent)
    if found is None or "class" in table:
        return table
    frame, meta = found
    if meta.get("table", "cells.parquet") != table_file.name:
        log.warning(
            "%s: the classes are of %s, not of this table: export that table to carry them",
            table_file,
            meta.get("table"),
        )
        return table
    lookup = pd.Series(frame["class"].to_numpy(dtype=object), index=frame["cell_id"].astype(int))
    lookup = lookup[~lookup.index.duplicated(keep="last")]
    out = table.copy()
    values = lookup.reindex(out["cell_id"].astype(int).to_numpy()).to_numpy(dtype=object)
    out["class"] = pd.Categorical(values)
    return out


def rule_text(rule: Rule) -> str:
    """The command-line text of a rule (``cellseg classify --rule``), which parses back to it.

    Examples
    --------
    >>> rule_text(parse_rule({"preset": "dab", "name": "Ki67"}))
    'Ki67=od_mean_dab>0.2,0.4,0.6'
    >>> parse_rule(rule_text(parse_rule("marker:cd3"))) == parse_rule("marker:cd3")
    True
    """
    if rule.bins is not None:
        threshold = ",".join(f"{b:g}" for b in rule.bins)
    elif isinstance(rule.threshold, str):
        threshold = rule.threshold
    else:
        threshold = repr(float(rule.threshold))
    return f"{rule.name}={rule.column}>{threshold}"
