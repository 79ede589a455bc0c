"""Host-level access to every CUDA kernel family: NumPy arrays in, NumPy arrays out.

These mirror the CPU functions of :mod:`vnumba.ops.conv`, :mod:`vnumba.ops.rbf`,
:mod:`vnumba.ops.projections` and :mod:`vnumba.ops.optim` (same shapes and conventions) and exist
for tests and experiments; the training engine keeps everything on the device and calls
the kernels directly.  Arrays must be float32 and C-contiguous (the device computes in
float32; Adam moments are float64).  Importing this module imports ``numba.cuda``.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from vnumba.ops.checks import check_array, check_filter_bank
from vnumba.ops.loss import loss_from_sums, loss_scale, output_grad_factors
from vnumba.vn.gpu.launch import Launcher, default_tiling
from vnumba.vn.gpu.tiling import Tiling

__all__ = [
    "conv_forward", "conv_adjoint", "corr_full", "pad_symmetric_adjoint", "conv_kernel_grad",
    "rbf_apply", "rbf_weight_grad", "project_l1_ball", "project_zero_mean_l1_ball",
    "adam_update", "training_loss",
]


# ----------------------------------------------------------------------------- checks
def _check(name, a, ndim, dtype=np.float32, finite=True):
    check_array(name, a, ndim, dtype, finite)


def _check_kernel(k, C=None):
    _check("kernel", k, 4)
    return check_filter_bank(k, C)


def _launcher(tiling):
    return Launcher(tiling if tiling is not None else default_tiling(), cuda.stream())


def _finish(launcher, *arrays):
    out = [a.copy_to_host(stream=launcher.stream) for a in arrays]
    launcher.stream.synchronize()
    return out


def _grid_key(grid):
    # A vnumba.ops.rbf.RBFGrid (or anything with its attributes).
    return (int(grid.n_w), float(grid.mu0), float(grid.h), float(grid.sigma), int(grid.radius))


# ----------------------------------------------------------------------------- convolutions
def conv_forward(x, k, *, tiling: Tiling | None = None):
    """``K x``: symmetric padding then valid correlation, as :func:`vnumba.ops.conv.conv_forward`.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32
    k : ndarray, shape (O, C, ks, ks), float32, ks odd, ``ks // 2 <= min(H, W)``
    tiling : Tiling, optional

    Returns
    -------
    ndarray, shape (N, O, H, W), float32
    """
    _check("x", x, 4)
    O, C, ks = _check_kernel(k, x.shape[1])
    N, _, H, W = x.shape
    if ks // 2 > min(H, W):
        raise ValueError(f"pad width {ks // 2} must be in [0, min(H, W)] for an image of {H}x{W}")
    L = _launcher(tiling)
    dx = cuda.to_device(x, stream=L.stream)
    dk = cuda.to_device(k[None], stream=L.stream)
    dy = cuda.device_array((N, O, H, W), np.float32, stream=L.stream)
    L.conv(dx, 0, C, dk, 0, O, False, "store", dy)
    return _finish(L, dy)[0]


def corr_full(y, k, *, tiling: Tiling | None = None):
    """Adjoint of the valid correlation (``Cᵀ``, a "full" convolution), as
    :func:`vnumba.ops.conv.corr_valid_adjoint`.

    Parameters
    ----------
    y : ndarray, shape (N, O, H, W), float32
    k : ndarray, shape (O, C, ks, ks), float32

    Returns
    -------
    ndarray, shape (N, C, H + ks - 1, W + ks - 1), float32
    """
    _check("y", y, 4)
    O, C, ks = _check_kernel(k)
    if y.shape[1] != O:
        raise ValueError(f"y has {y.shape[1]} channels but the kernel has {O} outputs")
    N, _, H, W = y.shape
    L = _launcher(tiling)
    dy = cuda.to_device(y, stream=L.stream)
    dk = cuda.to_device(k[None], stream=L.stream)
    dxp = cuda.device_array((N, C, H + ks - 1, W + ks - 1), np.float32, stream=L.stream)
    L.conv(dy, 0, O, dk, 0, C, True, "store", dxp)
    return _finish(L, dxp)[0]


def pad_symmetric_adjoint(xp, r, *, tiling: Tiling | None = None):
    """Adjoint of symmetric padding (``Pᵀ``), as :func:`vnumba.ops.conv.pad_symmetric_adjoint`.

    Parameters
    ----------
    xp : ndarray, shape (N, C, H + 2r, W + 2r), float32
    r : int, ``0 <= r <= min(H, W)``

    Returns
    -------
    ndarray, shape (N, C, H, W), float32
    """
    _check("xp", xp, 4)
    r = int(r)
    N, C, Hp, Wp = xp.shape
    H, W = Hp - 2 * r, Wp - 2 * r
    if r < 0 or H < max(r, 1) or W < max(r, 1):
        raise ValueError(f"padded image {Hp}x{Wp} too small for pad width {r}")
    L = _launcher(tiling)
    dxp = cuda.to_device(xp, stream=L.stream)
    dx = cuda.device_array((N, C, H, W), np.float32, stream=L.stream)
    L.fold(dxp, r, C, 0, "store", dx)
    return _finish(L, dx)[0]


def conv_adjoint(y, k, *, tiling: Tiling | None = None):
    """``Kᵀ y`` (full correlation, then the padding adjoint), as
    :func:`vnumba.ops.conv.conv_adjoint`.

    Parameters
    ----------
    y : ndarray, shape (N, O, H, W), float32
    k : ndarray, shape (O, C, ks, ks), float32, ``ks // 2 <= min(H, W)``

    Returns
    -------
    ndarray, shape (N, C, H, W), float32
    """
    _check("y", y, 4)
    O, C, ks = _check_kernel(k)
    if y.shape[1] != O:
        raise ValueError(f"y has {y.shape[1]} channels but the kernel has {O} outputs")
    N, _, H, W = y.shape
    r = ks // 2
    if r > min(H, W):
        raise ValueError(f"pad width {r} must be in [0, min(H, W)] for an image of {H}x{W}")
    L = _launcher(tiling)
    dy = cuda.to_device(y, stream=L.stream)
    dk = cuda.to_device(k[None], stream=L.stream)
    dxp = cuda.device_array((N, C, H + 2 * r, W + 2 * r), np.float32, stream=L.stream)
    dx = cuda.device_array((N, C, H, W), np.float32, stream=L.stream)
    L.conv(dy, 0, O, dk, 0, C, True, "store", dxp)
    L.fold(dxp, r, C, 0, "store", dx)
    return _finish(L, dx)[0]


def conv_kernel_grad(y, x, ks, y2=None, x2=None, *, tiling: Tiling | None = None):
    """Gradient of ``<y, K x>`` (plus ``<y2, K x2>``) with respect to the filters of ``K``,
    as :func:`vnumba.ops.conv.conv_kernel_grad`.

    Parameters
    ----------
    y : ndarray, shape (N, O, H, W), float32
    x : ndarray, shape (N, C, H, W), float32
    ks : int, odd, ``ks // 2 <= min(H, W)``
    y2, x2 : ndarray, optional
        A second pair of the same shapes, accumulated in the same launch.

    Returns
    -------
    ndarray, shape (O, C, ks, ks), float32
    """
    _check("y", y, 4)
    _check("x", x, 4)
    N, O, H, W = y.shape
    C = x.shape[1]
    if x.shape[0] != N or x.shape[2:] != (H, W):
        raise ValueError(f"x shape {x.shape} does not match y {y.shape}")
    ks = int(ks)
    if ks < 1 or ks % 2 == 0 or ks // 2 > min(H, W):
        raise ValueError(f"kernel size {ks} must be odd with ks // 2 <= min(H, W) = {min(H, W)}")
    if (y2 is None) != (x2 is None):
        raise ValueError("give both y2 and x2 or neither")
    L = _launcher(tiling)
    pairs = [(cuda.to_device(y, stream=L.stream), 0, cuda.to_device(x, stream=L.stream), 0)]
    if y2 is not None:
        _check("y2", y2, 4)
        _check("x2", x2, 4)
        if y2.shape != y.shape or x2.shape != x.shape:
            raise ValueError("y2 and x2 must have the shapes of y and x")
        pairs.append((cuda.to_device(y2, stream=L.stream), 0, cuda.to_device(x2, stream=L.stream), 0))
    _, _, _, G, _, n = L.kgrad_geometry(O, C, ks, N, H, W)
    part = cuda.device_array((G, n), np.float32, stream=L.stream)
    out = cuda.device_array(n, np.float32, stream=L.stream)
    L.kgrad(pairs, O, C, ks, part, out, 0, sign=1.0)
    return _finish(L, out)[0].reshape(O, C, ks, ks)


# ----------------------------------------------------------------------------- RBF
def rbf_apply(x, w, grid, *, tiling: Tiling | None = None):
    """``(φ, φ', φ'')`` per channel, as :func:`vnumba.ops.rbf.rbf_apply` with ``order=2``.

    Parameters
    ----------
    x : ndarray, shape (N, F, H, W), float32
    w : ndarray, shape (F, n_w), float32
    grid : vnumba.ops.rbf.RBFGrid

    Returns
    -------
    tuple of three ndarray, shape (N, F, H, W), float32
    """
    _check("x", x, 4)
    _check("w", w, 2)
    if w.shape != (x.shape[1], grid.n_w):
        raise ValueError(f"weights shape {w.shape} != (channels {x.shape[1]}, n_w {grid.n_w})")
    L = _launcher(tiling)
    dx = cuda.to_device(x, stream=L.stream)
    dw = cuda.to_device(w[None], stream=L.stream)
    outs = [cuda.device_array(x.shape, np.float32, stream=L.stream) for _ in range(3)]
    L.rbf_apply(dx, dw, 0, *outs, _grid_key(grid))
    return tuple(_finish(L, *outs))


def rbf_weight_grad(x, c0, c1, grid, *, tiling: Tiling | None = None):
    """Gradient of ``Σ c0 φ(x) + c1 φ'(x)`` with respect to the weights, as
    :func:`vnumba.ops.rbf.rbf_weight_grad`.

    Parameters
    ----------
    x, c0 : ndarray, shape (N, F, H, W), float32
    c1 : ndarray of the same shape, or None
    grid : vnumba.ops.rbf.RBFGrid

    Returns
    -------
    ndarray, shape (F, n_w), float32
    """
    _check("x", x, 4)
    _check("c0", c0, 4)
    if c0.shape != x.shape:
        raise ValueError("c0 must have the shape of x")
    if c1 is not None:
        _check("c1", c1, 4)
        if c1.shape != x.shape:
            raise ValueError("c1 must have the shape of x")
    F = x.shape[1]
    key = _grid_key(grid)
    L = _launcher(tiling)
    dx = cuda.to_device(x, stream=L.stream)
    dc0 = cuda.to_device(c0, stream=L.stream)
    dc1 = None
    one = None
    if c1 is not None:
        dc1 = cuda.to_device(c1, stream=L.stream)
        # The engine passes c1 as a product of two arrays; here the second factor is 1.
        one = cuda.to_device(np.ones_like(c1), stream=L.stream)
    part = cuda.device_array((L.wgrad_blocks(F), F * grid.n_w), np.float32, stream=L.stream)
    out = cuda.device_array(F * grid.n_w, np.float32, stream=L.stream)
    L.wgrad(dx, dc0, dc1, one, 0, F, key, part, out, 0, sign=1.0)
    return _finish(L, out)[0].reshape(F, grid.n_w)


# ----------------------------------------------------------------------------- projections
def _filters(k, filter_ndim):
    if not isinstance(k, np.ndarray) or k.dtype != np.float32:
        raise TypeError("filters must be a float32 ndarray")
    if k.ndim < filter_ndim or filter_ndim < 1:
        raise ValueError(f"filters must have at least {filter_ndim} dimensions")
    if not np.all(np.isfinite(k)):
        raise ValueError("filters contain NaN or inf")
    return np.ascontiguousarray(k).reshape(-1, int(np.prod(k.shape[k.ndim - filter_ndim:])))


def _project(k, radius, filter_ndim, zero_mean, tiling):
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    k2 = _filters(k, filter_ndim)
    L = _launcher(tiling)
    dk = cuda.to_device(k2, stream=L.stream)
    L.proj(dk, float(radius), zero_mean)
    return _finish(L, dk)[0].reshape(k.shape)


def project_l1_ball(k, radius=1.0, filter_ndim=3, *, tiling: Tiling | None = None):
    """Projection of every filter onto the l1 ball (as :func:`vnumba.ops.projections.project_l1_ball`,
    but returning a new array).

    Parameters
    ----------
    k : ndarray, shape (..., C, kh, kw), float32
    radius : float
    filter_ndim : int
        Trailing dimensions forming one filter.

    Returns
    -------
    ndarray, shape of ``k``, float32
    """
    return _project(k, radius, filter_ndim, False, tiling)


def project_zero_mean_l1_ball(k, radius=1.0, filter_ndim=3, *, tiling: Tiling | None = None):
    """Projection of every filter onto ``{sum = 0} ∩ {‖·‖₁ <= radius}`` (as
    :func:`vnumba.ops.projections.project_zero_mean_l1_ball`, but returning a new array)."""
    return _project(k, radius, filter_ndim, True, tiling)


# ----------------------------------------------------------------------------- Adam and loss
def adam_update(p, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, *, tiling: Tiling | None = None):
    """One Adam update (iteration ``t``, 1-based) of flat arrays, as :class:`vnumba.ops.optim.Adam`.

    Parameters
    ----------
    p, g : ndarray, shape (n,), float32
    m, v : ndarray, shape (n,), float64
    t : int >= 1

    Returns
    -------
    p_new : ndarray float32, m_new, v_new : ndarray float64
    """
    _check("p", p, 1)
    _check("g", g, 1)
    _check("m", m, 1, np.float64)
    _check("v", v, 1, np.float64)
    if not (p.shape == g.shape == m.shape == v.shape):
        raise ValueError("p, g, m and v must have one shape")
    if int(t) < 1:
        raise ValueError("t must be >= 1")
    L = _launcher(tiling)
    dp, dg, dm, dv = (cuda.to_device(a, stream=L.stream) for a in (p, g, m, v))
    L.adam(dp, dg, dm, dv, lr, beta1, beta2, 1.0 - beta1 ** int(t), 1.0 - beta2 ** int(t), eps)
    return tuple(_finish(L, dp, dm, dv))


def training_loss(u_T, gu, m_T, gm, *, tiling: Tiling | None = None):
    """Loss (3) ``mean_s [1/6 ‖u_T − g_u‖² + 1/2 Σ_c ‖m_T,c − g_m,c‖²] / (H W)`` and its
    gradient at ``(u_T, m_T)``, reduced by the device kernel, as
    :func:`vnumba.ops.loss.loss_value_and_output_grad` (whose constants it uses).

    Parameters
    ----------
    u_T, gu : ndarray, shape (N, C, H, W), float32
    m_T, gm : ndarray, shape (N, H, W) or (N, C_m, H, W), float32
        One mask channel, or one per class: the mask term is summed over the channels.

    Returns
    -------
    loss : float
    ubar : ndarray, shape (N, C, H, W), float32
    mbar : ndarray, the shape of ``m_T``, float32
    """
    _check("u_T", u_T, 4)
    _check("gu", gu, 4)
    mdim = m_T.ndim if isinstance(m_T, np.ndarray) and m_T.ndim in (3, 4) else 3
    _check("m_T", m_T, mdim)
    _check("gm", gm, mdim)
    N, C, H, W = u_T.shape
    mshape = (N, H, W) if mdim == 3 else (N, m_T.shape[1], H, W)
    if gu.shape != u_T.shape or m_T.shape != mshape or gm.shape != mshape or 0 in mshape:
        raise ValueError("u_T, gu must be (N, C, H, W) and m_T, gm (N, H, W) or (N, C_m, H, W) "
                         "of one batch")
    scale = loss_scale(N, H, W)
    f_u, f_m = output_grad_factors(scale)
    L = _launcher(tiling)
    arrs = [cuda.to_device(a, stream=L.stream) for a in (u_T, gu, m_T, gm)]
    ub = cuda.device_array(u_T.shape, np.float32, stream=L.stream)
    mb = cuda.device_array(m_T.shape, np.float32, stream=L.stream)
    part = cuda.device_array((L.tl.red_blocks, 2), np.float64, stream=L.stream)
    L.loss(*arrs, ub, mb, f_u, f_m, part)
    part_h, ub_h, mb_h = _finish(L, part, ub, mb)
    s = part_h.sum(axis=0)
    return loss_from_sums(s[0], s[1], scale), ub_h, mb_h
