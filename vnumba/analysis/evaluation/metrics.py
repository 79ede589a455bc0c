"""Scores of one method on one image, and pooled over images: pixel scores, detection,
and the per-class marked fractions of the annotated nuclei (the per-class scores of *classed*
nuclei are :mod:`vnumba.analysis.classeval`; the primitives :mod:`vnumba.analysis.scores`)."""
from __future__ import annotations

import numpy as np

from vnumba.analysis.scores import (
    MATCH_RADIUS,
    detection_metrics,
    detection_scores,
    instance_majority_class,
    pixel_metrics,
    scores_from_counts,
)
from vnumba.analysis.scores import check_labels as _check_labels
from vnumba.scenarios import class_name, class_order

__all__ = ["MARK_FRACTION", "class_marking", "evaluate_masks", "pool_results"]

#: A nucleus is *marked* when at least this fraction of its pixels is in the mask.
MARK_FRACTION = 0.5


def _class_entry(nuclei: int, marked: int, pixels: int, marked_pixels: int) -> dict:
    return {"nuclei": nuclei, "marked": marked,
            "marked_fraction": marked / nuclei if nuclei else None,
            "pixels": pixels, "marked_pixels": marked_pixels,
            "pixel_fraction": marked_pixels / pixels if pixels else None}


def class_marking(mask: np.ndarray, instances: np.ndarray, classes: np.ndarray) -> dict:
    """Which annotated nuclei of each class a mask marks.

    A nucleus is an instance id of ``instances``; its class is the most frequent non-zero
    class of its pixels (:func:`instance_majority_class`).  It is **marked** when at least
    half (:data:`MARK_FRACTION`) of its pixels are in ``mask``.  Independently of the
    instances, the pixel fraction of a class is the number of mask pixels where
    ``classes == c`` divided by the number of pixels where ``classes == c``.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        A thresholded mask.
    instances, classes : ndarray of int, shape (H, W)
        Annotation (0 = background).

    Returns
    -------
    dict
        Class name (:func:`class_name`) -> ``{"nuclei", "marked", "marked_fraction",
        "pixels", "marked_pixels", "pixel_fraction"}``, for the classes that occur in
        ``classes`` or as an instance's class, in class order.  A fraction is None when its
        denominator is 0.
    """
    mask = np.asarray(mask)
    _check_labels(instances, classes)
    if mask.dtype != bool:
        raise TypeError(f"mask must be a bool array, got {mask.dtype}")
    if mask.shape != instances.shape:
        raise ValueError(f"mask {mask.shape} and annotation {instances.shape} differ in shape")
    cls_of = instance_majority_class(instances, classes)
    inst = instances.ravel().astype(np.int64)
    area = np.bincount(inst, minlength=cls_of.size)
    inside = np.bincount(inst[mask.ravel()], minlength=cls_of.size)
    present = area > 0
    present[0] = False
    marked = present & (inside >= MARK_FRACTION * area)
    cls_flat = classes.ravel().astype(np.int64)
    k = max(int(cls_flat.max()) + 1 if cls_flat.size else 1, int(cls_of.max()) + 1)
    px = np.bincount(cls_flat, minlength=k)
    px_in = np.bincount(cls_flat[mask.ravel()], minlength=k)
    n_of = np.bincount(cls_of[present], minlength=k)
    m_of = np.bincount(cls_of[marked], minlength=k)
    return {class_name(c): _class_entry(int(n_of[c]), int(m_of[c]), int(px[c]), int(px_in[c]))
            for c in range(1, k) if px[c] or n_of[c]}


def evaluate_masks(pred_mask: np.ndarray, pred_labels: np.ndarray, target_mask: np.ndarray,
                   target_labels: np.ndarray, radius: float = MATCH_RADIUS,
                   instances: np.ndarray | None = None,
                   classes: np.ndarray | None = None) -> dict:
    """All scores of one method on one image.

    Parameters
    ----------
    pred_mask, target_mask : ndarray of bool, shape (H, W)
    pred_labels, target_labels : ndarray of int, shape (H, W)
        Predicted objects and target instances (0 = background).
    radius : float
        Centroid matching distance.
    instances, classes : ndarray of int, shape (H, W), optional
        The full annotation; with both, the per-class marked fractions of ``pred_mask``
        (:func:`class_marking`) are added.

    Returns
    -------
    dict
        ``pixel`` (counts, accuracy, dice, iou), ``objects`` (tp, fp, fn, precision, recall,
        f1; the three scores None — not applicable — when there is no target nucleus),
        ``n_pred``, ``n_target`` and, with ``classes``, ``classes``.
    """
    from vnumba.analysis.objects import object_table
    px = pixel_metrics(pred_mask, target_mask)
    pc = object_table(np.asarray(pred_labels)).centroids()
    tc = object_table(np.asarray(target_labels)).centroids()
    ob = detection_metrics(pc, tc, radius)
    if len(tc) == 0:
        ob.update(precision=None, recall=None, f1=None)
    out = {"pixel": px, "objects": ob, "n_pred": int(len(pc)), "n_target": int(len(tc))}
    if classes is not None:
        if instances is None:
            raise ValueError("classes given without instances")
        out["classes"] = class_marking(np.asarray(pred_mask), np.asarray(instances),
                                       np.asarray(classes))
    return out


def pool_results(results: list) -> dict:
    """Pooled scores of several :func:`evaluate_masks` results (e.g. one method over images).

    Pixel counts, match counts and per-class nucleus and pixel counts are summed, then the
    ratios recomputed.  Detection counts are summed over the images that have target nuclei
    only (``n_images_detection``); with none the detection scores are None.  ``classes``
    (if any result has it) lists every class that occurs in any of them.
    """
    keys = ("tp", "fp", "fn", "tn")
    px = {k: sum(r["pixel"][k] for r in results) for k in keys}
    det = [r for r in results if r["n_target"] > 0]
    ob = {k: sum(r["objects"][k] for r in det) for k in keys[:3]}
    scores = detection_scores(ob) if det else dict(precision=None, recall=None, f1=None)
    out = {"pixel": {**px, **scores_from_counts(px)}, "objects": {**ob, **scores},
           "n_pred": sum(r["n_pred"] for r in results),
           "n_target": sum(r["n_target"] for r in results),
           "n_images": len(results), "n_images_detection": len(det)}
    with_classified = [r["classified"] for r in results if "classified" in r]
    if with_classified:
        from vnumba.analysis.classeval import pool_class_results
        out["classified"] = pool_class_results(with_classified)
    with_cls = [r["classes"] for r in results if "classes" in r]
    if with_cls:
        names = sorted({n for c in with_cls for n in c}, key=class_order)
        out["classes"] = {
            n: _class_entry(*(sum(c[n][k] for c in with_cls if n in c)
                              for k in ("nuclei", "marked", "pixels", "marked_pixels")))
            for n in names}
        out["n_images_classes"] = len(with_cls)
    return out
