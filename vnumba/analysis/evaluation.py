"""Evaluation on real annotated images: pixel and object-level scores against annotations.

For every annotated image of a data directory (layout of ``shared/data/real/README.md``:
``NAME.png`` next to ``NAME_labels.npz`` with ``instances`` and, where available,
``classes``), the model's mask and a classical baseline's (:mod:`vnumba.analysis.baseline`) — plus an
optional second model — are compared with the *target* the scenario defines:

* scenario 3: tumour nuclei (``classes == 1``);
* scenario 2: immune nuclei (``classes == 2``) whose disc of radius ``R`` (40 px at the
  model's pixel size) has an immune-pixel fraction above ``τ`` (0.2) — the scenario's own
  density rule applied to the real annotations (:func:`density_selection`);
* scenario 1: immune nuclei whose disc has a tumour-pixel fraction above 0.3;
* ``--target nuclei``: every annotated nucleus (works without ``classes``).

Scores, per image and pooled over all images (sums of pixel counts and of matches):

* pixel accuracy (the article's figure), Dice and IoU of the thresholded mask;
* object detection precision, recall and F1: predicted objects (split connected components,
  :mod:`vnumba.analysis.objects`) and target nuclei are matched one-to-one, minimising the total
  centroid distance among pairs closer than 15 px (the PUMA challenge's rule;
  :func:`match_points`).  On an image without target nuclei they are *not applicable*
  (None, "–"), and such images do not enter the pooled detection counts;
* where the annotation has ``classes``, for every class that occurs (``tumour`` 1,
  ``immune`` 2, ``other`` 3, ``epithelial`` 4): the fraction of its nuclei that the
  thresholded mask **marks** — a nucleus (an instance, of the majority class of its pixels)
  is marked when at least half of its pixels are in the mask — and the fraction of its
  pixels in the mask (:func:`class_marking`).  These do not depend on the target: they show
  *which* nuclei a method selects, e.g. immune nuclei a tumour model should leave out.

Every score is also given for an **all-background** mask (nothing marked): the pixel
accuracy a method must beat.  Besides per image and overall, scores are pooled per dataset
folder (the image's folder below ``DATA_DIR``, e.g. ``he_melanoma_puma``, ``he_consep``).

Scenario 3 on images with class 4 (CoNSeP: epithelial nuclei, tumour vs normal not
distinguished, and no class 1): the target is the class-1 nuclei only, i.e. none; the
epithelial nuclei are reported as their own class and never scored as tumour, detection
scores are not applicable, pixel accuracy counts every pixel outside class 1 as background.

Where the annotation has ``classes``, every method that yields *classed* nuclei (a
multi-class model, a one-channel model counted with its scenario's class, the classical
baseline's shape rule) is also scored per class (:mod:`vnumba.analysis.classeval`: detection
F1 per class, confusion matrix of annotated against predicted class, immune nuclei at the
tumour border classed tumour), result key ``classified``; ``confusion.png``
(:func:`vnumba.analysis.plots.plot_confusion`) shows the pooled matrices side by side.

Command line: ``python -m vnumba.evaluate --model MODEL DATA_DIR [--baseline-model OTHER]
[--out REPORT_DIR]``; writes ``report.md``, ``report.json``, ``marked_fractions.png``
(:func:`vnumba.figures.plot_marked_fractions`), ``confusion.png`` and overlay PNGs.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from vnumba.analysis.objects import MIN_AREA_UM2, SPLIT_UM
from vnumba.analysis.scores import (  # noqa: F401  (re-exported: the evaluation's public API)
    MATCH_RADIUS,
    confusion_counts,
    detection_metrics,
    detection_scores,
    instance_centroids,
    instance_majority_class,
    match_points,
    pixel_metrics,
    scores_from_counts,
)
from vnumba.analysis.scores import check_labels as _check_labels
from vnumba.io.images import MPP_RANGE
from vnumba.io.labels import UnreadableLabels, read_labels
from vnumba.scenarios import CLASS_NAMES, SCENARIOS, DensityRule, class_name, class_order

__all__ = [
    "confusion_counts", "scores_from_counts", "pixel_metrics", "match_points",
    "detection_metrics", "instance_majority_class", "instance_centroids", "density_selection",
    "DensityRule", "scenario_rule", "target_from_annotations", "find_annotated_images",
    "nominal_mpp", "class_name", "class_marking", "evaluate_masks", "pool_results",
    "run_evaluation", "format_report", "MATCH_RADIUS", "MARK_FRACTION", "CLASS_NAMES",
]

TUMOUR, IMMUNE, EPITHELIAL_UNKNOWN = 1, 2, 4


#: A nucleus is *marked* when at least this fraction of its pixels is in the mask.
MARK_FRACTION = 0.5

#: Name of the all-zero reference mask in messages and report.md.
ALL_BACKGROUND = "all background"


# ----------------------------------------------------------------------------- targets
def density_selection(instances: np.ndarray, classes: np.ndarray, rule: DensityRule) -> np.ndarray:
    """Ids of the instances a density rule selects.

    Parameters
    ----------
    instances : ndarray of int, shape (H, W)
    classes : ndarray of int, shape (H, W)
    rule : DensityRule

    Returns
    -------
    ndarray of int64
        Selected instance ids (sorted).
    """
    from vnumba.ops.masks import disc_concentration

    _check_labels(instances, classes)
    if not rule.radius > 0:
        raise ValueError(f"density radius must be > 0, got {rule.radius}")
    cls_of = instance_majority_class(instances, classes)
    ids, cents = instance_centroids(instances)
    cand = cls_of[ids] == rule.cell_class
    ids, cents = ids[cand], cents[cand]
    if ids.size == 0:
        return ids.astype(np.int64)
    conc = disc_concentration(classes == rule.density_class, cents, float(rule.radius))
    return np.sort(ids[conc > rule.threshold]).astype(np.int64)


def scenario_rule(scenario: str, model=None, image_mpp: float | None = None,
                  script=None) -> DensityRule | None:
    """The density rule of scenario 1 or 2 (None for other scenarios), in image pixels.

    Radius and threshold come, in order, from the model's ``meta`` (``density_radius``,
    ``density_threshold``), from ``script`` — ``(radius, threshold, mpp)`` of the scenario
    script's ``[mask]`` table, which the command line reads with ``synth``
    (:func:`vnumba.evaluate.script_rule`) — else from the registry (the article (40 px; 0.3 for scenario 1,
    0.2 for scenario 2).  The radius is stated in pixels of the training images; it is
    converted to the evaluated image's pixels with ``rule_mpp / image_mpp``, where
    ``rule_mpp`` is the model's ``meta["mpp"]``, else the script's ``[scenario].mpp``
    (no conversion if either is unknown).
    """
    base = SCENARIOS[scenario].density_rule if scenario in SCENARIOS else None
    if base is None:
        return None
    d = dict(cell_class=base.cell_class, density_class=base.density_class, radius=base.radius,
             threshold=base.threshold)
    source = base.source
    meta = (getattr(model, "meta", None) or {}) if model is not None else {}
    if meta.get("density_radius") is not None and meta.get("density_threshold") is not None:
        d["radius"], d["threshold"] = float(meta["density_radius"]), float(meta["density_threshold"])
        source = "model meta"
    elif script is not None and script[0] is not None:
        d["radius"], d["threshold"] = script[0], script[1]
        source = f"synth script {scenario}"
    rule_mpp = meta.get("mpp") if meta.get("mpp") is not None else (script[2] if script else None)
    if rule_mpp is not None and image_mpp is not None:
        d["radius"] *= float(rule_mpp) / float(image_mpp)
        source += f", radius scaled from {float(rule_mpp):g} to {float(image_mpp):g} µm/px"
    return DensityRule(d["cell_class"], d["density_class"], d["radius"], d["threshold"], source)


def target_from_annotations(instances: np.ndarray, classes: np.ndarray | None, target: str,
                            rule: DensityRule | None = None, epithelial_not_target: bool = False):
    """Target mask and target instances for one annotated image.

    Parameters
    ----------
    instances : ndarray of int, shape (H, W)
    classes : ndarray of int, shape (H, W), or None
    target : {"scenario1", "scenario2", "scenario3", "nuclei"}
    rule : DensityRule, optional
        Required for scenarios 1 and 2 (:func:`scenario_rule`).
    epithelial_not_target : bool
        Scenario 3 only: with class 4 present, take the class-1 nuclei (possibly none) as the
        target and class 4 as non-target instead of raising.  The evaluation does this so
        that CoNSeP images are still scored (pixel accuracy, marked fractions) without ever
        counting an epithelial nucleus as tumour.

    Returns
    -------
    mask : ndarray of bool, shape (H, W)
    labels : ndarray of int32, shape (H, W)
        The target instances (others set to 0), original ids.

    Raises
    ------
    LookupError
        The target needs ``classes`` and there are none, or it needs tumour nuclei and the
        annotation has class 4 (epithelial nuclei whose tumour/normal status is unknown, as in
        CoNSeP), which makes the target undefined.
    """
    instances = np.asarray(instances)
    if target == "nuclei":
        lab = instances.astype(np.int32)
        return lab > 0, lab
    if classes is None:
        raise LookupError(f"target {target!r} needs per-nucleus classes; the annotation has none")
    classes = np.asarray(classes)
    _check_labels(instances, classes)
    needs_tumour = ((target == "scenario3" and not epithelial_not_target)
                    or (target == "scenario1" and rule is not None
                        and TUMOUR in (rule.cell_class, rule.density_class)))
    if needs_tumour and np.any(classes == EPITHELIAL_UNKNOWN):
        raise LookupError(f"target {target!r} needs tumour nuclei, but the annotation has "
                          f"class {EPITHELIAL_UNKNOWN} (epithelial, tumour vs normal not "
                          "distinguished)")
    if target == "scenario3":
        cls_of = instance_majority_class(instances, classes)
        keep = np.nonzero(cls_of == TUMOUR)[0]
        mask = classes == TUMOUR
    elif target in ("scenario1", "scenario2"):
        if rule is None:
            raise ValueError(f"target {target!r} needs a DensityRule")
        keep = density_selection(instances, classes, rule)
        mask = np.isin(instances, keep) & (classes == rule.cell_class)
    else:
        raise ValueError(f"unknown target {target!r}")
    lab = np.where(np.isin(instances, keep), instances, 0).astype(np.int32)
    return mask, lab


# ----------------------------------------------------------------------------- data
def find_annotated_images(data_dir) -> list:
    """Annotated images under ``data_dir`` (recursively): pairs ``(image, labels.npz)``.

    An image ``NAME.(png|jpg|jpeg|tif|tiff)`` belongs to ``NAME_labels.npz`` in the same folder.
    Label files without an image are reported by raising ``FileNotFoundError``.
    """
    from vnumba.io.images import INPUT_SUFFIXES

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    out = []
    for lab in sorted(data_dir.rglob("*_labels.npz")):
        stem = lab.name[: -len("_labels.npz")]
        cands = [lab.with_name(stem + s) for s in INPUT_SUFFIXES]
        cands += [lab.with_name(stem + s.upper()) for s in INPUT_SUFFIXES]
        img = next((c for c in cands if c.is_file()), None)
        if img is None:
            raise FileNotFoundError(f"{lab}: no image {stem}.png/.jpg/.tif next to it")
        out.append((img, lab))
    return out


def nominal_mpp(data_dir, image_path) -> float | None:
    """Pixel size of an image from the nearest ``manifest.csv`` that lists it.

    The image's folder and all its ancestors, up to the filesystem root, are searched in
    that order; the first ``manifest.csv`` with a row whose ``file`` (relative to the
    manifest's folder) is the image decides: ``10 / magnification`` µm/px for a
    ``magnification`` like ``40x`` (the usual nominal 0.25 µm/px at 40×), else a single
    number in the ``mpp`` column, else None.  The search does not stop at ``data_dir``, so an
    image gets the same pixel size whether its own folder or a parent is evaluated.

    Parameters
    ----------
    data_dir : path-like
        The evaluated folder (kept for the interface; it does not limit the search).
    image_path : path-like

    Returns
    -------
    float or None
        µm/px, None if no manifest lists the image or its row states no usable size.
    """
    image_path = Path(image_path).resolve()
    for folder in [image_path.parent, *image_path.parent.parents]:
        man = folder / "manifest.csv"
        if man.is_file():
            with open(man, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    if (folder / (row.get("file") or "")).resolve() != image_path:
                        continue
                    mag = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[xX]\s*", row.get("magnification") or "")
                    value = None
                    if mag and float(mag.group(1)) > 0:
                        value = 10.0 / float(mag.group(1))
                    else:
                        nums = re.findall(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", row.get("mpp") or "")
                        if len(nums) == 1 and float(nums[0]) > 0:
                            value = float(nums[0])
                    if value is not None and not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
                        raise ValueError(f"{man}: row {row.get('file')!r} gives "
                                         f"{value:g} um/px, not a plausible pixel size "
                                         f"({MPP_RANGE[0]:g} to {MPP_RANGE[1]:g})")
                    return value
    return None


# ----------------------------------------------------------------------------- evaluation
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


def run_evaluation(methods: dict, data_dir: str | Path, out_dir: str | Path,
                   target: str = "scenario3", rule_model=None,
                   mpp: float | None = None, threshold: float = 0.5,
                   split_um: float = SPLIT_UM, min_area_um2: float = MIN_AREA_UM2,
                   split_h: float | None = None, min_area: int | None = None,
                   radius: float = MATCH_RADIUS, tile: int = 512,
                   baseline_cfg=None, overlays: bool = True, say=print,
                   script_rules: dict | None = None, class_match_um: float | None = None,
                   border_um: float | None = None) -> dict:
    """Evaluate several methods on every annotated image of ``data_dir``.

    Parameters
    ----------
    methods : dict
        name -> model object (with ``apply``/``receptive_radius``/``meta``) or the string
        ``"baseline"`` for the classical pipeline.
    data_dir, out_dir : path-like
    target : str
        ``scenario1|2|3`` or ``nuclei`` (:func:`target_from_annotations`).
    rule_model
        Model whose ``meta`` may state the density rule and whose ``mpp`` scales its radius.
    mpp : float, optional
        Pixel size of all images; default: ``manifest.csv`` (:func:`nominal_mpp`).
    threshold : float
        Mask threshold.
    split_um, min_area_um2 : float
        Object extraction from the models' masks (:func:`vnumba.analysis.objects.label_objects`): split
        depth in um and smallest object in um^2, converted at each image's pixel size
        (:func:`vnumba.analysis.objects.extraction_pixels`).
    split_h, min_area : optional
        The same in pixels of every image (override the micrometre values).
    radius : float
        Centroid matching distance, pixels of the evaluated image.
    tile : int
    baseline_cfg : BaselineConfig, optional
    overlays : bool
        Write ``FOLDER_NAME__METHOD_overlay.png`` (prediction outlines green, target
        magenta; FOLDER is the image's folder below ``data_dir``).
    say : callable
        Progress messages.
    script_rules : dict, optional
        scenario -> ``(radius, threshold, mpp)`` of its generator script's density rule
        (:func:`scenario_rule`; the command line passes the shipped scripts').
    class_match_um, border_um : float, optional
        Per-class evaluation (:func:`vnumba.analysis.classeval.evaluate_classes`): centroid
        matching distance (default 4 µm) and tumour-border distance (10 µm), converted at each
        image's pixel size (unknown: the model's, else 0.25 µm/px).

    Returns
    -------
    dict
        The report (also written as ``report.json`` and ``report.md`` in ``out_dir``, with
        the figures ``marked_fractions.png`` and ``confusion.png`` when any image has
        classes).  Keys:
        ``images`` (per image: ``folder``, ``results`` per method, ``all_background``,
        ``skipped`` reasons, ``note``), ``overall`` and ``per_folder`` (folder -> method ->
        :func:`pool_results`), ``all_background`` (``{"overall", "per_folder"}``: the same
        scores for an all-zero mask), ``settings``, ``methods``, ``figures``.

    Notes
    -----
    An image's folder is its folder below ``data_dir``; images directly in ``data_dir``
    get ``data_dir``'s own name, so that a tile is pooled under the same folder name
    whether ``data_dir`` is its folder or a parent.
    """
    from vnumba.analysis.baseline import BaselineConfig, classify_by_shape, segment_nuclei
    from vnumba.analysis.classeval import BORDER_UM, CLASS_MATCH_UM, evaluate_classes
    from vnumba.analysis.inference import predict_image
    from vnumba.analysis.objects import ASSUMED_MPP, extraction_pixels, label_objects, object_table
    from vnumba.analysis.plots import overlay_contours
    from vnumba.io.images import image_to_float, read_image, write_png

    out_dir = Path(out_dir)
    baseline_cfg = baseline_cfg or BaselineConfig()
    class_match_um = CLASS_MATCH_UM if class_match_um is None else float(class_match_um)
    border_um = BORDER_UM if border_um is None else float(border_um)
    pairs = find_annotated_images(data_dir)
    if not pairs:
        raise FileNotFoundError(f"{data_dir}: no annotated images (NAME_labels.npz) found")
    # out_dir is made by the first file written into it (every writer is atomic and makes its
    # folder), so a run refused on its inputs leaves nothing behind.
    data_dir = Path(data_dir)
    images, per_method = [], {name: [] for name in methods}
    all_bg = []
    for k, (img_path, lab_path) in enumerate(pairs, 1):
        rel = str(img_path.relative_to(data_dir)) if img_path.is_relative_to(data_dir) else str(img_path)
        entry = {"image": rel, "folder": _folder_name(data_dir, rel), "results": {},
                 "skipped": {}}
        images.append(entry)
        try:
            # Float labels (e.g. saved by an image tool) would round ids silently: refused;
            # ids beyond the pixel count renumbered (vnumba.io.labels).
            instances, classes = read_labels(lab_path)
        except UnreadableLabels as e:
            entry["skipped"]["all"] = f"unreadable annotation ({e})"
            say(f"[{k}/{len(pairs)}] {rel}: skipped — {entry['skipped']['all']}")
            continue
        try:
            img = read_image(img_path)
        except (OSError, ValueError) as e:
            entry["skipped"]["all"] = str(e)
            say(f"[{k}/{len(pairs)}] {rel}: skipped — {e}")
            continue
        if img.array.shape[:2] != instances.shape:
            entry["skipped"]["all"] = (f"image {img.array.shape[:2]} and annotation "
                                       f"{instances.shape} differ in size")
            say(f"[{k}/{len(pairs)}] {rel}: skipped — {entry['skipped']['all']}")
            continue
        img_mpp = mpp if mpp is not None else nominal_mpp(data_dir, img_path)
        entry["mpp"] = img_mpp
        if img_mpp is None:
            known = [m for m in methods.values() if getattr(m, "meta", None) and m.meta.get("mpp")]
            if known:
                entry["mpp_assumed"] = float(known[0].meta["mpp"])
                print(f"warning: {rel}: pixel size unknown (no --mpp, no manifest.csv entry); "
                      f"assuming the model's {known[0].meta['mpp']:g} um/px", file=sys.stderr)
        rule = scenario_rule(target, rule_model, img_mpp, (script_rules or {}).get(target))
        try:
            t_mask, t_labels = target_from_annotations(
                instances, classes, target, rule, epithelial_not_target=target == "scenario3")
        except LookupError as e:
            entry["skipped"]["all"] = str(e)
            say(f"[{k}/{len(pairs)}] {rel}: skipped — {e}")
            continue
        if rule is not None:
            entry["rule"] = dataclasses.asdict(rule)
        if target == "scenario3" and np.any(classes == EPITHELIAL_UNKNOWN):
            entry["note"] = (f"class {EPITHELIAL_UNKNOWN} (epithelial, tumour vs normal not "
                             "distinguished): target = class-1 nuclei only; epithelial nuclei "
                             "are reported, not scored as tumour")
        n_t = int(len(np.unique(t_labels)) - 1)
        say(f"[{k}/{len(pairs)}] {rel}: {img.array.shape[1]}x{img.array.shape[0]}, mpp {img_mpp}, "
            f"{n_t} target nuclei" + (f" ({entry['note']})" if "note" in entry else ""))
        cls_kw = dict(instances=instances, classes=classes) if classes is not None else {}
        # Micrometre distances of the per-class scores: the same pixels for every method.
        c_mpp = img_mpp or entry.get("mpp_assumed") or ASSUMED_MPP
        for name, method in methods.items():
            t0 = time.perf_counter()
            if isinstance(method, str) and method == "baseline":
                if img.array.shape[2] not in (3, 4):
                    entry["skipped"][name] = "classical baseline needs an RGB (H&E) image"
                    say(f"    {name}: skipped — {entry['skipped'][name]}")
                    continue
                rgb = image_to_float(img.array[:, :, :3], "dtype", img_path)
                p_mask, p_labels, _ = segment_nuclei(rgb, baseline_cfg)
                base = rgb

                def classify(labels, _cfg=baseline_cfg, _mpp=c_mpp):
                    return classify_by_shape(labels, _mpp, _cfg)[1]
            else:
                try:
                    pred = predict_image(method, img, mpp=img_mpp, tile=tile)
                except ValueError as e:
                    entry["skipped"][name] = str(e)
                    say(f"    {name}: skipped — {e}")
                    continue
                p_mask = pred.mask > threshold
                h_px, a_px = extraction_pixels(img_mpp or pred.model_mpp, split_um,
                                               min_area_um2, split_h, min_area)
                p_labels = label_objects(pred.mask, threshold, h=h_px, min_area=a_px)
                base = pred.image
                classify = _model_classifier(method, pred)
            # Nuclei whose classes are scored: all the method's objects (for a multi-class
            # model, the nuclei of the union mask even where the target is one class).
            c_labels = p_labels
            if not isinstance(method, str) and pred.class_probs is not None:
                p_mask, p_labels = _target_class_nuclei(pred, p_labels, target)
            variants = [(name, p_mask, p_labels, c_labels)]
            filt = _object_filter(method)
            if filt is not None:
                # The optional object classifier (vnumba.objclass): the article's mask, minus
                # the objects it rejects, scored as a method of its own.
                from vnumba.analysis.inference import model_mpp, normalise_colours
                f_mpp = img_mpp or model_mpp(method)
                if f_mpp:
                    kept = filt.apply(normalise_colours(pred.image, method), pred.mask,
                                      p_labels, f_mpp)
                    variants.append((f"{name} + object filter", kept > 0, kept, kept))
            for vname, v_mask, v_labels, v_cls_labels in variants:
                res = evaluate_masks(v_mask, v_labels, t_mask, t_labels, radius, **cls_kw)
                if classes is not None and classify is not None:
                    res["classified"] = evaluate_classes(
                        object_table(v_cls_labels).centroids(), classify(v_cls_labels), instances,
                        classes, c_mpp, class_match_um, border_um)
                res["seconds"] = time.perf_counter() - t0
                entry["results"][vname] = res
                per_method.setdefault(vname, []).append((entry["folder"], res))
                say(f"    {vname}: {_summary_line(res)} ({res['n_pred']} objects, "
                    f"{res['seconds']:.1f} s)")
                if "classified" in res:
                    say(f"    {vname} classes: {_classes_line(res)}")
                if overlays:
                    # The image's path below DATA_DIR keeps equal names in different folders apart.
                    fn = out_dir / f"{_slug(str(Path(rel).with_suffix('')))}__{_slug(vname)}_overlay.png"
                    write_png(fn, overlay_contours(base, v_labels, second=t_labels))
                    res["overlay"] = fn.name
        if entry["results"]:
            # The reference every method must beat, on the images the methods were scored on.
            bg = evaluate_masks(np.zeros(instances.shape, bool),
                                np.zeros(instances.shape, np.int32), t_mask, t_labels, radius,
                                **cls_kw)
            entry["all_background"] = bg
            all_bg.append((entry["folder"], bg))
            say(f"    {ALL_BACKGROUND}: {_summary_line(bg)}")
    report = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "data_dir": str(data_dir),
        "target": target,
        "settings": dict(threshold=threshold, split_um=split_um, min_area_um2=min_area_um2,
                         split_h=split_h, min_area=min_area,
                         match_radius=radius, tile=tile, mpp=mpp,
                         class_match_um=class_match_um, border_um=border_um,
                         baseline=dataclasses.asdict(baseline_cfg)),
        "methods": [_describe(n, m) for n, m in methods.items()],
        "mark_fraction": MARK_FRACTION,
        "images": images,
        "overall": {name: pool_results([r for _, r in rs])
                    for name, rs in per_method.items() if rs},
        "per_folder": {},
        "all_background": {"overall": pool_results([r for _, r in all_bg]) if all_bg else None,
                           "per_folder": {}},
        "figures": [],
    }
    folders = list(dict.fromkeys(f for f, _ in all_bg))
    for f in folders:
        report["per_folder"][f] = {name: pool_results([r for g, r in rs if g == f])
                                   for name, rs in per_method.items()
                                   if any(g == f for g, _ in rs)}
        report["all_background"]["per_folder"][f] = pool_results([r for g, r in all_bg if g == f])
    if any("classes" in r for r in report["overall"].values()):
        from vnumba.analysis.plots import plot_marked_fractions
        plot_marked_fractions(report, out_dir / "marked_fractions.png")
        report["figures"].append("marked_fractions.png")
    if any("classified" in r for r in report["overall"].values()):
        from vnumba.analysis.plots import plot_confusion
        plot_confusion(report, out_dir / "confusion.png")
        report["figures"].append("confusion.png")
    from vnumba.io.outputs import atomic_write_text
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, default=_jsonable))
    atomic_write_text(out_dir / "report.md", format_report(report))
    return report


def _folder_name(data_dir: Path, rel: str) -> str:
    """Pooling folder of an image: its folder below ``data_dir``, else ``data_dir``'s name."""
    parent = Path(rel).parent
    if str(parent) == ".":
        return Path(data_dir).resolve().name or str(data_dir)
    return parent.as_posix()


def _fmt(v, spec=".3f") -> str:
    """A score, or "–" when not applicable (None)."""
    return "–" if v is None else format(v, spec)


def _marked_text(classes: dict) -> str:
    nuc = ", ".join(f"{n} {_fmt(c['marked_fraction'])} ({c['marked']}/{c['nuclei']})"
                    for n, c in classes.items())
    pix = ", ".join(f"{n} {_fmt(c['pixel_fraction'])}" for n, c in classes.items())
    return f"marked nuclei {nuc}; mask pixels per class {pix}"


def _n_images(r: dict) -> str:
    n = r["n_images"]
    return f"{n} image" if n == 1 else f"{n} images"


def _summary_line(r: dict) -> str:
    """One-line scores of a result or pooled result (stderr messages)."""
    p, o = r["pixel"], r["objects"]
    s = (f"pixel acc {100 * p['accuracy']:.2f} %, Dice {p['dice']:.3f}, "
         f"P {_fmt(o['precision'])} R {_fmt(o['recall'])} F1 {_fmt(o['f1'])}")
    if "classes" in r:
        s += "; " + _marked_text(r["classes"])
    return s


def _classes_line(r: dict) -> str:
    """One line of the per-class figures of a result (empty without them)."""
    if "classified" not in r:
        return ""
    from vnumba.analysis.classeval import class_summary
    return class_summary(r["classified"])


def _model_classifier(method, pred):
    """``labels -> class name per object (ascending labels)`` for a model's nuclei, or None.

    A multi-class model's nuclei get the class of :func:`vnumba.analysis.classes.classify_nuclei`;
    a one-channel model's are all of its scenario's class (scenario 3: tumour); a model of
    no known scenario yields no classes.
    """
    if pred.class_probs is not None:
        from vnumba.analysis.classes import classify_nuclei

        def classify(labels):
            return classify_nuclei(labels, pred.class_probs, pred.mask_classes).labels
        return classify
    from vnumba.scenarios import scenario_mask_class
    c = scenario_mask_class((getattr(method, "meta", None) or {}).get("scenario"))
    if c is None:
        return None

    def single(labels):
        return [c] * int(np.count_nonzero(np.bincount(np.asarray(labels).ravel())[1:]))
    return single


def _target_class_nuclei(pred, labels: np.ndarray, target: str):
    """A multi-class model's mask and objects for a scenario target: its nuclei of the
    target's class (scenario 3: those classed tumour; :func:`vnumba.scenarios.scenario_mask_class`)
    when the model has that class, else all its nuclei (the union mask, e.g. for the
    ``nuclei`` target).

    Returns
    -------
    mask : ndarray of bool, shape (H, W)
    labels : ndarray of int32, shape (H, W)
        The kept objects with their labels.
    """
    from vnumba.scenarios import scenario_mask_class
    c = scenario_mask_class(target) if target in SCENARIOS else None
    if c is None or c not in pred.mask_classes:
        return labels > 0, labels
    from vnumba.analysis.classes import classify_nuclei
    nc = classify_nuclei(labels, pred.class_probs, pred.mask_classes)
    keep = nc.ids[nc.index == pred.mask_classes.index(c)]
    out = np.where(np.isin(labels, keep), labels, 0).astype(np.int32)
    return out > 0, out


def _object_filter(method):
    """The model's fitted object classifier (``meta["object_filter"]``), or None."""
    meta = getattr(method, "meta", None) or {}
    if "object_filter" not in meta:
        return None
    from vnumba.analysis.objfilter import ObjectFilter
    return ObjectFilter.from_meta(meta["object_filter"])


def _describe(name, method) -> dict:
    if isinstance(method, str):
        return {"name": name, "kind": "classical baseline"}
    meta = getattr(method, "meta", None) or {}
    return {"name": name, "kind": "model", "arch": getattr(method, "arch", None),
            "scenario": meta.get("scenario"), "mpp": meta.get("mpp")}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "method"


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _target_text(target: str) -> str:
    if target == "nuclei":
        return "all annotated nuclei"
    return SCENARIOS[target].target if target in SCENARIOS else target


def format_report(report: dict) -> str:
    """Markdown text of a report made by :func:`run_evaluation`."""
    s = report["settings"]
    lines = [
        "# Evaluation on real annotated images", "",
        f"- data: `{report['data_dir']}`",
        f"- target: {_target_text(report['target'])}",
        f"- mask threshold {s['threshold']}, watershed split depth "
        + (f"{s['split_h']} px" if s.get("split_h") is not None else f"{s.get('split_um')} µm")
        + ", minimum object area "
        + (f"{s['min_area']} px" if s.get("min_area") is not None
           else f"{s.get('min_area_um2')} µm²")
        + " (converted at each image's pixel size), centroid matching radius "
        f"{s['match_radius']} px (one-to-one)",
        f"- created {report['created']}",
    ]
    for m in report["methods"]:
        if m["kind"] == "model":
            lines.append(f"- `{m['name']}`: {m['arch']} model, scenario {m['scenario']}, "
                         f"trained at {m['mpp']} µm/px")
        else:
            b = s["baseline"]
            thr = "Otsu threshold" if b["threshold"] is None else f"threshold {b['threshold']}"
            lines.append(f"- `{m['name']}`: haematoxylin by colour deconvolution (rgb2hed), "
                         f"Gaussian σ = {b['sigma']} px, {thr}, "
                         f"{'holes filled, ' if b['fill_holes'] else ''}distance-"
                         f"transform watershed (depth {b['split_h']} px), objects ≥ "
                         f"{b['min_area']} px"
                         + (f"; classes by shape: minor/major axis < "
                            f"{b['spindle_axis_ratio']} other, else equivalent diameter < "
                            f"{b['immune_max_diameter_um']} µm immune, else tumour"
                            if "immune_max_diameter_um" in b else ""))
    lines += [
        "",
        "Pixel accuracy, Dice and IoU of the thresholded mask against the target mask; "
        "precision / recall / F1 of object detection (\"–\": not applicable, the image has "
        "no target nucleus). *Overall* and *per folder* pool the pixel and match counts of "
        "the evaluated images (detection: of the images with target nuclei). "
        f"*{ALL_BACKGROUND}* is an all-zero mask: the pixel accuracy of marking nothing.", "",
    ]
    rules = {json.dumps(im["rule"], sort_keys=True) for im in report["images"] if "rule" in im}
    for r in sorted(rules):
        d = json.loads(r)
        lines.insert(4, f"- density rule: class {d['cell_class']} nuclei whose disc of radius "
                        f"{d['radius']:.1f} px has a class-{d['density_class']} pixel fraction "
                        f"> {d['threshold']} ({d['source']})")
    bg = report.get("all_background") or {}
    head = ("| image | method | pixel acc. | Dice | IoU | precision | recall | F1 | "
            "objects | targets |")
    sep = "|" + "---|" * 10
    lines += ["## Overall", "", head, sep]
    for name, r in report["overall"].items():
        lines.append(_row(f"all ({r['n_images']})", name, r))
    if bg.get("overall"):
        lines.append(_row(f"all ({bg['overall']['n_images']})", ALL_BACKGROUND, bg["overall"]))
    per_folder = report.get("per_folder") or {}
    if per_folder:
        lines += ["", "## Per folder", "", head, sep]
        for f, by_method in per_folder.items():
            for name, r in by_method.items():
                lines.append(_row(f"{f} ({r['n_images']})", name, r))
            if f in bg.get("per_folder", {}):
                b = bg["per_folder"][f]
                lines.append(_row(f"{f} ({b['n_images']})", ALL_BACKGROUND, b))
    lines += _marked_section(report)
    lines += _classified_section(report)
    lines += ["", "## Per image", "", head, sep]
    skipped, notes = [], []
    for im in report["images"]:
        for name, r in im["results"].items():
            lines.append(_row(im["image"], name, r))
        if "all_background" in im:
            lines.append(_row(im["image"], ALL_BACKGROUND, im["all_background"]))
        for name, why in im["skipped"].items():
            skipped.append(f"- `{im['image']}` ({name}): {why}")
        if "note" in im:
            notes.append(f"- `{im['image']}`: {im['note']}")
    if notes:
        lines += ["", "## Notes", ""] + notes
    if skipped:
        lines += ["", "## Skipped", ""] + skipped
    if report.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{fn}]({fn})" for fn in report["figures"]]
    overlays = [(im["image"], n, r["overlay"]) for im in report["images"]
                for n, r in im["results"].items() if "overlay" in r]
    if overlays:
        lines += ["", "## Overlays", "",
                  "Green: predicted objects; magenta: target nuclei.", ""]
        lines += [f"- `{img}` — {n}: [{fn}]({fn})" for img, n, fn in overlays]
    return "\n".join(lines) + "\n"


def _row(image, name, r):
    p, o = r["pixel"], r["objects"]
    return (f"| {image} | {name} | {100 * p['accuracy']:.2f} % | {p['dice']:.3f} | "
            f"{p['iou']:.3f} | {_fmt(o['precision'])} | {_fmt(o['recall'])} | {_fmt(o['f1'])} | "
            f"{r['n_pred']} | {r['n_target']} |")


def _scoped_results(report: dict) -> list:
    """``(scope, method, result)`` of a report: overall, per folder, per image, each with its
    all-background line."""
    bg = report.get("all_background") or {}
    rows = []   # (scope, method, pooled-or-single result)
    for name, r in report["overall"].items():
        rows.append((f"all ({r['n_images']})", name, r))
    if bg.get("overall"):
        rows.append((f"all ({bg['overall']['n_images']})", ALL_BACKGROUND, bg["overall"]))
    for f, by_method in (report.get("per_folder") or {}).items():
        for name, r in by_method.items():
            rows.append((f"{f} ({r['n_images']})", name, r))
        if f in bg.get("per_folder", {}):
            rows.append((f"{f} ({bg['per_folder'][f]['n_images']})", ALL_BACKGROUND,
                         bg["per_folder"][f]))
    for im in report["images"]:
        for name, r in im["results"].items():
            rows.append((im["image"], name, r))
        if "all_background" in im:
            rows.append((im["image"], ALL_BACKGROUND, im["all_background"]))
    return rows


def _marked_section(report: dict) -> list:
    """Markdown lines of the per-class marked-nucleus table (empty without classes)."""
    rows = [x for x in _scoped_results(report) if "classes" in x[2]]
    if not rows:
        return []
    names = sorted({n for _, _, r in rows for n in r["classes"]}, key=class_order)
    frac = report.get("mark_fraction", MARK_FRACTION)
    out = ["", "## Marked nuclei per class", "",
           f"A nucleus (an annotated instance, of the majority class of its pixels) is "
           f"*marked* when at least {'half' if frac == 0.5 else frac} of its pixels are in the "
           "thresholded mask. Each cell: marked fraction (marked / nuclei of the class in the "
           "image(s)); px: mask pixels of the class / pixels of the class. \"–\": the class "
           "does not occur. Classes are reported whatever the target: epithelial (class 4, "
           "tumour vs normal not distinguished) is never scored as tumour.", "",
           "| image | method | " + " | ".join(names) + " |",
           "|" + "---|" * (2 + len(names))]
    for scope, name, r in rows:
        cells = []
        for n in names:
            c = r["classes"].get(n)
            cells.append("–" if c is None else
                         f"{_fmt(c['marked_fraction'])} ({c['marked']}/{c['nuclei']}), "
                         f"px {_fmt(c['pixel_fraction'])}")
        out.append(f"| {scope} | {name} | " + " | ".join(cells) + " |")
    return out


def _classified_section(report: dict) -> list:
    """Markdown lines of the per-class scores of classed nuclei (empty without them)."""
    from vnumba.analysis.classeval import MISSED, NO_NUCLEUS, SCORED_CLASSES, confusion_rows

    rows = [x for x in _scoped_results(report) if "classified" in x[2]]
    if not rows:
        return []
    s = report["settings"]
    mu, bu = s.get("class_match_um", 4.0), s.get("border_um", 10.0)
    out = ["", "## Nucleus classes", "",
           "Methods whose nuclei have classes: a multi-class model (class = argmax of the "
           "per-nucleus mean of its class maps), a one-channel model (every nucleus of its "
           "scenario's class, e.g. tumour for scenario 3), the classical baseline (shape rule). "
           f"Predicted and annotated centroids are matched one-to-one within {mu:g} µm. "
           f"*F1 c*: predictions of class c against annotated nuclei of class c (\"–\": no "
           "annotated nucleus of c). *immune → tumour*: annotated immune nuclei whose match is "
           "classed tumour / all annotated immune nuclei; *tumour → immune* likewise. *border "
           f"immune → tumour*: the same among the immune nuclei within {bu:g} µm of an "
           "annotated tumour nucleus (centroid to centroid).", "",
           "| image | method | " + " | ".join(f"F1 {c} (TP/FP/FN)" for c in SCORED_CLASSES)
           + " | immune → tumour | tumour → immune | border immune → tumour |",
           "|" + "---|" * (5 + len(SCORED_CLASSES))]

    def share(d, k="share", n="count"):
        return f"{_fmt(d[k])} ({d[n]}/{d['nuclei']})"
    for scope, name, r in rows:
        c = r["classified"]
        det = " | ".join(f"{_fmt(c['detection'][k]['f1'])} ({c['detection'][k]['tp']}/"
                         f"{c['detection'][k]['fp']}/{c['detection'][k]['fn']})"
                         for k in SCORED_CLASSES)
        b = c["border_immune"]
        out.append(f"| {scope} | {name} | {det} | {share(c['immune_classed_tumour'])} | "
                   f"{share(c['tumour_classed_immune'])} | {_fmt(b['share_tumour'])} "
                   f"({b['classed']['tumour']}/{b['nuclei']}) |")
    out += ["", "### Confusion matrices (all images)", "",
            f"Rows: annotated class; columns: class of the matched prediction, *{MISSED}* = no "
            f"prediction within {mu:g} µm; row *{NO_NUCLEUS}*: predictions matched to no "
            "annotated nucleus. Counts of nuclei."]
    for name, r in report["overall"].items():
        if "classified" not in r:
            continue
        c = r["classified"]
        cols = list(next(iter(c["confusion"].values())))
        out += ["", f"`{name}` ({_n_images(r)}):", "",
                "| annotated ↓ · predicted → | " + " | ".join(cols) + " |",
                "|" + "---|" * (1 + len(cols))]
        for row in confusion_rows(c):
            out.append(f"| {row} | " + " | ".join(str(c["confusion"][row][k]) for k in cols)
                       + " |")
    return out
