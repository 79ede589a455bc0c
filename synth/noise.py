"""Stationary Gaussian random fields (white noise smoothed by a periodic Gaussian kernel).

Used for colour noise (:mod:`synth.color`) and random velocity fields (:mod:`synth.fmm`).
The smoothing is a circular convolution done with the FFT: its cost does not grow with the
correlation length, and the field's exact variance is known from Parseval's theorem, so the
field is normalised to unit variance exactly.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft

__all__ = ["gaussian_transfer", "gaussian_random_field"]


@lru_cache(maxsize=64)
def gaussian_transfer(shape: tuple[int, int], corr: float) -> np.ndarray:
    """Real-FFT transfer function of a periodic Gaussian blur, scaled to unit output variance.

    Parameters
    ----------
    shape : (H, W)
    corr : float
        Gaussian standard deviation in pixels (> 0).

    Returns
    -------
    ndarray (H, W // 2 + 1) float64
        ``G / sqrt(mean(|G_full|**2))``: white unit-variance noise filtered with it has
        variance exactly 1 at every pixel.
    """
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    g = np.exp(-2.0 * np.pi ** 2 * corr ** 2 * (ky ** 2 + kx ** 2))
    # variance of the output = (1/N) sum over the full spectrum of |G|^2 (Parseval); the
    # half spectrum counts the columns 1..ceil(w/2)-1 twice
    full = np.exp(-2.0 * np.pi ** 2 * corr ** 2 * (ky ** 2 + np.fft.fftfreq(w)[None, :] ** 2))
    var = np.mean(full ** 2)
    return g / np.sqrt(var)


def gaussian_random_field(rng: np.random.Generator, shape, corr: float, *, channels: int = 0,
                          dtype=np.float32) -> np.ndarray:
    """Zero-mean, unit-variance stationary Gaussian field with periodic boundaries.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
        (H, W).
    corr : float
        Correlation length (Gaussian sigma, pixels); 0 gives white noise.  The covariance of
        two pixels at distance ``d`` (much smaller than the image) is ``exp(-d**2 / (4 corr**2))``.
    channels : int
        0 for an (H, W) field, otherwise (channels, H, W) independent fields.
    dtype : numpy dtype
        float32 or float64.

    Returns
    -------
    ndarray, shape (H, W) or (channels, H, W)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator")
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    if not np.isfinite(corr) or corr < 0:
        raise ValueError(f"corr must be >= 0, got {corr!r}")
    dt = np.float32 if np.dtype(dtype) == np.float32 else np.float64
    full = (channels, h, w) if channels else (h, w)
    z = rng.standard_normal(full, dtype=dt)
    if corr == 0:
        return z
    G = gaussian_transfer((h, w), float(corr))
    out = sfft.irfft2(sfft.rfft2(z) * G.astype(dt), s=(h, w))
    return np.ascontiguousarray(out, dtype=dt)
