"""``numba.cuda`` kernels of the coupled variational network (float32 on the device).

Importing this module imports ``numba.cuda``: only :mod:`vnumba.vn.gpu.engine` and
:mod:`vnumba.vn.gpu.ops` do so, lazily.  Kernels whose shared-memory tiles or register blocks
depend on sizes are built by factories (sizes become closure constants, which Numba
compiles as literals, so the inner loops over them are unrolled and the per-thread
accumulators live in registers) and cached by :func:`get`.

Kernel families (the maths is ``docs/gradients.md``; the launch geometry ``docs/gpu.md``):

``conv``
    ``out[n, o, p, q] = Σ_{c,i,j} W[o, c, i, j] X[n, c, p + i − R0, q + j − R0]`` on a tile of
    ``BY·PY × BX`` output pixels per block.  Mode *same* (the operator ``K = C ∘ P``):
    ``X`` is the input reflected at the border (symmetric padding), ``R0 = ks//2``,
    ``W = k``.  Mode *full* (``Cᵀ``, the first half of ``Kᵀ``): ``X`` is zero outside the
    image, ``R0 = ks − 1``, ``W[o, c, i, j] = k[c, o, ks−1−i, ks−1−j]``, output ``ks − 1``
    larger.  A fused epilogue turns the result into RBF values and derivatives, ``ψ`` and
    ``ψ'``, or a product with a stored factor.
``fold``
    ``Pᵀ``: adds every padded pixel back onto the pixel it was copied from (a gather of at
    most four values per pixel), fused with the pointwise end of the step: the clipped
    update, the clip's active set applied to the incoming gradient, ``v − Hv``, …
``kgrad``
    ``k̄[o, c, i, j] = Σ_{n,p,q} A[n, o, p, q] (P B)[n, c, p + i, q + j]`` for one or two
    ``(A, B)`` pairs: each block loops over pixel tiles and writes one partial sum;
    the ``reduce`` kernel adds the partials in float64.
``wgrad``
    RBF weight gradients ``Σ c0 G_j(x) + c1 G_j'(x)`` per channel, per-thread accumulators
    for all centres, block tree sums in shared memory, partials as above.
``proj``
    Projections onto the l1 ball and onto zero mean ∩ l1 ball, one thread per filter,
    exact thresholds by Michelot's finite algorithm (no sorting, no bisection).
``rbf_apply``, ``reduce``, ``adam``, ``loss``, ``lam_grad``, ``count_nonfinite``, ``clamp_nonneg``, ``fill``
    Element-wise kernels and reductions.

No kernel adds floats with atomics: every sum has a fixed order, so results are bitwise
reproducible run to run on one card with one :class:`~vnumba.vn.gpu.tiling.Tiling`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int32

__all__ = ["get", "EPI", "FOLD"]

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FHALF = np.float32(0.5)

#: Convolution epilogues: what is written for the accumulated value ``v`` of channel ``ch``.
EPI = {
    "store": 0,   # e0 = v
    "rbf1": 1,    # e0 = φ(v), e1 = φ'(v)                       (forward: f, f')
    "rbf2": 2,    # e0 = φ, e1 = φ', e2 = φ'', e3 = v            (backward: f, f', f'', a)
    "psi0": 3,    # e0 = ψ(v)                                    (forward: r)
    "psi1": 4,    # e0 = ψ, e1 = ψ', e3 = v                      (backward: r, r', z)
    "mul": 5,     # e3 = v, e0 = a0 · v                          (da → df, dz → dr)
}

#: Fold (padding adjoint) epilogues for the gathered value ``v`` at channel ``ch``.
FOLD = {
    "store": 0,   # e0 = v
    "h": 1,       # e0 = a0 · v                                  (h = φ'(a) ⊙ g)
    "gh": 2,      # e1 = v, e0 = a0 · v                          (g and h)
    "u": 3,       # e0 = clip(a0 − (v + λ (a0 − a1)))             (u⁺ from u = a0, u_0 = a1)
    "m": 4,       # e0 = clip(a0 − v)                             (m⁺)
    "vu": 5,      # e0 = a2 where 0 < a0 − (v + λ(a0 − a1)) < 1   (clip mask on ū)
    "vm": 6,      # e0 = a2 where 0 < a0 − v < 1                  (clip mask on m̄)
    "dg": 7,      # e1 = v, e0 = a0 · v + a1 · a2 · a3            (dg and ā = φ'dg + φ''da g)
    "hvu": 8,     # e0 = a0 − (v + λ a0)                          (ū_in = v_u − H v)
    "hvm": 9,     # e0 = a0 − v                                   (m̄_in = v_m − H v)
}

_CACHE: dict = {}


def get(kind: str, *key):
    """The kernel ``kind`` for the compile-time constants ``key`` (built once, cached)."""
    ck = (kind,) + tuple(key)
    k = _CACHE.get(ck)
    if k is None:
        k = _FACTORIES[kind](*key)
        _CACHE[ck] = k
    return k


# ----------------------------------------------------------------------------- helpers
@cuda.jit(device=True)
def _reflect(s, n):
    # Symmetric padding (the border pixel repeats); tile positions beyond one reflection
    # belong to outputs that are never written, so they are clamped into the array.
    if s < 0:
        s = -s - 1
    elif s >= n:
        s = 2 * n - s - 1
    if s < 0:
        s = 0
    elif s >= n:
        s = n - 1
    return s


def _rbf_device(n_w, mu0, h, sigma, radius):
    """Device function ``(φ, φ', φ'')`` of channel ``c`` of step ``t`` at ``x``, evaluated
    against the ``2·radius+1`` centres nearest to ``x`` (the window of vnumba.ops.rbf)."""
    NW = int(n_w)
    R = int(radius)
    MU0 = np.float32(mu0)
    H = np.float32(h)
    INV_H = np.float32(1.0 / h)
    INV_S = np.float32(1.0 / sigma)
    INV_S2 = np.float32(1.0 / (sigma * sigma))
    TLO = np.float32(-R - 1.0)
    THI = np.float32(NW + R)

    @cuda.jit(device=True)
    def rbf_eval(x, wt, t, c):
        v0 = _F0
        v1 = _F0
        v2 = _F0
        tt = (x - MU0) * INV_H
        if tt >= TLO and tt <= THI:
            j0 = int32(math.floor(tt + _FHALF))
            lo = max(j0 - R, 0)
            hi = min(j0 + R, NW - 1)
            for j in range(lo, hi + 1):
                d = (x - (MU0 + float32(j) * H)) * INV_S
                g = wt[t, c, j] * math.exp(-_FHALF * d * d)
                v0 += g
                v1 -= g * d
                v2 += g * (d * d - _F1)
        return v0, v1 * INV_S, v2 * INV_S2

    return rbf_eval


def _make_rbf_apply(n_w, mu0, h, sigma, radius):
    """Element-wise ``(φ, φ', φ'')`` of ``x`` (``(N, F, H, W)``) with weights ``w[t]``
    (the device function the convolution epilogues use).  Launch: any 1-D grid;
    arguments ``(x, w, t, v0, v1, v2)``."""
    rbf_eval = _rbf_device(n_w, mu0, h, sigma, radius)

    @cuda.jit
    def rbf_apply(x, w, t, v0, v1, v2):
        F = x.shape[1]
        HW = x.shape[2] * x.shape[3]
        W = x.shape[3]
        total = x.shape[0] * F * HW
        start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        for idx in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
            n = idx // (F * HW)
            rem = idx - n * (F * HW)
            c = rem // HW
            rem = rem - c * HW
            p = rem // W
            q = rem - p * W
            a, b, d = rbf_eval(x[n, c, p, q], w, t, c)
            v0[n, c, p, q] = a
            v1[n, c, p, q] = b
            v2[n, c, p, q] = d

    return rbf_apply


# ----------------------------------------------------------------------------- convolution
def _conv_epilogue(epi, rbf_eval):
    if epi == EPI["store"]:
        @cuda.jit(device=True)
        def f(n, ch, oc, p, q, v, e0, e1, e2, e3, a0, wt, t):
            e0[n, ch, p, q] = v
    elif epi == EPI["rbf1"]:
        @cuda.jit(device=True)
        def f(n, ch, oc, p, q, v, e0, e1, e2, e3, a0, wt, t):
            v0, v1, v2 = rbf_eval(v, wt, t, oc)
            e0[n, ch, p, q] = v0
            e1[n, ch, p, q] = v1
    elif epi == EPI["rbf2"]:
        @cuda.jit(device=True)
        def f(n, ch, oc, p, q, v, e0, e1, e2, e3, a0, wt, t):
            v0, v1, v2 = rbf_eval(v, wt, t, oc)
            e0[n, ch, p, q] = v0
            e1[n, ch, p, q] = v1
            e2[n, ch, p, q] = v2
            e3[n, ch, p, q] = v
    elif epi == EPI["psi0"]:
        @cuda.jit(device=True)
        def f(n, ch, oc, p, q, v, e0, e1, e2, e3, a0, wt, t):
            v0, v1, v2 = rbf_eval(v, wt, t, oc)
            e0[n, ch, p, q] = v0
    elif epi == EPI["psi1"]:
        @cuda.jit(device=True)
        def f(n, ch, oc, p, q, v, e0, e1, e2, e3, a0, wt, t):
            v0, v1, v2 = rbf_eval(v, wt, t, oc)
            e0[n, ch, p, q] = v0
            e1[n, ch, p, q] = v1
            e3[n, ch, p, q] = v
    elif epi == EPI["mul"]:
        @cuda.jit(device=True)
        def f(n, ch, oc, p, q, v, e0, e1, e2, e3, a0, wt, t):
            e3[n, ch, p, q] = v
            e0[n, ch, p, q] = a0[n, ch, p, q] * v
    else:
        raise ValueError(f"unknown convolution epilogue {epi}")
    return f


def _make_conv(ks, cin, opt, py, bx, by, cch, full, epi, rbfkey):
    """Tiled direct convolution (see the module docstring).

    Launch: grid ``(ceil(wout/bx), ceil(hout/(by·py)), N·ceil(cout/opt))``, block
    ``(bx, by)``.  Arguments ``(x, xoff, k, t, cout, hout, wout, e0, e1, e2, e3, a0, wt,
    ooff)``: input channels ``xoff .. xoff+cin`` of ``x``; filters ``k[t]``; output
    channel ``oc`` goes to channel ``ooff + oc`` of the epilogue arrays; ``wt[t, oc]`` are
    the RBF weights of the epilogue.
    """
    KS, CIN, OPT, PY, BX, BY = int(ks), int(cin), int(opt), int(py), int(bx), int(by)
    CC = min(int(cch), CIN)
    NSTAGE = (CIN + CC - 1) // CC
    FULL = bool(full)
    R0 = KS - 1 if FULL else KS // 2
    TH = BY * PY
    TIH = TH + KS - 1
    TIW = BX + KS - 1
    NT = BX * BY
    NACC = OPT * PY
    TILE = CC * TIH * TIW
    WSZ = OPT * CC * KS * KS
    RES = OPT * TH * BX
    # One shared buffer: the staged input tile and filters, then (after the main loop) the
    # block's results, from which the epilogue runs.  Indexing the accumulators only with
    # unrolled constants keeps them in registers whatever the epilogue's size.
    SMEM = max(TILE + WSZ, RES)
    rbf_eval = _rbf_device(*rbfkey) if rbfkey is not None else None
    epilogue = _conv_epilogue(epi, rbf_eval)

    @cuda.jit
    def conv(x, xoff, k, t, cout, hout, wout, e0, e1, e2, e3, a0, wt, ooff):
        sm = cuda.shared.array(SMEM, float32)
        acc = cuda.local.array(NACC, float32)
        xv = cuda.local.array(PY, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * BX + tx
        nog = (cout + OPT - 1) // OPT
        n = cuda.blockIdx.z // nog
        og = cuda.blockIdx.z - n * nog
        q0 = cuda.blockIdx.x * BX
        p0 = cuda.blockIdx.y * TH
        H = x.shape[2]
        W = x.shape[3]
        for a in range(NACC):
            acc[a] = _F0
        for s in range(NSTAGE):
            c0 = s * CC
            # Stage CC input channels of the (TIH x TIW) input tile at sm[cc, yy, xx];
            # consecutive threads read consecutive columns (coalesced).
            for idx in range(tid, TILE, NT):
                cc = idx // (TIH * TIW)
                rem = idx - cc * (TIH * TIW)
                yy = rem // TIW
                xx = rem - yy * TIW
                sp = p0 - R0 + yy
                sq = q0 - R0 + xx
                v = _F0
                if c0 + cc < CIN:
                    if FULL:
                        if sp >= 0 and sp < H and sq >= 0 and sq < W:
                            v = x[n, xoff + c0 + cc, sp, sq]
                    else:
                        v = x[n, xoff + c0 + cc, _reflect(sp, H), _reflect(sq, W)]
                sm[idx] = v
            # ... and the filters of this block's OPT outputs at sm[TILE + (o, cc, i, j)].
            for idx in range(tid, WSZ, NT):
                o = idx // (CC * KS * KS)
                rem = idx - o * (CC * KS * KS)
                cc = rem // (KS * KS)
                rem = rem - cc * (KS * KS)
                i = rem // KS
                j = rem - i * KS
                oc = og * OPT + o
                c = c0 + cc
                v = _F0
                if oc < cout and c < CIN:
                    if FULL:
                        v = k[t, c, oc, KS - 1 - i, KS - 1 - j]
                    else:
                        v = k[t, oc, c, i, j]
                sm[TILE + idx] = v
            cuda.syncthreads()
            for cc in range(CC):
                if c0 + cc < CIN:
                    for i in range(KS):
                        row0 = (cc * TIH + ty * PY + i) * TIW + tx
                        for j in range(KS):
                            # PY input values of this column feed OPT x PY accumulators;
                            # the filter reads are warp-wide broadcasts.
                            for r in range(PY):
                                xv[r] = sm[row0 + r * TIW + j]
                            wbase = TILE + (cc * KS + i) * KS + j
                            for o in range(OPT):
                                w = sm[wbase + o * (CC * KS * KS)]
                                for r in range(PY):
                                    acc[o * PY + r] += w * xv[r]
            cuda.syncthreads()
        # Results to shared memory as sm[o, row, column] of the block's tile ...
        for o in range(OPT):
            for r in range(PY):
                sm[(o * TH + ty * PY + r) * BX + tx] = acc[o * PY + r]
        cuda.syncthreads()
        # ... and the epilogue, consecutive threads on consecutive columns.
        for idx in range(tid, RES, NT):
            o = idx // (TH * BX)
            rem = idx - o * (TH * BX)
            rr = rem // BX
            p = p0 + rr
            q = q0 + rem - rr * BX
            oc = og * OPT + o
            if oc < cout and p < hout and q < wout:
                epilogue(n, ooff + oc, oc, p, q, sm[idx], e0, e1, e2, e3, a0, wt, t)

    return conv


# ----------------------------------------------------------------------------- fold = Pᵀ
def _fold_epilogue(fe):
    if fe == FOLD["store"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            e0[n, ch, p, q] = v
    elif fe == FOLD["h"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            e0[n, ch, p, q] = a0[n, ch, p, q] * v
    elif fe == FOLD["gh"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            e1[n, ch, p, q] = v
            e0[n, ch, p, q] = a0[n, ch, p, q] * v
    elif fe == FOLD["u"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            uu = a0[n, ch, p, q]
            un = uu - (v + lam * (uu - a1[n, ch, p, q]))
            e0[n, ch, p, q] = min(max(un, _F0), _F1)
    elif fe == FOLD["m"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            un = a0[n, ch, p, q] - v
            e0[n, ch, p, q] = min(max(un, _F0), _F1)
    elif fe == FOLD["vu"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            uu = a0[n, ch, p, q]
            un = uu - (v + lam * (uu - a1[n, ch, p, q]))
            g = _F0
            if un > _F0 and un < _F1:
                g = a2[n, ch, p, q]
            e0[n, ch, p, q] = g
    elif fe == FOLD["vm"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            un = a0[n, ch, p, q] - v
            g = _F0
            if un > _F0 and un < _F1:
                g = a2[n, ch, p, q]
            e0[n, ch, p, q] = g
    elif fe == FOLD["dg"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            e1[n, ch, p, q] = v
            e0[n, ch, p, q] = a0[n, ch, p, q] * v + a1[n, ch, p, q] * a2[n, ch, p, q] * a3[n, ch, p, q]
    elif fe == FOLD["hvu"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            vv = a0[n, ch, p, q]
            e0[n, ch, p, q] = vv - (v + lam * vv)
    elif fe == FOLD["hvm"]:
        @cuda.jit(device=True)
        def f(n, ch, p, q, v, e0, e1, a0, a1, a2, a3, lam):
            e0[n, ch, p, q] = a0[n, ch, p, q] - v
    else:
        raise ValueError(f"unknown fold epilogue {fe}")
    return f


def _make_fold(r, fe):
    """Adjoint of symmetric padding by ``r`` with a pointwise epilogue.

    Launch: any 1-D grid (grid-stride loop over the ``N·C·H·W`` pixels, consecutive threads
    on consecutive columns).  Arguments ``(xp, choff, e0, e1, a0, a1, a2, a3, lam, t)``:
    ``xp`` is ``(N, C, H+2r, W+2r)``; channel ``c`` of the result is written to channel
    ``choff + c`` of the epilogue arrays; ``lam[t]`` is the step's ``λ``.  Pixel ``s``
    collects the padded positions ``s + r``, ``r − 1 − s`` (if ``s < r``) and
    ``2H + r − 1 − s`` (if ``s ≥ H − r``), per axis.
    """
    R = int(r)
    epilogue = _fold_epilogue(fe)

    @cuda.jit
    def fold(xp, choff, e0, e1, a0, a1, a2, a3, lam, t):
        C = xp.shape[1]
        H = xp.shape[2] - 2 * R
        W = xp.shape[3] - 2 * R
        HW = H * W
        lt = lam[t]
        start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        for idx in range(start, xp.shape[0] * C * HW, cuda.gridDim.x * cuda.blockDim.x):
            nc = idx // HW
            rem = idx - nc * HW
            n = nc // C
            c = nc - n * C
            p = rem // W
            q = rem - p * W
            ql = R - 1 - q
            qh = 2 * W + R - 1 - q
            has_ql = q < R
            has_qh = q >= W - R
            v = xp[n, c, p + R, q + R]
            if has_ql:
                v += xp[n, c, p + R, ql]
            if has_qh:
                v += xp[n, c, p + R, qh]
            for side in range(2):
                row = R - 1 - p
                ok = p < R
                if side == 1:
                    row = 2 * H + R - 1 - p
                    ok = p >= H - R
                if ok:
                    v += xp[n, c, row, q + R]
                    if has_ql:
                        v += xp[n, c, row, ql]
                    if has_qh:
                        v += xp[n, c, row, qh]
            epilogue(n, choff + c, p, q, v, e0, e1, a0, a1, a2, a3, lt)

    return fold


# ----------------------------------------------------------------------------- kernel gradients
def _make_kgrad(ks, to, ob, cb, th, tw, npair):
    """Kernel-gradient correlation, block partial sums.

    Launch: grid ``(G, ceil(O/ob)·ceil(C/cb))``, block ``(ob/to)·cb·ks`` threads (1-D).
    Arguments ``(a1, aoff1, b1, boff1, a2, aoff2, b2, boff2, O, C, part)``: pair ``k`` is
    ``A = a_k[:, aoff_k : aoff_k+O]`` and ``B = b_k[:, boff_k : boff_k+C]``; block ``g``
    writes ``part[g, ((o·C + c)·ks + i)·ks + j]`` for its ``o, c``.  Thread ``(og, c, i)``
    keeps ``to × ks`` sums (outputs ``o ∈ og``, all ``j``) in registers.
    """
    KS, TO, OB, CB, TH, TW, NPAIR = (int(v) for v in (ks, to, ob, cb, th, tw, npair))
    if OB % TO:
        raise ValueError("kgrad: ob must be a multiple of to")
    R = KS // 2
    NOG = OB // TO
    NT = NOG * CB * KS
    TBH = TH + KS - 1
    TBW = TW + KS - 1
    # One extra float per channel row shifts the channels of sA across shared-memory banks.
    SA = TH * TW + 1
    NACC = TO * KS

    @cuda.jit
    def kgrad(a1, aoff1, b1, boff1, a2, aoff2, b2, boff2, O, C, part):
        sA = cuda.shared.array((OB, SA), float32)
        sB = cuda.shared.array((CB, TBH, TBW), float32)
        acc = cuda.local.array(NACC, float32)
        xs = cuda.local.array(KS, float32)
        tid = cuda.threadIdx.x
        i = tid % KS
        rest = tid // KS
        cl = rest % CB
        og = rest // CB
        ncb = (C + CB - 1) // CB
        oblk = cuda.blockIdx.y // ncb
        cblk = cuda.blockIdx.y - oblk * ncb
        o_base = oblk * OB
        c_base = cblk * CB
        N = a1.shape[0]
        H = a1.shape[2]
        W = a1.shape[3]
        ntx = (W + TW - 1) // TW
        nty = (H + TH - 1) // TH
        ntiles = N * nty * ntx
        for a in range(NACC):
            acc[a] = _F0
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            n = tile // (nty * ntx)
            rem = tile - n * (nty * ntx)
            ty0 = (rem // ntx) * TH
            tx0 = (rem - (rem // ntx) * ntx) * TW
            for pr in range(NPAIR):
                A = a1
                B = b1
                aoff = aoff1
                boff = boff1
                if pr == 1:
                    A = a2
                    B = b2
                    aoff = aoff2
                    boff = boff2
                cuda.syncthreads()
                for idx in range(tid, OB * TH * TW, NT):
                    ol = idx // (TH * TW)
                    r2 = idx - ol * (TH * TW)
                    py = r2 // TW
                    px = r2 - py * TW
                    p = ty0 + py
                    q = tx0 + px
                    o = o_base + ol
                    v = _F0
                    if o < O and p < H and q < W:
                        v = A[n, aoff + o, p, q]
                    sA[ol, r2] = v
                for idx in range(tid, CB * TBH * TBW, NT):
                    c2 = idx // (TBH * TBW)
                    r2 = idx - c2 * (TBH * TBW)
                    yy = r2 // TBW
                    xx = r2 - yy * TBW
                    c = c_base + c2
                    v = _F0
                    if c < C:
                        v = B[n, boff + c, _reflect(ty0 - R + yy, H), _reflect(tx0 - R + xx, W)]
                    sB[c2, yy, xx] = v
                cuda.syncthreads()
                for py in range(TH):
                    for px in range(TW):
                        for j in range(KS):
                            xs[j] = sB[cl, py + i, px + j]
                        for o in range(TO):
                            av = sA[og * TO + o, py * TW + px]
                            for j in range(KS):
                                acc[o * KS + j] += av * xs[j]
        c = c_base + cl
        if c < C:
            for o in range(TO):
                oo = o_base + og * TO + o
                if oo < O:
                    for j in range(KS):
                        part[cuda.blockIdx.x, ((oo * C + c) * KS + i) * KS + j] = acc[o * KS + j]

    return kgrad


# ----------------------------------------------------------------------------- RBF weight gradients
def _make_wgrad(n_w, mu0, h, sigma, radius, bt, use_c1):
    """RBF weight gradient, block partial sums.

    Launch: grid ``(G, nch)``, block ``bt``.  Arguments ``(x, c0, c1a, c1b, choff, part)``:
    channel ``c`` of the launch is channel ``choff + c`` of the arrays;
    ``part[g, c·n_w + j] = Σ c0·G_j(x) + (c1a·c1b)·G_j'(x)`` over the pixels of block ``g``
    (``c1`` only if ``use_c1``), centres within the window of :func:`_rbf_device`.
    """
    NW = int(n_w)
    R = int(radius)
    BT = int(bt)
    SH = NW * BT  # shared-array sizes must be compile-time literals, not expressions
    USE_C1 = bool(use_c1)
    MU0 = np.float32(mu0)
    H_ = np.float32(h)
    INV_H = np.float32(1.0 / h)
    INV_S = np.float32(1.0 / sigma)
    TLO = np.float32(-R - 1.0)
    THI = np.float32(NW + R)

    @cuda.jit
    def wgrad(x, c0, c1a, c1b, choff, part):
        acc = cuda.local.array(NW, float32)
        sh = cuda.shared.array(SH, float32)
        tid = cuda.threadIdx.x
        c = cuda.blockIdx.y
        ch = choff + c
        W = x.shape[3]
        HW = x.shape[2] * W
        total = x.shape[0] * HW
        for j in range(NW):
            acc[j] = _F0
        for idx in range(cuda.blockIdx.x * BT + tid, total, cuda.gridDim.x * BT):
            n = idx // HW
            rem = idx - n * HW
            p = rem // W
            q = rem - p * W
            xv = x[n, ch, p, q]
            tt = (xv - MU0) * INV_H
            if tt >= TLO and tt <= THI:
                j0 = int32(math.floor(tt + _FHALF))
                k0 = c0[n, ch, p, q]
                k1 = _F0
                if USE_C1:
                    k1 = c1a[n, ch, p, q] * c1b[n, ch, p, q] * INV_S
                # Unrolled over all centres so that acc stays in registers; only the window
                # contributes.
                for j in range(NW):
                    if j >= j0 - R and j <= j0 + R:
                        d = (xv - (MU0 + float32(j) * H_)) * INV_S
                        acc[j] += math.exp(-_FHALF * d * d) * (k0 - k1 * d)
        # Tree sum over the block in a fixed order (no float atomics: reproducible results).
        for j in range(NW):
            sh[j * BT + tid] = acc[j]
        cuda.syncthreads()
        half = BT // 2
        while half > 0:
            if tid < half:
                for j in range(NW):
                    sh[j * BT + tid] += sh[j * BT + tid + half]
            cuda.syncthreads()
            half //= 2
        for j in range(tid, NW, BT):
            part[cuda.blockIdx.x, c * NW + j] = sh[j * BT]

    return wgrad


@cuda.jit
def _reduce_partials(part, G, L, dst, doff, sign):
    # dst[doff + l] = sign * sum_g part[g, l], accumulated in float64.
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for l in range(start, L, cuda.gridDim.x * cuda.blockDim.x):
        s = 0.0
        for g in range(G):
            s += float64(part[g, l])
        dst[doff + l] = float32(sign * s)


# ----------------------------------------------------------------------------- loss and λ
def _make_loss(bt):
    """Loss partials and the gradient at the last state.

    Launch: grid ``G``, block ``bt``.  Arguments ``(uT, gu, mT, gm, ubar, mbar, s3, s1,
    part)`` on flat views: ``ubar = (uT − gu)·s3``, ``mbar = (mT − gm)·s1`` (float32, as
    the CPU path), ``part[g] = (Σ (uT−gu)², Σ (mT−gm)²)`` in float64.  The flat mask views
    hold all ``C_m`` mask channels, so the second sum is loss (3)'s mask term summed over the
    channels (:func:`vnumba.ops.loss.loss_from_sums` adds the constants).
    """
    BT = int(bt)

    @cuda.jit
    def loss(uT, gu, mT, gm, ubar, mbar, s3, s1, part):
        ru = cuda.shared.array(BT, float64)
        rm = cuda.shared.array(BT, float64)
        tid = cuda.threadIdx.x
        start = cuda.blockIdx.x * BT + tid
        stride = cuda.gridDim.x * BT
        su = 0.0
        sm = 0.0
        for i in range(start, uT.shape[0], stride):
            d = uT[i] - gu[i]
            ubar[i] = d * s3
            su += float64(d) * float64(d)
        for i in range(start, mT.shape[0], stride):
            d = mT[i] - gm[i]
            mbar[i] = d * s1
            sm += float64(d) * float64(d)
        ru[tid] = su
        rm[tid] = sm
        cuda.syncthreads()
        half = BT // 2
        while half > 0:
            if tid < half:
                ru[tid] += ru[tid + half]
                rm[tid] += rm[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            part[cuda.blockIdx.x, 0] = ru[0]
            part[cuda.blockIdx.x, 1] = rm[0]

    return loss


def _make_lam_grad(bt):
    """``part[g, 0] = Σ v_u (u − u_0)`` over the pixels of block ``g`` (float32 products,
    float64 sums).  Launch: grid ``G``, block ``bt``; flat views ``(vu, u, u0, part)``."""
    BT = int(bt)

    @cuda.jit
    def lam_grad(vu, u, u0, part):
        red = cuda.shared.array(BT, float64)
        tid = cuda.threadIdx.x
        s = 0.0
        for i in range(cuda.blockIdx.x * BT + tid, vu.shape[0], cuda.gridDim.x * BT):
            s += float64(vu[i] * (u[i] - u0[i]))
        red[tid] = s
        cuda.syncthreads()
        half = BT // 2
        while half > 0:
            if tid < half:
                red[tid] += red[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            part[cuda.blockIdx.x, 0] = red[0]

    return lam_grad


# ----------------------------------------------------------------------------- projections
@cuda.jit(device=True)
def _threshold(k, f, L, sgn, absval, s, total):
    # Michelot's finite algorithm for the θ with Σ_i (y_i − θ)_+ = s, where
    # y_i = |k_i| (absval) or sgn·k_i, starting from "all active" (θ0 = (Σ y − s)/L,
    # ``total`` = Σ y): θ grows monotonically, the active set {y_i > θ} shrinks, and θ is
    # exact once the set stops changing (at most L rounds).
    theta = (total - s) / L
    prev = L
    for _ in range(L + 1):
        acc = 0.0
        cnt = 0
        for i in range(L):
            y = float64(k[f, i])
            if absval:
                y = abs(y)
            else:
                y = sgn * y
            if y > theta:
                acc += y
                cnt += 1
        if cnt == 0:
            return theta
        new = (acc - s) / cnt
        if cnt == prev:
            return new
        prev = cnt
        theta = new
    return theta


def _make_proj(length, zero_mean):
    """Project every row of ``k`` (``(n_filters, length)`` float32) in place.

    ``zero_mean=False``: onto ``{‖x‖₁ ≤ ρ}`` (soft threshold by Michelot's θ).
    ``zero_mean=True``: onto ``{Σx = 0} ∩ {‖x‖₁ ≤ ρ}``: if the centred filter is inside the
    ball it is the answer; otherwise the ball is active, and by the KKT conditions the
    answer is ``(k − a)_+ − (b − k)_+`` with ``Σ(k − a)_+ = Σ(b − k)_+ = ρ/2`` (``a = ν + θ``,
    ``b = ν − θ`` with ``ν`` the mean multiplier and ``θ > 0`` the ball's).  Launch: one
    thread per filter; arguments ``(k, rho)``.
    """
    L = int(length)
    ZM = bool(zero_mean)

    @cuda.jit
    def proj(k, rho):
        f = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if f >= k.shape[0]:
            return
        if ZM:
            tot = 0.0
            for i in range(L):
                tot += float64(k[f, i])
            mean = tot / L
            l1 = 0.0
            for i in range(L):
                l1 += abs(float64(k[f, i]) - mean)
            if l1 <= rho:
                for i in range(L):
                    k[f, i] = float32(float64(k[f, i]) - mean)
                return
            a = _threshold(k, f, L, 1.0, False, 0.5 * rho, tot)
            b = -_threshold(k, f, L, -1.0, False, 0.5 * rho, -tot)
            for i in range(L):
                y = float64(k[f, i])
                k[f, i] = float32(max(y - a, 0.0) - max(b - y, 0.0))
        else:
            l1 = 0.0
            for i in range(L):
                l1 += abs(float64(k[f, i]))
            if l1 <= rho:
                return
            theta = _threshold(k, f, L, 1.0, True, rho, l1)
            for i in range(L):
                y = float64(k[f, i])
                m = abs(y) - theta
                if m > 0.0:
                    k[f, i] = float32(m if y > 0.0 else -m)
                else:
                    k[f, i] = float32(0.0)

    return proj


# ----------------------------------------------------------------------------- element-wise
@cuda.jit
def _adam(p, g, m, v, lr, b1, b2, c1, c2, eps):
    # Same arithmetic as vnumba.ops.optim.Adam: float64 moments, float32 parameter update.
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for i in range(start, p.shape[0], cuda.gridDim.x * cuda.blockDim.x):
        gi = float64(g[i])
        mi = m[i] * b1 + (1.0 - b1) * gi
        vi = v[i] * b2 + (1.0 - b2) * (gi * gi)
        m[i] = mi
        v[i] = vi
        upd = lr * (mi / c1) / (math.sqrt(vi / c2) + eps)
        p[i] = p[i] - float32(upd)


@cuda.jit
def _count_nonfinite(g, flag):
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for i in range(start, g.shape[0], cuda.gridDim.x * cuda.blockDim.x):
        if not math.isfinite(g[i]):
            cuda.atomic.add(flag, 0, 1)


@cuda.jit
def _clamp_nonneg(a):
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for i in range(start, a.shape[0], cuda.gridDim.x * cuda.blockDim.x):
        if a[i] < 0:
            a[i] = 0


@cuda.jit
def _fill(a, value):
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for i in range(start, a.shape[0], cuda.gridDim.x * cuda.blockDim.x):
        a[i] = value


_FACTORIES = {
    "rbf_apply": _make_rbf_apply,
    "conv": _make_conv,
    "fold": _make_fold,
    "kgrad": _make_kgrad,
    "wgrad": _make_wgrad,
    "loss": _make_loss,
    "lam_grad": _make_lam_grad,
    "proj": _make_proj,
    "reduce": lambda: _reduce_partials,
    "adam": lambda: _adam,
    "count_nonfinite": lambda: _count_nonfinite,
    "clamp_nonneg": lambda: _clamp_nonneg,
    "fill": lambda: _fill,
}
