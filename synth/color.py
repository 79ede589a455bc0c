"""Colour: Lab conversion, Reinhard normalisation, and the colour/noise model of objects.

Reinhard et al. (2001) colour transfer: convert RGB to CIE Lab, shift and scale every Lab
channel so that its mean and standard deviation match a reference, convert back.  The same
function normalises real H&E images before colour statistics are estimated (``synth stats``)
and before inference.

Object colours follow the article: an object's mean colour is drawn from a multivariate normal
``N(mean, cov_between)`` and its pixels get additive, spatially correlated noise
``N(0, cov)`` (see :class:`ColorSpec`); the clean target image shows the object's mean colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import color as skcolor

from .noise import gaussian_random_field
from .script import param

__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_stats", "reinhard_normalize", "ColorSpec",
           "sample_object_colors", "color_noise", "psd_factor"]


def _as_float_rgb(img, name="img") -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535.0
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must be uint8, uint16 or float RGB, got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a.astype(np.float64, copy=False)


def rgb_to_lab(img) -> np.ndarray:
    """RGB (H, W, 3), float in [0, 1] or uint8/uint16, to CIE Lab (D65) float64 (H, W, 3)."""
    return skcolor.rgb2lab(np.clip(_as_float_rgb(img), 0.0, 1.0))


def lab_to_rgb(lab) -> np.ndarray:
    """CIE Lab (H, W, 3) to float64 RGB in [0, 1] (out-of-gamut values clipped)."""
    a = np.asarray(lab, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"lab must have shape (H, W, 3), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("lab contains NaN or inf")
    return np.clip(skcolor.lab2rgb(a), 0.0, 1.0)


def lab_stats(img, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each Lab channel.

    Parameters
    ----------
    img : ndarray (H, W, 3)
        RGB, float in [0, 1] or uint8/uint16.
    mask : ndarray (H, W) of bool, optional
        Only these pixels are used (e.g. tissue without white background).

    Returns
    -------
    mean, std : ndarray (3,) float64
    """
    lab = rgb_to_lab(img)
    if mask is None:
        px = lab.reshape(-1, 3)
    else:
        m = np.asarray(mask)
        if m.shape != lab.shape[:2]:
            raise ValueError(f"mask shape {m.shape} does not match image {lab.shape[:2]}")
        px = lab[m.astype(bool)]
    if px.shape[0] < 2:
        raise ValueError("lab_stats needs at least 2 pixels")
    return px.mean(axis=0), px.std(axis=0)


def reinhard_normalize(img, target_mean, target_std, source_mean=None, source_std=None) -> np.ndarray:
    """Reinhard colour normalisation of an RGB image to a reference's Lab mean/std.

    Parameters
    ----------
    img : ndarray (H, W, 3)
        RGB, float in [0, 1] (uint8/uint16 accepted and scaled).
    target_mean, target_std : array_like (3,)
        Lab mean and standard deviation of the reference (``lab_stats(reference)``).
    source_mean, source_std : array_like (3,), optional
        Lab statistics of ``img``; computed from the whole image when omitted.

    Returns
    -------
    ndarray (H, W, 3)
        Normalised RGB clipped to [0, 1]; float32 for float32 input, else float64.
    """
    out_dtype = np.float32 if np.asarray(img).dtype == np.float32 else np.float64
    tm = np.asarray(target_mean, dtype=np.float64).reshape(-1)
    ts = np.asarray(target_std, dtype=np.float64).reshape(-1)
    if tm.shape != (3,) or ts.shape != (3,):
        raise ValueError("target_mean and target_std must have 3 elements")
    if not (np.all(np.isfinite(tm)) and np.all(np.isfinite(ts)) and np.all(ts > 0)):
        raise ValueError("target statistics must be finite with std > 0")
    lab = rgb_to_lab(img)
    if source_mean is None or source_std is None:
        px = lab.reshape(-1, 3)
        sm = px.mean(axis=0) if source_mean is None else np.asarray(source_mean, np.float64)
        ss = px.std(axis=0) if source_std is None else np.asarray(source_std, np.float64)
    else:
        sm = np.asarray(source_mean, np.float64).reshape(-1)
        ss = np.asarray(source_std, np.float64).reshape(-1)
    if sm.shape != (3,) or ss.shape != (3,):
        raise ValueError("source_mean and source_std must have 3 elements")
    ss = np.where(ss > 1e-8, ss, 1.0)  # a flat channel is shifted, not blown up
    lab = (lab - sm) / ss * ts + tm
    return lab_to_rgb(lab).astype(out_dtype)


# --------------------------------------------------------------------------- colour model


def _psd_problem(m, name):
    a = np.asarray(m, dtype=np.float64)
    if not np.allclose(a, a.T, atol=1e-9):
        return (name, "covariance must be symmetric")
    if np.linalg.eigvalsh(a).min() < -1e-9:
        return (name, "covariance must be positive semi-definite")
    return None


_ZERO3 = ((0.0, 0.0, 0.0),) * 3


@dataclass(frozen=True)
class ColorSpec:
    """Colour and noise of one object category (a ``[colors.NAME]`` table of a script).

    Attributes
    ----------
    mean : 3 floats in [0, 1]
        Mean RGB colour of objects.
    cov_between : 3x3 floats
        Covariance of the objects' mean colours around ``mean`` (object-to-object variation).
    cov : 3x3 floats
        Covariance of the pixel noise around an object's mean colour (noisy image only).
    corr : float
        Spatial correlation length of the pixel noise (Gaussian sigma, pixels; 0 = white).
    source : str
        Free text: where the numbers come from.
    """

    mean: tuple[float, float, float] = param(ge=0.0, le=1.0)
    cov: tuple[tuple[float, float, float], tuple[float, float, float],
               tuple[float, float, float]] = _ZERO3
    cov_between: tuple[tuple[float, float, float], tuple[float, float, float],
                       tuple[float, float, float]] = _ZERO3
    corr: float = param(0.0, ge=0.0, le=50.0)
    source: str = ""

    def check(self):
        for name in ("cov", "cov_between"):
            p = _psd_problem(getattr(self, name), name)
            if p:
                yield p


def psd_factor(cov) -> np.ndarray:
    """A matrix ``L`` (3, 3) with ``L @ L.T == cov`` for a symmetric PSD ``cov``."""
    c = np.asarray(cov, dtype=np.float64)
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    return v * np.sqrt(np.clip(w, 0.0, None))


def sample_object_colors(rng: np.random.Generator, spec: ColorSpec, n: int) -> np.ndarray:
    """Mean colours of ``n`` objects, ``N(spec.mean, spec.cov_between)`` clipped to [0, 1].

    Returns
    -------
    ndarray (n, 3) float64
    """
    z = rng.standard_normal((int(n), 3))
    return np.clip(np.asarray(spec.mean) + z @ psd_factor(spec.cov_between).T, 0.0, 1.0)


def color_noise(rng: np.random.Generator, shape, spec: ColorSpec, unit=None) -> np.ndarray:
    """Zero-mean colour noise with covariance ``spec.cov`` and correlation ``spec.corr``.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (H, W)
    spec : ColorSpec
    unit : ndarray (3, H, W) float32, optional
        A precomputed field of three independent unit-variance channels with correlation
        ``spec.corr`` (``gaussian_random_field(rng, shape, spec.corr, channels=3)``); drawn
        from ``rng`` when omitted.

    Returns
    -------
    ndarray (H, W, 3) float32
        Every pixel is distributed ``N(0, spec.cov)``.
    """
    if unit is None:
        z = gaussian_random_field(rng, shape, spec.corr, channels=3)
    else:
        z = np.asarray(unit, dtype=np.float32)
        if z.shape != (3,) + tuple(shape):
            raise ValueError(f"unit field must have shape (3, H, W), got {z.shape}")
    L = psd_factor(spec.cov)
    out = np.empty(z.shape[1:] + (3,), dtype=np.float32)
    # elementwise rather than matmul: a 3x3 product does not need (multithreaded) BLAS
    for i in range(3):
        np.multiply(z[0], np.float32(L[i, 0]), out=out[..., i])
        out[..., i] += np.float32(L[i, 1]) * z[1]
        out[..., i] += np.float32(L[i, 2]) * z[2]
    return out
