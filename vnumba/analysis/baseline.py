"""The classical nucleus segmentation pipeline the network is compared against.

What image analysts commonly do without learning: separate the haematoxylin stain by colour
deconvolution (Ruifrok & Johnston 2001, ``skimage.color.rgb2hed``), smooth it slightly,
threshold it (Otsu's threshold by default), fill holes, drop specks, and split touching
nuclei with a distance-transform watershed (:func:`vnumba.analysis.objects.split_touching`).  It finds
*all* nuclei; it has no notion of tumour versus immune cell, which is the point of the
comparison in ``vnumba.evaluate``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from vnumba.analysis.objects import split_touching
from vnumba.vn.config import from_dict

__all__ = ["BaselineConfig", "haematoxylin", "segment_nuclei"]


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
    """

    sigma: float = 1.0
    threshold: float | None = None
    min_area: int = 30
    fill_holes: bool = True
    split_h: float = 2.0

    def __post_init__(self):
        if not self.sigma >= 0:
            raise ValueError(f"BaselineConfig.sigma must be >= 0, got {self.sigma}")
        if self.min_area < 0:
            raise ValueError(f"BaselineConfig.min_area must be >= 0, got {self.min_area}")
        if not self.split_h >= 0:
            raise ValueError(f"BaselineConfig.split_h must be >= 0, got {self.split_h}")

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
