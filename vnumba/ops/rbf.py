"""Gaussian radial-basis pointwise functions (CPU, Numba).

Each feature channel ``c`` has its own function

    phi_c(x) = sum_j w[c, j] * G_j(x),   G_j(x) = exp(-(x - mu_j)^2 / (2 sigma^2)),

with ``n_w`` centres ``mu_j = rbf_min + j * h`` equally spaced on ``[rbf_min, rbf_max]`` and
``sigma = rbf_sigma_factor * h`` (article, section 2; 31 centres on [-1.2, 1.2]).

Only the ``2 * radius + 1`` centres nearest to ``x`` are evaluated: the others are below
``exp(-radius^2 / (2 f^2))`` (f = sigma factor), and evaluating them blindly costs time
and produces denormal floats (``docs/method`` §5).  With the nearest centre ``j0``,
``x = mu_{j0} + δ h`` and ``s = h / sigma``, the Gaussians of the window factor as

    G_{j0+k}(x) = A B^k exp(-k^2 s^2 / 2),   A = exp(-δ^2 s^2 / 2),   B = exp(δ s^2),

so each value needs two exponentials, not ``2 radius + 1``, and ``phi`` is ``A`` times a
polynomial in ``B`` and ``1/B`` whose coefficients ``w[c, j0 + k] exp(-k^2 s^2 / 2)`` are
tabulated per channel and centre; the kernels (:mod:`vnumba.ops.fused`) evaluate it by Horner's
rule, derivatives carried along (``docs/gradients.md`` §2).  Both exponentials have arguments
in ``[-1/2, 1/2]`` (after squarings for narrow Gaussians) and are Taylor polynomials exact to
double rounding.

Derivatives: ``G_j' = -G_j d_j / sigma``, ``G_j'' = G_j (d_j^2 - 1) / sigma^2``.

Shapes: values ``(N, F, H, W)``, weights ``(F, n_w)``.
"""
from __future__ import annotations

import numpy as np

from vnumba.ops.fused import (
    CONV_VECS,
    _corr_rbf_tiled,
    _rbf_apply_rows,
    _rbf_wgrad_rows,
    pack_filters,
    rbf_constants,
    rbf_lookup_tables,
    rbf_tables,
    tap_offsets,
)

__all__ = ["RBFGrid", "rbf_apply", "conv_rbf_apply", "rbf_weight_grad", "rbf_basis"]


class RBFGrid:
    """Centres and width of the RBF expansion taken from a :class:`~vnumba.vn.config.ModelConfig`."""

    def __init__(self, cfg):
        self.mu0 = float(cfg.rbf_min)
        self.h = float(cfg.rbf_spacing)
        self.sigma = float(cfg.rbf_sigma)
        self.n_w = int(cfg.n_w)
        self.radius = int(min(cfg.rbf_radius, cfg.n_w))

    @property
    def centres(self):
        return self.mu0 + self.h * np.arange(self.n_w)


def _check(name, a, ndim, dtype=None):
    if not isinstance(a, np.ndarray) or a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d ndarray, got {getattr(a, 'shape', type(a))}")
    if a.dtype.type not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def rbf_apply(x, w, grid, order=2, out=None, offset=0):
    """Evaluate the per-channel RBF functions and derivatives.

    Parameters
    ----------
    x : ndarray, shape (N, F, H, W), float32/float64, C-contiguous
    w : ndarray, shape (F, n_w), same dtype
    grid : RBFGrid
    order : {0, 1, 2}
        Highest derivative returned.
    out : ndarray, shape (N, F_out, H, W), optional
        C-contiguous array of the same dtype that receives ``phi`` in channels
        ``offset .. offset + F - 1`` (the network writes ``phi^u`` and ``phi^m`` straight
        into the concatenated feature array this way).
    offset : int
        First channel of ``out`` written.

    Returns
    -------
    tuple of ndarray, shape (N, F, H, W) each
        ``(phi(x),)``, ``(phi, phi')`` or ``(phi, phi', phi'')``; with ``out``, ``phi`` is
        the view ``out[:, offset:offset + F]``.
    """
    _check("x", x, 4)
    _check("w", w, 2, x.dtype)
    if w.shape != (x.shape[1], grid.n_w):
        raise ValueError(f"weights shape {w.shape} != (channels {x.shape[1]}, n_w {grid.n_w})")
    if order not in (0, 1, 2):
        raise ValueError("order must be 0, 1 or 2")
    v0, phi, offset, v1, v2 = _outputs(x.shape, x.dtype, order, out, offset)
    tab, ptab, cst, m = _tables(w, grid, x.dtype)
    _rbf_apply_rows(x, tab, ptab, cst, m, grid.radius, order, v0, offset, v1, v2)
    return (phi, v1, v2)[: order + 1]


def _tables(w, grid, dtype):
    """Horner and look-up tables and constants of the kernels for weights ``w`` (F, n_w)."""
    cst, m = rbf_constants(grid, dtype)
    tab = rbf_tables(w, grid, dtype)
    ptab = rbf_lookup_tables(tab, grid.radius)
    if ptab is None:
        ptab = np.zeros((w.shape[0], 1), dtype)  # no look-up tables: the scalar chains
    return tab.reshape(w.shape[0], -1), ptab, cst, m


def _outputs(shape, dtype, order, out, offset):
    """``v0, phi, offset, v1, v2`` of the kernels for values of ``shape`` (N, F, H, W)."""
    N, F, H, W = shape
    if out is None:
        v0 = np.empty(shape, dtype)
        offset = 0
        phi = v0
    else:
        _check("out", out, 4, dtype)
        offset = int(offset)
        if (out.shape[0], out.shape[2], out.shape[3]) != (N, H, W) or offset < 0 \
                or offset + F > out.shape[1]:
            raise ValueError(f"out of shape {out.shape} cannot take {F} channels of {tuple(shape)} "
                             f"at offset {offset}")
        v0 = out
        phi = out[:, offset:offset + F]
    # unused outputs are placeholders the kernels never write
    v1 = np.empty(shape, dtype) if order >= 1 else v0[:0]
    v2 = np.empty(shape, dtype) if order >= 2 else v0[:0]
    return v0, phi, offset, v1, v2


def conv_rbf_apply(x, k, w, grid, order=1, out=None, offset=0, keep_conv=False):
    """``phi(K x)`` and its derivatives, the activation fused into the convolution.

    The same values as ``rbf_apply(conv_forward(x, k), w, grid, order, out, offset)``, bit
    for bit (the same kernels' arithmetic), but every output row of ``K x`` is taken
    through the activation while it is still in L1: ``K x`` is never written to memory and
    read back (it is written only with ``keep_conv``, for a backward pass that needs it).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32/float64, C-contiguous
    k : ndarray, shape (F, C, ks, ks), same dtype, ks odd (symmetric padding, "same" size)
    w : ndarray, shape (F, n_w), same dtype
    grid : RBFGrid
    order : {0, 1, 2}
    out, offset
        As :func:`rbf_apply`: ``phi`` into channels ``offset .. offset + F - 1`` of ``out``.
    keep_conv : bool
        Also return ``K x`` (first).

    Returns
    -------
    tuple of ndarray, shape (N, F, H, W) each
        ``([K x,] phi[, phi'[, phi'']])``.
    """
    from vnumba.ops.conv import _check_array, _check_kernel, pad_symmetric

    _check_array("x", x, 4)
    F, C, ks = _check_kernel(k, x.shape[1])
    _check_array("kernel", k, 4, x.dtype)
    _check("w", w, 2, x.dtype)
    if w.shape != (F, grid.n_w):
        raise ValueError(f"weights shape {w.shape} != (channels {F}, n_w {grid.n_w})")
    if order not in (0, 1, 2):
        raise ValueError("order must be 0, 1 or 2")
    N, _, H, W = x.shape
    v0, phi, offset, v1, v2 = _outputs((N, F, H, W), x.dtype, order, out, offset)
    tab, ptab, cst, m = _tables(w, grid, x.dtype)
    xp = pad_symmetric(x, ks // 2)
    Hp, Wp = xp.shape[2:]
    kt, orow = pack_filters(k)
    conv = np.empty((N, F, H, W) if keep_conv else (0, 0, H, W), x.dtype)
    _corr_rbf_tiled(xp.reshape(N, C * Hp * Wp), Wp, tap_offsets(C, Hp, Wp, ks), kt, orow,
                    CONV_VECS, conv, bool(keep_conv), tab, ptab, cst, m, grid.radius, order,
                    v0, offset, v1, v2)
    res = (phi, v1, v2)[: order + 1]
    return (conv,) + res if keep_conv else res


def rbf_weight_grad(x, c0, c1, grid):
    """Gradient of ``sum(c0 * phi(x) + c1 * phi'(x))`` with respect to the weights.

    Parameters
    ----------
    x, c0 : ndarray, shape (N, F, H, W), same dtype
    c1 : ndarray of the same shape, or None (treated as zero)
    grid : RBFGrid

    Returns
    -------
    ndarray, shape (F, n_w)
        ``out[c, j] = sum_{n,p,q} c0 G_j(x) + c1 G_j'(x)``.
    """
    _check("x", x, 4)
    _check("c0", c0, 4, x.dtype)
    if c0.shape != x.shape:
        raise ValueError("c0 must have the shape of x")
    use_c1 = c1 is not None
    if use_c1:
        _check("c1", c1, 4, x.dtype)
        if c1.shape != x.shape:
            raise ValueError("c1 must have the shape of x")
    else:
        c1 = c0
    cst, m = rbf_constants(grid, x.dtype)
    r = grid.radius
    P = 2 * r + 1
    cells = grid.n_w + 2 * P
    acc = np.empty((x.shape[1], cells, P), dtype=np.float64)
    _rbf_wgrad_rows(x, c0, c1, use_c1, cst, m, r, acc)
    # fold: out[c, jb + k] += exp(-k² s²/2) acc[c, jb, k + r]
    k = np.arange(-r, r + 1)
    acc *= np.exp(-0.5 * k * k * (grid.h / grid.sigma) ** 2)
    out = np.zeros((x.shape[1], cells + 2 * r))
    for i in range(P):
        out[:, i:i + cells] += acc[:, :, i]
    return out[:, r + P:r + P + grid.n_w].astype(x.dtype)


def rbf_basis(x, grid):
    """All Gaussians ``G_j(x)`` (a slow, exact helper for initialisation and tests).

    Parameters
    ----------
    x : array_like
    grid : RBFGrid

    Returns
    -------
    ndarray, shape ``x.shape + (n_w,)``, float64
    """
    x = np.asarray(x, dtype=np.float64)[..., None]
    return np.exp(-0.5 * ((x - grid.centres) / grid.sigma) ** 2)
