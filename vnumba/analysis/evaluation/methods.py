"""What an evaluation compares: methods that turn an image into nuclei.

Every method implements one interface, :class:`Method`: ``segment(ctx)`` gives the
:class:`Segmentation` of one image — the thresholded mask scored against the target, its
objects, the objects whose classes are scored, the image the overlay is drawn on, and how the
objects are classed.  The evaluation loop (:mod:`vnumba.analysis.evaluation.run`) knows
nothing else about a method, so another method (or another way of scoring its result) is a new
small class here, not another branch there.

* :class:`ModelMethod` — a trained model, the variational network or the U-Net alike
  (:func:`vnumba.analysis.inference.predict_image` dispatches on the model);
* :class:`BaselineMethod` — the classical pipeline (:mod:`vnumba.analysis.baseline`);
* :class:`FilteredMethod` — a model's objects minus those its fitted object filter rejects
  (:mod:`vnumba.analysis.objfilter`), reusing that model's prediction of the same image.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

import numpy as np

from vnumba.analysis.objects import MIN_AREA_UM2, SPLIT_UM
from vnumba.scenarios import SCENARIOS

__all__ = ["Segmentation", "ImageContext", "MethodSkipped", "Method", "ModelMethod",
           "BaselineMethod", "FilteredMethod", "as_methods", "slug"]


class MethodSkipped(ValueError):
    """A method cannot be applied to this image; the message says why (it goes into the
    report's *Skipped* section)."""


@dataclasses.dataclass
class Segmentation:
    """One method's result on one image.

    Attributes
    ----------
    mask : ndarray of bool, shape (H, W)
        The thresholded mask scored against the target mask.
    labels : ndarray of int, shape (H, W)
        Objects scored against the target nuclei (0 = background).
    class_labels : ndarray of int, shape (H, W)
        Objects whose classes are scored (a multi-class model: all its nuclei, even where the
        target is one class).
    base : ndarray, shape (H, W, C)
        The image the overlay outlines are drawn on.
    classify : callable or None
        ``labels -> class name per object (ascending labels)``; None: the method's objects
        have no classes.
    """

    mask: np.ndarray
    labels: np.ndarray
    class_labels: np.ndarray
    base: np.ndarray
    classify: Callable | None


@dataclasses.dataclass
class ImageContext:
    """What a method gets to know about the image being evaluated.

    Attributes
    ----------
    image : vnumba.io.images.ImageData
    path : Path
    mpp : float or None
        The image's pixel size in µm (None: unknown).
    class_mpp : float
        Pixel size at which micrometre distances of the per-class scores are converted (the
        image's, else the model's, else :data:`vnumba.analysis.objects.ASSUMED_MPP`).
    target : str
    cache : dict
        Results methods share on this image (a model's prediction, for its filtered variant).
    """

    image: object
    path: Path
    mpp: float | None
    class_mpp: float
    target: str
    cache: dict = dataclasses.field(default_factory=dict)


class Method:
    """A way of finding nuclei, under a name in the report."""

    name: str = "method"

    def segment(self, ctx: ImageContext) -> Segmentation | None:
        """The method's result on ``ctx``'s image; None when the method does not apply there
        (nothing is reported for it).

        Raises
        ------
        MethodSkipped
            The method cannot run on this image (recorded in the report with the reason).
        """
        raise NotImplementedError

    def describe(self) -> dict:
        """``{"name", "kind", ...}`` of the report's method list."""
        raise NotImplementedError


class ModelMethod(Method):
    """A trained model (variational network or U-Net): prediction, threshold, split objects.

    Parameters
    ----------
    name : str
    model : vnumba.io.models.Model (or any object :func:`predict_image` accepts)
    threshold : float
    split_um, min_area_um2 : float
        Object extraction in µm and µm², converted at each image's pixel size.
    split_h, min_area : optional
        The same in pixels (override the micrometre values).
    tile : int
    """

    def __init__(self, name, model, threshold=0.5, split_um=SPLIT_UM, min_area_um2=MIN_AREA_UM2,
                 split_h=None, min_area=None, tile=512):
        self.name, self.model, self.threshold, self.tile = name, model, threshold, tile
        self.extraction = (split_um, min_area_um2, split_h, min_area)

    def segment(self, ctx):
        from vnumba.analysis.inference import predict_image
        from vnumba.analysis.objects import extraction_pixels, label_objects

        ctx.cache[id(self)] = None
        try:
            pred = predict_image(self.model, ctx.image, mpp=ctx.mpp, tile=self.tile)
        except ValueError as e:
            raise MethodSkipped(str(e)) from None
        h_px, a_px = extraction_pixels(ctx.mpp or pred.model_mpp, *self.extraction)
        labels = label_objects(pred.mask, self.threshold, h=h_px, min_area=a_px)
        mask, scored = pred.mask > self.threshold, labels
        if pred.class_probs is not None:
            mask, scored = _target_class_nuclei(pred, labels, ctx.target)
        seg = Segmentation(mask, scored, labels, pred.image, _model_classifier(self.model, pred))
        ctx.cache[id(self)] = (pred, seg)
        return seg

    def describe(self):
        meta = getattr(self.model, "meta", None) or {}
        return {"name": self.name, "kind": "model", "arch": getattr(self.model, "arch", None),
                "scenario": meta.get("scenario"), "mpp": meta.get("mpp")}


class BaselineMethod(Method):
    """The classical pipeline (:func:`vnumba.analysis.baseline.segment_nuclei`), its nuclei
    classed by shape (:func:`vnumba.analysis.baseline.classify_by_shape`); RGB images only."""

    def __init__(self, name, cfg=None):
        from vnumba.analysis.baseline import BaselineConfig
        self.name, self.cfg = name, cfg or BaselineConfig()

    def segment(self, ctx):
        from vnumba.analysis.baseline import classify_by_shape, segment_nuclei
        from vnumba.io.images import image_to_float

        arr = ctx.image.array
        if arr.shape[2] not in (3, 4):
            raise MethodSkipped("classical baseline needs an RGB (H&E) image")
        rgb = image_to_float(arr[:, :, :3], "dtype", ctx.path)
        mask, labels, _ = segment_nuclei(rgb, self.cfg)

        def classify(lab, _cfg=self.cfg, _mpp=ctx.class_mpp):
            return classify_by_shape(lab, _mpp, _cfg)[1]
        return Segmentation(mask, labels, labels, rgb, classify)

    def describe(self):
        return {"name": self.name, "kind": "classical baseline"}


class FilteredMethod(Method):
    """A model's objects that its fitted object filter keeps, scored as a method of its own
    (the article's mask minus the rejected objects).

    It reuses the prediction its model's :class:`ModelMethod` made of the same image, so it
    must come after that method (:func:`as_methods` orders them); where the model was skipped,
    or no pixel size is known for the filter's micrometre features, it does not apply.
    """

    def __init__(self, inner: ModelMethod, object_filter):
        self.inner, self.filter = inner, object_filter
        self.name = f"{inner.name} + object filter"

    def segment(self, ctx):
        from vnumba.analysis.inference import model_mpp, normalise_colours

        got = ctx.cache.get(id(self.inner))
        if got is None:
            return None
        pred, seg = got
        mpp = ctx.mpp or model_mpp(self.inner.model)
        if not mpp:
            return None
        kept = self.filter.apply(normalise_colours(pred.image, self.inner.model), pred.mask,
                                 seg.labels, mpp)
        return Segmentation(kept > 0, kept, kept, seg.base, seg.classify)

    def describe(self):
        return {"name": self.name, "kind": "object filter", "of": self.inner.name}


def as_methods(methods: dict, threshold=0.5, split_um=SPLIT_UM, min_area_um2=MIN_AREA_UM2,
               split_h=None, min_area=None, tile=512, baseline_cfg=None) -> list:
    """The :class:`Method` objects of ``run_evaluation``'s ``methods`` argument.

    Parameters
    ----------
    methods : dict
        name -> a model, the string ``"baseline"`` (the classical pipeline), or a
        :class:`Method` (used as it is).

    Returns
    -------
    list of Method
        In the given order; a model with a fitted object filter (``meta["object_filter"]``)
        is followed by its :class:`FilteredMethod`.
    """
    out = []
    for name, m in methods.items():
        if isinstance(m, Method):
            out.append(m)
        elif isinstance(m, str):
            if m != "baseline":
                raise ValueError(f"method {name!r}: unknown method {m!r} (a model, 'baseline' or a Method)")
            out.append(BaselineMethod(name, baseline_cfg))
        else:
            mm = ModelMethod(name, m, threshold, split_um, min_area_um2, split_h, min_area, tile)
            out.append(mm)
            filt = _object_filter(m)
            if filt is not None:
                out.append(FilteredMethod(mm, filt))
    return out


def slug(s: str) -> str:
    """``s`` as a file-name part (overlay files)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "method"


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


def _object_filter(model):
    """The model's fitted object classifier (``meta["object_filter"]``), or None."""
    meta = getattr(model, "meta", None) or {}
    if "object_filter" not in meta:
        return None
    from vnumba.analysis.objfilter import ObjectFilter
    return ObjectFilter.from_meta(meta["object_filter"])
