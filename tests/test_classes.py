"""Cell classes: rules, per-scan thresholds, the classifier, the class label log, the stage."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from cellseg.classes import (
    BIN_NAMES,
    Rule,
    analysed_area,
    apply_rules,
    auto_threshold,
    class_summary,
    join_classes,
    load_rules,
    parse_rule,
    read_classes_table,
    rule_text,
)
from cellseg.classifier import (
    feature_columns,
    load_classifier,
    predict_classes,
    save_classifier,
    train_classifier,
)
from cellseg.errors import ConfigError, InputError
from cellseg.measure import measure_cells
from cellseg.review.class_labels import (
    append_class_label,
    class_log_path,
    read_class_label_records,
    read_class_labels,
)
from cellseg.synth.markers import CLASS_NAMES, synthesize_marker_scan


# --------------------------------------------------------------------------------- rules
def test_rule_texts_and_mappings_parse_and_round_trip(tmp_path):
    assert parse_rule("dab") == Rule("dab", "od_mean_dab", 0.2, (0.2, 0.4, 0.6))
    assert parse_rule("dab-ring").column == "ring_od_mean_dab"
    assert parse_rule("marker:cd3") == Rule("CD3", "intensity_mean_corrected_cd3", "li")
    assert parse_rule("marker:cd3:li").threshold == "li"
    assert parse_rule("marker:cd3:250").threshold == 250.0
    assert parse_rule("Ki67=od_mean_dab>0.1,0.3,0.5").bins == (0.1, 0.3, 0.5)
    assert parse_rule("intensity_mean_c1>otsu-log") == Rule(
        "intensity_mean_c1", "intensity_mean_c1", "otsu-log"
    )
    mapped = parse_rule({"preset": "dab", "name": "ER", "bins": [0.1, 0.2, 0.3]})
    assert mapped == Rule("ER", "od_mean_dab", 0.1, (0.1, 0.2, 0.3))
    for rule in (mapped, parse_rule("marker:cd8:triangle"), parse_rule("x=a>1.5")):
        assert parse_rule(rule_text(rule)) == rule
    for bad in ("dab>", "a>b", "a>1,2", "a>0.3,0.2,0.5", "marker:CD 3", {"threshold": 1}):
        with pytest.raises(ConfigError):
            parse_rule(bad)
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - dab\n  - {name: CD3, column: intensity_mean_cd3, threshold: li}\n")
    assert [r.name for r in load_rules(path)] == ["dab", "CD3"]
    path.write_text("rules: [{colum: x}]\n")
    with pytest.raises(ConfigError, match="rules.yaml.*colum"):
        load_rules(path)


def test_dab_bins_positive_index_and_h_score_by_hand():
    od = [0.05, 0.2, 0.21, 0.39, 0.4, 0.41, 0.6, 0.75, np.nan, 0.0]
    table = pd.DataFrame({"cell_id": np.arange(1, 11, dtype=np.uint32), "od_mean_dab": od})
    classes, used = apply_rules(table, [parse_rule("dab")])
    # a value on an edge stays below it: 0.2 is negative, 0.4 is 1+, 0.6 is 2+
    expected = ["Negative", "Negative", "1+", "1+", "1+", "2+", "2+", "3+", None, "Negative"]
    assert classes["class"].tolist() == expected
    assert classes["intensity_bin"].tolist() == [0, 0, 1, 1, 1, 2, 2, 3, -1, 0]
    assert classes["positive"].tolist() == [c not in ("Negative", None) for c in expected]
    assert used[0]["bin_counts"] == [3, 3, 2, 1] and used[0]["method"] == "fixed"
    s = class_summary(classes, area=0.5)
    # 9 classified cells: 6 positive; H = 1·3/9 + 2·2/9 + 3·1/9 in percent
    assert s["n_classified"] == 9
    assert s["positive_percent"] == pytest.approx(100 * 6 / 9)
    assert s["h_score"] == pytest.approx(100 * (3 + 4 + 3) / 9)
    assert [c["name"] for c in s["classes"]] == list(BIN_NAMES)
    assert {c["name"]: c["density"] for c in s["classes"]}["1+"] == pytest.approx(3 / 0.5)


def test_several_rules_name_each_combination_and_missing_columns_are_named():
    table = pd.DataFrame(
        {"cell_id": [1, 2, 3, 4], "a": [0.0, 2.0, 2.0, 0.0], "b": [5.0, 5.0, 0.0, 0.0]}
    )
    classes, _ = apply_rules(table, [parse_rule("CD3=a>1"), parse_rule("CD8=b>1")])
    assert classes["class"].tolist() == ["CD3- CD8+", "CD3+ CD8+", "CD3+ CD8-", "CD3- CD8-"]
    assert classes["positive_cd3"].tolist() == [False, True, True, False]
    assert classes["positive"].tolist() == [True, True, True, False]
    assert "intensity_bin" not in classes
    with pytest.raises(InputError, match="no column 'od_mean_dab'"):
        apply_rules(table, [parse_rule("dab")])


def test_automatic_thresholds_are_computed_per_scan():
    rng = np.random.default_rng(0)

    def scan(scale, fraction, n=400):
        positive = rng.random(n) < fraction
        values = np.where(positive, rng.normal(10, 1, n), rng.normal(2, 0.5, n)) * scale
        table = pd.DataFrame({"cell_id": np.arange(1, n + 1), "intensity_mean_cd3": values})
        return table, positive

    for scale, fraction in ((1.0, 0.2), (30.0, 0.6)):
        table, positive = scan(scale, fraction)
        classes, used = apply_rules(table, [parse_rule("CD3=intensity_mean_cd3>otsu")])
        assert 3 * scale < used[0]["threshold"] < 8 * scale  # between this scan's two modes
        assert np.mean(classes["positive"].to_numpy() != positive) <= 0.01
        for method in ("otsu-log", "li", "triangle"):
            assert 2.5 * scale < auto_threshold(table["intensity_mean_cd3"], method) < 9 * scale
    assert auto_threshold(np.full(10, 3.0)) == np.inf  # constant: nobody positive
    with pytest.raises(ConfigError):
        auto_threshold(np.arange(5.0), "mean")


def test_marker_scan_positive_fraction_from_an_automatic_threshold():
    sample = synthesize_marker_scan((256, 256), seed=3, marker_fraction=0.4)
    table = measure_cells(
        sample.labels, sample.image, spacing=sample.spacing, channel_names=sample.channel_names
    )
    classes, used = apply_rules(table, [parse_rule("marker:marker:li")])
    error = abs(classes["positive"].mean() - sample.marker_fraction)
    assert error < 0.02, (error, used[0]["threshold"])


def test_analysed_area_uses_the_tissue_fraction():
    info = {"shape": [2000, 1000], "spacing": [0.5, 0.5], "axes": "yx"}
    assert analysed_area(info) == (pytest.approx(0.5), "mm²", "scan")
    assert analysed_area({**info, "tissue": {"fraction": 0.25}})[0] == pytest.approx(0.125)
    volume = {"shape": [10, 100, 100], "spacing": [2.0, 1.0, 1.0], "axes": "zyx"}
    assert analysed_area(volume) == (pytest.approx(2e-4), "mm³", "scan")


# ----------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def two_classes():
    """Measured cells of two marker scans whose classes differ in size and stain (with overlap)."""
    out = []
    for seed in (11, 12):
        s = synthesize_marker_scan((384, 384), seed=seed, size_ratio=1.2)
        t = measure_cells(s.labels, s.image, spacing=s.spacing, channel_names=s.channel_names)
        truth = np.asarray(CLASS_NAMES, dtype=object)[s.cell_class]
        out.append((t, truth))
    return out


def test_classifier_from_20_cells_per_class_then_saved_and_reloaded(two_classes, tmp_path):
    (train_table, train_truth), (test_table, test_truth) = two_classes
    rng = np.random.default_rng(0)
    labels = {}
    for name in CLASS_NAMES:
        ids = train_table["cell_id"].to_numpy()[train_truth == name]
        labels.update({int(i): name for i in rng.choice(ids, 20, replace=False)})
    model = train_classifier(train_table, labels)
    assert model.metrics["n_labelled"] == 40 and model.metrics["cv_folds"] == 5
    assert np.asarray(model.metrics["confusion"]).sum() == 40
    assert "centroid_x_um" not in model.features and "area_um2" in model.features
    predicted = predict_classes(model, test_table)
    accuracy = float(np.mean(predicted["class"].to_numpy() == test_truth))
    assert accuracy >= 0.9, accuracy
    assert predicted["probability"].between(0.5, 1.0).all()

    path = save_classifier(model, tmp_path / "c.skops")
    again = load_classifier(path)
    assert again.features == model.features and again.metrics == model.metrics
    pd.testing.assert_frame_equal(predict_classes(again, test_table), predicted)
    with pytest.raises(InputError, match="lacks 1 column"):
        predict_classes(again, test_table.drop(columns="area_um2"))


def test_files_that_are_not_classifiers_are_refused(tmp_path):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    junk = tmp_path / "junk.skops"
    junk.write_bytes(b"\x80\x04not a zip")
    with pytest.raises(InputError, match="not a cellseg cell classifier"):
        load_classifier(junk)
    other = tmp_path / "other.skops"
    sio.dump({"format": "something else"}, other)
    with pytest.raises(InputError, match="something else|not a cellseg"):
        load_classifier(other)
    foreign = tmp_path / "foreign.skops"
    sio.dump({"model": LogisticRegression(), "f": np.float64}, foreign)
    with pytest.raises(InputError, match="not a cellseg cell classifier"):
        load_classifier(foreign)
    plain_zip = tmp_path / "plain.skops"
    with zipfile.ZipFile(plain_zip, "w") as z:
        z.writestr("schema.json", "{}")
    with pytest.raises(InputError, match="not a cellseg cell classifier"):
        load_classifier(plain_zip)
    with pytest.raises(InputError, match="no such classifier"):
        load_classifier(tmp_path / "missing.skops")


def test_training_needs_two_labelled_classes():
    table = pd.DataFrame({"cell_id": [1, 2, 3], "area_um2": [1.0, 2.0, 3.0]})
    with pytest.raises(InputError, match="at least two classes"):
        train_classifier(table, {1: "a", 2: "a", 3: "b"})
    assert feature_columns(table) == ["area_um2"]


# ---------------------------------------------------------------------------- class labels
def test_class_label_log_last_line_wins_and_null_removes(tmp_path):
    append_class_label(tmp_path, 3, "Tumour", labels="cells", user="a")
    append_class_label(tmp_path, 4, "Stroma", labels="cells_corrected", user="a")
    append_class_label(tmp_path, 3, "Immune", labels="cells", user="b")
    append_class_label(tmp_path, 5, "Tumour", labels="cells")
    append_class_label(tmp_path, 5, None, labels="cells")
    assert read_class_labels(tmp_path) == {3: "Immune", 4: "Stroma"}
    assert read_class_labels(tmp_path, labels="cells") == {3: "Immune"}
    first = json.loads(class_log_path(tmp_path).read_text().splitlines()[0])
    assert set(first) == {"cell_id", "class", "labels", "time", "user"}
    assert first["time"].endswith("Z") and first["user"] == "a"
    for bad in ("", 3):
        with pytest.raises(InputError):
            append_class_label(tmp_path, 1, bad, labels="cells")
    with pytest.raises(InputError):
        append_class_label(tmp_path, 0, "x", labels="cells")
    with pytest.raises(InputError):
        append_class_label(tmp_path, 1, "x", labels="nuclei")


def test_class_label_log_torn_last_line_recovered_other_damage_named(tmp_path):
    append_class_label(tmp_path, 1, "a", labels="cells")
    path = class_log_path(tmp_path)
    with path.open("a") as f:
        f.write('{"cell_id": 2, "class": "b", "lab')  # a write interrupted before its newline
    assert read_class_labels(tmp_path) == {1: "a"}
    append_class_label(tmp_path, 3, "c", labels="cells")  # cuts the torn line off first
    assert read_class_labels(tmp_path) == {1: "a", 3: "c"}
    assert len(path.read_text().splitlines()) == 2

    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(InputError, match=r"class_labels.jsonl, line 2"):
        read_class_labels(tmp_path)
    path.write_text(lines[0] + "\n\n" + '{"cell_id": "7", "class": "x"}\n')
    with pytest.raises(InputError, match=r"line 3: cell_id '7'"):
        read_class_label_records(tmp_path)
    path.write_text('{"cell_id": 7}\n')
    with pytest.raises(InputError, match=r"line 1: the record has no class"):
        read_class_labels(tmp_path)


# -------------------------------------------------------------------------------- the stage
def test_classify_stage_report_exports_and_a_trained_classifier(
    result2d, copy_result, tmp_path, capsys
):
    from cellseg.cli import main
    from cellseg.export import read_tables, to_anndata

    outdir = copy_result(result2d)
    cells = pd.read_parquet(outdir / "cells.parquet")
    column = next(c for c in cells.columns if c.startswith("intensity_mean_corrected_"))
    before = (outdir / "cells.parquet").read_bytes()

    assert main(["-q", "classify", str(outdir), "--rule", f"{column}>otsu"]) == 0
    out = capsys.readouterr().out
    classes, meta = read_classes_table(outdir)
    assert (outdir / "cells.parquet").read_bytes() == before  # never rewritten
    assert classes["cell_id"].tolist() == cells["cell_id"].tolist()
    threshold = meta["rules"][0]["threshold"]
    expected = np.where(cells[column] > threshold, "Positive", "Negative")
    assert classes["class"].tolist() == expected.tolist()
    n_pos = int((expected == "Positive").sum())
    assert f"Positive: {n_pos} (" in out and "report:" in out
    page = (outdir / "report.html").read_text()
    assert "Cell classes" in page and "class thresholds" in page
    assert f"<td class='num'>{n_pos}</td>" in page
    report = json.loads((outdir / "work" / "report.json").read_text())
    counts = {c["name"]: c["count"] for c in report["summary"]["classes"]["classes"]}
    assert counts == {"Positive": n_pos, "Negative": len(cells) - n_pos}

    # exports: AnnData's obs carries a categorical class; GeoJSON QuPath's classification
    table, metas = read_tables([outdir])
    adata = to_anndata(table, metas)
    assert isinstance(adata.obs["class"].dtype, pd.CategoricalDtype)
    assert adata.obs["class"].astype(str).tolist() == expected.tolist()
    assert "class" not in adata.var_names
    geo = tmp_path / "cells.geojson"
    assert main(["-q", "export", str(outdir), "--format", "geojson", "-o", str(geo)]) == 0
    features = json.loads(geo.read_text())["features"]
    names = {f["properties"]["classification"]["name"] for f in features}
    assert names == set(expected.tolist())

    # a reviewer labels the 6 largest and 6 smallest cells; train, then apply elsewhere
    order = cells.sort_values("area_um2")["cell_id"].to_numpy()
    for cid in order[:6]:
        append_class_label(outdir, int(cid), "small", labels="cells")
    for cid in order[-6:]:
        append_class_label(outdir, int(cid), "large", labels="cells")
    assert main(["-q", "classify", str(outdir), "--train"]) == 0
    out = capsys.readouterr().out
    assert "cross-validated accuracy" in out and (outdir / "classifier.skops").is_file()
    trained, meta = read_classes_table(outdir)
    assert meta["classifier"]["metrics"]["n_labelled"] == 12
    assert trained["probability"].between(0.5, 1).all()
    labelled = trained.set_index("cell_id").loc[order[-6:], "class"]
    assert (labelled == "large").all()

    other = tmp_path / "other"
    shutil.copytree(result2d, other)
    code = main(
        ["-q", "classify", str(other), "--classifier", str(outdir / "classifier.skops"),
         "--rule", f"{column}>otsu"]
    )  # fmt: skip
    assert code == 0
    combined, _ = read_classes_table(other)
    assert set(combined["class"]) <= {f"{a}: {b}" for a in ("small", "large")
                                      for b in ("Positive", "Negative")}  # fmt: skip
    joined = join_classes(cells, other / "cells.parquet")
    assert joined["class"].astype(str).tolist() == combined["class"].tolist()

    bad = tmp_path / "bad.skops"
    bad.write_text("hello")
    assert main(["-q", "classify", str(outdir), "--classifier", str(bad)]) == 2
    assert "not a cellseg cell classifier" in capsys.readouterr().err
    assert main(["-q", "classify", str(outdir)]) == 2
    assert "nothing to classify by" in capsys.readouterr().err
