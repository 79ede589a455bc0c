"""Tissue detection on a low-resolution view of a slide, so that background tiles are skipped.

:func:`tissue_mask` reads a small view of the slide — the finest pyramid level whose longer
side is at most ``max_side`` pixels, or, when every level is larger, the coarsest level read
block by block and averaged down (never a full-resolution level whole) — and calls a pixel
tissue when

* its HSV saturation exceeds a threshold chosen by Otsu's method on the saturation and
  clamped to ``[min_saturation, max_saturation]`` (stained tissue is coloured, glass is grey:
  the clamp keeps Otsu from cutting a slide without background into pale and dark tissue, and
  from calling JPEG noise on an empty slide tissue), or
* it is dark (HSV value below ``dark_value``) without being black (scanner fill outside the
  scanned area is black in some formats);

then removes specks smaller than ``min_object_um2`` and fills holes smaller than
``max_hole_um2`` (scikit-image).  :func:`tile_tissue_fraction` tells which part of a level-0
box is tissue.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vnumba.io.slides import SlideReader

__all__ = ["TissueMask", "tissue_mask", "tile_tissue_fraction", "read_overview"]

#: Level-0 µm/px assumed for the speck and hole sizes when the slide records none.
ASSUMED_MPP = 0.5
#: Pixels read at once when a level is averaged down block by block (48 MiB as float32 RGB).
_BLOCK_PIXELS = 2 ** 22


@dataclass(frozen=True)
class TissueMask:
    """Where the tissue is, on a coarse grid over level 0.

    Attributes
    ----------
    mask : ndarray, shape (h, w), bool
        True on tissue.  Mask pixel ``(i, j)`` covers level-0 pixels
        ``[j * downsample, (j + 1) * downsample)`` × ``[i * downsample, (i + 1) * downsample)``.
    downsample : float
        Level-0 pixels per mask pixel.
    mpp : float or None
        µm per mask pixel (the slide's level-0 µm/px times ``downsample``), None if unknown.
    level : int
        The pyramid level that was read.
    threshold : float
        The saturation threshold used (after clamping).
    """

    mask: np.ndarray
    downsample: float
    mpp: float | None
    level: int
    threshold: float

    @property
    def fraction(self) -> float:
        """Fraction of the mask that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_mm2(self) -> float | None:
        """Tissue area in mm² (None when the pixel size is unknown)."""
        if self.mpp is None:
            return None
        return float(self.mask.sum()) * self.mpp ** 2 * 1e-6


def read_overview(reader: SlideReader, max_side: int = 2048) -> tuple[np.ndarray, int, float]:
    """A small RGB view of the whole slide.

    Parameters
    ----------
    reader : SlideReader
    max_side : int
        Largest side of the view, in pixels.

    Returns
    -------
    rgb : ndarray, shape (h, w, 3), uint8
        The view, ``max(h, w) <= max_side``.
    level : int
        The level read.
    downsample : float
        Level-0 pixels per view pixel.

    The finest level whose longer side is at most ``max_side`` is read whole; when every
    level is larger, the coarsest one is read in blocks of at most about four megapixels,
    each averaged over ``f × f`` squares (``f`` the smallest integer that brings the level
    within ``max_side``; pixels outside the level do not count in the edge averages).
    """
    max_side = int(max_side)
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    dims = reader.level_dimensions
    fits = [i for i, (w, h) in enumerate(dims) if max(w, h) <= max_side]
    if fits:
        level = min(fits)
        W, H = dims[level]
        return reader.read_region(level, 0, 0, W, H), level, reader.level_downsamples[level]
    level = reader.level_count - 1
    W, H = dims[level]
    f = math.ceil(max(W, H) / max_side)
    ow, oh = math.ceil(W / f), math.ceil(H / f)
    out = np.empty((oh, ow, 3), np.uint8)
    b = max(1, math.isqrt(_BLOCK_PIXELS) // f)  # output pixels per block side
    for oy in range(0, oh, b):
        for ox in range(0, ow, b):
            bw, bh = min(b, ow - ox), min(b, oh - oy)
            x, y = ox * f, oy * f
            w_in, h_in = min(bw * f, W - x), min(bh * f, H - y)
            region = reader.read_region(level, x, y, w_in, h_in)
            acc = np.zeros((bh * f, bw * f, 3), np.float32)
            acc[:h_in, :w_in] = region
            weight = np.zeros((bh * f, bw * f), np.float32)
            weight[:h_in, :w_in] = 1.0
            s = acc.reshape(bh, f, bw, f, 3).sum(axis=(1, 3))
            n = weight.reshape(bh, f, bw, f).sum(axis=(1, 3))[:, :, None]
            out[oy:oy + bh, ox:ox + bw] = np.clip(np.round(s / n), 0, 255).astype(np.uint8)
    return out, level, reader.level_downsamples[level] * f


def _small_inner_components(mask: np.ndarray, n: int) -> np.ndarray:
    """Pixels of the connected components of ``mask`` of at most ``n`` pixels that do not touch
    the image's edge (bool, the shape of ``mask``)."""
    from scipy import ndimage as ndi
    lab, k = ndi.label(mask)
    if n < 1 or k == 0:
        return np.zeros(mask.shape, bool)
    size = np.bincount(lab.ravel(), minlength=k + 1)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    small = size <= n
    small[0] = False
    small[edge] = False
    return small[lab]


def _remove_small_objects(mask: np.ndarray, n: int) -> np.ndarray:
    """Remove tissue pieces of at most ``n`` pixels that lie inside the image; a piece that
    touches the image's edge may be the part of a larger section that a tile or a field of
    view cut off (a PNG of 0.003 mm² is all tissue), so it is kept whatever its size."""
    return mask & ~_small_inner_components(mask, n) if n >= 1 else mask


def _remove_small_holes(mask: np.ndarray, n: int) -> np.ndarray:
    """Fill background regions of at most ``n`` pixels that are enclosed by tissue; background
    touching the slide's edge is glass around the section, never a hole, however small."""
    return mask | _small_inner_components(~mask, n) if n >= 1 else mask


def tissue_mask(reader: SlideReader, max_side: int = 2048, *, min_saturation: float = 0.05,
                max_saturation: float = 0.15, dark_value: float = 0.5, min_object_um2: float = 1e4,
                max_hole_um2: float = 2e4) -> TissueMask:
    """Detect the tissue of a slide on a low-resolution view.

    Parameters
    ----------
    reader : SlideReader
    max_side : int
        Longest side of the view the mask is computed on (see :func:`read_overview`).
    min_saturation, max_saturation : float
        Bounds of the saturation threshold (HSV saturation in [0, 1]); Otsu's threshold is
        clamped into them.
    dark_value : float
        Pixels with HSV value below this (and above 0.04, black fill) are tissue whatever
        their saturation.
    min_object_um2, max_hole_um2 : float
        Tissue pieces smaller than this are removed, holes smaller than this filled (µm²; for
        a slide without pixel size, level 0 is taken as :data:`ASSUMED_MPP` µm/px for these
        two sizes only).

    Returns
    -------
    TissueMask
        An all-white slide gives an empty mask, a slide without background a full one.
    """
    from skimage.color import rgb2hsv
    from skimage.filters import gaussian, threshold_otsu

    rgb, level, downsample = read_overview(reader, max_side)
    hsv = rgb2hsv(rgb)
    sat = gaussian(hsv[:, :, 1], sigma=1.0, preserve_range=True)
    val = hsv[:, :, 2]
    if float(sat.max() - sat.min()) > 1e-6:
        t = float(threshold_otsu(sat))
    else:  # one saturation everywhere: the clamp decides (white slide: no tissue)
        t = float(sat.max())
    t = min(max(t, min_saturation), max_saturation)
    mask = (sat > t) | ((val < dark_value) & (val > 0.04))
    mpp = None if reader.mpp is None else reader.mpp * downsample
    px_um2 = (mpp if mpp is not None else ASSUMED_MPP * downsample) ** 2
    mask = _remove_small_objects(mask, int(min_object_um2 / px_um2))
    mask = _remove_small_holes(mask, int(max_hole_um2 / px_um2))
    return TissueMask(np.ascontiguousarray(mask, dtype=bool), float(downsample), mpp, int(level), t)


def tile_tissue_fraction(tissue: TissueMask, x0: float, y0: float, w: float, h: float) -> float:
    """Fraction of the level-0 box ``[x0, x0 + w) × [y0, y0 + h)`` that is tissue.

    Each mask pixel counts by the area it shares with the box; the part of the box outside
    the mask (beyond the slide) counts as background.

    Returns
    -------
    float in [0, 1]; 0.0 for an empty box.
    """
    if w <= 0 or h <= 0:
        return 0.0
    ds = tissue.downsample
    mh, mw = tissue.mask.shape
    bx0, bx1 = x0 / ds, (x0 + w) / ds
    by0, by1 = y0 / ds, (y0 + h) / ds
    j0, j1 = max(int(math.floor(bx0)), 0), min(int(math.ceil(bx1)), mw)
    i0, i1 = max(int(math.floor(by0)), 0), min(int(math.ceil(by1)), mh)
    if j1 <= j0 or i1 <= i0:
        return 0.0
    cols = np.arange(j0, j1, dtype=np.float64)
    rows = np.arange(i0, i1, dtype=np.float64)
    wx = np.clip(np.minimum(cols + 1, bx1) - np.maximum(cols, bx0), 0.0, 1.0)
    wy = np.clip(np.minimum(rows + 1, by1) - np.maximum(rows, by0), 0.0, 1.0)
    covered = float(wy @ tissue.mask[i0:i1, j0:j1].astype(np.float64) @ wx)
    return min(max(covered / ((bx1 - bx0) * (by1 - by0)), 0.0), 1.0)
