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
(:func:`vnumba.analysis.plots.plot_marked_fractions`), ``confusion.png`` and overlay PNGs.

The parts, one concern each (this package re-exports their public names):

* :mod:`~vnumba.analysis.evaluation.data` — which images: annotated pairs, pixel sizes
  from ``manifest.csv``, the folder each is pooled under;
* :mod:`~vnumba.analysis.evaluation.targets` — what should be found (the scenario's target);
* :mod:`~vnumba.analysis.evaluation.methods` — who finds it: one interface
  (:class:`~vnumba.analysis.evaluation.methods.Method`) that a model (network or U-Net), the
  classical baseline and a model's object-filtered variant implement;
* :mod:`~vnumba.analysis.evaluation.metrics` — the scores of one result and their pooling;
* :mod:`~vnumba.analysis.evaluation.run` — the loop over images and methods, the report files;
* :mod:`~vnumba.analysis.evaluation.report` — one-line summaries and the Markdown.
"""
from __future__ import annotations

from vnumba.analysis.evaluation.data import find_annotated_images, folder_name, nominal_mpp
from vnumba.analysis.evaluation.methods import (
    BaselineMethod,
    FilteredMethod,
    ImageContext,
    Method,
    MethodSkipped,
    ModelMethod,
    Segmentation,
    as_methods,
)
from vnumba.analysis.evaluation.metrics import MARK_FRACTION, class_marking, evaluate_masks, pool_results
from vnumba.analysis.evaluation.report import (
    ALL_BACKGROUND,
    classes_line,
    format_report,
    n_images_text,
    summary_line,
)
from vnumba.analysis.evaluation.run import run_evaluation
from vnumba.analysis.evaluation.targets import density_selection, scenario_rule, target_from_annotations
from vnumba.analysis.scores import (
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
from vnumba.scenarios import CLASS_NAMES, DensityRule, class_name

__all__ = [
    "confusion_counts", "scores_from_counts", "pixel_metrics", "match_points",
    "detection_metrics", "detection_scores", "instance_majority_class", "instance_centroids",
    "density_selection", "DensityRule", "scenario_rule", "target_from_annotations",
    "find_annotated_images", "nominal_mpp", "folder_name", "class_name", "class_marking",
    "evaluate_masks", "pool_results", "run_evaluation", "format_report", "summary_line",
    "classes_line", "n_images_text", "MATCH_RADIUS", "MARK_FRACTION", "CLASS_NAMES",
    "ALL_BACKGROUND", "Method", "ModelMethod", "BaselineMethod", "FilteredMethod",
    "MethodSkipped", "Segmentation", "ImageContext", "as_methods",
]
