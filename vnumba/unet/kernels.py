"""Layers of the U-Net baseline (CPU, Numba): convolution with bias and zero padding, its
input-adjoint and parameter gradients, ReLU, 2x2 max-pooling, 2x nearest-neighbour
upsampling, channel concatenation and the output head, each with its backward pass.

Conventions
-----------
Images and feature maps are ``(N, C, H, W)``, C-contiguous, float32 or float64; every array
passed to one call shares one dtype.  Filter banks are ``(O, C, ks, ks)`` (output channel
first, as in :mod:`vnumba.ops.conv`), ``ks`` odd; biases ``(O,)``.

The convolution is a cross-correlation with zero padding of ``r = ks // 2`` pixels ("same"
output size)::

    y[n, o, p, q] = b[o] + sum_{c, i, j} w[o, c, i, j] * x[n, c, p + i - r, q + j - r]

with ``x`` taken as 0 outside the image.  The variational network's convolutions
(:mod:`vnumba.ops.conv`) pad symmetrically; the U-Net of Ronneberger et al. pads with zeros,
so it has its own kernels here.

Every public function checks its arguments and raises ``TypeError`` / ``ValueError``;
:mod:`vnumba.unet.network` calls the unchecked ``_*_impl`` helpers after validating the batch once.
The Numba kernels are compiled without ``fastmath`` so that float64 gradient checks see
IEEE arithmetic.

Notes
-----
*Performance.* All kernels are Numba loops along image rows; tasks (``prange``) are
``sample x block of 4 output channels`` for the convolution and ``block of 4 output channels
x input channel`` for the weight gradient, so that every loaded input row feeds four
accumulator rows.  Inner loops run over slices from index 0: an index such as ``q + sh`` that
LLVM cannot prove non-negative makes Numba emit a wrap-around check that blocks
vectorisation.  The weight gradient is a reduction over all pixels, which does not vectorise
without fastmath reassociation; it keeps one row of partial sums per tap instead (measured
~10 GFLOP/s per core vs ~1.5 for scalar sums).  Computing it instead as ``ks*ks`` BLAS
matrix products over shifted views of the padded input was ~2x faster per core in isolation,
but OpenBLAS's thread pool and Numba's compete for the two cores: whole training iterations
were 1.5-5x slower that way on the shared development machine, so everything stays in Numba.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from vnumba.ops.checks import check_array, check_filter_bank

__all__ = [
    "conv2d", "conv2d_input_adjoint", "conv2d_param_grad",
    "relu", "relu_backward", "maxpool2", "maxpool2_backward",
    "upsample2", "upsample2_adjoint", "concat_channels", "split_channels",
    "output_head", "output_head_backward",
]



# ----------------------------------------------------------------------------- checks
def _check(name, x, ndim, dtype=None, finite=False):
    check_array(name, x, ndim, dtype, finite)


def _check_filters(w, C=None):
    return check_filter_bank(w, C, name="w")


# ----------------------------------------------------------------------------- convolution
@njit(cache=True, parallel=True)
def _conv_same_kernel(x, w, b, relu, y):
    # Each task owns one sample and a block of 4 output channels: every loaded input row
    # feeds 4 accumulator rows, which is what makes the row loop compute-bound.  The zero
    # border is never materialised: taps that fall outside the image are skipped (rows) or
    # cut from the column range (columns).
    N, C, H, W = x.shape
    O = w.shape[0]
    ks = w.shape[2]
    r = ks // 2
    nob = (O + 3) // 4
    for t in prange(N * nob):
        n = t // nob
        o0 = (t % nob) * 4
        nb = min(4, O - o0)
        acc = np.empty((4, W), dtype=y.dtype)
        for p in range(H):
            for k in range(nb):
                bk = b[o0 + k]
                for q in range(W):
                    acc[k, q] = bk
            if nb == 4 and ks == 3 and W >= 2:
                for c in range(C):
                    for i in range(3):
                        pr = p + i - 1
                        if pr < 0 or pr >= H:
                            continue
                        row = x[n, c, pr]
                        a00 = w[o0, c, i, 0]
                        a01 = w[o0, c, i, 1]
                        a02 = w[o0, c, i, 2]
                        a10 = w[o0 + 1, c, i, 0]
                        a11 = w[o0 + 1, c, i, 1]
                        a12 = w[o0 + 1, c, i, 2]
                        a20 = w[o0 + 2, c, i, 0]
                        a21 = w[o0 + 2, c, i, 1]
                        a22 = w[o0 + 2, c, i, 2]
                        a30 = w[o0 + 3, c, i, 0]
                        a31 = w[o0 + 3, c, i, 1]
                        a32 = w[o0 + 3, c, i, 2]
                        x1 = row[0]
                        x2 = row[1]
                        acc[0, 0] += a01 * x1 + a02 * x2
                        acc[1, 0] += a11 * x1 + a12 * x2
                        acc[2, 0] += a21 * x1 + a22 * x2
                        acc[3, 0] += a31 * x1 + a32 * x2
                        for q in range(1, W - 1):
                            x0 = row[q - 1]
                            x1 = row[q]
                            x2 = row[q + 1]
                            acc[0, q] += a00 * x0 + a01 * x1 + a02 * x2
                            acc[1, q] += a10 * x0 + a11 * x1 + a12 * x2
                            acc[2, q] += a20 * x0 + a21 * x1 + a22 * x2
                            acc[3, q] += a30 * x0 + a31 * x1 + a32 * x2
                        x0 = row[W - 2]
                        x1 = row[W - 1]
                        acc[0, W - 1] += a00 * x0 + a01 * x1
                        acc[1, W - 1] += a10 * x0 + a11 * x1
                        acc[2, W - 1] += a20 * x0 + a21 * x1
                        acc[3, W - 1] += a30 * x0 + a31 * x1
            else:
                for k in range(nb):
                    o = o0 + k
                    for c in range(C):
                        for i in range(ks):
                            pr = p + i - r
                            if pr < 0 or pr >= H:
                                continue
                            row = x[n, c, pr]
                            for j in range(ks):
                                wv = w[o, c, i, j]
                                sh = j - r
                                q0 = max(0, -sh)
                                q1 = min(W, W - sh)
                                # Slices with a 0-based loop: an index like q + sh could be
                                # negative as far as LLVM knows, and the wrap-around check
                                # Numba then emits blocks vectorisation.
                                aa = acc[k, q0:q1]
                                rr = row[q0 + sh:q1 + sh]
                                for q in range(q1 - q0):
                                    aa[q] += wv * rr[q]
            for k in range(nb):
                out = y[n, o0 + k, p]
                if relu:
                    for q in range(W):
                        v = acc[k, q]
                        out[q] = v if v > 0.0 else 0.0
                else:
                    for q in range(W):
                        out[q] = acc[k, q]


def _conv2d_impl(x, w, b, relu=False):
    N, C, H, W = x.shape
    y = np.empty((N, w.shape[0], H, W), dtype=x.dtype)
    _conv_same_kernel(x, w, b, bool(relu), y)
    return y


def _adjoint_filters(w):
    # The transpose of a zero-padded "same" correlation is the same correlation with the
    # filters flipped in space and input/output channels swapped (docs/unet.md §2).
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def _conv2d_input_adjoint_impl(dy, w):
    wt = _adjoint_filters(w)
    return _conv2d_impl(dy, wt, np.zeros(wt.shape[0], dtype=dy.dtype), False)


def conv2d(x, w, b=None, relu=False):
    """Convolution with bias and zero "same" padding, optionally followed by ReLU.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32/float64, C-contiguous
    w : ndarray, shape (O, C, ks, ks), same dtype, ks odd
    b : ndarray, shape (O,), same dtype, optional (zeros)
    relu : bool
        Return ``max(y, 0)`` instead of ``y`` (fused: no second pass over the output).

    Returns
    -------
    ndarray, shape (N, O, H, W)
    """
    _check("x", x, 4, finite=True)
    O, _, ks = _check_filters(w, x.shape[1])
    _check("w", w, 4, x.dtype, finite=True)
    if b is None:
        b = np.zeros(O, dtype=x.dtype)
    _check("b", b, 1, x.dtype, finite=True)
    if b.shape != (O,):
        raise ValueError(f"bias has shape {b.shape}, expected ({O},)")
    return _conv2d_impl(x, w, b, relu)


def conv2d_input_adjoint(dy, w):
    """Adjoint of ``x -> conv2d(x, w, 0)``: ``dx = K^T dy`` including the zero border.

    Parameters
    ----------
    dy : ndarray, shape (N, O, H, W), float32/float64, C-contiguous
    w : ndarray, shape (O, C, ks, ks), same dtype

    Returns
    -------
    ndarray, shape (N, C, H, W)
    """
    _check("dy", dy, 4, finite=True)
    O, _, _ = _check_filters(w)
    _check("w", w, 4, dy.dtype, finite=True)
    if dy.shape[1] != O:
        raise ValueError(f"dy has {dy.shape[1]} channels but the filters have {O} outputs")
    return _conv2d_input_adjoint_impl(dy, w)


@njit(cache=True, parallel=True)
def _conv_param_grad_kernel(dy, x, gw, gb):
    # dw[o, c, i, j] = sum_{n,p,q} dy[n,o,p,q] x[n,c,p+i-r,q+j-r] (zero outside the image).
    # A scalar running sum would not vectorise without reassociation, so every tap keeps a
    # row of partial sums over (n, p), one per column q, and the columns are summed once at
    # the end.  Each task owns 4 output channels and one input channel, so every loaded
    # input row feeds 4 accumulator rows; the c == 0 task also sums dy for the bias.
    N, O, H, W = dy.shape
    C = x.shape[1]
    ks = gw.shape[2]
    r = ks // 2
    nt = ks * ks
    nob = (O + 3) // 4
    for t in prange(nob * C):
        o0 = (t // C) * 4
        c = t % C
        nb = min(4, O - o0)
        acc = np.zeros((4 * nt + 4, W), dtype=dy.dtype)
        for n in range(N):
            for p in range(H):
                for i in range(ks):
                    pr = p + i - r
                    if pr < 0 or pr >= H:
                        continue
                    row = x[n, c, pr]
                    for j in range(ks):
                        sh = j - r
                        q0 = max(0, -sh)
                        q1 = min(W, W - sh)
                        L = q1 - q0
                        # Slices and 0-based loops: see _conv_same_kernel.
                        rr = row[q0 + sh:q1 + sh]
                        m = i * ks + j
                        if nb == 4:
                            d0 = dy[n, o0, p, q0:q1]
                            d1 = dy[n, o0 + 1, p, q0:q1]
                            d2 = dy[n, o0 + 2, p, q0:q1]
                            d3 = dy[n, o0 + 3, p, q0:q1]
                            a0 = acc[m, q0:q1]
                            a1 = acc[nt + m, q0:q1]
                            a2 = acc[2 * nt + m, q0:q1]
                            a3 = acc[3 * nt + m, q0:q1]
                            for q in range(L):
                                v = rr[q]
                                a0[q] += d0[q] * v
                                a1[q] += d1[q] * v
                                a2[q] += d2[q] * v
                                a3[q] += d3[q] * v
                        else:
                            for k in range(nb):
                                dd = dy[n, o0 + k, p, q0:q1]
                                aa = acc[k * nt + m, q0:q1]
                                for q in range(L):
                                    aa[q] += dd[q] * rr[q]
                if c == 0:
                    for k in range(nb):
                        dd = dy[n, o0 + k, p]
                        aa = acc[4 * nt + k]
                        for q in range(W):
                            aa[q] += dd[q]
        for k in range(nb):
            for m in range(nt):
                s = 0.0
                a = acc[k * nt + m]
                for q in range(W):
                    s += a[q]
                gw[o0 + k, c, m // ks, m % ks] = s
            if c == 0:
                s = 0.0
                a = acc[4 * nt + k]
                for q in range(W):
                    s += a[q]
                gb[o0 + k] = s


def _conv2d_param_grad_impl(dy, x, ks):
    O = dy.shape[1]
    gw = np.empty((O, x.shape[1], ks, ks), dtype=dy.dtype)
    gb = np.empty(O, dtype=dy.dtype)
    _conv_param_grad_kernel(dy, x, gw, gb)
    return gw, gb


def conv2d_param_grad(dy, x, ks):
    """Gradients of ``<dy, conv2d(x, w, b)>`` with respect to ``w`` and ``b``.

    Parameters
    ----------
    dy : ndarray, shape (N, O, H, W), float32/float64, C-contiguous
    x : ndarray, shape (N, C, H, W), same dtype
    ks : int, odd

    Returns
    -------
    dw : ndarray, shape (O, C, ks, ks)
        ``sum_{n,p,q} dy[n,o,p,q] * x[n,c,p+i-r,q+j-r]``, ``r = ks // 2``, ``x = 0`` outside.
    db : ndarray, shape (O,)
        ``sum_{n,p,q} dy[n,o,p,q]``.
    """
    _check("dy", dy, 4, finite=True)
    _check("x", x, 4, dy.dtype, finite=True)
    ks = int(ks)
    if ks < 1 or ks % 2 == 0:
        raise ValueError(f"ks must be a positive odd int, got {ks}")
    if x.shape[0] != dy.shape[0] or x.shape[2:] != dy.shape[2:]:
        raise ValueError(f"x shape {x.shape} does not match dy shape {dy.shape}")
    return _conv2d_param_grad_impl(dy, x, ks)


# ----------------------------------------------------------------------------- ReLU
@njit(cache=True, parallel=True)
def _relu_kernel(x, out):
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for k in prange(xf.size):
        v = xf[k]
        of[k] = v if v > 0.0 else 0.0


@njit(cache=True, parallel=True)
def _relu_backward_kernel(dy, y, out):
    # y is the ReLU output; y > 0 exactly where the pre-activation is > 0.
    df = dy.reshape(-1)
    yf = y.reshape(-1)
    of = out.reshape(-1)
    for k in prange(df.size):
        of[k] = df[k] if yf[k] > 0.0 else 0.0


def _relu_backward_impl(dy, y):
    out = np.empty_like(dy)
    _relu_backward_kernel(dy, y, out)
    return out


def relu(x):
    """``max(x, 0)`` elementwise.

    Parameters
    ----------
    x : ndarray, (N, C, H, W), float32/float64, C-contiguous

    Returns
    -------
    ndarray, same shape and dtype
    """
    _check("x", x, 4, finite=True)
    out = np.empty_like(x)
    _relu_kernel(x, out)
    return out


def relu_backward(dy, y):
    """Backward pass of ReLU from its output ``y``: ``dy * (y > 0)``.

    Parameters
    ----------
    dy, y : ndarray, (N, C, H, W), same dtype, C-contiguous

    Returns
    -------
    ndarray, same shape and dtype
    """
    _check("dy", dy, 4, finite=True)
    _check("y", y, 4, dy.dtype)
    if y.shape != dy.shape:
        raise ValueError(f"y shape {y.shape} != dy shape {dy.shape}")
    return _relu_backward_impl(dy, y)


# ----------------------------------------------------------------------------- max-pooling
@njit(cache=True, parallel=True)
def _maxpool2_kernel(x, y, idx):
    # idx is the window position of the maximum, a*2+b for x[2p+a, 2q+b]; ties go to the
    # first position in that order (as numpy.argmax).
    N, C, Ho, Wo = y.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for p in range(Ho):
            r0 = x[n, c, 2 * p]
            r1 = x[n, c, 2 * p + 1]
            for q in range(Wo):
                best = r0[2 * q]
                k = 0
                v = r0[2 * q + 1]
                if v > best:
                    best = v
                    k = 1
                v = r1[2 * q]
                if v > best:
                    best = v
                    k = 2
                v = r1[2 * q + 1]
                if v > best:
                    best = v
                    k = 3
                y[n, c, p, q] = best
                idx[n, c, p, q] = k


@njit(cache=True, parallel=True)
def _maxpool2_backward_kernel(dy, idx, dx):
    N, C, Ho, Wo = dy.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for p in range(Ho):
            for a in range(2):
                row = dx[n, c, 2 * p + a]
                for q in range(2 * Wo):
                    row[q] = 0.0
            for q in range(Wo):
                k = idx[n, c, p, q]
                dx[n, c, 2 * p + k // 2, 2 * q + k % 2] = dy[n, c, p, q]


def _maxpool2_impl(x):
    N, C, H, W = x.shape
    y = np.empty((N, C, H // 2, W // 2), dtype=x.dtype)
    idx = np.empty((N, C, H // 2, W // 2), dtype=np.uint8)
    _maxpool2_kernel(x, y, idx)
    return y, idx


def _maxpool2_backward_impl(dy, idx):
    N, C, Ho, Wo = dy.shape
    dx = np.empty((N, C, 2 * Ho, 2 * Wo), dtype=dy.dtype)
    _maxpool2_backward_kernel(dy, idx, dx)
    return dx


def maxpool2(x):
    """2x2 max-pooling with stride 2.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32/float64, C-contiguous, H and W even

    Returns
    -------
    y : ndarray, shape (N, C, H/2, W/2)
    idx : ndarray of uint8, shape (N, C, H/2, W/2)
        Position ``2a + b`` of the maximum ``x[2p+a, 2q+b]`` in its window (first in that
        order on ties), for :func:`maxpool2_backward`.
    """
    _check("x", x, 4, finite=True)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"max-pooling needs even height and width, got {x.shape[2:]}")
    return _maxpool2_impl(x)


def maxpool2_backward(dy, idx):
    """Route ``dy`` to the arg-max positions recorded by :func:`maxpool2`.

    Parameters
    ----------
    dy : ndarray, shape (N, C, Ho, Wo), float32/float64, C-contiguous
    idx : ndarray of uint8, same shape, values 0..3

    Returns
    -------
    ndarray, shape (N, C, 2 Ho, 2 Wo)
    """
    _check("dy", dy, 4, finite=True)
    if not isinstance(idx, np.ndarray) or idx.dtype != np.uint8 or idx.shape != dy.shape:
        raise ValueError(f"idx must be a uint8 array of shape {dy.shape}")
    if not idx.flags.c_contiguous:
        raise ValueError("idx must be C-contiguous")
    if idx.size and idx.max() > 3:
        raise ValueError("idx values must be in 0..3")
    return _maxpool2_backward_impl(dy, idx)


# ----------------------------------------------------------------------------- upsampling
@njit(cache=True, parallel=True)
def _upsample2_kernel(x, y):
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for p in range(H):
            src = x[n, c, p]
            d0 = y[n, c, 2 * p]
            d1 = y[n, c, 2 * p + 1]
            for q in range(W):
                v = src[q]
                d0[2 * q] = v
                d0[2 * q + 1] = v
                d1[2 * q] = v
                d1[2 * q + 1] = v


@njit(cache=True, parallel=True)
def _upsample2_adjoint_kernel(dy, dx):
    N, C, H, W = dx.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for p in range(H):
            s0 = dy[n, c, 2 * p]
            s1 = dy[n, c, 2 * p + 1]
            dst = dx[n, c, p]
            for q in range(W):
                dst[q] = (s0[2 * q] + s0[2 * q + 1]) + (s1[2 * q] + s1[2 * q + 1])


def _upsample2_impl(x):
    N, C, H, W = x.shape
    y = np.empty((N, C, 2 * H, 2 * W), dtype=x.dtype)
    _upsample2_kernel(x, y)
    return y


def _upsample2_adjoint_impl(dy):
    N, C, H, W = dy.shape
    dx = np.empty((N, C, H // 2, W // 2), dtype=dy.dtype)
    _upsample2_adjoint_kernel(dy, dx)
    return dx


def upsample2(x):
    """2x nearest-neighbour upsampling: ``y[2p+a, 2q+b] = x[p, q]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32/float64, C-contiguous

    Returns
    -------
    ndarray, shape (N, C, 2H, 2W)
    """
    _check("x", x, 4, finite=True)
    return _upsample2_impl(x)


def upsample2_adjoint(dy):
    """Adjoint of :func:`upsample2`: the sum over each 2x2 block.

    Parameters
    ----------
    dy : ndarray, shape (N, C, 2H, 2W), float32/float64, C-contiguous

    Returns
    -------
    ndarray, shape (N, C, H, W)
    """
    _check("dy", dy, 4, finite=True)
    if dy.shape[2] % 2 or dy.shape[3] % 2:
        raise ValueError(f"upsample2_adjoint needs even height and width, got {dy.shape[2:]}")
    return _upsample2_adjoint_impl(dy)


# ----------------------------------------------------------------------------- concatenation
@njit(cache=True, parallel=True)
def _concat_kernel(a, b, out):
    N, Ca = a.shape[0], a.shape[1]
    Cb = b.shape[1]
    Ct = Ca + Cb
    for nc in prange(N * Ct):
        n = nc // Ct
        c = nc % Ct
        if c < Ca:
            out[n, c] = a[n, c]
        else:
            out[n, c] = b[n, c - Ca]


@njit(cache=True, parallel=True)
def _split_kernel(d, da, db):
    N, Ca = da.shape[0], da.shape[1]
    Cb = db.shape[1]
    Ct = Ca + Cb
    for nc in prange(N * Ct):
        n = nc // Ct
        c = nc % Ct
        if c < Ca:
            da[n, c] = d[n, c]
        else:
            db[n, c - Ca] = d[n, c]


def _concat_impl(a, b):
    N, Ca, H, W = a.shape
    out = np.empty((N, Ca + b.shape[1], H, W), dtype=a.dtype)
    _concat_kernel(a, b, out)
    return out


def _split_impl(d, ca):
    N, Ct, H, W = d.shape
    da = np.empty((N, ca, H, W), dtype=d.dtype)
    db = np.empty((N, Ct - ca, H, W), dtype=d.dtype)
    _split_kernel(d, da, db)
    return da, db


def concat_channels(a, b):
    """Concatenate two batches along the channel axis: ``[a, b]``.

    Parameters
    ----------
    a : ndarray, shape (N, Ca, H, W), float32/float64, C-contiguous
    b : ndarray, shape (N, Cb, H, W), same dtype

    Returns
    -------
    ndarray, shape (N, Ca + Cb, H, W)
    """
    _check("a", a, 4)
    _check("b", b, 4, a.dtype)
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"cannot concatenate shapes {a.shape} and {b.shape} along channels")
    return _concat_impl(a, b)


def split_channels(d, ca):
    """Adjoint of :func:`concat_channels`: split ``d`` into its first ``ca`` channels and the rest.

    Parameters
    ----------
    d : ndarray, shape (N, Ct, H, W), float32/float64, C-contiguous
    ca : int, 0 < ca < Ct

    Returns
    -------
    da : ndarray, shape (N, ca, H, W)
    db : ndarray, shape (N, Ct - ca, H, W)
    """
    _check("d", d, 4)
    ca = int(ca)
    if not 0 < ca < d.shape[1]:
        raise ValueError(f"split point {ca} must be inside (0, {d.shape[1]})")
    return _split_impl(d, ca)


# ----------------------------------------------------------------------------- output head
@njit(cache=True, parallel=True)
def _head_kernel(z, u0, u, m):
    N, C, H, W = u0.shape
    Cm = m.shape[1]
    for n in prange(N):
        for c in range(C):
            for p in range(H):
                for q in range(W):
                    v = u0[n, c, p, q] + z[n, c, p, q]
                    u[n, c, p, q] = min(max(v, 0.0), 1.0)
        for k in range(Cm):
            for p in range(H):
                for q in range(W):
                    t = z[n, C + k, p, q]
                    # The two branches keep exp's argument <= 0 (no overflow for any logit).
                    if t >= 0.0:
                        m[n, k, p, q] = 1.0 / (1.0 + np.exp(-t))
                    else:
                        e = np.exp(t)
                        m[n, k, p, q] = e / (1.0 + e)


@njit(cache=True, parallel=True)
def _head_backward_kernel(ubar, mbar, z, u0, m, dz):
    N, C, H, W = u0.shape
    Cm = m.shape[1]
    for n in prange(N):
        for c in range(C):
            for p in range(H):
                for q in range(W):
                    v = u0[n, c, p, q] + z[n, c, p, q]
                    # clip is the identity on the open interval only (as vnumba.vn.model).
                    dz[n, c, p, q] = ubar[n, c, p, q] if (v > 0.0 and v < 1.0) else 0.0
        for k in range(Cm):
            for p in range(H):
                for q in range(W):
                    mv = m[n, k, p, q]
                    dz[n, C + k, p, q] = mbar[n, k, p, q] * mv * (1.0 - mv)


def _output_head_impl(z, u0):
    """``u`` and the mask (N, C_m, H, W), C_m = z's channels beyond u0's."""
    N, C, H, W = u0.shape
    u = np.empty_like(u0)
    m = np.empty((N, z.shape[1] - C, H, W), dtype=u0.dtype)
    _head_kernel(z, u0, u, m)
    return u, m


def _output_head_backward_impl(ubar, mbar, z, u0, m):
    """``mbar`` and ``m`` (N, C_m, H, W)."""
    dz = np.empty_like(z)
    _head_backward_kernel(ubar, mbar, z, u0, m, dz)
    return dz


def _check_head(z, u0):
    _check("z", z, 4, finite=True)
    _check("u0", u0, 4, z.dtype, finite=True)
    N, C, H, W = u0.shape
    if z.shape[0] != N or z.shape[1] < C + 1 or z.shape[2:] != (H, W):
        raise ValueError(f"z has shape {z.shape}, expected {(N, C + 1, H, W)} (or C + C_m "
                         f"channels) for u0 {u0.shape}")
    return z.shape[1] - C


def output_head(z, u0):
    """Map the last layer's ``C + C_m`` channels to the reconstruction and the mask.

    Parameters
    ----------
    z : ndarray, shape (N, C + C_m, H, W), float32/float64, C-contiguous
        Channels ``0..C-1``: residual image; channels ``C..C+C_m-1``: mask logits (one per
        class; the article's single mask: ``C_m = 1``).
    u0 : ndarray, shape (N, C, H, W), same dtype
        Network input.

    Returns
    -------
    u : ndarray, shape (N, C, H, W)
        ``clip(u0 + z[:, :C], 0, 1)``.
    m : ndarray, shape (N, H, W) for ``C_m = 1``, else (N, C_m, H, W)
        ``sigmoid(z[:, C:])``.
    """
    cm = _check_head(z, u0)
    u, m = _output_head_impl(z, u0)
    return (u, m[:, 0]) if cm == 1 else (u, m)


def output_head_backward(ubar, mbar, z, u0):
    """Backward pass of :func:`output_head`.

    Parameters
    ----------
    ubar : ndarray, shape (N, C, H, W)
        Gradient with respect to ``u``.
    mbar : ndarray, the shape of :func:`output_head`'s ``m``
        Gradient with respect to ``m``.
    z, u0 : as :func:`output_head`, same dtype

    Returns
    -------
    ndarray, shape (N, C + C_m, H, W)
        ``ubar * [0 < u0 + z_c < 1]`` for the image channels, ``mbar * m (1 - m)`` for the
        logit.
    """
    cm = _check_head(z, u0)
    _check("ubar", ubar, 4, z.dtype, finite=True)
    _check("mbar", mbar, 3 if cm == 1 else 4, z.dtype, finite=True)
    N, C, H, W = u0.shape
    if ubar.shape != u0.shape or mbar.shape != ((N, H, W) if cm == 1 else (N, cm, H, W)):
        raise ValueError(f"ubar {ubar.shape} / mbar {mbar.shape} do not match u0 {u0.shape}")
    _, m = _output_head_impl(z, u0)
    mb = np.ascontiguousarray(mbar[:, None]) if cm == 1 else mbar
    return _output_head_backward_impl(ubar, mb, z, u0, m)
