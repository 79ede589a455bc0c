"""Argument checks shared by every public function in front of a private kernel (CPU, U-Net
and GPU alike), so that one bad input gives the same clear message everywhere."""
from __future__ import annotations

import numpy as np

__all__ = ["FLOATS", "check_array", "check_batch", "check_filter_bank"]

FLOATS = (np.float32, np.float64)


def check_array(name, x, ndim, dtype=None, finite=False):
    """Raise a clear ``TypeError``/``ValueError`` unless ``x`` is a C-contiguous float array.

    Parameters
    ----------
    name : str
        The argument's name, used in the message.
    x : object
    ndim : int
        Required number of dimensions.
    dtype : numpy dtype, optional
        Required dtype (e.g. the other operand's, or the device's float32).
    finite : bool
        Also reject NaN and inf.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if x.dtype.type not in FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but must match {np.dtype(dtype)}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if finite and not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")


def check_filter_bank(k, C=None, name="kernel", dtype=None):
    """Check a filter bank of shape ``(O, C, ks, ks)`` with odd ``ks``; return ``(O, C, ks)``."""
    check_array(name, k, 4, dtype)
    O, Ck, kh, kw = k.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"{name} must be square with odd size, got shape {k.shape}")
    if C is not None and Ck != C:
        raise ValueError(f"{name} has {Ck} input channels but the input has {C}")
    return O, Ck, kh


def check_batch(name, x, ndim, dtype, shape=None) -> None:
    """A network input or target: an ndarray of ``ndim`` dimensions, exactly ``dtype`` (the
    parameters'), optionally of ``shape``, all values finite (used by the VN and the U-Net)."""
    if not isinstance(x, np.ndarray) or x.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got {getattr(x, 'shape', type(x))}")
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, expected {dtype} (the parameters' dtype)")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
