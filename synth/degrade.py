"""Realistic variation and degradation of a rendered sample (``[degrade]`` of a script).

The article's input ``u0`` is a *noisy and blurry* version of the clean image ``g_u``; real
slides also differ from each other in staining and scanning.  A model that has only seen one
stain and a pixel-perfect input learns the development tile's colours, not nuclei.  Applied
after the layers are composed, in this order:

1. **scale jitter** (both images and the mask): the sample is rendered on a canvas of
   ``round(size / s)`` pixels and resampled by ``s`` (uniform in ``scale``), so object sizes
   vary around the script's µm/px as they do between scanners and sections;
2. **stain variation** (both images, the same draw): optical densities in
   haematoxylin–eosin–DAB space (Ruifrok & Johnston colour deconvolution,
   :func:`skimage.color.rgb2hed`) are scaled by ``1 + U(-hed_scale, hed_scale)`` and shifted by
   ``U(-hed_shift, hed_shift)`` times its mean density per stain, then CIE Lab is shifted by ``N(0, lab_shift)`` per
   channel — the tissue looks different, so the clean target changes with it;
3. **focus blur** (input only): Gaussian of sigma uniform in ``blur`` pixels;
4. **noise** (input only): white Gaussian noise of standard deviation uniform in ``noise_std``;
5. **JPEG** (input only): with probability ``jpeg_probability``, encoded and decoded at a quality
   uniform in ``jpeg_quality`` (whole-slide scanners store JPEG tiles).

Every draw comes from the sample's ``numpy.random.Generator``.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .params import param

__all__ = ["DegradeSpec", "canvas_size", "rescale", "stain_variation", "degrade_input"]


@dataclass(frozen=True)
class DegradeSpec:
    """``[degrade]``: see the module docstring.  The defaults change nothing."""

    scale: tuple[float, float] = param((1.0, 1.0), gt=0.25, le=4.0,
                                       doc="resampling factor range (> 1 enlarges objects)")
    hed_scale: float = param(0.0, ge=0.0, le=0.9)
    hed_shift: float = param(0.0, ge=0.0, le=0.5)
    lab_shift: tuple[float, float, float] = param((0.0, 0.0, 0.0), ge=0.0, le=50.0)
    blur: tuple[float, float] = param((0.0, 0.0), ge=0.0, le=10.0)
    noise_std: tuple[float, float] = param((0.0, 0.0), ge=0.0, le=0.5)
    jpeg_probability: float = param(0.0, ge=0.0, le=1.0)
    jpeg_quality: tuple[int, int] = param((75, 95), ge=5, le=100)

    def check(self):
        for k in ("scale", "blur", "noise_std", "jpeg_quality"):
            lo, hi = getattr(self, k)
            if lo > hi:
                yield (k, f"range must be [low, high] with low <= high, got {[lo, hi]}")

    @property
    def active(self) -> bool:
        return self != DegradeSpec()


def canvas_size(size, s: float) -> tuple[int, int]:
    """Canvas on which to render so that resampling by ``s`` covers ``size``."""
    return tuple(max(1, int(np.ceil(int(n) / s - 1e-9))) for n in size)


def rescale(img: np.ndarray, s: float, size, order: int = 1) -> np.ndarray:
    """Resample the last two axes of ``img`` by ``s`` and crop to ``size`` (top-left).

    Parameters
    ----------
    img : ndarray (..., h, w)
    s : float
    size : (H, W)
    order : int
        Spline order (1 for images, 0 for label maps).
    """
    H, W = (int(v) for v in size)
    zoom = (1.0,) * (img.ndim - 2) + (s, s)
    if abs(s - 1.0) < 1e-12:
        out = img
    elif img.ndim == 2:
        out = ndi.zoom(img, zoom, order=order, grid_mode=True, mode="nearest")
    else:
        # One 2-D zoom per channel: the same values as one zoom over (..., h, w) with factor 1
        # on the leading axes (tests/test_scenario3_lookalikes.py), in half the time, since a
        # 3-D spline visits twice the neighbours.
        flat = img.reshape((-1,) + img.shape[-2:])
        out = np.stack([ndi.zoom(c, zoom[-2:], order=order, grid_mode=True, mode="nearest")
                        for c in flat])
        out = out.reshape(img.shape[:-2] + out.shape[-2:])
    if out.shape[-2] < H or out.shape[-1] < W:
        pad = [(0, 0)] * (img.ndim - 2) + [(0, max(0, H - out.shape[-2])),
                                           (0, max(0, W - out.shape[-1]))]
        out = np.pad(out, pad, mode="edge")
    return np.ascontiguousarray(out[..., :H, :W])


def stain_variation(rng: np.random.Generator, spec: DegradeSpec):
    """One draw of the stain perturbation, as a function of an RGB (3, H, W) image.

    Returns
    -------
    callable
        ``f(img) -> img`` (float32 (3, H, W) in [0, 1]); applying the same ``f`` to the clean
        and the noisy image gives them the same staining.
    """
    a = 1.0 + rng.uniform(-spec.hed_scale, spec.hed_scale, 3)
    b = rng.uniform(-spec.hed_shift, spec.hed_shift, 3)
    dlab = rng.standard_normal(3) * np.asarray(spec.lab_shift, np.float64)
    if spec.hed_scale == 0 and spec.hed_shift == 0 and not np.any(spec.lab_shift):
        return lambda img: img

    def f(img):
        from skimage.color import hed2rgb, lab2rgb, rgb2hed, rgb2lab

        rgb = np.clip(img.transpose(1, 2, 0).astype(np.float64), 0.0, 1.0)
        if spec.hed_scale or spec.hed_shift:
            hed = rgb2hed(rgb)
            # The shift is relative to the stain's mean density, so it means the same on any image.
            rgb = hed2rgb(hed * a + b * np.abs(hed.mean(axis=(0, 1))))
        if np.any(dlab):
            rgb = lab2rgb(rgb2lab(np.clip(rgb, 0, 1)) + dlab)
        return np.ascontiguousarray(np.clip(rgb, 0, 1).transpose(2, 0, 1), dtype=np.float32)

    return f


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    import imageio.v3 as iio

    u8 = (np.clip(img.transpose(1, 2, 0), 0, 1) * 255.0 + 0.5).astype(np.uint8)
    buf = iio.imwrite("<bytes>", u8, extension=".jpg", quality=int(quality))
    back = iio.imread(io.BytesIO(buf), extension=".jpg")
    return np.ascontiguousarray(back.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def degrade_input(rng: np.random.Generator, noisy: np.ndarray, spec: DegradeSpec) -> np.ndarray:
    """Steps 3–5 of the module docstring on the input image (float32 (3, H, W) in [0, 1])."""
    out = noisy
    sigma = float(rng.uniform(*spec.blur))
    if sigma > 0:
        out = ndi.gaussian_filter(out, sigma=(0, sigma, sigma), mode="nearest")
    sd = float(rng.uniform(*spec.noise_std))
    if sd > 0:
        out = out + np.float32(sd) * rng.standard_normal(out.shape, dtype=np.float32)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if rng.random() < spec.jpeg_probability:
        out = _jpeg(out, int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1)))
    return np.ascontiguousarray(out, dtype=np.float32)
