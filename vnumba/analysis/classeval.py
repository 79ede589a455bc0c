"""Per-class evaluation of classed nuclei against class annotations.

A method *yields classed nuclei* when each of its predicted nuclei has a class name: a
multi-class model (:mod:`vnumba.analysis.classes`), a one-channel model counted with its
scenario's single class (:attr:`vnumba.scenarios.Scenario.mask_class`: ``tumour`` for
scenario 3), the classical baseline's shape rule
(:func:`vnumba.analysis.baseline.classify_by_shape`).  Annotated nuclei are the instances of
an annotation with ``classes``, each of the majority class of its pixels (``tumour``,
``immune``, ``other``, ``epithelial``).  Distances are in micrometres, converted at the
image's pixel size:

* **confusion matrix** — predicted and annotated centroids are matched one-to-one within
  ``match_um`` (4 µm; 16 px at 40×, today's 15-px rule) by
  :func:`vnumba.analysis.scores.match_points`, whatever the classes.  Row = annotated
  class, column = the class of the matched prediction, or ``missed`` when none is matched;
  the row ``no nucleus`` counts predictions matched to no annotated nucleus, by class.
* **detection per class** (tumour, immune): the predicted nuclei *of class c* are matched
  one-to-one to the annotated nuclei *of class c* within ``match_um`` (the PUMA challenge's
  per-class rule): TP = pairs, FP = unmatched predictions of c, FN = unmatched annotations of
  c; precision, recall, F1.  Not applicable (None) on an image without annotated nuclei of
  class c; pooled over the images where it applies.
* **immune classed tumour**: annotated immune nuclei whose matched prediction is classed
  tumour / all annotated immune nuclei (missed ones included); **tumour classed immune**
  likewise.
* **border immune classed tumour**: among the annotated immune nuclei whose centroid lies
  within ``border_um`` (10 µm, inclusive) of an annotated tumour nucleus's centroid, the
  share whose matched prediction is classed tumour (with the counts classed immune, other
  and missed) — the errors a tumour-microenvironment analysis cannot afford.
"""
from __future__ import annotations

import numpy as np

from vnumba.analysis.scores import (
    detection_metrics,
    detection_scores,
    instance_centroids,
    instance_majority_class,
    match_points,
)
from vnumba.scenarios import CLASS_NAMES, DEFAULT_MASK_CLASSES, class_name, class_order

__all__ = ["CLASS_MATCH_UM", "BORDER_UM", "SCORED_CLASSES", "MISSED", "NO_NUCLEUS",
           "annotated_nuclei", "evaluate_classes", "pool_class_results", "confusion_rows",
           "class_summary"]

#: Centroid distance (µm) within which a predicted nucleus is the annotated one (4 µm = 16 px
#: at 40×, 8 px at 20×).
CLASS_MATCH_UM = 4.0
#: Distance (µm, centroid to centroid) within which an immune nucleus is at the tumour border.
BORDER_UM = 10.0
#: Classes with a detection score of their own.
SCORED_CLASSES = ("tumour", "immune")
#: Column of annotated nuclei matched to no prediction.
MISSED = "missed"
#: Row of predicted nuclei matched to no annotated nucleus.
NO_NUCLEUS = "no nucleus"


def annotated_nuclei(instances: np.ndarray, classes: np.ndarray):
    """Centroids and class names of the annotated nuclei.

    Returns
    -------
    centroids : ndarray, shape (K, 2), float64
        ``(y, x)``.
    names : ndarray of str, shape (K,)
        :func:`vnumba.scenarios.class_name` of each nucleus's majority class.
    """
    cls_of = instance_majority_class(np.asarray(instances), np.asarray(classes))
    ids, cents = instance_centroids(np.asarray(instances))
    lut = np.array([class_name(c) for c in range(int(cls_of.max()) + 1)], dtype=object)
    return cents, np.asarray(lut[cls_of[ids]].tolist(), dtype=str)


def _share(count: int, nuclei: int) -> dict:
    return {"count": int(count), "nuclei": int(nuclei),
            "share": count / nuclei if nuclei else None}


def _columns(pred_names) -> list:
    extra = sorted({str(n) for n in pred_names} - set(DEFAULT_MASK_CLASSES) - {MISSED})
    return list(DEFAULT_MASK_CLASSES) + extra + [MISSED]


def _rows(true_names) -> list:
    names = set(CLASS_NAMES.values()) | {str(n) for n in true_names}
    return sorted(names, key=class_order) + [NO_NUCLEUS]


def evaluate_classes(pred_centroids, pred_classes, instances: np.ndarray, classes: np.ndarray,
                     mpp: float, match_um: float = CLASS_MATCH_UM,
                     border_um: float = BORDER_UM) -> dict:
    """Per-class scores of classed predicted nuclei on one annotated image.

    Parameters
    ----------
    pred_centroids : ndarray, shape (P, 2)
        ``(y, x)`` of the predicted nuclei, pixels of the image.
    pred_classes : sequence of str, length P
        Their class names (``tumour``, ``immune``, ``other``).
    instances, classes : ndarray of int, shape (H, W)
        The annotation.
    mpp : float
        Pixel size (µm/px) that converts ``match_um`` and ``border_um`` to pixels.
    match_um, border_um : float

    Returns
    -------
    dict
        ``confusion`` (annotated class or ``no nucleus`` -> predicted class or ``missed`` ->
        count; rows ``tumour, immune, other, epithelial`` always, columns ``tumour, immune,
        other`` always), ``detection`` (per :data:`SCORED_CLASSES`: ``tp, fp, fn, nuclei,
        precision, recall, f1``; scores None without annotated nuclei of the class),
        ``immune_classed_tumour`` and ``tumour_classed_immune`` (``count, nuclei, share``),
        ``border_immune`` (``nuclei``, ``classed`` {column -> count}, ``share_tumour``),
        ``n_pred``, ``n_annotated``, ``mpp``, ``match_um``, ``border_um``,
        ``match_radius_px``, ``border_radius_px``.
    """
    from scipy.spatial import cKDTree

    if not (mpp is not None and np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"pixel size must be a positive number, got {mpp!r}")
    for n, v in (("match_um", match_um), ("border_um", border_um)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{n} must be a finite number >= 0, got {v!r}")
    pc = np.asarray(pred_centroids, np.float64).reshape(-1, 2)
    pn = np.asarray([str(c) for c in pred_classes], dtype=str)
    if pn.size != len(pc):
        raise ValueError(f"{pn.size} classes for {len(pc)} predicted nuclei")
    tc, tn = annotated_nuclei(instances, classes)
    r_px, b_px = match_um / float(mpp), border_um / float(mpp)
    cols, rows = _columns(pn), _rows(tn)
    conf = {r: dict.fromkeys(cols, 0) for r in rows}
    pi, gi, _ = match_points(pc, tc, r_px)
    got = np.full(len(tc), MISSED, dtype=object)   # predicted class of each annotated nucleus
    got[gi] = pn[pi]
    for r, c in zip(tn, got):
        conf[r][c] += 1
    unmatched = np.ones(len(pc), bool)
    unmatched[pi] = False
    for c in pn[unmatched]:
        conf[NO_NUCLEUS][c] += 1
    det = {}
    for c in SCORED_CLASSES:
        d = detection_metrics(pc[pn == c], tc[tn == c], r_px)
        n = int(np.count_nonzero(tn == c))
        d["nuclei"] = n
        if n == 0:
            d.update(precision=None, recall=None, f1=None)
        det[c] = d
    n_imm, n_tum = int(np.count_nonzero(tn == "immune")), int(np.count_nonzero(tn == "tumour"))
    border = {"nuclei": 0, "classed": dict.fromkeys(cols, 0)}
    imm, tum = np.nonzero(tn == "immune")[0], np.nonzero(tn == "tumour")[0]
    if imm.size and tum.size:
        d, _ = cKDTree(tc[tum]).query(tc[imm], k=1)
        near = imm[d <= b_px]
        border["nuclei"] = int(near.size)
        for c in got[near]:
            border["classed"][c] += 1
    border["share_tumour"] = (border["classed"]["tumour"] / border["nuclei"]
                              if border["nuclei"] else None)
    return {
        "confusion": conf, "detection": det,
        "immune_classed_tumour": _share(conf["immune"]["tumour"], n_imm),
        "tumour_classed_immune": _share(conf["tumour"]["immune"], n_tum),
        "border_immune": border,
        "n_pred": int(len(pc)), "n_annotated": int(len(tc)),
        "mpp": float(mpp), "match_um": float(match_um), "border_um": float(border_um),
        "match_radius_px": r_px, "border_radius_px": b_px,
    }


def pool_class_results(results: list) -> dict:
    """Pooled :func:`evaluate_classes` results: confusion, detection and border counts summed
    (detection of a class over the images where it applies), then the ratios recomputed."""
    if not results:
        raise ValueError("nothing to pool")
    cols = _columns([c for r in results for c in r["confusion"][NO_NUCLEUS]])
    rows = _rows([n for r in results for n in r["confusion"] if n != NO_NUCLEUS])
    conf = {r: {c: sum(x["confusion"].get(r, {}).get(c, 0) for x in results) for c in cols}
            for r in rows}
    det = {}
    for c in SCORED_CLASSES:
        app = [x["detection"][c] for x in results if x["detection"][c]["nuclei"] > 0]
        d = {k: sum(a[k] for a in app) for k in ("tp", "fp", "fn", "nuclei")}
        d.update(detection_scores(d) if app else dict(precision=None, recall=None, f1=None))
        d["n_images"] = len(app)
        det[c] = d
    bn = sum(x["border_immune"]["nuclei"] for x in results)
    bc = {c: sum(x["border_immune"]["classed"].get(c, 0) for x in results) for c in cols}
    n_imm = sum(conf["immune"].values())
    n_tum = sum(conf["tumour"].values())
    r0 = results[0]
    return {
        "confusion": conf, "detection": det,
        "immune_classed_tumour": _share(conf["immune"]["tumour"], n_imm),
        "tumour_classed_immune": _share(conf["tumour"]["immune"], n_tum),
        "border_immune": {"nuclei": bn, "classed": bc,
                          "share_tumour": bc["tumour"] / bn if bn else None},
        "n_pred": sum(x["n_pred"] for x in results),
        "n_annotated": sum(x["n_annotated"] for x in results),
        "match_um": r0["match_um"], "border_um": r0["border_um"], "n_images": len(results),
    }


def confusion_rows(result: dict) -> list:
    """Rows of a result's confusion matrix that hold any nucleus (annotated classes in class
    order, then ``no nucleus``)."""
    return [r for r, cs in result["confusion"].items() if sum(cs.values()) > 0]


def _f(v, spec=".3f") -> str:
    return "–" if v is None else format(v, spec)


def class_summary(c: dict) -> str:
    """One line of the per-class figures of a result (terminal)."""
    det = c["detection"]
    f1 = ", ".join(f"{k} {_f(det[k]['f1'])}" for k in SCORED_CLASSES if k in det)
    it, ti, b = c["immune_classed_tumour"], c["tumour_classed_immune"], c["border_immune"]
    return (f"F1 {f1}; immune classed tumour {_f(it['share'])} ({it['count']}/{it['nuclei']}), "
            f"tumour classed immune {_f(ti['share'])} ({ti['count']}/{ti['nuclei']}), "
            f"border immune classed tumour {_f(b['share_tumour'])} "
            f"({b['classed']['tumour']}/{b['nuclei']})")
