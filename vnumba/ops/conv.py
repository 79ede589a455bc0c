"""Batched multi-channel 2-D convolutions with symmetric borders, their exact adjoints and
their kernel gradients (CPU, Numba).

Every linear operator of the network is ``K = C_valid ∘ P`` where ``P`` pads each channel
symmetrically by ``r = (ks - 1) // 2`` pixels (NumPy's ``mode="symmetric"``: the border
pixel is repeated, ``x[-1] = x[0]``) and ``C_valid`` is a "valid" cross-correlation
with the filter bank.  The adjoint is therefore ``K^T = P^T ∘ C_valid^T``:

* ``C_valid^T`` scatters every output pixel back through the filter ("full" convolution),
  producing a padded-size image;
* ``P^T`` folds the padding back onto the pixels it was copied from.

Both pieces have public ``forward``/``adjoint`` functions and a dot-product test; the
composite :func:`conv_forward` / :func:`conv_adjoint` is what the network uses.

Shapes: images ``(N, C, H, W)``, filter banks ``(O, C, ks, ks)`` (output channel first),
features ``(N, O, H, W)``.  float32 and float64 are supported; the kernel and the image
must share one dtype.

Notes
-----
Correlation convention: ``y[n, o, p, q] = sum_{c,i,j} k[o, c, i, j] * P(x)[n, c, p + i, q + j]``.
The kernel gradient of ``<ybar, K x>`` is
``kbar[o, c, i, j] = sum_{n,p,q} ybar[n, o, p, q] * P(x)[n, c, p + i, q + j]`` (see
``docs/gradients.md`` §1).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from vnumba.ops.checks import check_array as _check_array
from vnumba.ops.checks import check_filter_bank

__all__ = [
    "pad_symmetric", "pad_symmetric_adjoint",
    "corr_valid", "corr_valid_adjoint", "corr_valid_kernel_grad",
    "conv_forward", "conv_adjoint", "conv_kernel_grad",
]



# ----------------------------------------------------------------------------- checks
def _check_kernel(k, C=None):
    return check_filter_bank(k, C)


# ----------------------------------------------------------------------------- padding
@njit(cache=True, parallel=True)
def _pad_sym_cpu(x, r, out):
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for p in range(H + 2 * r):
            sp = p - r
            if sp < 0:
                sp = -sp - 1
            elif sp >= H:
                sp = 2 * H - sp - 1
            for q in range(r):
                out[n, c, p, q] = x[n, c, sp, r - 1 - q]
                out[n, c, p, r + W + q] = x[n, c, sp, W - 1 - q]
            for q in range(W):
                out[n, c, p, r + q] = x[n, c, sp, q]


@njit(cache=True, parallel=True)
def _pad_sym_adj_cpu(xp, r, out):
    N, C, Hp, Wp = xp.shape
    H = Hp - 2 * r
    W = Wp - 2 * r
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for p in range(H):
            for q in range(W):
                out[n, c, p, q] = xp[n, c, p + r, q + r]
        # Each padded row/column is a copy of one interior row/column: add it back there.
        for p in range(Hp):
            sp = p - r
            if sp < 0:
                sp = -sp - 1
            elif sp >= H:
                sp = 2 * H - sp - 1
            if p < r or p >= r + H:
                for q in range(W):
                    out[n, c, sp, q] += xp[n, c, p, r + q]
            for q in range(r):
                out[n, c, sp, r - 1 - q] += xp[n, c, p, q]
                out[n, c, sp, W - 1 - q] += xp[n, c, p, r + W + q]


def pad_symmetric(x, r):
    """Pad every channel symmetrically (``numpy.pad(mode="symmetric")``).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64, C-contiguous
    r : int
        Pad width, ``0 <= r <= min(H, W)``.

    Returns
    -------
    ndarray, shape (N, C, H + 2r, W + 2r), dtype of ``x``
    """
    _check_array("x", x, 4)
    N, C, H, W = x.shape
    r = int(r)
    if r < 0 or r > H or r > W:
        raise ValueError(f"pad width {r} must be in [0, min(H, W)] for an image of {H}x{W}")
    out = np.empty((N, C, H + 2 * r, W + 2 * r), dtype=x.dtype)
    _pad_sym_cpu(x, r, out)
    return out


def pad_symmetric_adjoint(xp, r):
    """Adjoint of :func:`pad_symmetric`: fold the padding back onto its source pixels.

    Parameters
    ----------
    xp : ndarray, shape (N, C, H + 2r, W + 2r), float32 or float64, C-contiguous
    r : int

    Returns
    -------
    ndarray, shape (N, C, H, W)
    """
    _check_array("xp", xp, 4)
    N, C, Hp, Wp = xp.shape
    r = int(r)
    H, W = Hp - 2 * r, Wp - 2 * r
    if r < 0 or H < max(r, 1) or W < max(r, 1):
        raise ValueError(f"padded image {Hp}x{Wp} too small for pad width {r}")
    out = np.empty((N, C, H, W), dtype=xp.dtype)
    _pad_sym_adj_cpu(xp, r, out)
    return out


# ----------------------------------------------------------------------------- valid correlation
# The kernels live in vnumba.ops.fused (register-blocked, see its docstring for the why).
from vnumba.ops.fused import corr_valid_adjoint_fast, corr_valid_fast, kernel_grad_fast  # noqa: E402


def corr_valid(xp, k):
    """Valid cross-correlation of a padded batch with a filter bank.

    Parameters
    ----------
    xp : ndarray, shape (N, C, H + ks - 1, W + ks - 1), float32/float64, C-contiguous
    k : ndarray, shape (O, C, ks, ks), same dtype

    Returns
    -------
    ndarray, shape (N, O, H, W)
    """
    _check_array("xp", xp, 4)
    O, C, ks = _check_kernel(k, xp.shape[1])
    _check_array("kernel", k, 4, xp.dtype)
    N, _, Hp, Wp = xp.shape
    if Hp < ks or Wp < ks:
        raise ValueError(f"padded image {Hp}x{Wp} smaller than the kernel {ks}x{ks}")
    return np.ascontiguousarray(corr_valid_fast(xp, k))


def corr_valid_adjoint(y, k):
    """Adjoint of :func:`corr_valid` in its first argument ("full" convolution).

    Parameters
    ----------
    y : ndarray, shape (N, O, H, W), float32/float64, C-contiguous
    k : ndarray, shape (O, C, ks, ks), same dtype

    Returns
    -------
    ndarray, shape (N, C, H + ks - 1, W + ks - 1)
    """
    _check_array("y", y, 4)
    O, C, ks = _check_kernel(k)
    _check_array("kernel", k, 4, y.dtype)
    if y.shape[1] != O:
        raise ValueError(f"y has {y.shape[1]} channels but the kernel has {O} outputs")
    return np.ascontiguousarray(corr_valid_adjoint_fast(y, k))


def corr_valid_kernel_grad(y, xp, ks):
    """Gradient of ``<y, corr_valid(xp, k)>`` with respect to ``k``.

    Parameters
    ----------
    y : ndarray, shape (N, O, H, W)
    xp : ndarray, shape (N, C, H + ks - 1, W + ks - 1), same dtype
    ks : int

    Returns
    -------
    ndarray, shape (O, C, ks, ks)
    """
    _check_array("y", y, 4)
    _check_array("xp", xp, 4, y.dtype)
    N, O, H, W = y.shape
    if xp.shape[0] != N or xp.shape[2] != H + ks - 1 or xp.shape[3] != W + ks - 1:
        raise ValueError(f"xp shape {xp.shape} does not match y {y.shape} and ks={ks}")
    return kernel_grad_fast(y, xp, ks)


# ----------------------------------------------------------------------------- composites
def conv_forward(x, k):
    """``K x``: symmetric padding then valid correlation ("same" output size).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32/float64, C-contiguous
    k : ndarray, shape (O, C, ks, ks), same dtype, ks odd

    Returns
    -------
    ndarray, shape (N, O, H, W)
    """
    _check_array("x", x, 4)
    _, _, ks = _check_kernel(k, x.shape[1])
    return corr_valid(pad_symmetric(x, ks // 2), k)


def conv_adjoint(y, k, scale=None):
    """``K^T y``, the exact adjoint of :func:`conv_forward` including the border; with
    ``scale``, ``K^T (scale ⊙ y)``.

    Parameters
    ----------
    y : ndarray, shape (N, O, H, W)
        C-contiguous; with ``scale`` any strided view (e.g. a channel slice of a larger
        array): it is only read, multiplied by ``scale`` while it is padded.
    k : ndarray, shape (O, C, ks, ks), same dtype
    scale : ndarray, shape (N, O, H, W), same dtype, C-contiguous, optional
        Pointwise factor (the network's ``φ'(a) ⊙ g``): the product is formed in the
        adjoint's padding pass, the same values as ``conv_adjoint(scale * y, k)`` bit for bit
        without the product's array.

    Returns
    -------
    ndarray, shape (N, C, H, W)
    """
    O, _, ks = _check_kernel(k)
    if scale is None:
        return pad_symmetric_adjoint(corr_valid_adjoint(y, k), ks // 2)
    _check_array("scale", scale, 4)
    _check_array("kernel", k, 4, scale.dtype)
    if not isinstance(y, np.ndarray) or y.shape != scale.shape or y.dtype != scale.dtype:
        raise ValueError(f"y must be an ndarray of the shape and dtype of scale "
                         f"{scale.shape} {scale.dtype}, got {getattr(y, 'shape', type(y))} "
                         f"{getattr(y, 'dtype', '')}")
    if scale.shape[1] != O:
        raise ValueError(f"y has {scale.shape[1]} channels but the kernel has {O} outputs")
    return pad_symmetric_adjoint(np.ascontiguousarray(corr_valid_adjoint_fast(y, k, scale)),
                                 ks // 2)


def conv_kernel_grad(y, x, ks):
    """Gradient of ``<y, K x>`` with respect to the filter bank of ``K``.

    Parameters
    ----------
    y : ndarray, shape (N, O, H, W)
    x : ndarray, shape (N, C, H, W), same dtype
    ks : int, odd

    Returns
    -------
    ndarray, shape (O, C, ks, ks)
    """
    _check_array("x", x, 4)
    return corr_valid_kernel_grad(y, pad_symmetric(x, ks // 2), ks)
