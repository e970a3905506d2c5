"""Instance matching between a ground-truth and a predicted label image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iou_table(gt: np.ndarray, pred: np.ndarray):
    """Intersection over union of every overlapping (gt, pred) pair.

    Returns
    -------
    gt_ids, pred_ids : ndarray
        The non-zero ids of each image.
    pairs : ndarray of int, (k, 2)
        Indices into ``gt_ids`` and ``pred_ids`` of overlapping pairs.
    iou : ndarray of float, (k,)
        IoU of each pair.
    """
    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"shapes differ: {gt.shape} vs {pred.shape}")
    gt_ids, gt_inv, gt_area = np.unique(gt, return_inverse=True, return_counts=True)
    pr_ids, pr_inv, pr_area = np.unique(pred, return_inverse=True, return_counts=True)
    both = (gt != 0) & (pred != 0)
    key = gt_inv[both].astype(np.int64) * len(pr_ids) + pr_inv[both]
    uk, inter = np.unique(key, return_counts=True)
    gi, pi = uk // len(pr_ids), uk % len(pr_ids)
    iou = inter / (gt_area[gi] + pr_area[pi] - inter)
    g0 = 1 if gt_ids.size and gt_ids[0] == 0 else 0
    p0 = 1 if pr_ids.size and pr_ids[0] == 0 else 0
    return gt_ids[g0:], pr_ids[p0:], np.stack([gi - g0, pi - p0], axis=1), iou


def match_instances(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> dict:
    """Optimal one-to-one matching of instances at an IoU threshold.

    Parameters
    ----------
    gt, pred : ndarray of int
        Label images of the same shape, 0 = background.
    threshold : float
        Minimum IoU of a match.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, ``ap``
        (tp / (tp + fp + fn)), ``mean_matched_iou``, ``n_true``, ``n_pred``.

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2, 2, 2]]); b = np.array([[5, 5, 0, 0, 0, 7]])
    >>> r = match_instances(a, b); (r["tp"], r["fp"], r["fn"])
    (1, 1, 1)
    """
    gt_ids, pr_ids, pairs, iou = iou_table(gt, pred)
    ok = iou >= threshold
    rows, cols, vals = _optimal_matching(pairs[ok, 0], pairs[ok, 1], iou[ok])
    tp, matched_iou = len(rows), float(vals.sum())
    n_true, n_pred = len(gt_ids), len(pr_ids)
    fp, fn = n_pred - tp, n_true - tp
    return {
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_true": n_true,
        "n_pred": n_pred,
        "precision": tp / n_pred if n_pred else float(n_true == 0),
        "recall": tp / n_true if n_true else float(n_pred == 0),
        "f1": 2 * tp / (n_true + n_pred) if (n_true + n_pred) else 1.0,
        "ap": tp / (tp + fp + fn) if (tp + fp + fn) else 1.0,
        "mean_matched_iou": matched_iou / tp if tp else 0.0,
    }


def _optimal_matching(gi: np.ndarray, pi: np.ndarray, iou: np.ndarray):
    """Maximum-IoU one-to-one matching of candidate pairs.

    Pairs split into connected groups (instances linked by candidate pairs);
    each group is solved with the Hungarian algorithm, so memory follows the
    largest group, not the number of instances. Above IoU 0.5 every group is a
    single pair.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if gi.size == 0:
        return gi, pi, np.zeros(0)
    ug, g_inv = np.unique(gi, return_inverse=True)
    up, p_inv = np.unique(pi, return_inverse=True)
    n = len(ug) + len(up)
    graph = coo_matrix((np.ones(gi.size), (g_inv, len(ug) + p_inv)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[g_inv]
    rows, cols, vals = [], [], []
    order = np.argsort(pair_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
    for idx in np.split(order, bounds):
        if idx.size == 1:
            rows.append(gi[idx]), cols.append(pi[idx]), vals.append(iou[idx])
            continue
        rg, rg_inv = np.unique(gi[idx], return_inverse=True)
        rp, rp_inv = np.unique(pi[idx], return_inverse=True)
        m = np.zeros((len(rg), len(rp)))
        m[rg_inv, rp_inv] = iou[idx]
        r, c = linear_sum_assignment(-m)
        hit = m[r, c] > 0
        rows.append(rg[r[hit]]), cols.append(rp[c[hit]]), vals.append(m[r, c][hit])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images are equal up to a permutation of their ids.

    Examples
    --------
    >>> same_partition(np.array([0, 1, 1, 2]), np.array([0, 9, 9, 4]))
    True
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


DEFAULT_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def matching_table(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[dict]:
    """:func:`match_instances` at several thresholds (default 0.5, 0.55, ..., 0.95)."""
    return [match_instances(gt, pred, t) for t in thresholds]


def error_counts(gt: np.ndarray, pred: np.ndarray, cover: float = 0.5) -> dict:
    """Kinds of segmentation errors, and panoptic quality at IoU 0.5.

    A true cell is **merged** when a predicted cell also covers at least ``cover``
    of another true cell and at least ``cover`` of this one; a true cell is
    **split** when two or more predicted cells each lie at least ``cover`` inside
    it. Of the cells unmatched at IoU 0.5 and in no merge or split, true ones are
    **missed** and predicted ones **spurious**.

    Examples
    --------
    >>> gt = np.array([[1, 1, 2, 2, 0, 3, 3, 3, 3]])
    >>> pred = np.array([[5, 5, 5, 5, 0, 6, 6, 7, 7]])
    >>> c = error_counts(gt, pred); (c["merged"], c["split"], c["missed"], c["spurious"])
    (2, 1, 0, 0)
    """
    gt_ids, pr_ids, pairs, iou = iou_table(gt, pred)
    g_area = np.bincount(
        np.searchsorted(gt_ids, np.asarray(gt)[np.asarray(gt) > 0]), minlength=len(gt_ids)
    )
    p_area = np.bincount(
        np.searchsorted(pr_ids, np.asarray(pred)[np.asarray(pred) > 0]), minlength=len(pr_ids)
    )
    inter = iou * (g_area[pairs[:, 0]] + p_area[pairs[:, 1]]) / (1 + iou) if len(iou) else iou
    of_gt = inter / np.maximum(g_area[pairs[:, 0]], 1) if len(iou) else iou
    of_pred = inter / np.maximum(p_area[pairs[:, 1]], 1) if len(iou) else iou
    merged_gt, split_gt = set(), set()
    involved_pred = set()
    covering = pairs[of_gt >= cover]
    for p in np.unique(covering[:, 1]):
        gts = covering[covering[:, 1] == p, 0]
        if len(gts) >= 2:
            merged_gt.update(gts.tolist())
            involved_pred.add(int(p))
    inside = pairs[of_pred >= cover]
    for g in np.unique(inside[:, 0]):
        prs = inside[inside[:, 0] == g, 1]
        if len(prs) >= 2:
            split_gt.add(int(g))
            involved_pred.update(prs.tolist())
    ok = iou >= 0.5
    rows, cols, vals = _optimal_matching(pairs[ok, 0], pairs[ok, 1], iou[ok])
    matched_g, matched_p = set(rows.tolist()), set(cols.tolist())
    missed = [
        g
        for g in range(len(gt_ids))
        if g not in matched_g and g not in merged_gt and g not in split_gt
    ]
    spurious = [p for p in range(len(pr_ids)) if p not in matched_p and p not in involved_pred]
    tp = len(rows)
    fp, fn = len(pr_ids) - tp, len(gt_ids) - tp
    denom = tp + 0.5 * fp + 0.5 * fn
    return {
        "merged": len(merged_gt),
        "split": len(split_gt),
        "missed": len(missed),
        "spurious": len(spurious),
        "panoptic_quality": float(vals.sum() / denom) if denom else 1.0,
    }
