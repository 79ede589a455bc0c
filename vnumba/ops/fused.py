"""Fast CPU kernels behind :mod:`vnumba.ops.conv` and :mod:`vnumba.ops.rbf` (private).

Everything here is an ``@njit`` kernel without argument checks; the public, checked entry
points are in :mod:`vnumba.ops.conv` and :mod:`vnumba.ops.rbf`.  NumPy references for each kernel
are in ``tests/naive.py`` (block "fused kernels (perf)"), compared in ``tests/test_fused.py``.

Why the loops look the way they do (``bench/README.md`` has the measurements per host).  The
vector width is the host's (:mod:`vnumba.ops.simd`: 512 bits on AVX-512, 256 on AVX2; L lanes),
and no result depends on it: every output value is computed by the same sequence of
operations at every width (``tests/test_simd_width.py``).

* **Convolutions** — ``_corr_valid_tiled``: register tiles of three output channels ×
  ``CONV_VECS`` SIMD vectors of one output row (4 with AVX2's 16 registers: twelve
  accumulators; 8 with AVX-512's 32: twenty-four), written with the explicit vector type of
  :mod:`vnumba.ops.simd`, so the accumulators stay in registers over all ``C·ks²`` taps (one
  flat loop over precomputed input offsets).  Each tap costs one vector load per vector of
  pixels, three broadcasts and three fused multiply-adds per load: the loop runs at the FMA
  units' rate instead of being bound by accumulator loads and stores.  Parallel over
  ``batch × row × channel-block``, so a batch of one keeps both cores busy.
* **Activation in the epilogue** — ``_corr_rbf_tiled``: the convolution's jobs (four output
  rows of three channels) take each finished row through the RBF (``_rbf_setup_row``,
  ``_rbf_eval_row``) while it is in L1, so ``K x`` is written to memory only when the
  backward pass keeps it; bit for bit the values of the two kernels in turn.  Measured as
  fast as the separate pair on the Zen 5 host (bench/README.md, issue 25), with a third less
  memory in the forward pass.  ``_zero_pad_mul`` forms the adjoint's input product
  ``φ'(a) ⊙ g`` in its padding pass.
* **Adjoint** — ``C_valid^T y`` ("full" convolution) equals the valid correlation of the
  zero-padded ``y`` with the flipped, channel-transposed filter bank, so the adjoint reuses
  the same gather kernel (no scattered writes, no races).
* **Kernel gradient** — ``_kgrad_tiled``: the same register tiling transposed, three output
  channels × ``KG_TAPS`` taps, each vector accumulator a dot product of a ``y`` row with a
  shifted input row, in *canonical* 256-bit vectors at every width (the lanes group the
  float32 sum; a width-dependent grouping would change its rounding).  Partial sums of four
  rows stay in the working precision, then go to float64 (fixed row chunks, summed in order:
  the result does not depend on the number of threads).  A row's last partial vector is the
  overlapping full one with the counted lanes of ``y`` zeroed.
* **RBF** — ``_rbf_setup_row`` (explicit vectors) finds the nearest centre ``j0`` and the two
  exponentials ``A = exp(-δ² s²/2)``, ``B = exp(δ s²)`` (``|δ| <= 1/2``: Taylor polynomials,
  exact to double rounding; no ``exp`` call).  The window sum is then a polynomial in ``B``
  and ``1/B`` whose coefficients (weights × ``exp(-k² s²/2)``) are tabulated per channel and
  centre (:func:`rbf_tables`); ``_rbf_eval_row`` evaluates it by Horner's rule.  On AVX-512
  a vector of pixels at a time, the coefficients read from a 64-cell table in registers by
  permutes (:func:`rbf_lookup_tables`, ``simd.vlookup64``); elsewhere for four (order 0),
  two (order 1) or one pixel at a time with scalar table reads, so that independent
  multiply-add chains overlap (gather instructions measured slower than the scalar reads:
  1.8× on the AVX2 host, 1.5× on the AVX-512 one).  Both paths do the same fused
  multiply-adds per pixel.
* No fast-math flags: multiply-adds that should be fused are explicit fmas, everything else
  rounds as written (see ``_STRICT`` below for why).
* All scalar constants enter as arrays of the working dtype: a Python float constant would
  silently promote float32 arithmetic to float64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from vnumba.ops.simd import (
    PERMUTE_LOOKUP,
    VECTOR_BITS,
    jit,
    lanes,
    load,
    sfloor,
    sfma,
    vadd,
    vbcast,
    vcells,
    vdiv,
    vfloor,
    vfma,
    vload,
    vlookup64,
    vmul,
    vneg,
    vsplat,
    vstore,
    vstore_index,
    vsub,
    vsum,
    vwhere_between,
    wlanes,
    wload,
    wload_head,
    wsplat,
    wtailmask,
)

# _STRICT — no fast-math flags anywhere in these kernels: every multiply-add that should be fused is an
# explicit fma (simd.vfma / simd.sfma), every other operation rounds as written.  With
# contraction left to LLVM ("contract"), the same kernel gave results that differed in the
# last bit between a process that compiled it and one that loaded it from Numba's cache
# (phi'' and so the training gradient; found by tests/test_simd_width.py), and between
# code paths that LLVM optimised differently.  Strict IEEE code has one correct result.


# ----------------------------------------------------------------------------- convolution
# Register tiling (bench/README.md): one tile is 3 output channels × 4 vectors of adjacent
# pixels of one output row (3 × 32 float32 values), accumulated in twelve vector registers
# over all C·ks² taps.  Per tap that is four input loads, three weight broadcasts and twelve
# fused multiply-adds: 15 of the 16 AVX2 registers, and the loop is bound by the FMA units,
# not by loads and stores as a row loop with accumulators in memory is.  The taps are one
# flat loop over precomputed input offsets (channel, kernel row, kernel column), so the
# short kernel rows (five taps) cost no loop overhead of their own.
#
# Every output value is computed by the same sequence of fused multiply-adds — starting from
# zero, in tap order — whichever of the code paths (4-, 2- or 1-vector tile, scalar) handles
# it and wherever it falls in a row.  So the result does not depend on the
# image width or on the position of a pixel (tiled prediction equals untiled bit for bit),
# and a row's last tile may overlap the previous one: it rewrites those pixels with the same
# values.


@jit(inline="always")
def _tile3x8(x, base, offs, w, L, r0, r1, r2, q):
    """:func:`_tile3x4` for eight vectors of pixels (AVX-512: 24 accumulators + 3 weights +
    1 input of the 32 vector registers; twice the multiply-adds per weight broadcast and per
    loop step).  r_t[q : q + 8L] = sum_m w[3m + t] x[base + offs[m] : ... + 8L]."""
    z = vsplat(w[0] - w[0])
    a00 = z; a01 = z; a02 = z; a03 = z; a04 = z; a05 = z; a06 = z; a07 = z  # noqa: E702
    a10 = z; a11 = z; a12 = z; a13 = z; a14 = z; a15 = z; a16 = z; a17 = z  # noqa: E702
    a20 = z; a21 = z; a22 = z; a23 = z; a24 = z; a25 = z; a26 = z; a27 = z  # noqa: E702
    for m in range(offs.shape[0]):
        s = base + offs[m]
        w0 = vbcast(w, 3 * m)
        w1 = vbcast(w, 3 * m + 1)
        w2 = vbcast(w, 3 * m + 2)
        v = vload(x, s)
        a00 = vfma(w0, v, a00); a10 = vfma(w1, v, a10); a20 = vfma(w2, v, a20)  # noqa: E702
        v = vload(x, s + L)
        a01 = vfma(w0, v, a01); a11 = vfma(w1, v, a11); a21 = vfma(w2, v, a21)  # noqa: E702
        v = vload(x, s + 2 * L)
        a02 = vfma(w0, v, a02); a12 = vfma(w1, v, a12); a22 = vfma(w2, v, a22)  # noqa: E702
        v = vload(x, s + 3 * L)
        a03 = vfma(w0, v, a03); a13 = vfma(w1, v, a13); a23 = vfma(w2, v, a23)  # noqa: E702
        v = vload(x, s + 4 * L)
        a04 = vfma(w0, v, a04); a14 = vfma(w1, v, a14); a24 = vfma(w2, v, a24)  # noqa: E702
        v = vload(x, s + 5 * L)
        a05 = vfma(w0, v, a05); a15 = vfma(w1, v, a15); a25 = vfma(w2, v, a25)  # noqa: E702
        v = vload(x, s + 6 * L)
        a06 = vfma(w0, v, a06); a16 = vfma(w1, v, a16); a26 = vfma(w2, v, a26)  # noqa: E702
        v = vload(x, s + 7 * L)
        a07 = vfma(w0, v, a07); a17 = vfma(w1, v, a17); a27 = vfma(w2, v, a27)  # noqa: E702
    vstore(r0, q, a00); vstore(r0, q + L, a01); vstore(r0, q + 2 * L, a02); vstore(r0, q + 3 * L, a03)  # noqa: E702,E501
    vstore(r0, q + 4 * L, a04); vstore(r0, q + 5 * L, a05); vstore(r0, q + 6 * L, a06); vstore(r0, q + 7 * L, a07)  # noqa: E702,E501
    vstore(r1, q, a10); vstore(r1, q + L, a11); vstore(r1, q + 2 * L, a12); vstore(r1, q + 3 * L, a13)  # noqa: E702,E501
    vstore(r1, q + 4 * L, a14); vstore(r1, q + 5 * L, a15); vstore(r1, q + 6 * L, a16); vstore(r1, q + 7 * L, a17)  # noqa: E702,E501
    vstore(r2, q, a20); vstore(r2, q + L, a21); vstore(r2, q + 2 * L, a22); vstore(r2, q + 3 * L, a23)  # noqa: E702,E501
    vstore(r2, q + 4 * L, a24); vstore(r2, q + 5 * L, a25); vstore(r2, q + 6 * L, a26); vstore(r2, q + 7 * L, a27)  # noqa: E702,E501


@jit(inline="always")
def _tile3x4(x, base, offs, w, L, r0, r1, r2, q):
    """r_t[q : q + 4L] = sum_m w[3m + t] x[base + offs[m] : ... + 4L], t = 0, 1, 2."""
    z = vsplat(w[0] - w[0])
    a00 = z; a01 = z; a02 = z; a03 = z  # noqa: E702
    a10 = z; a11 = z; a12 = z; a13 = z  # noqa: E702
    a20 = z; a21 = z; a22 = z; a23 = z  # noqa: E702
    for m in range(offs.shape[0]):
        s = base + offs[m]
        w0 = vbcast(w, 3 * m)
        w1 = vbcast(w, 3 * m + 1)
        w2 = vbcast(w, 3 * m + 2)
        # one input vector at a time, used by the three output channels: 12 + 3 + 1 registers
        v = vload(x, s)
        a00 = vfma(w0, v, a00); a10 = vfma(w1, v, a10); a20 = vfma(w2, v, a20)  # noqa: E702
        v = vload(x, s + L)
        a01 = vfma(w0, v, a01); a11 = vfma(w1, v, a11); a21 = vfma(w2, v, a21)  # noqa: E702
        v = vload(x, s + 2 * L)
        a02 = vfma(w0, v, a02); a12 = vfma(w1, v, a12); a22 = vfma(w2, v, a22)  # noqa: E702
        v = vload(x, s + 3 * L)
        a03 = vfma(w0, v, a03); a13 = vfma(w1, v, a13); a23 = vfma(w2, v, a23)  # noqa: E702
    vstore(r0, q, a00); vstore(r0, q + L, a01); vstore(r0, q + 2 * L, a02); vstore(r0, q + 3 * L, a03)  # noqa: E702,E501
    vstore(r1, q, a10); vstore(r1, q + L, a11); vstore(r1, q + 2 * L, a12); vstore(r1, q + 3 * L, a13)  # noqa: E702,E501
    vstore(r2, q, a20); vstore(r2, q + L, a21); vstore(r2, q + 2 * L, a22); vstore(r2, q + 3 * L, a23)  # noqa: E702,E501


@jit(inline="always")
def _tile3x2(x, base, offs, w, L, r0, r1, r2, q):
    """Two vectors of pixels: the end of a row that has at most half a tile left."""
    z = vsplat(w[0] - w[0])
    a00 = z; a01 = z  # noqa: E702
    a10 = z; a11 = z  # noqa: E702
    a20 = z; a21 = z  # noqa: E702
    for m in range(offs.shape[0]):
        s = base + offs[m]
        w0 = vbcast(w, 3 * m)
        w1 = vbcast(w, 3 * m + 1)
        w2 = vbcast(w, 3 * m + 2)
        v = vload(x, s)
        a00 = vfma(w0, v, a00); a10 = vfma(w1, v, a10); a20 = vfma(w2, v, a20)  # noqa: E702
        v = vload(x, s + L)
        a01 = vfma(w0, v, a01); a11 = vfma(w1, v, a11); a21 = vfma(w2, v, a21)  # noqa: E702
    vstore(r0, q, a00); vstore(r0, q + L, a01)  # noqa: E702
    vstore(r1, q, a10); vstore(r1, q + L, a11)  # noqa: E702
    vstore(r2, q, a20); vstore(r2, q + L, a21)  # noqa: E702


@jit(inline="always")
def _tile3x1(x, base, offs, w, r0, r1, r2, q):
    """One vector of pixels (rows narrower than a 4-vector tile)."""
    z = vsplat(w[0] - w[0])
    a0 = z
    a1 = z
    a2 = z
    for m in range(offs.shape[0]):
        v = vload(x, base + offs[m])
        a0 = vfma(vbcast(w, 3 * m), v, a0)
        a1 = vfma(vbcast(w, 3 * m + 1), v, a1)
        a2 = vfma(vbcast(w, 3 * m + 2), v, a2)
    vstore(r0, q, a0)
    vstore(r1, q, a1)
    vstore(r2, q, a2)


@jit(inline="always")
def _pixel3(x, base, offs, w, r0, r1, r2, q):
    """One pixel (rows narrower than a vector); the same fused multiply-adds as a lane."""
    a0 = w[0] - w[0]
    a1 = a0
    a2 = a0
    for m in range(offs.shape[0]):
        v = x[base + offs[m]]
        a0 = sfma(w[3 * m], v, a0)
        a1 = sfma(w[3 * m + 1], v, a1)
        a2 = sfma(w[3 * m + 2], v, a2)
    r0[q] = a0
    r1[q] = a1
    r2[q] = a2


@jit(inline="always")
def _conv_row(x, base, offs, w, L, r0, r1, r2, W, vecs):
    """One output row of three channels (``r0, r1, r2``) of :func:`_corr_valid_tiled`: its
    register tiles, then the rest of the row as the smallest tile that covers it."""
    T = 4 * L
    if vecs == 8 and W >= 2 * T:
        q = 0
        while q + 2 * T <= W:
            _tile3x8(x, base + q, offs, w, L, r0, r1, r2, q)
            q += 2 * T
        # the rest, overlapping the pixels already written: the smallest tile that covers it
        if q < W and W - q <= 2 * L:
            _tile3x2(x, base + W - 2 * L, offs, w, L, r0, r1, r2, W - 2 * L)
        elif q < W and W - q <= T:
            _tile3x4(x, base + W - T, offs, w, L, r0, r1, r2, W - T)
        elif q < W:
            _tile3x8(x, base + W - 2 * T, offs, w, L, r0, r1, r2, W - 2 * T)
    elif W >= T:
        q = 0
        while q + T <= W:
            _tile3x4(x, base + q, offs, w, L, r0, r1, r2, q)
            q += T
        # the rest of the row: half a tile or less as two vectors, more as a full
        # tile, both overlapping the pixels already written (300 = 9·32 + 12: the
        # two-vector end costs half of a full tile)
        if q < W and W - q <= 2 * L:
            _tile3x2(x, base + W - 2 * L, offs, w, L, r0, r1, r2, W - 2 * L)
        elif q < W:
            _tile3x4(x, base + W - T, offs, w, L, r0, r1, r2, W - T)
    elif W >= L:
        q = 0
        while q + L <= W:
            _tile3x1(x, base + q, offs, w, r0, r1, r2, q)
            q += L
        if q < W:
            _tile3x1(x, base + W - L, offs, w, r0, r1, r2, W - L)
    else:
        for q in range(W):
            _pixel3(x, base + q, offs, w, r0, r1, r2, q)


@jit(parallel=True)
def _corr_valid_tiled(xf, Wp, offs, kt, orow, vecs, out):
    """out[n, orow[3b + t], p, q] = sum_m kt[b, 3m + t] xf[n, p Wp + q + offs[m]].

    ``xf`` (N, C·Hp·Wp): the padded input, each image flattened; ``offs`` (C·ks²,) intp:
    flat offset of tap m = (c, i, j), ``c Hp Wp + i Wp + j``; ``kt`` (nb, 3 C ks²): the
    filters of block b, tap-major (:func:`pack_filters`); ``orow`` (3 nb,): output channel
    of each filter row (a padding row repeats the block's previous channel and filter, so it
    rewrites that channel with the same values: no scratch rows, no races).  ``vecs`` (8 or
    4): vectors per tile in a row (:data:`CONV_VECS`).
    """
    N = xf.shape[0]
    nb = kt.shape[0]
    H = out.shape[2]
    W = out.shape[3]
    L = lanes(xf)
    # channel block innermost: consecutive jobs (one thread's share) reuse the same input
    # rows from L1/L2
    for job in prange(N * H * nb):
        n = job // (H * nb)
        p = (job // nb) % H
        b = job % nb
        _conv_row(xf[n], p * Wp, offs, kt[b], L, out[n, orow[3 * b], p],
                  out[n, orow[3 * b + 1], p], out[n, orow[3 * b + 2], p], W, vecs)


_CONV_RBF_ROWS = 4  # output rows per job of _corr_rbf_tiled (its buffers are allocated per job)


@jit(parallel=True)
def _corr_rbf_tiled(xf, Wp, offs, kt, orow, vecs, conv, keep_conv, tab, ptab, cst, squarings,
                    radius, order, v0, off, v1, v2):
    """:func:`_corr_valid_tiled` with the RBF of :func:`_rbf_apply_rows` as its epilogue.

    Each job computes one output row of three channels, then evaluates the activation of
    each of them while the row is still in L1: phi into channel ``c + off`` of ``v0``, phi'
    and phi'' (``order`` >= 1, 2) into channel ``c`` of ``v1``, ``v2``.  The convolution's
    output goes to ``conv`` (N, O, H, W) only with ``keep_conv``; otherwise to a row buffer
    of the job, and ``conv`` is a placeholder of any shape whose dims 2 and 3 give H and W.
    The same functions on the same float values as the two kernels one after the other, so
    the results are bit for bit theirs (tests/test_fused.py).
    """
    N = xf.shape[0]
    nb = kt.shape[0]
    H = conv.shape[2]
    W = conv.shape[3]
    L = lanes(xf)
    R = _CONV_RBF_ROWS
    nr = (H + R - 1) // R
    for job in prange(N * nr * nb):
        n = job // (nr * nb)
        pr = (job // nb) % nr
        b = job % nb
        c0, c1, c2 = orow[3 * b], orow[3 * b + 1], orow[3 * b + 2]
        rows = np.empty((3, W), xf.dtype)
        jb = np.empty(W, np.int32)
        buf = np.empty((7, W), xf.dtype)
        for p in range(pr * R, min(H, pr * R + R)):
            if keep_conv:
                r0, r1, r2 = conv[n, c0, p], conv[n, c1, p], conv[n, c2, p]
            else:
                r0, r1, r2 = rows[0], rows[1], rows[2]
            _conv_row(xf[n], p * Wp, offs, kt[b], L, r0, r1, r2, W, vecs)
            _rbf_rows3(r0, r1, r2, orow, b, n, p, jb, buf, tab, ptab, cst, squarings, radius,
                       order, v0, off, v1, v2)


@jit(inline="always")
def _rbf_rows3(r0, r1, r2, orow, b, n, p, jb, buf, tab, ptab, cst, squarings, radius, order,
               v0, off, v1, v2):
    """The activation of the three rows of block ``b`` (a repeated padding channel once)."""
    for t in range(3):
        c = orow[3 * b + t]
        if t > 0 and c == orow[3 * b + t - 1]:
            continue  # a padding row of the last block: its channel is done
        row = r0 if t == 0 else (r1 if t == 1 else r2)
        _rbf_setup_row(row, cst, squarings, radius, jb, buf[0], buf[1], buf[2], buf[3])
        o0 = v0[n, c + off, p]
        if order == 0:
            _rbf_eval_row(tab[c], ptab[c], radius, 0, cst, jb, buf[0], buf[1], buf[2],
                          buf[3], buf[4], buf[5], buf[6], o0, o0, o0)
        elif order == 1:
            _rbf_eval_row(tab[c], ptab[c], radius, 1, cst, jb, buf[0], buf[1], buf[2],
                          buf[3], buf[4], buf[5], buf[6], o0, v1[n, c, p], v1[n, c, p])
        else:
            _rbf_eval_row(tab[c], ptab[c], radius, 2, cst, jb, buf[0], buf[1], buf[2],
                          buf[3], buf[4], buf[5], buf[6], o0, v1[n, c, p], v2[n, c, p])


OB = 3  # output channels per register tile of _corr_valid_tiled
# vectors of one row per tile: 3 × 8 accumulators where there are 32 vector registers
# (AVX-512), 3 × 4 where there are 16 (AVX2)
CONV_VECS = 8 if VECTOR_BITS >= 512 else 4


def block_rows(O):
    """Output channel of each row of the blocks of three (intp, length a multiple of three):
    ``0 .. O - 1``, then the last channel repeated to fill the last block."""
    nb = -(-O // OB)
    return np.minimum(np.arange(nb * OB), O - 1).astype(np.intp)


def pack_filters(k):
    """Filter bank (O, C, ks, ks) → ``(kt, orow)`` of :func:`_corr_valid_tiled`.

    Blocks of three output channels, each stored tap-major: ``kt[b, 3m + t] = k[3b + t, c,
    i, j]`` with ``m = (c ks + i) ks + j``.  When O is not a multiple of three the last
    block is filled up with copies of its last real channel (``orow`` names it twice).
    """
    O, C, ks, _ = k.shape
    orow = block_rows(O)
    nb = orow.shape[0] // OB
    kt = k[orow].reshape(nb, OB, C * ks * ks).transpose(0, 2, 1)
    return np.ascontiguousarray(kt).reshape(nb, OB * C * ks * ks), orow


def tap_offsets(C, Hp, Wp, ks):
    """Flat offsets ``c Hp Wp + i Wp + j`` of the taps (c, i, j) in tap order, intp."""
    c, i, j = np.meshgrid(np.arange(C), np.arange(ks), np.arange(ks), indexing="ij")
    return (c * (Hp * Wp) + i * Wp + j).ravel().astype(np.intp)


def corr_valid_fast(xp, k):
    """Valid correlation through the register-tiled kernel; ``xp`` C-contiguous, same dtype
    as ``k``.  Returns a C-contiguous (N, O, Hp - ks + 1, Wp - ks + 1) array."""
    N, C, Hp, Wp = xp.shape
    O, _, ks, _ = k.shape
    kt, orow = pack_filters(k)
    out = np.empty((N, O, Hp - ks + 1, Wp - ks + 1), dtype=xp.dtype)
    _corr_valid_tiled(xp.reshape(N, C * Hp * Wp), Wp, tap_offsets(C, Hp, Wp, ks), kt, orow, CONV_VECS, out)
    return out


@jit(inline="always")
def _zero_frame(out, n, o, r, H, W):
    """Zero the border of width ``r`` around the H x W interior of plane ``out[n, o]`` (each
    value written once: zeroing the whole plane first wrote the interior twice)."""
    out[n, o, :r] = 0
    out[n, o, r + H:] = 0
    for p in range(H):
        out[n, o, r + p, :r] = 0
        out[n, o, r + p, r + W:] = 0


@jit(parallel=True)
def _zero_pad(y, r, out):
    N, O, H, W = y.shape
    for no in prange(N * O):
        n = no // O
        o = no % O
        _zero_frame(out, n, o, r, H, W)
        for p in range(H):
            out[n, o, r + p, r:r + W] = y[n, o, p]


@jit(parallel=True)
def _zero_pad_mul(y, s, r, out):
    """:func:`_zero_pad` of the product ``y * s`` (one rounding, as NumPy's), so that the
    product is never a separate array; ``y`` may be a strided view."""
    N, O, H, W = s.shape
    for no in prange(N * O):
        n = no // O
        o = no % O
        _zero_frame(out, n, o, r, H, W)
        for p in range(H):
            yr = y[n, o, p]
            sr = s[n, o, p]
            dst = out[n, o, r + p]
            for q in range(W):
                dst[r + q] = yr[q] * sr[q]


def corr_valid_adjoint_fast(y, k, scale=None):
    """``C_valid^T y`` = valid correlation of ``y`` zero-padded by ``ks - 1`` with the flipped,
    channel-transposed filter bank; with ``scale``, of ``y * scale`` (the product formed
    while padding)."""
    N, O, H, W = y.shape
    _, C, ks, _ = k.shape
    kt = np.ascontiguousarray(k[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    yp = np.empty((N, O, H + 2 * (ks - 1), W + 2 * (ks - 1)), dtype=y.dtype)
    if scale is None:
        _zero_pad(y, ks - 1, yp)
    else:
        _zero_pad_mul(y, scale, ks - 1, yp)
    return corr_valid_fast(yp, kt)


# ----------------------------------------------------------------------------- kernel gradient
# The same register tiling as the convolution, transposed: a tile is 3 output channels × G
# taps, 3G vector accumulators of products y[o] · x[tap] summed along the row, over a few rows
# before the lanes are summed into float64.  Per vector of pixels: three y loads, G x loads,
# 3G fused multiply-adds.
#
# These sums are the one place where the vector width could change a result: a lane holds
# the partial sum of every L-th pixel, so L decides how the float32 sum is grouped.  They are
# therefore written with the canonical 256-bit vectors (simd.wload & co.) whatever the host:
# pixel q of a row always goes to lane q mod 8 (float32), the lanes are summed by the same
# pairwise tree, and the result is bit for bit the same at every width; only the tile (G)
# follows the register file.  Why 256 and not 512 bits: on the 2-core Zen 4 (AVX-512) host,
# 512-bit canonical vectors with the 3 × 8 tile measured no faster than 256-bit ones with the
# same tile (21-23 ms both for K's gradient at 300², interleaved runs; nearly every 512-bit
# load of a shifted row splits across two cache lines), and on an AVX2 target (Numba set to
# haswell on the same host) they were 15-35 % slower than 256-bit ones, which are exactly the
# kernel of the AVX2 hosts before the width followed the host: no regression there.

_KG_ROWS = 4  # image rows accumulated in registers before the lanes go to float64
_KG_CHUNKS = 16  # fixed row chunks, each with its own float64 sums: results do not depend
# on the number of threads
# taps per tile: 3 × 8 accumulators with AVX-512's 32 vector registers (its 256-bit forms
# reach all 32), 3 × 4 with AVX2's 16 (also on 128-bit targets, where a canonical vector is
# two registers: correct, and such hosts are not what the kernels are tuned for)
KG_TAPS = 8 if VECTOR_BITS >= 512 else 4


@jit(inline="always")
def _kgrad_tile3x4(y, xf, Wp, offs, o0, o1, o2, m, rs, re, acc, a0):
    """acc[a0 + t, m + u] += sum over the rows r = n H + p in [rs, re) and pixels q of
    y[n, o_t, p, q] xf[n, p Wp + q + offs[m + u]], t < 3, u < 4 (canonical float32 lanes
    summed per tile, added in float64)."""
    H = y.shape[2]
    W = y.shape[3]
    L = wlanes(xf)
    Wv = W - W % L
    zero = xf[0, 0] - xf[0, 0]
    z = wsplat(zero)
    tail = wtailmask(zero, W - Wv)
    c00 = z; c01 = z; c02 = z; c03 = z  # noqa: E702
    c10 = z; c11 = z; c12 = z; c13 = z  # noqa: E702
    c20 = z; c21 = z; c22 = z; c23 = z  # noqa: E702
    for r in range(rs, re):
        n = r // H
        p = r - n * H
        x = xf[n]
        y0 = y[n, o0, p]
        y1 = y[n, o1, p]
        y2 = y[n, o2, p]
        b = p * Wp
        s0 = b + offs[m]
        s1 = b + offs[m + 1]
        s2 = b + offs[m + 2]
        s3 = b + offs[m + 3]
        for q in range(0, Wv, L):
            e0 = wload(y0, q)
            e1 = wload(y1, q)
            e2 = wload(y2, q)
            v = wload(x, s0 + q)
            c00 = vfma(e0, v, c00); c10 = vfma(e1, v, c10); c20 = vfma(e2, v, c20)  # noqa: E702
            v = wload(x, s1 + q)
            c01 = vfma(e0, v, c01); c11 = vfma(e1, v, c11); c21 = vfma(e2, v, c21)  # noqa: E702
            v = wload(x, s2 + q)
            c02 = vfma(e0, v, c02); c12 = vfma(e1, v, c12); c22 = vfma(e2, v, c22)  # noqa: E702
            v = wload(x, s3 + q)
            c03 = vfma(e0, v, c03); c13 = vfma(e1, v, c13); c23 = vfma(e2, v, c23)  # noqa: E702
        if Wv < W:
            if W >= L:
                # the row's last full vector, overlapping the counted pixels: their lanes
                # of y are zeroed (a NaN or inf of x there has made the sum NaN or inf already)
                qt = W - L
                e0 = vmul(wload(y0, qt), tail)
                e1 = vmul(wload(y1, qt), tail)
                e2 = vmul(wload(y2, qt), tail)
                t0 = wload(x, s0 + qt)
                t1 = wload(x, s1 + qt)
                t2 = wload(x, s2 + qt)
                t3 = wload(x, s3 + qt)
            else:  # a row narrower than a vector: zero-filled lanes, nothing past it read
                e0 = wload_head(y0, 0, W)
                e1 = wload_head(y1, 0, W)
                e2 = wload_head(y2, 0, W)
                t0 = wload_head(x, s0, W)
                t1 = wload_head(x, s1, W)
                t2 = wload_head(x, s2, W)
                t3 = wload_head(x, s3, W)
            c00 = vfma(e0, t0, c00); c10 = vfma(e1, t0, c10); c20 = vfma(e2, t0, c20)  # noqa: E702
            c01 = vfma(e0, t1, c01); c11 = vfma(e1, t1, c11); c21 = vfma(e2, t1, c21)  # noqa: E702
            c02 = vfma(e0, t2, c02); c12 = vfma(e1, t2, c12); c22 = vfma(e2, t2, c22)  # noqa: E702
            c03 = vfma(e0, t3, c03); c13 = vfma(e1, t3, c13); c23 = vfma(e2, t3, c23)  # noqa: E702
    acc[a0, m] += vsum(c00); acc[a0, m + 1] += vsum(c01)  # noqa: E702
    acc[a0, m + 2] += vsum(c02); acc[a0, m + 3] += vsum(c03)  # noqa: E702
    acc[a0 + 1, m] += vsum(c10); acc[a0 + 1, m + 1] += vsum(c11)  # noqa: E702
    acc[a0 + 1, m + 2] += vsum(c12); acc[a0 + 1, m + 3] += vsum(c13)  # noqa: E702
    acc[a0 + 2, m] += vsum(c20); acc[a0 + 2, m + 1] += vsum(c21)  # noqa: E702
    acc[a0 + 2, m + 2] += vsum(c22); acc[a0 + 2, m + 3] += vsum(c23)  # noqa: E702


@jit(inline="always")
def _kgrad_tile3x8(y, xf, Wp, offs, o0, o1, o2, m, rs, re, acc, a0):
    """:func:`_kgrad_tile3x4` for eight taps ``m .. m + 7`` (the tile of AVX-512 hosts: 24
    accumulators of the 32 registers, three y loads per 24 multiply-adds); the same
    canonical lanes, so the same sums bit for bit."""
    H = y.shape[2]
    W = y.shape[3]
    L = wlanes(xf)
    Wv = W - W % L
    zero = xf[0, 0] - xf[0, 0]
    z = wsplat(zero)
    tail = wtailmask(zero, W - Wv)
    c00 = z; c01 = z; c02 = z; c03 = z; c04 = z; c05 = z; c06 = z; c07 = z  # noqa: E702
    c10 = z; c11 = z; c12 = z; c13 = z; c14 = z; c15 = z; c16 = z; c17 = z  # noqa: E702
    c20 = z; c21 = z; c22 = z; c23 = z; c24 = z; c25 = z; c26 = z; c27 = z  # noqa: E702
    for r in range(rs, re):
        n = r // H
        p = r - n * H
        x = xf[n]
        y0 = y[n, o0, p]
        y1 = y[n, o1, p]
        y2 = y[n, o2, p]
        b = p * Wp
        s0 = b + offs[m]
        s1 = b + offs[m + 1]
        s2 = b + offs[m + 2]
        s3 = b + offs[m + 3]
        s4 = b + offs[m + 4]
        s5 = b + offs[m + 5]
        s6 = b + offs[m + 6]
        s7 = b + offs[m + 7]
        for q in range(0, Wv, L):
            e0 = wload(y0, q)
            e1 = wload(y1, q)
            e2 = wload(y2, q)
            v = wload(x, s0 + q)
            c00 = vfma(e0, v, c00); c10 = vfma(e1, v, c10); c20 = vfma(e2, v, c20)  # noqa: E702
            v = wload(x, s1 + q)
            c01 = vfma(e0, v, c01); c11 = vfma(e1, v, c11); c21 = vfma(e2, v, c21)  # noqa: E702
            v = wload(x, s2 + q)
            c02 = vfma(e0, v, c02); c12 = vfma(e1, v, c12); c22 = vfma(e2, v, c22)  # noqa: E702
            v = wload(x, s3 + q)
            c03 = vfma(e0, v, c03); c13 = vfma(e1, v, c13); c23 = vfma(e2, v, c23)  # noqa: E702
            v = wload(x, s4 + q)
            c04 = vfma(e0, v, c04); c14 = vfma(e1, v, c14); c24 = vfma(e2, v, c24)  # noqa: E702
            v = wload(x, s5 + q)
            c05 = vfma(e0, v, c05); c15 = vfma(e1, v, c15); c25 = vfma(e2, v, c25)  # noqa: E702
            v = wload(x, s6 + q)
            c06 = vfma(e0, v, c06); c16 = vfma(e1, v, c16); c26 = vfma(e2, v, c26)  # noqa: E702
            v = wload(x, s7 + q)
            c07 = vfma(e0, v, c07); c17 = vfma(e1, v, c17); c27 = vfma(e2, v, c27)  # noqa: E702
        if Wv < W:
            if W >= L:
                qt = W - L
                e0 = vmul(wload(y0, qt), tail)
                e1 = vmul(wload(y1, qt), tail)
                e2 = vmul(wload(y2, qt), tail)
                t0 = wload(x, s0 + qt)
                t1 = wload(x, s1 + qt)
                t2 = wload(x, s2 + qt)
                t3 = wload(x, s3 + qt)
                t4 = wload(x, s4 + qt)
                t5 = wload(x, s5 + qt)
                t6 = wload(x, s6 + qt)
                t7 = wload(x, s7 + qt)
            else:
                e0 = wload_head(y0, 0, W)
                e1 = wload_head(y1, 0, W)
                e2 = wload_head(y2, 0, W)
                t0 = wload_head(x, s0, W)
                t1 = wload_head(x, s1, W)
                t2 = wload_head(x, s2, W)
                t3 = wload_head(x, s3, W)
                t4 = wload_head(x, s4, W)
                t5 = wload_head(x, s5, W)
                t6 = wload_head(x, s6, W)
                t7 = wload_head(x, s7, W)
            c00 = vfma(e0, t0, c00); c10 = vfma(e1, t0, c10); c20 = vfma(e2, t0, c20)  # noqa: E702,E501
            c01 = vfma(e0, t1, c01); c11 = vfma(e1, t1, c11); c21 = vfma(e2, t1, c21)  # noqa: E702,E501
            c02 = vfma(e0, t2, c02); c12 = vfma(e1, t2, c12); c22 = vfma(e2, t2, c22)  # noqa: E702,E501
            c03 = vfma(e0, t3, c03); c13 = vfma(e1, t3, c13); c23 = vfma(e2, t3, c23)  # noqa: E702,E501
            c04 = vfma(e0, t4, c04); c14 = vfma(e1, t4, c14); c24 = vfma(e2, t4, c24)  # noqa: E702,E501
            c05 = vfma(e0, t5, c05); c15 = vfma(e1, t5, c15); c25 = vfma(e2, t5, c25)  # noqa: E702,E501
            c06 = vfma(e0, t6, c06); c16 = vfma(e1, t6, c16); c26 = vfma(e2, t6, c26)  # noqa: E702,E501
            c07 = vfma(e0, t7, c07); c17 = vfma(e1, t7, c17); c27 = vfma(e2, t7, c27)  # noqa: E702,E501
    acc[a0, m] += vsum(c00); acc[a0, m + 1] += vsum(c01)  # noqa: E702
    acc[a0, m + 2] += vsum(c02); acc[a0, m + 3] += vsum(c03)  # noqa: E702
    acc[a0, m + 4] += vsum(c04); acc[a0, m + 5] += vsum(c05)  # noqa: E702
    acc[a0, m + 6] += vsum(c06); acc[a0, m + 7] += vsum(c07)  # noqa: E702
    acc[a0 + 1, m] += vsum(c10); acc[a0 + 1, m + 1] += vsum(c11)  # noqa: E702
    acc[a0 + 1, m + 2] += vsum(c12); acc[a0 + 1, m + 3] += vsum(c13)  # noqa: E702
    acc[a0 + 1, m + 4] += vsum(c14); acc[a0 + 1, m + 5] += vsum(c15)  # noqa: E702
    acc[a0 + 1, m + 6] += vsum(c16); acc[a0 + 1, m + 7] += vsum(c17)  # noqa: E702
    acc[a0 + 2, m] += vsum(c20); acc[a0 + 2, m + 1] += vsum(c21)  # noqa: E702
    acc[a0 + 2, m + 2] += vsum(c22); acc[a0 + 2, m + 3] += vsum(c23)  # noqa: E702
    acc[a0 + 2, m + 4] += vsum(c24); acc[a0 + 2, m + 5] += vsum(c25)  # noqa: E702
    acc[a0 + 2, m + 6] += vsum(c26); acc[a0 + 2, m + 7] += vsum(c27)  # noqa: E702


@jit(parallel=True)
def _kgrad_tiled(y, xf, Wp, offs, orow, chunk, acc):
    """acc[ch, 3b + t, m] = sum over the rows of chunk ch (``chunk`` rows of the N·H) of
    sum_q y[n, orow[3b + t], p, q] xf[n, p Wp + q + offs[m]]; ``offs`` padded to a multiple
    of :data:`KG_TAPS` taps (the tile; the padding columns are discarded by the caller)."""
    N, _, H, _ = y.shape
    nb = orow.shape[0] // 3
    G = KG_TAPS  # a compile-time constant: only the host's tile is compiled in
    ng = offs.shape[0] // G
    R = N * H
    for ch in prange(acc.shape[0]):
        a = acc[ch]
        a[:, :] = 0.0
        r1 = min(R, (ch + 1) * chunk)
        for rs in range(ch * chunk, r1, _KG_ROWS):
            re = min(r1, rs + _KG_ROWS)
            # (tap groups outer measured 1-4 % slower in an interleaved comparison)
            for b in range(nb):
                for g in range(ng):
                    if G == 8:
                        _kgrad_tile3x8(y, xf, Wp, offs, orow[3 * b], orow[3 * b + 1], orow[3 * b + 2],
                                       8 * g, rs, re, a, 3 * b)
                    else:
                        _kgrad_tile3x4(y, xf, Wp, offs, orow[3 * b], orow[3 * b + 1], orow[3 * b + 2],
                                       4 * g, rs, re, a, 3 * b)


def kernel_grad_fast(y, xp, ks):
    """Kernel gradient ``out[o, c, i, j] = sum_{n,p,q} y[n,o,p,q] xp[n,c,p+i,q+j]`` through
    the register-tiled kernel; ``y`` (N, O, H, W) and ``xp`` (N, C, H + ks - 1, W + ks - 1)
    C-contiguous, one dtype.  Returns (O, C, ks, ks) in that dtype (summed in float64)."""
    N, O, H, W = y.shape
    _, C, Hp, Wp = xp.shape
    offs = tap_offsets(C, Hp, Wp, ks)
    M = offs.shape[0]
    G = KG_TAPS
    offs4 = np.empty(-(-M // G) * G, dtype=np.intp)
    offs4[:M] = offs
    offs4[M:] = offs[-1]
    orow = block_rows(O)
    nch = min(_KG_CHUNKS, N * H)
    chunk = -(-(N * H) // nch)
    nch = -(-(N * H) // chunk)
    acc = np.empty((nch, orow.shape[0], offs4.shape[0]), dtype=np.float64)
    _kgrad_tiled(y, xp.reshape(N, C * Hp * Wp), Wp, offs4, orow, chunk, acc)
    out = acc.sum(axis=0)[:O, :M]
    return out.reshape(O, C, ks, ks).astype(y.dtype)


# ----------------------------------------------------------------------------- RBF
# Taylor coefficients 1/k! of exp, k = 0..14: on |y| <= 1/2 the remainder after 15 terms is
# < 1e-16 relative, double rounding level; float32 needs 9 (remainder 0.5^9/9! < 6e-9, a
# tenth of its rounding unit), which is a third of the RBF setup time saved.
_NT = 15
_NT_FLOAT32 = 9
_EXP_TAYLOR = np.array([1.0 / math.factorial(k) for k in range(_NT)])


@intrinsic
def _taylor_terms(typingctx, y):
    """Number of Taylor terms for exp in the dtype of ``y`` (a compile-time constant, so
    the Horner loop is unrolled and the row loop around it vectorised)."""
    n = _NT_FLOAT32 if y == types.float32 else _NT

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(y), codegen


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


@jit(inline="always")
def _exp_taylor(y, cst):
    # Horner on the first _taylor_terms(y) coefficients stored from cst[11]
    nt = _taylor_terms(y)
    e = cst[11 + nt - 1]
    for k in range(nt - 2, -1, -1):
        e = sfma(e, y, cst[11 + k])
    return e


@jit(inline="always")
def _exp_taylor_v(y, cst):
    """``_exp_taylor`` on a vector: the same fused multiply-adds lane by lane."""
    nt = _taylor_terms(cst[0])
    e = vsplat(cst[11 + nt - 1])
    for k in range(nt - 2, -1, -1):
        e = vfma(e, y, vsplat(cst[11 + k]))
    return e


@jit(inline="always")
def _rbf_setup_vec(x, q, cst, squarings, P, jb, gc, dc, bb, bi):
    """:func:`_rbf_setup_row` for the pixels ``q .. q + lanes - 1``."""
    zs = cst[0] - cst[0]  # zero of the working dtype (cst[0] * 0 would be float64)
    zero = vsplat(zs)
    half = vsplat(cst[11 + 2])  # 1/2! = 0.5 in the working dtype
    t0 = vmul(vsub(vload(x, q), vsplat(cst[0])), vsplat(cst[1]))
    t = vwhere_between(t0, cst[8], cst[9], t0, zero)  # out of reach or NaN: centre 0, A = 0
    f = vfloor(vadd(t, half))
    dl = vsub(t, f)
    vstore_index(jb, q, f, P)
    d = vmul(dl, vsplat(cst[2]))
    vstore(dc, q, d)
    a = _exp_taylor_v(vmul(vmul(vmul(vsub(zero, half), d), d), vsplat(cst[10])), cst)
    b = _exp_taylor_v(vmul(vmul(dl, vsplat(cst[5])), vsplat(cst[10])), cst)
    for _ in range(squarings):
        a = vmul(a, a)
        b = vmul(b, b)
    vstore(gc, q, vwhere_between(t0, cst[8], cst[9], a, zero))
    vstore(bb, q, b)
    vstore(bi, q, vdiv(vsplat(cst[11]), b))


@jit(inline="always")
def _rbf_setup_pixel(x, q, cst, squarings, P, jb, gc, dc, bb, bi):
    """:func:`_rbf_setup_vec` for one pixel, with the same operations."""
    zero = cst[0] - cst[0]
    half = cst[11 + 2]
    t0 = (x[q] - cst[0]) * cst[1]
    inside = (t0 >= cst[8]) & (t0 <= cst[9])
    t = t0 if inside else zero
    f = sfloor(t + half)
    dl = t - f
    jb[q] = np.int32(f) + P
    d = dl * cst[2]
    dc[q] = d
    a = _exp_taylor((((zero - half) * d) * d) * cst[10], cst)
    b = _exp_taylor((dl * cst[5]) * cst[10], cst)
    for _ in range(squarings):
        a = a * a
        b = b * b
    gc[q] = a if inside else zero
    bb[q] = b
    bi[q] = cst[11] / b


@jit()
def _rbf_setup_row(x, cst, squarings, radius, jb, gc, dc, bb, bi):
    """Per pixel: padded index ``jb`` of the nearest centre, ``A = exp(-δ² s²/2)`` (zero for
    values out of reach or NaN), ``d = δ s``, ``B = exp(δ s²)`` and ``1/B``.

    Written with explicit vectors (the loop vectoriser's version took 1.75× as long in one
    comparison, bench/README.md); a row's
    last vector overlaps the previous one, rows narrower than a vector go pixel by pixel
    with the same operations, so a value does not depend on where it falls in a row.
    """
    W = x.shape[0]
    L = lanes(x)
    P = np.int32(2 * radius + 1)
    if W >= L:
        for q in range(0, W - L + 1, L):
            _rbf_setup_vec(x, q, cst, squarings, P, jb, gc, dc, bb, bi)
        if W % L:
            _rbf_setup_vec(x, W - L, cst, squarings, P, jb, gc, dc, bb, bi)
    else:
        for q in range(W):
            _rbf_setup_pixel(x, q, cst, squarings, P, jb, gc, dc, bb, bi)


def rbf_tables(w, grid, dtype):
    """Per-channel Horner coefficient tables of :func:`_rbf_eval_row`.

    For a value whose nearest centre has padded index ``jb`` (``j0 = jb - P``), with
    ``a_k = w[j0 + k] exp(-k² s²/2)`` (zero outside the grid), the Gaussians of the window
    are ``G_{j0+k} = A B^k exp(-k² s²/2)``, ``A = exp(-δ² s²/2)``, ``B = exp(δ s²)``, so

        S_0 = sum_{k=-r}^{r} a_k B^k = P(B) + N(1/B),
        P(B) = sum_{k=0}^{r} a_k B^k,   N(y) = sum_{k=1}^{r} a_{-k} y^k,

    two polynomials of degree ``r`` evaluated by Horner's rule; their derivatives (carried
    along in the same pass) give ``S_1 = sum k a_k B^k = B P'(B) - y N'(y)`` and
    ``S_2 = sum k² a_k B^k = B P' + B² P'' + y N' + y² N''`` (``y = 1/B``).
    ``tab[c, jb, i] = (a_{r-i}, a_{-(r-i)})``, step ``i`` of the two chains (the last ``N``
    coefficient is 0: N has no constant term).

    Returns
    -------
    ndarray, shape (F, n_w + 2P, r + 1, 2), ``dtype``; built in float64.
    """
    r = grid.radius
    P = 2 * r + 1
    s2 = (grid.h / grid.sigma) ** 2
    F, n_w = w.shape
    cells = n_w + 2 * P
    k = np.arange(-r, r + 1)
    ck = np.exp(-0.5 * k * k * s2)
    # weights padded by P + r on each side: wq[c, jb + k + r] = w[c, jb + k - P]
    wq = np.zeros((F, cells + 2 * r))
    wq[:, P + r:P + r + n_w] = w
    idx = np.arange(cells)[:, None] + (k + r)[None, :]
    a = wq[:, idx] * ck  # (F, cells, 2r + 1): a[c, jb, k + r]
    tab = np.zeros((F, cells, r + 1, 2))
    i = np.arange(r + 1)
    tab[:, :, :, 0] = a[:, :, 2 * r - i]      # k = r - i     (r .. 0)
    tab[:, :, :r, 1] = a[:, :, i[:r]]         # k = -(r - i)  (-r .. -1)
    return np.ascontiguousarray(tab, dtype=dtype)


# The Horner helpers read the channel's table flattened (``tab[k + 2 i + e]``, ``k = jb ·
# 2(r + 1)``, e = 0 for P, 1 for N) through simd.load: with Numba's signed-index wrap-around
# every table read cost a compare and a select, a third of the evaluation time.  The chains
# use explicit fused multiply-adds (sfma), so a pixel's value does not depend on which
# interleaving slot computes it.


@jit(inline="always")
def _horner_s0x4(tab, k0, k1, k2, k3, b0, b1, b2, b3, i0, i1, i2, i3, radius, zero):
    """S_0 of four pixels: eight independent Horner chains, so the multiply-adds overlap."""
    p0 = zero
    p1 = zero
    p2 = zero
    p3 = zero
    n0 = zero
    n1 = zero
    n2 = zero
    n3 = zero
    for i in range(radius + 1):
        e = 2 * i
        p0 = sfma(p0, b0, load(tab, k0 + e))
        n0 = sfma(n0, i0, load(tab, k0 + e + 1))
        p1 = sfma(p1, b1, load(tab, k1 + e))
        n1 = sfma(n1, i1, load(tab, k1 + e + 1))
        p2 = sfma(p2, b2, load(tab, k2 + e))
        n2 = sfma(n2, i2, load(tab, k2 + e + 1))
        p3 = sfma(p3, b3, load(tab, k3 + e))
        n3 = sfma(n3, i3, load(tab, k3 + e + 1))
    return p0 + n0, p1 + n1, p2 + n2, p3 + n3


@jit(inline="always")
def _horner_s01x2(tab, k0, k1, b0, b1, i0, i1, radius, zero):
    """S_0 and S_1 of two pixels: Horner with the first derivative carried along."""
    p0 = zero
    q0 = zero
    n0 = zero
    m0 = zero
    p1 = zero
    q1 = zero
    n1 = zero
    m1 = zero
    for i in range(radius + 1):
        e = 2 * i
        q0 = sfma(q0, b0, p0)
        p0 = sfma(p0, b0, load(tab, k0 + e))
        m0 = sfma(m0, i0, n0)
        n0 = sfma(n0, i0, load(tab, k0 + e + 1))
        q1 = sfma(q1, b1, p1)
        p1 = sfma(p1, b1, load(tab, k1 + e))
        m1 = sfma(m1, i1, n1)
        n1 = sfma(n1, i1, load(tab, k1 + e + 1))
    # S_1 = B P' - y N' as one explicit fused multiply-add (not left to contraction), so the
    # in-register look-up path computes it the same way
    return p0 + n0, sfma(b0, q0, -(i0 * m0)), p1 + n1, sfma(b1, q1, -(i1 * m1))


@jit(inline="always")
def _horner_s012(tab, k, b, bi, radius, zero):
    """S_0, S_1, S_2 of one pixel: Horner with first and second derivatives (six chains)."""
    p = zero
    p1 = zero
    p2 = zero
    n = zero
    n1 = zero
    n2 = zero
    for i in range(radius + 1):
        e = 2 * i
        p2 = sfma(p2, b, p1)
        p1 = sfma(p1, b, p)
        p = sfma(p, b, load(tab, k + e))
        n2 = sfma(n2, bi, n1)
        n1 = sfma(n1, bi, n)
        n = sfma(n, bi, load(tab, k + e + 1))
    bp = b * p1
    yn = bi * n1
    e = b * b * p2 + bi * bi * n2  # (B² P'' + y² N'') / 2
    return p + n, bp - yn, bp + yn + e + e


# In-register look-ups (AVX-512 hosts, simd.vlookup64): the Horner coefficients of one chain
# step for all cells of a channel are 64 consecutive values, so a vector of pixels reads its
# coefficients with permutes instead of one scalar load per pixel.  Each lane runs exactly
# the fused multiply-adds of the scalar helpers below, so a value's bits do not depend on
# which path computed it (tests/test_simd_width.py compares the two).
LOOKUP_CELLS = 64


def rbf_lookup_tables(tab, radius):
    """The Horner tables of :func:`rbf_tables`, (F, cells, r + 1, 2), rearranged for
    :func:`vlookup64`: ``out[c, (2 i + e) 64 + u] = tab[c, u + r, i, e]`` (the reachable
    cells ``jb = r .. n_w + 3 r + 1`` shifted to 0), C-contiguous.  ``None`` where the
    look-up is not available (:data:`vnumba.ops.simd.PERMUTE_LOOKUP`) or more than 64 cells
    are reachable (``n_w + 2 r + 2 > 64``)."""
    F, cells, R, _ = tab.shape
    used = cells - 2 * radius  # n_w + 2r + 2 reachable cells (jb = r .. n_w + 3r + 1)
    if not PERMUTE_LOOKUP or used > LOOKUP_CELLS:
        return None
    out = np.zeros((F, R, 2, LOOKUP_CELLS), dtype=tab.dtype)
    out[:, :, :, :used] = tab[:, radius:radius + used].transpose(0, 2, 3, 1)
    return out.reshape(F, -1)


@jit(inline="always")
def _lookup_s0(ptab, idx, b, y, radius, zero):
    """S_0 of a vector of pixels: :func:`_horner_s0x4`'s chains, lane by lane."""
    p = vsplat(zero)
    n = p
    for i in range(radius + 1):
        p = vfma(p, b, vlookup64(ptab, 128 * i, idx))
        n = vfma(n, y, vlookup64(ptab, 128 * i + 64, idx))
    return vadd(p, n)


@jit(inline="always")
def _lookup_s01(ptab, idx, b, y, radius, zero):
    """S_0, S_1 of a vector of pixels: :func:`_horner_s01x2`'s chains, lane by lane."""
    p = vsplat(zero)
    q = p
    n = p
    m = p
    for i in range(radius + 1):
        q = vfma(q, b, p)
        p = vfma(p, b, vlookup64(ptab, 128 * i, idx))
        m = vfma(m, y, n)
        n = vfma(n, y, vlookup64(ptab, 128 * i + 64, idx))
    return vadd(p, n), vfma(b, q, vneg(vmul(y, m)))


@jit(inline="always")
def _lookup_s012(ptab, idx, b, y, radius, zero):
    """S_0, S_1, S_2 of a vector of pixels: :func:`_horner_s012`'s chains and final
    operations, lane by lane."""
    p = vsplat(zero)
    p1 = p
    p2 = p
    n = p
    n1 = p
    n2 = p
    for i in range(radius + 1):
        p2 = vfma(p2, b, p1)
        p1 = vfma(p1, b, p)
        p = vfma(p, b, vlookup64(ptab, 128 * i, idx))
        n2 = vfma(n2, y, n1)
        n1 = vfma(n1, y, n)
        n = vfma(n, y, vlookup64(ptab, 128 * i + 64, idx))
    bp = vmul(b, p1)
    yn = vmul(y, n1)
    e = vadd(vmul(vmul(b, b), p2), vmul(vmul(y, y), n2))
    return vadd(p, n), vsub(bp, yn), vadd(vadd(vadd(bp, yn), e), e)


@jit()
def _rbf_eval_row(tab, ptab, radius, order, cst, jb, ga, dc, bb, bi, s0, s1, s2, v0, v1, v2):
    """phi, phi', phi'' on a row from the setup buffers (``ga`` = A, ``dc`` = d = δ s,
    ``bb`` = B, ``bi`` = 1/B) and the channel's Horner table (:func:`rbf_tables`, flattened:
    ``tab[jb · 2(r + 1) + 2 i + e]``).

    ``S_p`` go to the row buffers ``s0, s1, s2`` (several pixels per Horner pass), then
    ``phi = A S_0``, ``phi' = -(A / sigma) (d S_0 - s S_1)``,
    ``phi'' = (A / sigma²) ((d² - 1) S_0 - 2 d s S_1 + s² S_2)`` in a vectorised loop.
    With a look-up table ``ptab`` (:func:`rbf_lookup_tables`; a row of length 1 means none),
    ``S_p`` are computed a vector of pixels at a time, the scalar chains do the rest.
    """
    W = jb.shape[0]
    st = 2 * (radius + 1)  # table entries per cell
    s = cst[2]
    inv_s = cst[3]
    inv_s2 = cst[4]
    one = cst[11]
    zero = s - s  # of the working dtype
    two_s = s + s
    ss = s * s
    qv = 0  # pixels before qv: S_p from the in-register look-ups
    if ptab.shape[0] > 1:
        L = lanes(bb)
        qv = W - W % L
        for q in range(0, qv, L):
            idx = vcells(jb, q, radius, bb)
            if order == 0:
                vstore(s0, q, _lookup_s0(ptab, idx, vload(bb, q), vload(bi, q), radius, zero))
            elif order == 1:
                t0, t1 = _lookup_s01(ptab, idx, vload(bb, q), vload(bi, q), radius, zero)
                vstore(s0, q, t0)
                vstore(s1, q, t1)
            else:
                t0, t1, t2 = _lookup_s012(ptab, idx, vload(bb, q), vload(bi, q), radius, zero)
                vstore(s0, q, t0)
                vstore(s1, q, t1)
                vstore(s2, q, t2)
    if order == 0:
        W4 = qv + (W - qv) // 4 * 4
        for q in range(qv, W4, 4):
            s0[q], s0[q + 1], s0[q + 2], s0[q + 3] = _horner_s0x4(
                tab, load(jb, q) * st, load(jb, q + 1) * st, load(jb, q + 2) * st,
                load(jb, q + 3) * st, load(bb, q), load(bb, q + 1), load(bb, q + 2),
                load(bb, q + 3), load(bi, q), load(bi, q + 1), load(bi, q + 2), load(bi, q + 3),
                radius, zero)
        for q in range(W4, W):  # the last W % 4 pixels, four times the same one
            k = jb[q] * st
            s0[q], _, _, _ = _horner_s0x4(tab, k, k, k, k, bb[q], bb[q], bb[q], bb[q],
                                          bi[q], bi[q], bi[q], bi[q], radius, zero)
        for q in range(W):
            v0[q] = ga[q] * s0[q]
    elif order == 1:
        W2 = qv + (W - qv) // 2 * 2
        for q in range(qv, W2, 2):
            s0[q], s1[q], s0[q + 1], s1[q + 1] = _horner_s01x2(
                tab, load(jb, q) * st, load(jb, q + 1) * st, load(bb, q), load(bb, q + 1),
                load(bi, q), load(bi, q + 1), radius, zero)
        if W2 < W:
            q = W2
            k = jb[q] * st
            s0[q], s1[q], _, _ = _horner_s01x2(tab, k, k, bb[q], bb[q], bi[q], bi[q], radius, zero)
        for q in range(W):
            a = ga[q]
            v0[q] = a * s0[q]
            v1[q] = -(a * inv_s) * (dc[q] * s0[q] - s * s1[q])
    else:
        for q in range(qv, W):
            s0[q], s1[q], s2[q] = _horner_s012(tab, load(jb, q) * st, load(bb, q), load(bi, q),
                                               radius, zero)
        for q in range(W):
            a = ga[q]
            d = dc[q]
            v0[q] = a * s0[q]
            v1[q] = -(a * inv_s) * (d * s0[q] - s * s1[q])
            v2[q] = (a * inv_s2) * ((d * d - one) * s0[q] - two_s * d * s1[q] + ss * s2[q])


_RBF_ROWS = 8  # image rows per job of _rbf_apply_rows (its row buffers are allocated per job)


@jit(parallel=True)
def _rbf_apply_rows(x, tab, ptab, cst, squarings, radius, order, v0, off, v1, v2):
    """phi (into channel ``c + off`` of ``v0``), phi', phi'' (channel ``c`` of ``v1``,
    ``v2``) of every row of ``x``; one job is a block of rows of one channel.  ``ptab``: the
    look-up tables (:func:`rbf_lookup_tables`) or an (F, 1) placeholder."""
    N, F, H, W = x.shape
    nb = (H + _RBF_ROWS - 1) // _RBF_ROWS
    for job in prange(N * F * nb):
        n = job // (F * nb)
        c = (job // nb) % F
        p0 = (job % nb) * _RBF_ROWS
        jb = np.empty(W, np.int32)
        buf = np.empty((7, W), x.dtype)
        for p in range(p0, min(H, p0 + _RBF_ROWS)):
            _rbf_setup_row(x[n, c, p], cst, squarings, radius, jb, buf[0], buf[1], buf[2], buf[3])
            r0 = v0[n, c + off, p]
            if order == 0:
                _rbf_eval_row(tab[c], ptab[c], radius, 0, cst, jb, buf[0], buf[1], buf[2], buf[3], buf[4],
                              buf[5], buf[6], r0, r0, r0)
            elif order == 1:
                _rbf_eval_row(tab[c], ptab[c], radius, 1, cst, jb, buf[0], buf[1], buf[2], buf[3], buf[4],
                              buf[5], buf[6], r0, v1[n, c, p], v1[n, c, p])
            else:
                _rbf_eval_row(tab[c], ptab[c], radius, 2, cst, jb, buf[0], buf[1], buf[2], buf[3], buf[4],
                              buf[5], buf[6], r0, v1[n, c, p], v2[n, c, p])


@jit(inline="always")
def _wgrad_scatter2(ra, rb, radius, aa, ba, pa, ia, ab, bb, pb, ib):
    """ra[r + k] += B_a^k (α_a + k β_a) and the same for a second value into ``rb``,
    k = -r..r, in one loop (two independent chains of powers; float64)."""
    ra[radius] += aa
    rb[radius] += ab
    ua = 1.0
    da = 1.0
    ub = 1.0
    db = 1.0
    ka = 0.0
    kb = 0.0
    for k in range(1, radius + 1):
        ua *= pa
        da *= ia
        ub *= pb
        db *= ib
        ka += ba
        kb += bb
        ra[radius + k] = sfma(ua, aa + ka, ra[radius + k])
        ra[radius - k] = sfma(da, aa - ka, ra[radius - k])
        rb[radius + k] = sfma(ub, ab + kb, rb[radius + k])
        rb[radius - k] = sfma(db, ab - kb, rb[radius - k])


@jit(parallel=True)
def _rbf_wgrad_rows(x, c0, c1, use_c1, cst, squarings, radius, acc):
    """acc[c, jb, k + r] = sum over values with nearest padded centre jb of
    B^k (α + k β), α = A (c0 - c1 d / sigma), β = A c1 s / sigma (float64).

    The weight gradient is then ``out[c, jb + k] = exp(-k² s²/2) acc[c, jb, k + r]``
    (``c0 G + c1 G'`` with ``G_{j0+k} = A B^k exp(-k² s²/2)``,
    ``G' = -G (d - k s) / sigma``), folded by the caller.  Parallel over channels (each
    thread owns ``acc[c]``).  ``α``, ``β`` are computed for a whole row first (vectorised);
    then even and odd pixels are scattered in pairs into two accumulator copies: two
    independent chains of powers, and runs of pixels with the same centre do not form one
    long store-to-load chain.
    """
    N, F, H, W = x.shape
    s = cst[2]
    inv_s = cst[3]
    zero = s - s
    R = 2 * radius + 1
    for c in prange(F):
        jb = np.empty(W, np.int32)
        buf = np.empty((6, W), x.dtype)
        ga = buf[0]
        dc = buf[1]
        bb = buf[2]
        bv = buf[3]
        al = buf[4]
        be = buf[5]
        a2 = np.zeros((2, acc.shape[1], R), np.float64)
        for n in range(N):
            for p in range(H):
                _rbf_setup_row(x[n, c, p], cst, squarings, radius, jb, ga, dc, bb, bv)
                r0 = c0[n, c, p]
                r1 = c1[n, c, p]
                for q in range(W):
                    e1 = r1[q] * inv_s if use_c1 else zero
                    al[q] = ga[q] * (r0[q] - e1 * dc[q])
                    be[q] = ga[q] * e1 * s
                for q in range(0, W, 2):
                    q2 = min(q + 1, W - 1)
                    # an odd last pixel is paired with itself, its copy weighted zero
                    w2 = 1.0 if q2 > q else 0.0
                    _wgrad_scatter2(a2[0, jb[q]], a2[1, jb[q2]], radius,
                                    np.float64(al[q]), np.float64(be[q]),
                                    np.float64(bb[q]), np.float64(bv[q]),
                                    w2 * np.float64(al[q2]), w2 * np.float64(be[q2]),
                                    np.float64(bb[q2]), np.float64(bv[q2]))
        for j in range(acc.shape[1]):
            for m in range(R):
                acc[c, j, m] = a2[0, j, m] + a2[1, j, m]


@jit()
def vector_lanes(x):
    """(kernel lanes, canonical lanes) of the dtype of the 1-D array ``x``, as compiled and
    cached: what the kernels of this process really use (tests/test_simd_width.py)."""
    return lanes(x), wlanes(x)
