"""Object-level classification after the mask (optional).

The network's pixel mask is the article's and stays as it is.  This module adds a second,
optional look at every *object* cut from it (:func:`vnumba.analysis.objects.label_objects`): a small
logistic regression on per-object features — size, shape, mask confidence, haematoxylin
density and texture, and how crowded by dark nuclei its surroundings are — that rejects
look-alikes such as lymphocytes packed in an aggregate.  It is trained, like the network, on
**synthetic** images only: objects the trained model finds in a generated dataset are labelled
by the dataset's target mask (an object is a tumour nucleus when at least half of its pixels
are target pixels), so nothing is fitted to real annotations.

Features (:data:`FEATURES`), computed at the image's pixel size ``mpp``:

* ``area_um2``, ``axis_ratio`` (minor / major), ``solidity``;
* ``mask_mean``: mean mask probability over the object;
* ``h_mean``, ``h_std``: mean and standard deviation of the haematoxylin optical density
  (:func:`skimage.color.rgb2hed`) over the object, relative to the image's median density of
  all objects (so a uniformly darker stain shifts nothing);
* ``ring_dark``: fraction of the pixels in a 3 µm ring around the object whose haematoxylin
  density exceeds the image's median object density — high inside a lymphocyte aggregate;
* ``neighbours``: other objects whose centres lie within 12 µm.

Command line::

    python -m vnumba.objfilter MODEL DATA.h5 --out MODEL_WITH_FILTER.h5 [-n 200] [--recall 0.95]

writes a copy of ``MODEL`` whose ``meta["object_filter"]`` holds the standardisation, the
coefficients and a probability threshold chosen to keep ``--recall`` of the synthetic tumour
objects.  :func:`vnumba.analysis.evaluation.run_evaluation` then also reports ``NAME + object filter``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vnumba.analysis.objects import MIN_AREA_UM2, SPLIT_UM

__all__ = ["FEATURES", "ObjectFilter", "object_features", "object_targets", "fit_logistic",
           "fit_object_filter"]

FEATURES = ("area_um2", "axis_ratio", "solidity", "mask_mean", "h_mean", "h_std", "ring_dark",
            "neighbours")
RING_UM = 3.0
NEIGHBOUR_UM = 12.0


def object_features(rgb: np.ndarray, prob: np.ndarray, labels: np.ndarray, mpp: float) -> np.ndarray:
    """Per-object features (see the module docstring).

    Parameters
    ----------
    rgb : ndarray (H, W, 3) float in [0, 1]
        The image in the model's colour space (after Reinhard normalisation for H&E).
    prob : ndarray (H, W) float
        Mask probabilities.
    labels : ndarray (H, W) int
        Objects ``1..n`` (0 = background).
    mpp : float
        Pixel size in µm.

    Returns
    -------
    ndarray (n, len(FEATURES)) float64
        Row ``i`` belongs to object ``i + 1``.
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.measure import regionprops

    rgb, prob, labels = np.asarray(rgb), np.asarray(prob), np.asarray(labels)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != labels.shape or prob.shape != labels.shape:
        raise ValueError(f"rgb (H, W, 3), prob and labels (H, W) must agree, got {rgb.shape}, "
                         f"{prob.shape}, {labels.shape}")
    if not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number, got {mpp}")
    n = int(labels.max(initial=0))
    out = np.zeros((n, len(FEATURES)), np.float64)
    if n == 0:
        return out
    h = rgb2hed(np.clip(rgb, 1e-3, 1.0))[..., 0]
    lab = labels.astype(np.int64)
    idx = np.arange(1, n + 1)
    h_mean = np.asarray(ndi.mean(h, lab, idx))
    h_ref = float(np.median(h[lab > 0])) or 1e-6
    h_sq = np.asarray(ndi.mean(h * h, lab, idx))
    out[:, FEATURES.index("mask_mean")] = np.asarray(ndi.mean(prob, lab, idx))
    out[:, FEATURES.index("h_mean")] = h_mean / h_ref
    out[:, FEATURES.index("h_std")] = np.sqrt(np.maximum(h_sq - h_mean ** 2, 0)) / abs(h_ref)
    r = max(1, int(round(RING_UM / mpp)))
    dark = h > h_ref
    cen = np.zeros((n, 2))
    for p in regionprops(lab):
        i = p.label - 1
        out[i, FEATURES.index("area_um2")] = p.area * mpp * mpp
        maj = p.axis_major_length
        out[i, FEATURES.index("axis_ratio")] = p.axis_minor_length / maj if maj > 0 else 1.0
        out[i, FEATURES.index("solidity")] = p.solidity
        cen[i] = p.centroid
        r0, c0, r1, c1 = p.bbox
        y0, x0 = max(r0 - r, 0), max(c0 - r, 0)
        y1, x1 = min(r1 + r, lab.shape[0]), min(c1 + r, lab.shape[1])
        own = lab[y0:y1, x0:x1] == p.label
        ring = ndi.binary_dilation(own, iterations=r) & ~own
        out[i, FEATURES.index("ring_dark")] = float(dark[y0:y1, x0:x1][ring].mean()) if ring.any() else 0.0
    d2 = ((cen[:, None, :] - cen[None, :, :]) ** 2).sum(-1)
    out[:, FEATURES.index("neighbours")] = (d2 <= (NEIGHBOUR_UM / mpp) ** 2).sum(1) - 1
    return out


def object_targets(labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1 for objects with at least half of their pixels in ``target``, else 0 ((n,) int8)."""
    from scipy import ndimage as ndi

    n = int(labels.max(initial=0))
    if n == 0:
        return np.zeros(0, np.int8)
    frac = np.asarray(ndi.mean(np.asarray(target, bool).astype(np.float64), labels, np.arange(1, n + 1)))
    return (frac >= 0.5).astype(np.int8)


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50):
    """L2-regularised logistic regression by Newton's method (IRLS) on standardised features.

    Returns
    -------
    mean, std, coef : ndarray (F,)
    intercept : float
    """
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    mean, std = X.mean(0), X.std(0)
    std[std == 0] = 1.0
    Z = np.column_stack([np.ones(len(X)), (X - mean) / std])
    w = np.zeros(Z.shape[1])
    reg = l2 * np.eye(Z.shape[1])
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(Z @ w)))
        g = Z.T @ (p - y) + reg @ w
        Hm = (Z * (p * (1 - p))[:, None]).T @ Z + reg
        step = np.linalg.solve(Hm + 1e-9 * np.eye(len(w)), g)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return mean, std, w[1:], float(w[0])


@dataclass(frozen=True)
class ObjectFilter:
    """A fitted object classifier (stored as JSON in a model's ``meta["object_filter"]``)."""

    mean: tuple
    std: tuple
    coef: tuple
    intercept: float
    threshold: float
    features: tuple = FEATURES
    info: tuple = ()

    @staticmethod
    def from_meta(d) -> "ObjectFilter":
        """Parse ``meta["object_filter"]``; ValueError naming the key when malformed."""
        try:
            return ObjectFilter._from_meta(d)
        except (TypeError, AttributeError, KeyError) as e:  # a value of the wrong type
            raise ValueError(f"meta 'object_filter' is malformed ({type(e).__name__}: {e})") from None

    @staticmethod
    def _from_meta(d) -> "ObjectFilter":
        if not isinstance(d, dict):
            raise ValueError("meta 'object_filter' must be a table")
        feats = tuple(d.get("features", ()))
        if feats != FEATURES:
            raise ValueError(f"meta 'object_filter.features' must be {list(FEATURES)}, got {list(feats)}")
        vals = {}
        for k in ("mean", "std", "coef"):
            v = np.asarray(d.get(k, ()), np.float64)
            if v.shape != (len(FEATURES),) or not np.all(np.isfinite(v)):
                raise ValueError(f"meta 'object_filter.{k}' must be {len(FEATURES)} finite numbers")
            vals[k] = tuple(float(x) for x in v)
        for k in ("intercept", "threshold"):
            v = d.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ValueError(f"meta 'object_filter.{k}' must be a finite number")
        return ObjectFilter(vals["mean"], vals["std"], vals["coef"], float(d["intercept"]),
                            float(d["threshold"]), feats,
                            tuple(sorted((str(k), str(v)) for k, v in (d.get("info") or {}).items())))

    def to_meta(self) -> dict:
        return {"features": list(self.features), "mean": list(self.mean), "std": list(self.std),
                "coef": list(self.coef), "intercept": self.intercept, "threshold": self.threshold,
                "info": dict(self.info)}

    def probability(self, X: np.ndarray) -> np.ndarray:
        """P(tumour nucleus) per object row of ``X`` ((n,) float64)."""
        Z = (np.asarray(X, np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        return 1.0 / (1.0 + np.exp(-(Z @ np.asarray(self.coef) + self.intercept)))

    def apply(self, rgb, prob, labels, mpp) -> np.ndarray:
        """``labels`` with the rejected objects removed and the rest renumbered 1..k."""
        X = object_features(rgb, prob, labels, mpp)
        keep = self.probability(X) >= self.threshold if len(X) else np.zeros(0, bool)
        lut = np.zeros(len(keep) + 1, np.int32)
        lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
        return lut[np.asarray(labels, np.int64)]


def fit_object_filter(model, data_path, n: int = 200, recall: float = 0.95, threshold: float = 0.5,
                      split_um: float = SPLIT_UM, min_area_um2: float = MIN_AREA_UM2,
                      say=print) -> ObjectFilter:
    """Fit an :class:`ObjectFilter` on ``n`` samples of a synthetic dataset.

    The model predicts every sample's noisy input; objects are cut from its mask as in
    evaluation and labelled by :func:`object_targets` against the dataset's ``gm``.  The
    probability threshold keeps ``recall`` of the tumour objects.  Objects are cut with the
    split depth ``split_um`` and smallest area ``min_area_um2`` converted at the dataset's pixel
    size, as predict and evaluate convert them at each image's.
    """
    from vnumba.analysis.objects import extraction_pixels, label_objects
    from vnumba.io.dataset import SyntheticDataset

    mpp = float(model.meta.get("mpp") or 0) or None
    ds = SyntheticDataset(data_path)
    mpp = mpp or float(ds.attrs.get("mpp", 0)) or None
    if mpp is None:
        raise ValueError(f"{data_path}: pixel size unknown (no 'mpp' in the model or dataset)")
    split_h, min_area = extraction_pixels(mpp, split_um, min_area_um2)
    Xs, ys = [], []
    m = min(int(n), ds.n)
    for i in range(m):
        u0, _, gm = ds.batch((np.array([i]), np.zeros(1, np.int64), np.zeros(1, np.int64), None),
                             np.float32)
        _, mask = model.apply(u0)
        prob = mask[0]
        lab = label_objects(prob, threshold, h=split_h, min_area=min_area)
        Xs.append(object_features(u0[0].transpose(1, 2, 0), prob, lab, mpp))
        ys.append(object_targets(lab, gm[0] > 0.5))
        if say and (i + 1) % 25 == 0:
            say(f"  {i + 1}/{m} samples, {sum(len(y) for y in ys)} objects")
    ds.close()
    X, y = np.concatenate(Xs), np.concatenate(ys)
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("the synthetic objects are all of one kind; cannot fit a filter")
    mean, std, coef, b = fit_logistic(X, y)
    f = ObjectFilter(tuple(mean), tuple(std), tuple(coef), b, 0.0)
    p = f.probability(X)
    thr = float(np.quantile(p[y == 1], 1.0 - recall))
    kept_neg = float(np.mean(p[y == 0] >= thr))
    info = {"dataset": str(data_path), "samples": m, "objects": int(len(y)),
            "tumour_objects": int(y.sum()), "recall": recall,
            "lookalikes_kept": round(kept_neg, 4), "split_um": split_um,
            "min_area_um2": min_area_um2}
    if say:
        say(f"fitted on {len(y)} objects ({int(y.sum())} tumour): threshold {thr:.3f} keeps "
            f"{recall:.0%} of tumour objects and {kept_neg:.1%} of the others")
    return ObjectFilter(tuple(mean), tuple(std), tuple(coef), b, thr, FEATURES,
                        tuple(sorted((k, str(v)) for k, v in info.items())))
