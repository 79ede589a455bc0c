"""The target of an evaluation: which annotated nuclei a method should find.

Scenario 3: tumour nuclei (``classes == 1``); scenario 2: immune nuclei (``classes == 2``)
whose disc of radius ``R`` (40 px at the model's pixel size) has an immune-pixel fraction
above ``τ`` (0.2) — the scenario's own density rule applied to the real annotations
(:func:`density_selection`); scenario 1: immune nuclei whose disc has a tumour-pixel fraction
above 0.3; ``nuclei``: every annotated nucleus (works without ``classes``).
"""
from __future__ import annotations

import numpy as np

from vnumba.analysis.scores import check_labels as _check_labels
from vnumba.analysis.scores import instance_centroids, instance_majority_class
from vnumba.scenarios import SCENARIOS, DensityRule

__all__ = ["density_selection", "scenario_rule", "target_from_annotations", "target_text",
           "TUMOUR", "IMMUNE", "EPITHELIAL_UNKNOWN"]

#: Annotation classes the targets refer to (``shared/data/real/README.md``).
TUMOUR, IMMUNE, EPITHELIAL_UNKNOWN = 1, 2, 4


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


def target_text(target: str) -> str:
    """The target in words (report headers)."""
    if target == "nuclei":
        return "all annotated nuclei"
    return SCENARIOS[target].target if target in SCENARIOS else target
