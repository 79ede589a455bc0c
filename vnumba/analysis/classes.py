"""Per-nucleus classes from the per-class mask channels of a multi-class model.

A multi-class model (``model.config.n_mask == C_m > 1``, ``model.meta["mask_classes"]`` the
channel names, in practice ``tumour, immune, other``) gives one probability-like map per
class.  The nuclei are the objects of the *union* mask — the nucleus probability
``max_k m_k`` (:func:`nucleus_probability`) cut with the usual extraction
(:func:`vnumba.analysis.objects.label_objects`, sizes in µm): a pixel is a nucleus pixel when
any class map exceeds the threshold.  Each nucleus then gets

* ``p_k`` = the mean of class map ``k`` over the nucleus's pixels, divided by the sum of
  these means over the classes (so ``p_tumour + p_immune + p_other = 1``; a nucleus on which
  every map is 0 gets ``1 / C_m`` each);
* its class = the class of the largest ``p_k`` (the first in channel order on a tie).

Vectorised: one ``bincount`` per class over the label image, no loop over nuclei.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vnumba.ops.masks import label_areas

__all__ = ["NucleusClasses", "nucleus_probability", "nucleus_class_probs", "classify_nuclei",
           "class_map"]


@dataclass(frozen=True)
class NucleusClasses:
    """Classes of the objects of a label image.

    Attributes
    ----------
    ids : ndarray of int64, shape (N,)
        Object labels, ascending.
    names : tuple of str, length K
        Class names in channel order.
    probs : ndarray of float64, shape (N, K)
        ``p_k`` of each object (rows sum to 1).
    index : ndarray of int64, shape (N,)
        Channel of each object's class (``argmax`` of its row).
    """

    ids: np.ndarray
    names: tuple
    probs: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.size)

    @property
    def labels(self) -> list:
        """Class name of each object (list of str, in ``ids`` order)."""
        return [self.names[int(k)] for k in self.index]


def _check_maps(class_probs):
    a = np.asarray(class_probs)
    if a.ndim != 3 or a.shape[0] < 1:
        raise ValueError(f"class maps must have shape (C_m, H, W), got {a.shape}")
    if a.dtype.kind != "f":
        raise TypeError(f"class maps must be a float array, got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError("class maps contain NaN or inf")
    return a


def nucleus_probability(class_probs: np.ndarray) -> np.ndarray:
    """Probability that a pixel belongs to a nucleus of any class: ``max`` over the channels.

    ``nucleus_probability(m) > t`` is exactly the union of the per-class masks ``m_k > t``.

    Parameters
    ----------
    class_probs : ndarray, shape (C_m, H, W), float

    Returns
    -------
    ndarray, shape (H, W), same dtype
    """
    a = _check_maps(class_probs)
    return np.ascontiguousarray(a.max(axis=0))


def nucleus_class_probs(labels: np.ndarray, class_probs: np.ndarray, ids=None) -> tuple:
    """Mean of each class map over each object, normalised to probabilities.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        0 = background.
    class_probs : ndarray of float, shape (C_m, H, W)
    ids : array of int, optional
        Objects to measure (default: every label present, ascending).

    Returns
    -------
    ids : ndarray of int64, shape (N,)
    probs : ndarray of float64, shape (N, C_m)
        Rows sum to 1 (``1 / C_m`` each where every map is 0 on the object).
    """
    maps = _check_maps(class_probs)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    if labels.shape != maps.shape[1:]:
        raise ValueError(f"labels {labels.shape} and class maps {maps.shape[1:]} differ in size")
    flat, area = label_areas(labels)
    n = area.size
    if ids is None:
        ids = np.nonzero(area[1:])[0] + 1
    ids = np.asarray(ids, np.int64).ravel()
    if ids.size and (ids.min() < 1 or ids.max() >= n or np.any(area[ids] == 0)):
        raise ValueError("ids must be labels present in the label image")
    K = maps.shape[0]
    sums = np.empty((ids.size, K), np.float64)
    for k in range(K):  # one pass per class channel (not per nucleus)
        sums[:, k] = np.bincount(flat, weights=maps[k].ravel().astype(np.float64),
                                 minlength=n)[ids]
    means = sums / np.maximum(area[ids], 1)[:, None]
    tot = means.sum(axis=1, keepdims=True)
    probs = np.divide(means, tot, out=np.full_like(means, 1.0 / K), where=tot > 0)
    return ids, probs


def classify_nuclei(labels: np.ndarray, class_probs: np.ndarray, names, ids=None) -> NucleusClasses:
    """Class probabilities and class (argmax) of every object of ``labels``.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Nuclei, e.g. ``label_objects(nucleus_probability(class_probs), ...)``.
    class_probs : ndarray of float, shape (C_m, H, W)
    names : sequence of str, length C_m
        Class names in channel order.
    ids : array of int, optional

    Returns
    -------
    NucleusClasses
    """
    names = tuple(str(n) for n in names)
    if len(names) != np.asarray(class_probs).shape[0]:
        raise ValueError(f"{len(names)} class names for {np.asarray(class_probs).shape[0]} "
                         "class maps")
    ids, probs = nucleus_class_probs(labels, class_probs, ids)
    return NucleusClasses(ids=ids, names=names, probs=probs,
                          index=probs.argmax(axis=1).astype(np.int64) if ids.size
                          else np.zeros(0, np.int64))


def class_map(labels: np.ndarray, classes: NucleusClasses) -> np.ndarray:
    """Label image of the classes: 0 background, ``k + 1`` for a nucleus of channel ``k``.

    Returns
    -------
    ndarray of uint8, shape (H, W)
    """
    labels = np.asarray(labels)
    n = max(int(labels.max()) + 1 if labels.size else 1,
            int(classes.ids.max()) + 1 if len(classes) else 1)
    lut = np.zeros(n, np.uint8)
    lut[classes.ids] = classes.index + 1
    return lut[labels]
