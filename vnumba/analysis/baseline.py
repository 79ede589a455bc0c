"""The classical nucleus segmentation pipeline the network is compared against.

What image analysts commonly do without learning: separate the haematoxylin stain by colour
deconvolution (Ruifrok & Johnston 2001, ``skimage.color.rgb2hed``), smooth it slightly,
threshold it (Otsu's threshold by default), fill holes, drop specks, and split touching
nuclei with a distance-transform watershed (:func:`vnumba.analysis.objects.split_touching`).  It finds
*all* nuclei; it has no notion of tumour versus immune cell, which is the point of the
comparison in ``vnumba.evaluate``.

For the per-class evaluation its nuclei are classed by a fixed morphological prior
(:func:`classify_by_shape`), the rule of thumb of a pathologist, in micrometres, not fitted to
any image: a **spindle** nucleus (minor/major axis ratio below 0.5: fibroblasts, endothelial
and smooth-muscle cells) is ``other``; a round nucleus smaller than **8 µm** in equivalent
diameter (area below 50.3 µm²) is ``immune`` (a small lymphocyte's nucleus is about 6–7 µm
across and fills most of the cell); a larger round one is ``tumour`` (tumour nuclei, e.g.
melanoma's, are about 10–20 µm and pleomorphic).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from vnumba.analysis.objects import split_touching
from vnumba.vn.config import from_dict

__all__ = ["BaselineConfig", "haematoxylin", "segment_nuclei", "object_shapes",
           "classify_by_shape"]


@dataclass(frozen=True)
class BaselineConfig:
    """Parameters of the classical pipeline.

    Attributes
    ----------
    sigma : float
        Gaussian smoothing of the haematoxylin channel, pixels (0 = none).
    threshold : float or None
        Haematoxylin optical-density threshold; None = Otsu's threshold of the image.
    min_area : int
        Objects with fewer pixels are discarded.
    fill_holes : bool
        Fill holes in the thresholded mask (pale nucleoli and vesicular chromatin).
    split_h : float
        Watershed split depth (:func:`vnumba.analysis.objects.split_touching`).
    immune_max_diameter_um : float
        Round nuclei with a smaller equivalent diameter (µm) are classed ``immune``, larger
        ones ``tumour`` (:func:`classify_by_shape`).
    spindle_axis_ratio : float
        Nuclei with a smaller minor/major axis ratio are classed ``other`` (spindle-shaped).
    """

    sigma: float = 1.0
    threshold: float | None = None
    min_area: int = 30
    fill_holes: bool = True
    split_h: float = 2.0
    immune_max_diameter_um: float = 8.0
    spindle_axis_ratio: float = 0.5

    def __post_init__(self):
        if not self.sigma >= 0:
            raise ValueError(f"BaselineConfig.sigma must be >= 0, got {self.sigma}")
        if self.min_area < 0:
            raise ValueError(f"BaselineConfig.min_area must be >= 0, got {self.min_area}")
        if not self.split_h >= 0:
            raise ValueError(f"BaselineConfig.split_h must be >= 0, got {self.split_h}")
        if not self.immune_max_diameter_um > 0:
            raise ValueError("BaselineConfig.immune_max_diameter_um must be > 0, got "
                             f"{self.immune_max_diameter_um}")
        if not 0 <= self.spindle_axis_ratio <= 1:
            raise ValueError("BaselineConfig.spindle_axis_ratio must lie in [0, 1], got "
                             f"{self.spindle_axis_ratio}")

    @classmethod
    def from_dict(cls, d: dict) -> "BaselineConfig":
        return from_dict(cls, d, "baseline config")


def haematoxylin(img: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density by colour deconvolution.

    Parameters
    ----------
    img : ndarray, shape (H, W, 3), float in [0, 1] or uint8/uint16 RGB

    Returns
    -------
    ndarray, shape (H, W), float64
        Larger = more haematoxylin (darker blue/purple).
    """
    from skimage.color import rgb2hed

    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {getattr(img, 'shape', None)}")
    if img.dtype.kind == "f" and not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or inf")
    return rgb2hed(img)[:, :, 0]


def segment_nuclei(img: np.ndarray, cfg: BaselineConfig = BaselineConfig()):
    """Segment nuclei in an H&E image.

    Parameters
    ----------
    img : ndarray, shape (H, W, 3)
        RGB, float in [0, 1] or uint8/uint16.
    cfg : BaselineConfig

    Returns
    -------
    mask : ndarray of bool, shape (H, W)
        Nucleus pixels (after removing small objects).
    labels : ndarray of int32, shape (H, W)
        Split nuclei, 1..N.
    threshold : float
        The threshold applied to the (smoothed) haematoxylin density.
    """
    from skimage.filters import threshold_otsu
    from skimage.segmentation import relabel_sequential

    hem = haematoxylin(img)
    if cfg.sigma > 0:
        hem = ndi.gaussian_filter(hem, cfg.sigma)
    if cfg.threshold is not None:
        thr = float(cfg.threshold)
    elif np.ptp(hem) > 0:
        thr = float(threshold_otsu(hem))
    else:
        thr = float(hem.max())  # flat image: nothing is above it
    mask = hem > thr
    if cfg.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    labels = split_touching(mask, cfg.split_h)
    if cfg.min_area > 0 and labels.max() > 0:
        area = np.bincount(labels.ravel())
        small = area < cfg.min_area
        small[0] = False
        labels[small[labels]] = 0
        labels = relabel_sequential(labels)[0].astype(np.int32)
    return labels > 0, labels, thr


def object_shapes(labels: np.ndarray):
    """Area and axis ratio of every object of a label image (moments, no loop over objects).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)

    Returns
    -------
    ids : ndarray of int64, shape (N,)
        Labels present, ascending.
    area : ndarray of int64, shape (N,)
        Pixels.
    axis_ratio : ndarray of float64, shape (N,)
        Minor over major axis of the ellipse with the object's second moments (each pixel a
        unit square, so a single pixel is round: ratio 1).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=n)
    ids = np.nonzero(area[1:])[0] + 1
    rows, cols = np.indices(labels.shape)
    r, c = rows.ravel().astype(np.float64), cols.ravel().astype(np.float64)

    def s(w):
        return np.bincount(flat, weights=w, minlength=n)[ids]

    a = area[ids].astype(np.float64)
    mr, mc = s(r) / a, s(c) / a
    # central second moments, plus 1/12 for the extent of a unit pixel
    vrr = s(r * r) / a - mr ** 2 + 1.0 / 12
    vcc = s(c * c) / a - mc ** 2 + 1.0 / 12
    vrc = s(r * c) / a - mr * mc
    half_tr, det = 0.5 * (vrr + vcc), vrr * vcc - vrc ** 2
    disc = np.sqrt(np.maximum(half_tr ** 2 - det, 0.0))
    lam1, lam2 = half_tr + disc, np.maximum(half_tr - disc, 0.0)
    return ids.astype(np.int64), area[ids].astype(np.int64), np.sqrt(lam2 / lam1)


def classify_by_shape(labels: np.ndarray, mpp: float, cfg: BaselineConfig = BaselineConfig()):
    """Classes of the classical baseline's nuclei from size and shape alone (module docstring).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Nuclei (e.g. :func:`segment_nuclei`'s labels).
    mpp : float
        Pixel size in µm/px (the size threshold is in µm).
    cfg : BaselineConfig
        ``immune_max_diameter_um`` and ``spindle_axis_ratio``.

    Returns
    -------
    ids : ndarray of int64, shape (N,)
        Labels present, ascending.
    names : list of str
        ``tumour``, ``immune`` or ``other`` per object.
    """
    if not (mpp is not None and np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"pixel size must be a positive number, got {mpp!r}")
    ids, area, ratio = object_shapes(labels)
    diameter = 2.0 * np.sqrt(area * float(mpp) ** 2 / np.pi)
    names = np.where(ratio < cfg.spindle_axis_ratio, "other",
                     np.where(diameter < cfg.immune_max_diameter_um, "immune", "tumour"))
    return ids, names.tolist()
