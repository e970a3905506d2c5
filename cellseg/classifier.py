"""A cell classifier trained from a few labelled cells, saved without pickle.

A reviewer gives classes to a few cells (:mod:`cellseg.review.class_labels`);
:func:`train_classifier` fits scikit-learn's random forest on the cell table's
numeric features of those cells (size, shape, intensities, optical densities:
:func:`feature_columns`), estimates its accuracy by stratified
cross-validation (accuracy and confusion matrix), and :func:`predict_classes`
gives every cell a class and the probability of it.

A random forest suits a few dozen examples: it needs no scaling, takes
features of any units, tolerates missing values and rarely overfits badly.
The fitted classifier is saved with skops (:func:`save_classifier`), a
format that loads only allow-listed types (never an arbitrary pickle), as
one record with the features, classes and metrics; :func:`load_classifier`
refuses a file that is not such a record, or that holds any other type.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg import __version__
from cellseg.atomic import atomic_path
from cellseg.errors import InputError

#: The ``format`` field of a saved classifier.
FORMAT = "cellseg-cell-classifier"
FORMAT_VERSION = 1
#: Default file name of a classifier trained on a scan: ``OUTDIR/classifier.skops``.
CLASSIFIER_FILE = "classifier.skops"
#: The only types, beyond skops' own defaults, that a saved classifier may hold.
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)
#: Fewest labelled cells per class.
MIN_PER_CLASS = 2
#: Columns never used as features: ids and where a cell is (not what it is).
_EXCLUDED = ("cell_id", "nearest_neighbor_id", "touches_border")
_EXCLUDED_PREFIXES = ("centroid_", "bbox_", "orientation_")


@dataclass
class CellClassifier:
    """A fitted cell classifier with what it needs and what it achieved.

    Attributes
    ----------
    model : sklearn.ensemble.RandomForestClassifier
        The fitted model.
    features : list of str
        The cell-table columns it reads, in order.
    classes : list of str
        The class names, in the model's order.
    metrics : dict
        ``n_labelled``, ``per_class`` counts, ``cv_folds``, ``cv_accuracy``,
        ``confusion`` (rows true, columns predicted, in `classes` order).
    info : dict
        Provenance: cellseg version, training scan, time.
    """

    model: Any
    features: list[str]
    classes: list[str]
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The numeric columns of a cell table that describe a cell (not its id or place).

    Ids, centroids, bounding boxes, orientations, pixel-unit columns (``_px``:
    they change with the pixel size) and ``touches_border`` are left out.

    Examples
    --------
    >>> t = pd.DataFrame({"cell_id": [1], "centroid_y_um": [0.0], "area_um2": [3.0],
    ...                   "n_pixels": [12], "intensity_mean_dapi": [9.0], "name": ["a"]})
    >>> feature_columns(t)
    ['area_um2', 'n_pixels', 'intensity_mean_dapi']
    """
    out = []
    for name in table.columns:
        if name in _EXCLUDED or name.startswith(_EXCLUDED_PREFIXES) or name.endswith("_px"):
            continue
        dtype = table[name].dtype
        if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
            continue
        out.append(name)
    return out


def _matrix(table: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    missing = [f for f in features if f not in table]
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise InputError(
            f"the cell table lacks {len(missing)} column(s) the classifier was trained on "
            f"({shown}); apply it to scans measured the same way (same channels and stains)"
        )
    x = table[list(features)].to_numpy(dtype=np.float64)
    x[~np.isfinite(x)] = np.nan  # the forest treats NaN as missing
    return x


def train_classifier(
    table: pd.DataFrame,
    labels: Mapping[int, str],
    *,
    features: Sequence[str] | None = None,
    n_estimators: int = 100,
    seed: int = 0,
    info: Mapping[str, Any] | None = None,
) -> CellClassifier:
    """Fit a random forest on the labelled cells of a table, with cross-validated metrics.

    Parameters
    ----------
    table : pandas.DataFrame
        The cell table (``cell_id`` and the features).
    labels : mapping of int to str
        Class of each labelled cell, by ``cell_id`` (cells not in the table are
        left out).
    features : sequence of str, optional
        Columns to use; default :func:`feature_columns` of the table.
    n_estimators : int
        Trees of the forest.
    seed : int
        Seed of the forest and of the folds (the same inputs give the same classifier).
    info : mapping, optional
        Provenance recorded with the classifier.

    Returns
    -------
    CellClassifier

    Raises
    ------
    InputError
        If fewer than two classes have at least :data:`MIN_PER_CLASS` labelled
        cells in the table.
    """
    from sklearn.ensemble import RandomForestClassifier  # scikit-learn: only when training
    from sklearn.metrics import accuracy_score, confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    ids = table["cell_id"].to_numpy(dtype=np.int64)
    wanted = {int(k): str(v) for k, v in labels.items()}
    rows = np.flatnonzero(np.isin(ids, list(wanted)))
    y = np.asarray([wanted[int(i)] for i in ids[rows]], dtype=object)
    classes, counts = np.unique(y.astype(str), return_counts=True) if y.size else ([], [])
    per_class = {str(c): int(n) for c, n in zip(classes, counts)}
    if len(classes) < 2 or min(counts) < MIN_PER_CLASS:
        raise InputError(
            f"a classifier needs at least {MIN_PER_CLASS} labelled cells in each of at least two "
            f"classes; the table has {per_class or 'none'} (label more cells in napari)"
        )
    features = list(features) if features is not None else feature_columns(table)
    if not features:
        raise InputError("the cell table has no numeric feature column to train on")
    x = _matrix(table.iloc[rows], features)
    y = y.astype(str)

    def forest() -> RandomForestClassifier:
        return RandomForestClassifier(
            n_estimators=n_estimators, random_state=seed, class_weight="balanced", n_jobs=1
        )

    folds = int(min(5, min(counts)))
    metrics: dict[str, Any] = {"n_labelled": int(y.size), "per_class": per_class}
    if folds >= 2:
        split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        predicted = cross_val_predict(forest(), x, y, cv=split)
        metrics["cv_folds"] = folds
        metrics["cv_accuracy"] = float(accuracy_score(y, predicted))
        metrics["confusion"] = confusion_matrix(y, predicted, labels=list(classes)).tolist()
    model = forest().fit(x, y)
    provenance = {"cellseg_version": __version__, **dict(info or {})}
    return CellClassifier(model, features, [str(c) for c in model.classes_], metrics, provenance)


def predict_classes(classifier: CellClassifier, table: pd.DataFrame) -> pd.DataFrame:
    """Every cell's class and the probability the classifier gives it.

    Returns
    -------
    pandas.DataFrame
        ``cell_id``, ``class``, ``probability`` (of the class given, 0..1).

    Raises
    ------
    InputError
        If the table lacks a feature the classifier was trained on.
    """
    x = _matrix(table, classifier.features)
    ids = table["cell_id"].to_numpy(dtype=np.uint32)
    if len(table) == 0:
        return pd.DataFrame(
            {"cell_id": ids, "class": pd.Series([], dtype=object), "probability": []}
        )
    proba = classifier.model.predict_proba(x)
    best = proba.argmax(axis=1)
    names = np.asarray(classifier.model.classes_, dtype=object)
    return pd.DataFrame(
        {"cell_id": ids, "class": names[best], "probability": proba[np.arange(len(best)), best]}
    )


def save_classifier(classifier: CellClassifier, path: str | Path) -> Path:
    """Save a classifier with skops (no pickle), atomically.

    Returns
    -------
    Path
    """
    import skops.io as sio  # skops: only when a classifier is saved or loaded

    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": classifier.model,
        "features": list(classifier.features),
        "classes": list(classifier.classes),
        # metrics and provenance as JSON text: plain types whatever they hold
        "metrics": json.dumps(classifier.metrics),
        "info": json.dumps(classifier.info),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        sio.dump(record, tmp, compression=zipfile.ZIP_DEFLATED)
    return path


def load_classifier(path: str | Path) -> CellClassifier:
    """Load a classifier saved by :func:`save_classifier`.

    Only skops' default types and :data:`TRUSTED_TYPES` are loaded.

    Raises
    ------
    InputError
        If the file does not exist, is not a skops file, holds types outside
        the allow-list, or is not a cellseg cell classifier.
    """
    import skops.io as sio  # skops: only when a classifier is saved or loaded

    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: no such classifier file (train one with cellseg classify --train)"
        )
    refuse = f"{path}: not a cellseg cell classifier"
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception:  # a foreign zip or any other file: skops raises many kinds
        raise InputError(
            f"{refuse} (not a skops file); save one with cellseg classify --train"
        ) from None
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected:
        raise InputError(
            f"{refuse}: it holds types that a classifier does not ({', '.join(unexpected[:5])}); "
            "it was not loaded"
        )
    try:
        record = sio.load(path, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # skops raises many kinds for damaged or foreign content
        raise InputError(f"{refuse} ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(f"{refuse} (a skops file of something else)")
    if record.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: a classifier of format version {record.get('format_version')!r}; this "
            f"cellseg reads version {FORMAT_VERSION}: train it again"
        )
    model = record["model"]
    if not hasattr(model, "predict_proba") or list(map(str, model.classes_)) != record["classes"]:
        raise InputError(f"{refuse} (its model does not match its classes)")
    return CellClassifier(
        model,
        [str(f) for f in record["features"]],
        [str(c) for c in record["classes"]],
        json.loads(record["metrics"]),
        json.loads(record["info"]),
    )
