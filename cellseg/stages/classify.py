"""Stage ``classify``: cell classes ``OUTDIR/classes.parquet`` from rules and/or a classifier."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cellseg.classes import (
    Rule,
    apply_rules,
    class_summary,
    combine_classes,
    load_rules,
    parse_rule,
    rules_info,
    write_classes,
)
from cellseg.classifier import (
    CLASSIFIER_FILE,
    load_classifier,
    predict_classes,
    save_classifier,
    train_classifier,
)
from cellseg.errors import ConfigError, InputError
from cellseg.lock import locked
from cellseg.measure import read_table_metadata
from cellseg.report import write_report
from cellseg.review import CORRECTED, ORIGINAL, table_path
from cellseg.review.class_labels import read_class_labels

log = logging.getLogger("cellseg")


def classified_labels(outdir: Path) -> str:
    """The label image whose cells are classified: ``cells_corrected`` once its table exists."""
    return CORRECTED if table_path(outdir, CORRECTED).exists() else ORIGINAL


@locked("classify")
def classify(
    outdir: str | Path,
    *,
    rules: Sequence[str | dict | Rule] = (),
    rules_file: str | Path | None = None,
    train: bool = False,
    classifier: str | Path | None = None,
    save_to: str | Path | None = None,
    update_report: bool = True,
) -> dict[str, Any]:
    """Classify every cell of a scan and write ``OUTDIR/classes.parquet``.

    The table classified is ``cells_corrected.parquet`` when a review's
    corrections were measured, else ``cells.parquet``; it is read, never
    written. Rules (:mod:`cellseg.classes`) give ``class``, ``positive`` and
    ``intensity_bin``; a classifier (:mod:`cellseg.classifier`) gives
    ``class`` and ``probability``; with both, a cell's class is
    ``"<classifier's>: <rules'>"`` (``Tumour: Positive``).

    Parameters
    ----------
    outdir : path
        The scan's output folder (with its cell table).
    rules : sequence
        Rules as texts or mappings (:func:`cellseg.classes.parse_rule`) or `Rule`.
    rules_file : path, optional
        A YAML file of more rules (:func:`cellseg.classes.load_rules`).
    train : bool
        Fit a classifier on the cells a reviewer labelled
        (``OUTDIR/review/class_labels.jsonl``), save it to `save_to` (default
        ``OUTDIR/classifier.skops``) and apply it.
    classifier : path, optional
        A saved classifier to apply (not with `train`).
    save_to : path, optional
        Where `train` saves the classifier.
    update_report : bool
        Rewrite ``OUTDIR/report.html`` when the scan has one, so that it shows the classes.

    Returns
    -------
    dict
        ``classes`` (the file's path), ``labels`` (the label image classified),
        ``summary`` (:func:`cellseg.classes.class_summary`), ``rules`` (the
        thresholds used), ``classifier`` (its path and metrics, or None) and
        ``report`` (its path, or None).

    Raises
    ------
    ConfigError
        If nothing to classify by is given, or `train` and `classifier` both are.
    InputError
        If the table, a rule's column, the labelled cells or the classifier are wrong.
    """
    outdir = Path(outdir)
    parsed = [r if isinstance(r, Rule) else parse_rule(r) for r in rules]
    if rules_file is not None:
        parsed += load_rules(rules_file)
    if train and classifier is not None:
        raise ConfigError("give --train (fit a classifier here) or --classifier PATH, not both")
    if not parsed and not train and classifier is None:
        raise ConfigError(
            "nothing to classify by: give --rule (e.g. dab, marker:cd3), --rules FILE.yaml, "
            "--train (after labelling cells in napari) or --classifier PATH"
        )
    labels = classified_labels(outdir)
    source = table_path(outdir, labels)
    if not source.exists():
        raise InputError(
            f"{outdir}: has no cell table ({source.name}); run `cellseg measure` first"
        )
    table = pd.read_parquet(source)
    info: dict[str, Any] = {"table": source.name, "labels": labels, "n_cells": len(table)}

    result = pd.DataFrame({"cell_id": table["cell_id"].to_numpy(dtype="uint32")})
    model_info = None
    if train or classifier is not None:
        if train:
            wanted = read_class_labels(outdir)
            scan = read_table_metadata(source).get("scan")
            model = train_classifier(table, wanted, info={"scan": scan, "table": source.name})
            path = save_classifier(model, save_to or outdir / CLASSIFIER_FILE)
            m = model.metrics
            log.info(
                "classify: trained on %d labelled cells, cross-validated accuracy %s -> %s",
                m["n_labelled"],
                f"{m['cv_accuracy']:.3f}" if "cv_accuracy" in m else "n/a",
                path,
            )
        else:
            path = Path(classifier)
            model = load_classifier(path)
        predicted = predict_classes(model, table)
        result["class"] = predicted["class"].to_numpy(dtype=object)
        result["probability"] = predicted["probability"].to_numpy()
        model_info = {
            "path": str(path),
            "trained_here": bool(train),
            "classes": model.classes,
            "features": len(model.features),
            "metrics": model.metrics,
        }
    info["classifier"] = model_info
    used: list[dict] = []
    if parsed:
        by_rules, used = apply_rules(table, parsed)
        for column in by_rules.columns.drop(["cell_id", "class"]):
            result[column] = by_rules[column].to_numpy()
        result["class"] = (
            combine_classes(result["class"], by_rules["class"])
            if "class" in result
            else by_rules["class"].to_numpy(dtype=object)
        )
    info["rules"] = [{**spec, **entry} for spec, entry in zip(rules_info(parsed), used)]
    result = result[
        ["cell_id", "class", *[c for c in result.columns if c not in ("cell_id", "class")]]
    ]
    out = write_classes(outdir, result, info)
    summary = class_summary(result)
    log.info(
        "classify: %d cells, %s -> %s",
        len(result),
        ", ".join(f"{c['name']} {c['count']}" for c in summary["classes"]) or "no class",
        out,
    )
    report = None
    if update_report and (outdir / "report.html").exists():
        report = write_report(outdir)
    return {
        "classes": out,
        "labels": labels,
        "summary": summary,
        "rules": info["rules"],
        "classifier": model_info,
        "report": report,
    }
