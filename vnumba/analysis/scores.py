"""Scores shared by the evaluations: pixel counts, one-to-one centroid matching, detection
scores, and the annotated nuclei (majority class, centroids) of an instance image.

Split from :mod:`vnumba.analysis.evaluation` so that the per-class evaluation
(:mod:`vnumba.analysis.classeval`) and the scenario-target evaluation use the same matching
without importing each other; :mod:`vnumba.analysis.evaluation` re-exports every name.
"""
from __future__ import annotations

import numpy as np

__all__ = ["MATCH_RADIUS", "confusion_counts", "scores_from_counts", "pixel_metrics",
           "match_points", "detection_metrics", "detection_scores", "instance_majority_class",
           "instance_centroids", "check_labels"]

#: Centroid distance (pixels) within which a detection counts as the annotated nucleus (PUMA).
MATCH_RADIUS = 15.0


# ----------------------------------------------------------------------------- pixel scores
def confusion_counts(pred: np.ndarray, target: np.ndarray) -> dict:
    """Pixel counts of a binary prediction against a binary target.

    Parameters
    ----------
    pred, target : ndarray of bool, same shape

    Returns
    -------
    dict
        ``tp, fp, fn, tn`` as Python ints.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
    if pred.dtype != bool or target.dtype != bool:
        raise TypeError(f"pred and target must be bool arrays, got {pred.dtype}, {target.dtype}")
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    return dict(tp=tp, fp=fp, fn=fn, tn=int(pred.size) - tp - fp - fn)


def scores_from_counts(c: dict) -> dict:
    """Accuracy, Dice and IoU from pixel counts.

    Dice = 2 TP / (2 TP + FP + FN), IoU = TP / (TP + FP + FN); both are 1 when prediction
    and target are empty.  Accuracy = (TP + TN) / all.
    """
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    n = tp + fp + fn + tn
    den = tp + fp + fn
    return dict(accuracy=(tp + tn) / n if n else float("nan"),
                dice=2 * tp / (2 * tp + fp + fn) if den else 1.0,
                iou=tp / den if den else 1.0)


def pixel_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """:func:`confusion_counts` and :func:`scores_from_counts` in one dict."""
    c = confusion_counts(pred, target)
    return {**c, **scores_from_counts(c)}



# ----------------------------------------------------------------------------- object scores
def match_points(pred: np.ndarray, gt: np.ndarray, radius: float = MATCH_RADIUS):
    """One-to-one matching of predicted and annotated centroids.

    Among all one-to-one assignments using only pairs at distance ``<= radius``, the one with
    the most pairs and, among those, the smallest total distance (Hungarian algorithm on each
    connected group of nearby points).

    Parameters
    ----------
    pred : ndarray, shape (P, 2)
    gt : ndarray, shape (G, 2)
        Point coordinates (any consistent order, e.g. (y, x)).
    radius : float

    Returns
    -------
    pi, gi : ndarray of int64, shape (K,)
        Indices of matched pairs.
    dist : ndarray of float64, shape (K,)
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(gt))):
        raise ValueError("points contain NaN or inf")
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    P, G = len(pred), len(gt)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if P == 0 or G == 0:
        return empty
    pairs = cKDTree(pred).query_ball_tree(cKDTree(gt), radius)
    rows = np.array([i for i, js in enumerate(pairs) for _ in js], dtype=np.int64)
    cols = np.array([j for js in pairs for j in js], dtype=np.int64)
    if rows.size == 0:
        return empty
    d = np.hypot(*(pred[rows] - gt[cols]).T)
    keep = d <= radius
    rows, cols, d = rows[keep], cols[keep], d[keep]
    # Independent groups of mutually reachable points are solved separately: small dense
    # problems instead of one P x G matrix.
    graph = coo_matrix((np.ones(rows.size), (rows, P + cols)), shape=(P + G, P + G))
    _, comp = connected_components(graph, directed=False)
    out_p, out_g, out_d = [], [], []
    for c in np.unique(comp[rows]):
        sel = comp[rows] == c
        r, q, dd = rows[sel], cols[sel], d[sel]
        ur, ir = np.unique(r, return_inverse=True)
        uq, iq = np.unique(q, return_inverse=True)
        # Infeasible pairs cost more than any set of feasible ones, so the optimum first
        # maximises the number of feasible pairs, then minimises their total distance.
        big = radius * (min(len(ur), len(uq)) + 1) + 1.0
        cost = np.full((len(ur), len(uq)), big)
        cost[ir, iq] = dd
        a, b = linear_sum_assignment(cost)
        ok = cost[a, b] <= radius
        out_p.append(ur[a[ok]])
        out_g.append(uq[b[ok]])
        out_d.append(cost[a[ok], b[ok]])
    pi = np.concatenate(out_p).astype(np.int64)
    order = np.argsort(pi, kind="stable")
    return pi[order], np.concatenate(out_g).astype(np.int64)[order], np.concatenate(out_d)[order]


def detection_metrics(pred: np.ndarray, gt: np.ndarray, radius: float = MATCH_RADIUS) -> dict:
    """Detection counts and scores with the centroid rule of :func:`match_points`.

    Returns
    -------
    dict
        ``tp, fp, fn`` (ints), ``precision, recall, f1``.  With nothing to find and nothing
        found all three scores are 1; with no detections precision is 0 if something was
        to be found (and recall 0), likewise recall.
    """
    pi, _, _ = match_points(pred, gt, radius)
    tp = int(pi.size)
    c = dict(tp=tp, fp=int(len(np.asarray(pred).reshape(-1, 2))) - tp,
             fn=int(len(np.asarray(gt).reshape(-1, 2))) - tp)
    return {**c, **detection_scores(c)}


def detection_scores(c: dict) -> dict:
    """Precision, recall and F1 from ``tp, fp, fn`` (conventions of :func:`detection_metrics`)."""
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return dict(precision=precision, recall=recall, f1=f1)


# ----------------------------------------------------------------------------- annotated nuclei
def instance_majority_class(instances: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class of each instance: the most frequent non-zero class over its pixels.

    Returns
    -------
    ndarray of int64, shape (instances.max() + 1,)
        Entry ``i`` is the class of instance ``i`` (0 for absent instances and for index 0).
    """
    check_labels(instances, classes)
    n = int(instances.max()) + 1 if instances.size else 1
    k = int(classes.max()) + 1 if classes.size else 1
    fg = (instances > 0) & (classes > 0)
    counts = np.zeros((n, k), np.int64)
    np.add.at(counts, (instances[fg].astype(np.int64), classes[fg].astype(np.int64)), 1)
    out = counts.argmax(axis=1)
    out[counts.sum(axis=1) == 0] = 0
    out[0] = 0
    return out


def instance_centroids(instances: np.ndarray):
    """Ids present in an instance image and their centroids.

    Returns
    -------
    ids : ndarray of int64, shape (K,)
    centroids : ndarray of float64, shape (K, 2)
        ``(y, x)`` = (row, column) means.
    """
    from vnumba.analysis.objects import object_table
    t = object_table(np.asarray(instances))
    return t.id, t.centroids()



def check_labels(instances, classes):
    for name, a in (("instances", instances), ("classes", classes)):
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got {getattr(a, 'dtype', type(a))}")
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} must be >= 0")
    if instances.shape != classes.shape:
        raise ValueError(f"instances {instances.shape} and classes {classes.shape} differ in shape")
