import numpy as np

from cellseg.metrics import match_instances, same_partition


def test_identity_and_permutation():
    a = np.zeros((20, 20), int)
    a[2:6, 2:6] = 1
    a[10:15, 3:9] = 2
    b = np.where(a == 1, 7, np.where(a == 2, 3, 0))
    r = match_instances(a, b)
    assert (r["tp"], r["fp"], r["fn"], r["ap"]) == (2, 0, 0, 1.0)
    assert same_partition(a, b)


def test_merge_split_and_empty():
    a = np.zeros((10, 10), int)
    a[:, :5] = 1
    a[:, 5:] = 2
    merged = (a > 0).astype(int)
    r = match_instances(a, merged)
    # each half has IoU 0.5 with the merged cell: one of them matches it
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    assert match_instances(a, merged, 0.75)["tp"] == 0
    assert not same_partition(a, merged)
    empty = np.zeros_like(a)
    r = match_instances(empty, empty)
    assert r["ap"] == 1.0 and r["tp"] == 0
    r = match_instances(a, empty)
    assert r["fn"] == 2 and r["recall"] == 0.0


def _two_cells():
    a = np.zeros((30, 40), int)
    a[5:15, 5:15] = 1
    a[5:15, 15:25] = 2  # touching 1
    a[20:28, 28:38] = 3
    return a


def test_error_counts_on_hand_built_cases():
    from cellseg.metrics import error_counts

    a = _two_cells()
    # identity and permuted ids: no errors, PQ 1
    for pred in (a, np.choose(a, [0, 9, 4, 6])):
        e = error_counts(a, pred)
        assert (e["merged"], e["split"], e["missed"], e["spurious"]) == (0, 0, 0, 0)
        assert e["panoptic_quality"] == 1.0
    # merge of 1 and 2
    merged = np.where(a == 2, 1, a)
    assert error_counts(a, merged)["merged"] == 2
    # split of 3 into two halves
    split = a.copy()
    split[20:28, 33:38] = 7
    e = error_counts(a, split)
    assert e["split"] == 1 and e["missed"] == 0
    # cell 3 missing, a spurious blob added
    other = np.where(a == 3, 0, a)
    other[0:3, 0:3] = 8
    e = error_counts(a, other)
    assert e["missed"] == 1 and e["spurious"] == 1
    # empty prediction
    e = error_counts(a, np.zeros_like(a))
    assert e["missed"] == 3 and e["panoptic_quality"] == 0.0


def test_shifted_masks_lose_iou():
    a = _two_cells()
    shifted = np.roll(a, 3, axis=1)
    r50, r90 = match_instances(a, shifted, 0.5), match_instances(a, shifted, 0.9)
    assert r50["tp"] == 3 and r90["tp"] == 0
    assert 0.5 < r50["mean_matched_iou"] < 0.8


def test_evaluate_command(tmp_path, capsys):
    import json

    import tifffile

    from cellseg.cli import main

    a = _two_cells().astype(np.uint16)
    tifffile.imwrite(tmp_path / "gt.tif", a)
    tifffile.imwrite(tmp_path / "pred.tif", np.where(a == 2, 1, a).astype(np.uint16))
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.tif"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["errors"]["merged"] == 2
    assert [r["threshold"] for r in out["thresholds"]][:2] == [0.5, 0.55]
    assert out["thresholds"][0]["tp"] == 2  # the merged cell still matches one half at IoU 0.5
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.tif")]) == 0
    assert "panoptic quality" in capsys.readouterr().out
