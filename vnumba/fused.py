"""Fast CPU kernels behind :mod:`vnumba.conv` and :mod:`vnumba.rbf` (private).

Everything here is an ``@njit`` kernel without argument checks; the public, checked entry
points are in :mod:`vnumba.conv` and :mod:`vnumba.rbf`.  NumPy references for each kernel
are in ``tests/naive.py`` (block "fused kernels (perf)"), compared in ``tests/test_fused.py``.

Why the loops look the way they do (this CPU: 2 AVX2 cores, no SVML; ``bench/README.md``):

* **Convolutions** — ``_corr_valid_blocked``: one job is one output row of a block of four
  output channels.  The innermost loop runs along the contiguous image row (LLVM vectorises
  it) and reads two neighbouring taps ``x[q + j]``, ``x[q + j + 1]`` once for all four
  accumulator rows, so every loaded input value feeds eight multiply-adds and every
  accumulator load/store carries two.  The four accumulator rows (4 × W floats) stay in L1.
  Parallel over ``batch × channel-block × row``, so a batch of one keeps both cores busy.
* **Adjoint** — ``C_valid^T y`` ("full" convolution) equals the valid correlation of the
  zero-padded ``y`` with the flipped, channel-transposed filter bank, so the adjoint reuses
  the same gather kernel (no scattered writes, no races).
* **Kernel gradient** — ``_kgrad_blocked``: dot products of shifted rows, four output
  channels × two taps per pass (eight vector accumulators, each loaded value used 2–4 times).
  A row's partial sum is accumulated in the working precision, rows are summed in float64.
* **RBF** — ``_rbf_rows``: the window of ``2r + 1`` centres around the nearest centre
  ``j0`` is evaluated from the centre outwards with the two-term recursion of
  :mod:`vnumba.rbf`; the only transcendental functions, ``exp(-δ² s²/2)`` and
  ``exp(δ s²)`` with ``|δ| <= 1/2``, are Taylor polynomials (exact to double precision on
  that range), so the whole loop vectorises (``math.exp`` is a scalar call here).  Weights
  are zero-padded so the window never needs clipping.
* All scalar constants enter as arrays of the working dtype: a Python float constant would
  silently promote float32 arithmetic to float64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

OB = 4  # output channels per register block of the convolution kernels


# ----------------------------------------------------------------------------- convolution
@njit(cache=True, parallel=True, fastmath=True)
def _corr_valid_blocked(xp, k, out):
    """out[n, o, p, q] = sum_{c,i,j} k[o, c, i, j] xp[n, c, p + i, q + j]; O % 4 == 0.

    ``xp`` may be wider than ``W + ks - 1`` (the extra columns are never read).
    """
    N, C, _, _ = xp.shape
    O, _, ks, _ = k.shape
    H = out.shape[2]
    W = out.shape[3]
    nob = O // OB
    for job in prange(N * nob * H):
        n = job // (nob * H)
        rem = job % (nob * H)
        o = (rem // H) * OB
        p = rem % H
        a0 = out[n, o, p]
        a1 = out[n, o + 1, p]
        a2 = out[n, o + 2, p]
        a3 = out[n, o + 3, p]
        a0[:] = 0
        a1[:] = 0
        a2[:] = 0
        a3[:] = 0
        for c in range(C):
            for i in range(ks):
                row = xp[n, c, p + i]
                j = 0
                while j + 2 <= ks:
                    r0 = row[j:j + W]
                    r1 = row[j + 1:j + 1 + W]
                    k00 = k[o, c, i, j]
                    k01 = k[o, c, i, j + 1]
                    k10 = k[o + 1, c, i, j]
                    k11 = k[o + 1, c, i, j + 1]
                    k20 = k[o + 2, c, i, j]
                    k21 = k[o + 2, c, i, j + 1]
                    k30 = k[o + 3, c, i, j]
                    k31 = k[o + 3, c, i, j + 1]
                    for q in range(W):
                        x0 = r0[q]
                        x1 = r1[q]
                        a0[q] += k00 * x0 + k01 * x1
                        a1[q] += k10 * x0 + k11 * x1
                        a2[q] += k20 * x0 + k21 * x1
                        a3[q] += k30 * x0 + k31 * x1
                    j += 2
                if j < ks:  # odd kernel width: one tap left
                    r0 = row[j:j + W]
                    k00 = k[o, c, i, j]
                    k10 = k[o + 1, c, i, j]
                    k20 = k[o + 2, c, i, j]
                    k30 = k[o + 3, c, i, j]
                    for q in range(W):
                        x0 = r0[q]
                        a0[q] += k00 * x0
                        a1[q] += k10 * x0
                        a2[q] += k20 * x0
                        a3[q] += k30 * x0


def corr_valid_fast(xp, k):
    """Valid correlation through the blocked kernel (output channels padded to a multiple
    of four with zero filters; the result is a view without them)."""
    N, C, Hp, Wp = xp.shape
    O, _, ks, _ = k.shape
    Op = -(-O // OB) * OB
    if Op != O:
        kk = np.zeros((Op, C, ks, ks), dtype=k.dtype)
        kk[:O] = k
    else:
        kk = np.ascontiguousarray(k)
    out = np.empty((N, Op, Hp - ks + 1, Wp - ks + 1), dtype=xp.dtype)
    _corr_valid_blocked(xp, kk, out)
    return out if Op == O else out[:, :O]


@njit(cache=True, parallel=True)
def _zero_pad(y, r, out):
    N, O, H, W = y.shape
    for no in prange(N * O):
        n = no // O
        o = no % O
        out[n, o] = 0
        for p in range(H):
            out[n, o, r + p, r:r + W] = y[n, o, p]


def corr_valid_adjoint_fast(y, k):
    """``C_valid^T y`` = valid correlation of ``y`` zero-padded by ``ks - 1`` with the flipped,
    channel-transposed filter bank."""
    N, O, H, W = y.shape
    _, C, ks, _ = k.shape
    kt = np.ascontiguousarray(k[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    yp = np.empty((N, O, H + 2 * (ks - 1), W + 2 * (ks - 1)), dtype=y.dtype)
    _zero_pad(y, ks - 1, yp)
    return corr_valid_fast(yp, kt)


# ----------------------------------------------------------------------------- kernel gradient
@njit(cache=True, parallel=True, fastmath=True)
def _kgrad_blocked(y, xp, out):
    """out[o, c, i, j] = sum_{n,p,q} y[n, o, p, q] xp[n, c, p + i, q + j]; O % 4 == 0.

    ``out`` is float64: every row's dot product is summed in the working precision (W terms,
    vectorised) and the rows in float64, so long sums over the batch do not lose digits.
    """
    N, O, H, W = y.shape
    C = xp.shape[1]
    ks = out.shape[2]
    nob = O // OB
    for job in prange(nob * C * ks):
        o = (job // (C * ks)) * OB
        c = (job // ks) % C
        i = job % ks
        for t in range(OB):
            for j in range(ks):
                out[o + t, c, i, j] = 0.0
        for n in range(N):
            for p in range(H):
                y0 = y[n, o, p]
                y1 = y[n, o + 1, p]
                y2 = y[n, o + 2, p]
                y3 = y[n, o + 3, p]
                row = xp[n, c, p + i]
                j = 0
                while j < ks:
                    r0 = row[j:j + W]
                    r1 = row[j + 1:j + 1 + W]  # one column past the tap range when j = ks - 1
                    s00 = y0[0] * 0
                    s01 = s00
                    s10 = s00
                    s11 = s00
                    s20 = s00
                    s21 = s00
                    s30 = s00
                    s31 = s00
                    for q in range(W):
                        x0 = r0[q]
                        x1 = r1[q]
                        s00 += y0[q] * x0
                        s01 += y0[q] * x1
                        s10 += y1[q] * x0
                        s11 += y1[q] * x1
                        s20 += y2[q] * x0
                        s21 += y2[q] * x1
                        s30 += y3[q] * x0
                        s31 += y3[q] * x1
                    out[o, c, i, j] += s00
                    out[o + 1, c, i, j] += s10
                    out[o + 2, c, i, j] += s20
                    out[o + 3, c, i, j] += s30
                    if j + 1 < ks:
                        out[o, c, i, j + 1] += s01
                        out[o + 1, c, i, j + 1] += s11
                        out[o + 2, c, i, j + 1] += s21
                        out[o + 3, c, i, j + 1] += s31
                    j += 2


def kernel_grad_fast(y, xp, ks):
    """Kernel gradient through the blocked kernel.  ``xp`` needs one spare column on the
    right (``W + ks``) so the two-tap loop never reads past a row; the caller pads that way."""
    N, O, H, W = y.shape
    Op = -(-O // OB) * OB
    if Op != O:
        yy = np.zeros((N, Op, H, W), dtype=y.dtype)
        yy[:, :O] = y
    else:
        yy = y
    out = np.empty((Op, xp.shape[1], ks, ks), dtype=np.float64)
    _kgrad_blocked(yy, xp, out)
    return out[:O].astype(y.dtype)


# ----------------------------------------------------------------------------- RBF
# Taylor coefficients 1/k! of exp, k = 0..14: on |y| <= 1/2 the remainder is < 1e-16
# relative, i.e. double rounding level.
_NT = 15
_EXP_TAYLOR = np.array([1.0 / math.factorial(k) for k in range(_NT)])


def rbf_constants(grid, dtype):
    """Constants of the vectorised RBF kernels as an array of the working dtype.

    ``[mu0, 1/h, s, 1/sigma, 1/sigma², s², exp(-s²), exp(-s²/2), t_lo, t_hi, 2^-m]`` then
    the Taylor coefficients, where ``s = h/sigma`` and ``m`` squarings bring the exponent
    ``δ s²`` (``|δ| <= 1/2``) into ``[-1/2, 1/2]``.
    """
    s = grid.h / grid.sigma
    s2 = s * s
    m = max(0, math.ceil(math.log2(max(s2, 1e-300))))  # |δ s²| / 2^m <= 1/2
    r = grid.radius
    head = [grid.mu0, 1.0 / grid.h, s, 1.0 / grid.sigma, 1.0 / grid.sigma ** 2, s2,
            math.exp(-s2), math.exp(-0.5 * s2), -r - 1.0, grid.n_w + r, 2.0 ** -m]
    return np.array(head + list(_EXP_TAYLOR), dtype=dtype), m


def rbf_padded_weights(w, radius):
    """Weights with ``2r + 1`` zeros on each side: ``wp[c, P + j] = w[c, j]``, P = 2r + 1,
    so every window index ``j0 + k`` (|k| <= r, j0 in [-r-1, n_w+r]) is in range."""
    P = 2 * radius + 1
    wp = np.zeros((w.shape[0], w.shape[1] + 2 * P), dtype=w.dtype)
    wp[:, P:P + w.shape[1]] = w
    return wp


@njit(cache=True, fastmath=True, inline="always")
def _exp_taylor(y, cst):
    # Horner on the _NT coefficients stored from cst[11]
    e = cst[11 + _NT - 1]
    for k in range(_NT - 2, -1, -1):
        e = e * y + cst[11 + k]
    return e


@njit(cache=True, fastmath=True)
def _rbf_setup_row(x, cst, squarings, radius, jb, gc, dc, bb):
    """Per pixel: window centre index (into padded weights), centre Gaussian, centre
    distance d = δ s and B = exp(δ s²); zero Gaussian for values out of reach."""
    W = x.shape[0]
    mu0 = cst[0]
    inv_h = cst[1]
    s = cst[2]
    s2 = cst[5]
    tlo = cst[8]
    thi = cst[9]
    scl = cst[10]
    zero = cst[0] * 0
    half = cst[11 + 2]  # 1/2! = 0.5 in the working dtype
    P = 2 * radius + 1
    for q in range(W):
        t = (x[q] - mu0) * inv_h
        inside = (t >= tlo) & (t <= thi)
        if not inside:
            t = zero
        j0 = np.floor(t + half)
        dl = t - j0
        jb[q] = np.int64(j0) + P
        d = dl * s
        dc[q] = d
        a = _exp_taylor(-half * d * d * scl, cst)
        gc[q] = a if inside else zero
        bb[q] = _exp_taylor(dl * s2 * scl, cst)
    for _ in range(squarings):
        for q in range(W):
            gc[q] = gc[q] * gc[q]
            bb[q] = bb[q] * bb[q]


@njit(cache=True, fastmath=True)
def _rbf_eval_row(wp, radius, order, cst, jb, gc, dc, bb, gu, eu, gd, ed, v0, v1, v2):
    """phi, phi', phi'' on a row from the setup buffers (centre outwards)."""
    W = jb.shape[0]
    s = cst[2]
    inv_s = cst[3]
    inv_s2 = cst[4]
    shift = cst[6]
    ch = cst[7]
    one = cst[11]
    for q in range(W):
        g = gc[q]
        wv = wp[jb[q]] * g
        d = dc[q]
        v0[q] = wv
        if order >= 1:  # v1, v2 may alias v0 when not requested
            v1[q] = -wv * d
        if order >= 2:
            v2[q] = wv * (d * d - one)
        gu[q] = g
        gd[q] = g
        # G_{j+1} = G_j exp(s d_j - s²/2), d_{j0} = δ s, so the first ratio is B e^{-s²/2}.
        eu[q] = bb[q] * ch
        ed[q] = ch / bb[q]
    ks_ = s * 0  # k s, accumulated in the working dtype (int * float32 would be float64)
    for k in range(1, radius + 1):
        ks_ += s
        for q in range(W):
            g1 = gu[q] * eu[q]
            eu[q] *= shift
            gu[q] = g1
            g2 = gd[q] * ed[q]
            ed[q] *= shift
            gd[q] = g2
            w1 = wp[jb[q] + k] * g1
            w2 = wp[jb[q] - k] * g2
            d1 = dc[q] - ks_
            d2 = dc[q] + ks_
            v0[q] += w1 + w2
            if order >= 1:
                v1[q] -= w1 * d1 + w2 * d2
            if order >= 2:
                v2[q] += w1 * (d1 * d1 - one) + w2 * (d2 * d2 - one)
    if order >= 1:
        for q in range(W):
            v1[q] *= inv_s
    if order >= 2:
        for q in range(W):
            v2[q] *= inv_s2


@njit(cache=True, parallel=True, fastmath=True)
def _rbf_apply_rows(x, wp, cst, squarings, radius, order, v0, v1, v2):
    N, F, H, W = x.shape
    for job in prange(N * F * H):
        n = job // (F * H)
        c = (job // H) % F
        p = job % H
        jb = np.empty(W, np.int64)
        buf = np.empty((7, W), x.dtype)
        _rbf_setup_row(x[n, c, p], cst, squarings, radius, jb, buf[0], buf[1], buf[2])
        if order == 0:
            _rbf_eval_row(wp[c], radius, 0, cst, jb, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5],
                          buf[6], v0[n, c, p], v0[n, c, p], v0[n, c, p])
        elif order == 1:
            _rbf_eval_row(wp[c], radius, 1, cst, jb, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5],
                          buf[6], v0[n, c, p], v1[n, c, p], v1[n, c, p])
        else:
            _rbf_eval_row(wp[c], radius, 2, cst, jb, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5],
                          buf[6], v0[n, c, p], v1[n, c, p], v2[n, c, p])


@njit(cache=True, parallel=True, fastmath=True)
def _rbf_wgrad_rows(x, c0, c1, use_c1, cst, squarings, radius, out):
    """out[c, P + j] = sum_{n,p,q} c0 G_j(x) + c1 G_j'(x) (padded index; float64 sums).

    Parallel over channels (each thread owns its row of ``out``); per image row the
    Gaussians are computed vectorised, then scattered into the channel's accumulator.
    """
    N, F, H, W = x.shape
    s = cst[2]
    inv_s = cst[3]
    shift = cst[6]
    ch = cst[7]
    for c in prange(F):
        jb = np.empty(W, np.int64)
        buf = np.empty((8, W), x.dtype)
        gc = buf[0]
        dc = buf[1]
        bb = buf[2]
        gu = buf[3]
        eu = buf[4]
        gd = buf[5]
        ed = buf[6]
        kk = buf[7]
        acc = out[c]
        acc[:] = 0.0
        for n in range(N):
            for p in range(H):
                _rbf_setup_row(x[n, c, p], cst, squarings, radius, jb, gc, dc, bb)
                a0 = c0[n, c, p]
                a1 = c1[n, c, p]
                for q in range(W):
                    kk[q] = a1[q] * inv_s if use_c1 else a1[q] * 0
                    g = gc[q]
                    gu[q] = g
                    gd[q] = g
                    eu[q] = bb[q] * ch
                    ed[q] = ch / bb[q]
                # G_j' = -G_j d_j / sigma:  contribution G_j (c0 - c1 d_j / sigma)
                for q in range(W):
                    acc[jb[q]] += gc[q] * (a0[q] - kk[q] * dc[q])
                ks_ = s * 0  # k s in the working dtype
                for k in range(1, radius + 1):
                    ks_ += s
                    for q in range(W):
                        g1 = gu[q] * eu[q]
                        eu[q] *= shift
                        gu[q] = g1
                        g2 = gd[q] * ed[q]
                        ed[q] *= shift
                        gd[q] = g2
                    for q in range(W):
                        acc[jb[q] + k] += gu[q] * (a0[q] - kk[q] * (dc[q] - ks_))
                        acc[jb[q] - k] += gd[q] * (a0[q] - kk[q] * (dc[q] + ks_))
