"""Colour: the colour/noise model of objects; Lab conversion and Reinhard normalisation are
:mod:`vnumba.ops.color`'s (one implementation, shared with inference), imported here.

Object colours follow the article: an object's mean colour is drawn from a multivariate normal
``N(mean, cov_between)`` and its pixels get additive, spatially correlated noise
``N(0, cov)`` (see :class:`ColorSpec`); the clean target image shows the object's mean colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vnumba.ops.color import _as_float_rgb, lab_stats, lab_to_rgb, reinhard_normalize, rgb_to_lab  # noqa: F401 (part of synth.color)

from .noise import gaussian_random_field
from .params import param

__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_stats", "reinhard_normalize", "ColorSpec",
           "sample_object_colors", "color_noise", "psd_factor"]


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
