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
