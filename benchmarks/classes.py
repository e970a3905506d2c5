#!/usr/bin/env python3
"""Cell classes against synthetic truth: positive fractions, H-scores, classifier accuracy.

Prints, per synthetic scan, the goal figures of positive-cell scoring and the
classifier (goals: positive fraction within 2 percentage points, H-score
within 10, ≥ 90 % accuracy from 20 labelled cells per class):

* IHC (``synthesize_brightfield(stain="hdab", dab_pattern="nuclear")``): the
  known DAB-positive fraction and the H-score of the known DAB amounts, binned
  with the ``dab`` rule's 0.2 / 0.4 / 0.6 OD, against the ``dab`` rule on the
  measured ``od_mean_dab``; measured with the stain vectors estimated from the
  scan (as ingest does) and with the generator's own vectors;
* marker scans (:func:`cellseg.synth.markers.synthesize_marker_scan`): the
  known marker-positive fraction against ``marker:marker:<method>`` for each
  automatic threshold method;
* IHC end to end (``--segmented``): the cells segmented by the brightfield
  model (stain vectors estimated, as ``cellseg segment`` does) instead of
  taken from the truth; also how many of the positive nuclei were found;
* the classifier: trained on 20 labelled cells per class of one marker scan,
  accuracy on every cell of another (classes differ in size by 20 % and in
  DNA stain, both overlapping).

Cells are measured on the true label images (but with ``--segmented``), so
those figures are of the classification alone, not of segmentation.

    python benchmarks/classes.py [--size 768] [--seeds 3] [--segmented]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cellseg.classes import AUTO_METHODS, DAB_BINS, apply_rules, class_summary, parse_rule
from cellseg.classifier import predict_classes, train_classifier
from cellseg.measure import measure_cells
from cellseg.metrics import match_instances
from cellseg.normalize import compute_scan_stats, normalize
from cellseg.segmentation import get_backend
from cellseg.stain import estimate_stains, stain_channel
from cellseg.synth import synthesize_brightfield
from cellseg.synth.markers import CLASS_NAMES, synthesize_marker_scan


def ihc_scan(size: int, seed: int, fraction: float):
    """A synthetic IHC scan with nuclear DAB in a known fraction of its nuclei."""
    return synthesize_brightfield(
        (size, size),
        seed=seed,
        stain="hdab",
        dab_pattern="nuclear",
        dab_fraction=fraction,
        dab_strength=(0.25, 0.95),
    )


def ihc(size: int, seed: int, fraction: float) -> list[str]:
    s = ihc_scan(size, seed, fraction)
    amount = s.dab_amount
    truth_positive = 100.0 * float(np.mean(amount > DAB_BINS[0]))
    bins = np.searchsorted(np.asarray(DAB_BINS), amount, side="left")
    truth_h = float(sum(b * 100.0 * np.mean(bins == b) for b in (1, 2, 3)))
    rgb = np.moveaxis(s.image, -1, 0)
    lines = []
    for which, stains in (
        ("estimated", estimate_stains(s.image, kind="hdab")),
        ("generator", s.stains),
    ):
        table = measure_cells(
            s.labels, rgb, spacing=s.spacing, channel_names=["r", "g", "b"], stains=stains
        )
        classes, _ = apply_rules(table, [parse_rule("dab")])
        got = class_summary(classes)
        lines.append(
            f"IHC seed {seed} ({len(table)} cells, stains {which:9}): positive "
            f"{got['positive_percent']:5.1f} % vs {truth_positive:5.1f} % "
            f"(error {got['positive_percent'] - truth_positive:+5.1f} pp), H-score "
            f"{got['h_score']:5.1f} vs {truth_h:5.1f} (error {got['h_score'] - truth_h:+5.1f})"
        )
    return lines


def ihc_segmented(size: int, seed: int, fraction: float) -> list[str]:
    """Positive fraction with the nuclei segmented by the brightfield model."""
    s = ihc_scan(size, seed, fraction)
    truth = 100.0 * float(np.mean(s.dab_amount > DAB_BINS[0]))
    stains = estimate_stains(s.image, kind="hdab")
    nuclei = stain_channel(s.image, stains, "hematoxylin")
    stats = compute_scan_stats(nuclei)
    backend = get_backend("model", "brightfield2d", ndim=2)
    labels = backend.predict([normalize(nuclei, stats)], s.spacing, stats)[0]
    table = measure_cells(
        labels,
        np.moveaxis(s.image, -1, 0),
        spacing=s.spacing,
        channel_names=["r", "g", "b"],
        stains=stains,
    )
    got = class_summary(apply_rules(table, [parse_rule("dab")])[0])["positive_percent"]
    positive = np.flatnonzero(s.dab_amount > DAB_BINS[0]) + 1
    found = match_instances(np.where(np.isin(s.labels, positive), s.labels, 0), labels, 0.5)["tp"]
    ap = match_instances(s.labels, labels, 0.5)["ap"]
    return [
        f"IHC seed {seed} segmented (AP50 {ap:.3f}, {found}/{len(positive)} positive nuclei "
        f"found): positive {got:5.1f} % vs {truth:5.1f} % (error {got - truth:+5.1f} pp)"
    ]


def markers(size: int, seed: int, fraction: float) -> list[str]:
    s = synthesize_marker_scan((size, size), seed=seed, marker_fraction=fraction)
    table = measure_cells(s.labels, s.image, spacing=s.spacing, channel_names=s.channel_names)
    truth = 100.0 * s.marker_fraction
    parts = []
    for method in AUTO_METHODS:
        classes, _ = apply_rules(table, [parse_rule(f"marker:marker:{method}")])
        got = 100.0 * float(classes["positive"].mean())
        parts.append(f"{method} {got - truth:+5.1f}")
    return [
        f"marker seed {seed} ({len(table)} cells, {truth:4.1f} % positive): error in pp: "
        + ", ".join(parts)
    ]


def classifier(size: int, seed: int) -> list[str]:
    scans = []
    for k in (0, 1):
        s = synthesize_marker_scan((size, size), seed=1000 + 2 * seed + k, size_ratio=1.2)
        t = measure_cells(s.labels, s.image, spacing=s.spacing, channel_names=s.channel_names)
        scans.append((t, np.asarray(CLASS_NAMES, dtype=object)[s.cell_class]))
    (train, train_truth), (test, test_truth) = scans
    rng = np.random.default_rng(seed)
    labels = {}
    for name in CLASS_NAMES:
        ids = train["cell_id"].to_numpy()[train_truth == name]
        labels.update({int(i): name for i in rng.choice(ids, 20, replace=False)})
    start = time.perf_counter()
    model = train_classifier(train, labels, seed=seed)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(predict_classes(model, test)["class"].to_numpy() == test_truth))
    return [
        f"classifier seed {seed}: 20 labelled cells per class, cross-validated accuracy "
        f"{model.metrics['cv_accuracy']:.3f}, held-out accuracy {accuracy:.3f} on "
        f"{len(test)} cells (training {seconds:.1f} s)"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=768, help="scan edge in pixels")
    parser.add_argument("--seeds", type=int, default=3, help="scans per kind")
    parser.add_argument(
        "--segmented", action="store_true", help="also IHC with the nuclei segmented by the model"
    )
    args = parser.parse_args()
    for seed in range(args.seeds):
        fraction = (0.15, 0.35, 0.6)[seed % 3]
        for line in ihc(args.size, seed, fraction) + markers(args.size, seed, fraction):
            print(line, flush=True)
    if args.segmented:
        for seed, fraction in enumerate((0.15, 0.35, 0.6, 0.8)):
            for line in ihc_segmented(args.size, seed, fraction):
                print(line, flush=True)
    for seed in range(args.seeds):
        for line in classifier(args.size // 2, seed):
            print(line, flush=True)


if __name__ == "__main__":
    main()
