"""Colour operators: CIE Lab conversion and Reinhard normalisation.

Reinhard et al. (2001) colour transfer: convert RGB to CIE Lab, shift and scale every Lab
channel so that its mean and standard deviation match a reference, convert back.  The same
function normalises real H&E images before inference (:mod:`vnumba.analysis.inference`) and
before the generator estimates colour statistics (``synth stats``, which imports it from here).
"""
from __future__ import annotations

import numpy as np
from skimage import color as skcolor

__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_stats", "reinhard_normalize"]


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
