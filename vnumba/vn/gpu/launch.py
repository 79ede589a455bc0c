"""Device-level launchers: launch geometry for every kernel family, on device arrays.

No input checking happens here (the public functions of :mod:`vnumba.vn.gpu.ops` and
:mod:`vnumba.vn.gpu.engine` check their inputs once); every launch goes to the
:class:`Launcher`'s stream, so kernels run in the order they are issued.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from vnumba.vn.gpu import kernels as K
from vnumba.vn.gpu.tiling import Tiling

__all__ = ["Launcher", "rbf_key", "is_simulator", "default_tiling", "device_sm_count"]

_SHARED_LIMIT = 46 * 1024  # bytes of static shared memory a block may use (48 KiB minus slack)


def rbf_key(cfg) -> tuple:
    """Compile-time constants ``(n_w, mu0, h, sigma, radius)`` of the RBF functions of a
    :class:`~vnumba.vn.config.ModelConfig` (the same window as :class:`vnumba.ops.rbf.RBFGrid`)."""
    return (int(cfg.n_w), float(cfg.rbf_min), float(cfg.rbf_spacing), float(cfg.rbf_sigma),
            int(min(cfg.rbf_radius, cfg.n_w)))


def is_simulator() -> bool:
    """Whether ``numba.cuda`` was imported as the CUDA simulator (``NUMBA_ENABLE_CUDASIM``).

    The choice is made once, when ``numba.cuda`` is first imported; the environment
    variable alone does not tell (Numba re-reads its configuration later).
    """
    return getattr(cuda.is_available, "__module__", "").endswith("simulator_init")


def device_sm_count() -> int:
    """Streaming multiprocessors of the current device (1 in the simulator)."""
    if is_simulator():
        return 1
    return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def default_tiling() -> Tiling:
    """:meth:`Tiling.simulator` under the simulator; otherwise :meth:`Tiling.hardware` with
    the reduction grids scaled to the number of multiprocessors."""
    if is_simulator():
        return Tiling.simulator()
    sms = device_sm_count()
    return Tiling(kg_blocks=4 * sms, red_blocks=2 * sms)


def _cdiv(a, b):
    return -(-a // b)


class Launcher:
    """Launches kernels on one stream with one :class:`Tiling`.

    Parameters
    ----------
    tiling : Tiling
    stream : numba.cuda stream
    """

    def __init__(self, tiling: Tiling, stream):
        self.tl = tiling
        self.stream = stream
        self.dummy3 = cuda.device_array((1, 1, 1), np.float32, stream=stream)
        self.dummy1 = cuda.device_array((1,), np.float32, stream=stream)

    # -------------------------------------------------------------- convolutions
    def conv(self, x, xoff, cin, k, t, cout, full, epi, e0, e1=None, e2=None, e3=None,
             a0=None, wt=None, ooff=0, rbf=None):
        """``K`` (``full=False``: same size, symmetric border) or ``Cᵀ`` (``full=True``:
        zero border, output ``ks − 1`` larger) of channels ``xoff .. xoff+cin`` of ``x``
        with filters ``k[t]``, into the epilogue arrays at channel offset ``ooff``."""
        tl = self.tl
        ks = int(k.shape[3])
        N, H, W = int(x.shape[0]), int(x.shape[2]), int(x.shape[3])
        hout, wout = (H + ks - 1, W + ks - 1) if full else (H, W)
        opt = tl.channels_per_thread(cout, tl.conv_opt)
        cch = min(tl.conv_cch, cin)
        th = tl.conv_by * tl.conv_py

        def shared(c):
            return 4 * max(c * ((th + ks - 1) * (tl.conv_bx + ks - 1) + opt * ks * ks),
                           opt * th * tl.conv_bx)

        # Shrink the staged channel count if the tile would not fit in shared memory.
        while cch > 1 and shared(cch) > _SHARED_LIMIT:
            cch = _cdiv(cch, 2)
        if shared(cch) > _SHARED_LIMIT:
            raise ValueError(f"convolution tiles of {tl} need {shared(cch)} bytes of shared memory "
                             f"for ks={ks}, {opt} outputs per thread; use smaller conv tiles")
        kern = K.get("conv", ks, cin, opt, tl.conv_py, tl.conv_bx, tl.conv_by, cch, bool(full),
                     K.EPI[epi], rbf)
        grid = (_cdiv(wout, tl.conv_bx), _cdiv(hout, tl.conv_by * tl.conv_py), N * _cdiv(cout, opt))
        e1 = e0 if e1 is None else e1
        e2 = e0 if e2 is None else e2
        e3 = e0 if e3 is None else e3
        a0 = e0 if a0 is None else a0
        wt = self.dummy3 if wt is None else wt
        kern[grid, (tl.conv_bx, tl.conv_by), self.stream](
            x, xoff, k, t, cout, hout, wout, e0, e1, e2, e3, a0, wt, ooff)

    def fold(self, xp, r, C, choff, fe, e0, e1=None, a0=None, a1=None, a2=None, a3=None,
             lam=None, t=0):
        """``Pᵀ`` of the padded ``xp`` (``C`` channels, pad ``r``) with the fold epilogue ``fe``."""
        n = int(xp.shape[0]) * C * (int(xp.shape[2]) - 2 * r) * (int(xp.shape[3]) - 2 * r)
        kern = K.get("fold", r, K.FOLD[fe])
        e1 = e0 if e1 is None else e1
        a0 = e0 if a0 is None else a0
        a1 = e0 if a1 is None else a1
        a2 = e0 if a2 is None else a2
        a3 = e0 if a3 is None else a3
        lam = self.dummy1 if lam is None else lam
        kern[self._ew_grid(n), self.tl.ew_threads, self.stream](xp, choff, e0, e1, a0, a1, a2, a3, lam, t)

    # -------------------------------------------------------------- reductions
    def kgrad_geometry(self, O, C, ks, N, H, W):
        """``(to, ob, cb, G, gy, L)`` of a kernel-gradient launch: registers per thread,
        output and input channels per block, partial rows, blocks per tile, partial length."""
        tl = self.tl
        to = tl.channels_per_thread(O, tl.kg_to)
        groups = _cdiv(O, to)
        cb = min(tl.kg_cb, C)

        def shared(g, c):
            return 4 * (g * to * (tl.kg_th * tl.kg_tw + 1) + c * (tl.kg_th + ks - 1) * (tl.kg_tw + ks - 1))

        while (shared(groups, cb) > _SHARED_LIMIT or groups * cb * ks > 1024) and groups > 1:
            groups = _cdiv(groups, 2)
        while (shared(groups, cb) > _SHARED_LIMIT or groups * cb * ks > 1024) and cb > 1:
            cb = _cdiv(cb, 2)
        ob = groups * to
        gy = _cdiv(O, ob) * _cdiv(C, cb)
        ntiles = N * _cdiv(H, tl.kg_th) * _cdiv(W, tl.kg_tw)
        G = max(1, min(ntiles, _cdiv(tl.kg_blocks, gy)))
        return to, ob, cb, G, gy, O * C * ks * ks

    def kgrad(self, pairs, O, C, ks, part, dst, doff, sign=-1.0):
        """``dst[doff : doff + O·C·ks²] = sign · Σ_pairs corr(A, P B)`` with
        ``pairs = [(A, aoff, B, boff), ...]`` (one or two), via the partial buffer ``part``."""
        a1, aoff1, b1, boff1 = pairs[0]
        a2, aoff2, b2, boff2 = pairs[-1]
        N, H, W = int(a1.shape[0]), int(a1.shape[2]), int(a1.shape[3])
        to, ob, cb, G, gy, L = self.kgrad_geometry(O, C, ks, N, H, W)
        tl = self.tl
        kern = K.get("kgrad", ks, to, ob, cb, tl.kg_th, tl.kg_tw, len(pairs))
        nt = (ob // to) * cb * ks
        kern[(G, gy), nt, self.stream](a1, aoff1, b1, boff1, a2, aoff2, b2, boff2, O, C, part)
        self.reduce(part, G, L, dst, doff, sign)

    def wgrad_blocks(self, nch):
        return max(1, _cdiv(self.tl.red_blocks, nch))

    def wgrad(self, x, c0, c1a, c1b, choff, nch, rbf, part, dst, doff, sign=-1.0):
        """``dst[doff + c·n_w + j] = sign · Σ c0 G_j(x) + c1a c1b G_j'(x)`` for the channels
        ``choff .. choff+nch`` of ``x`` (``c1a = None``: no ``c1`` term)."""
        use_c1 = c1a is not None
        bt = self.tl.red_threads
        while bt > 1 and 4 * rbf[0] * bt > _SHARED_LIMIT:  # the block sum holds n_w x bt floats
            bt //= 2
        kern = K.get("wgrad", *rbf, bt, use_c1)
        G = self.wgrad_blocks(nch)
        c1a = c0 if c1a is None else c1a
        c1b = c0 if c1b is None else c1b
        kern[(G, nch), bt, self.stream](x, c0, c1a, c1b, choff, part)
        self.reduce(part, G, nch * rbf[0], dst, doff, sign)

    def reduce(self, part, G, L, dst, doff, sign):
        ew = self.tl.ew_threads
        K.get("reduce")[min(_cdiv(L, ew), 1024), ew, self.stream](part, G, L, dst, doff, float(sign))

    def loss(self, uT, gu, mT, gm, ubar, mbar, s3, s1, part64):
        """Loss partials (``part64[:G, 0:2]``) and ``ubar = s3 (uT − gu)``,
        ``mbar = s1 (mT − gm)`` over every mask channel of ``mT``; returns ``G``.  ``s3, s1`` are
        :func:`vnumba.ops.loss.output_grad_factors`, and the partials combine with
        :func:`vnumba.ops.loss.loss_from_sums`."""
        tl = self.tl
        G = tl.red_blocks
        K.get("loss", tl.red_threads)[G, tl.red_threads, self.stream](
            uT.ravel(), gu.ravel(), mT.ravel(), gm.ravel(), ubar.ravel(), mbar.ravel(),
            np.float32(s3), np.float32(s1), part64)
        return G

    def lam_grad(self, vu, u, u0, part64, dst, doff):
        tl = self.tl
        G = tl.red_blocks
        K.get("lam_grad", tl.red_threads)[G, tl.red_threads, self.stream](
            vu.ravel(), u.ravel(), u0.ravel(), part64)
        self.reduce(part64, G, 1, dst, doff, -1.0)

    # -------------------------------------------------------------- element-wise
    def _ew_grid(self, n):
        return max(1, min(_cdiv(n, self.tl.ew_threads), self.tl.ew_blocks))

    def proj(self, k2d, rho, zero_mean):
        """Project every row of ``k2d`` (``(n_filters, length)``) in place."""
        nf, length = int(k2d.shape[0]), int(k2d.shape[1])
        kern = K.get("proj", length, bool(zero_mean))
        kern[_cdiv(nf, self.tl.ew_threads), self.tl.ew_threads, self.stream](k2d, float(rho))

    def adam(self, p, g, m, v, lr, b1, b2, c1, c2, eps):
        n = int(p.shape[0])
        K.get("adam")[self._ew_grid(n), self.tl.ew_threads, self.stream](
            p, g, m, v, float(lr), float(b1), float(b2), float(c1), float(c2), float(eps))

    def count_nonfinite(self, g, flag):
        K.get("count_nonfinite")[self._ew_grid(int(g.shape[0])), self.tl.ew_threads, self.stream](g, flag)

    def clamp_nonneg(self, a):
        K.get("clamp_nonneg")[self._ew_grid(int(a.shape[0])), self.tl.ew_threads, self.stream](a)

    def rbf_apply(self, x, w, t, v0, v1, v2, rbf):
        n = int(x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3])
        K.get("rbf_apply", *rbf)[self._ew_grid(n), self.tl.ew_threads, self.stream](x, w, t, v0, v1, v2)

    def fill(self, a, value):
        flat = a.ravel()
        K.get("fill")[self._ew_grid(int(flat.shape[0])), self.tl.ew_threads, self.stream](flat, value)
