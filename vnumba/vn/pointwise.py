"""Fused pointwise passes of the network's backward step (private; :mod:`vnumba.vn.model`).

The backward step (article eqs. 4–6, ``docs/gradients.md`` §3) multiplies the
convolution outputs by the RBF derivatives channel by channel.  Written as NumPy expressions
those products made a temporary array per operation — for a batch of 8 at 300² a 20-channel
temporary is 58 MB — and the elementwise "glue" was 6–7 % of a training iteration once the
convolutions had become fast (``bench/README.md``).  Each kernel here makes one pass over its
inputs and writes every result once.  Every value is computed by exactly the operations, in
exactly the order, of the NumPy expression it replaces (no fast-math: the results are the
same bits); NumPy references are in ``tests/naive.py``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def _step_input_terms(f1, f2, d, g, dg, bar, dbar, c1, c0):
    """For every channel of one RBF block (``f1 = φ'``, ``f2 = φ''`` of its input, ``d`` its
    input's perturbation, ``g`` and ``dg`` the adjoint convolution of ``r`` and of ``dr``
    restricted to the block, possibly strided views):
    ``bar = f1 dg + (f2 d) g``, ``dbar = f1 g``, ``c1 = d g``, ``c0 = dg`` (contiguous)."""
    N, F, H, W = f1.shape
    for job in prange(N * F * H):
        n = job // (F * H)
        c = (job // H) % F
        p = job % H
        for q in range(W):
            a1 = f1[n, c, p, q]
            dd = d[n, c, p, q]
            gg = g[n, c, p, q]
            e = dg[n, c, p, q]
            bar[n, c, p, q] = a1 * e + f2[n, c, p, q] * dd * gg
            dbar[n, c, p, q] = a1 * gg
            c1[n, c, p, q] = dd * gg
            c0[n, c, p, q] = e


def step_input_terms(f1, f2, d, g, dg):
    """``(f1 dg + f2 d g, f1 g, d g, dg)`` in one pass, each C-contiguous, of the dtype of
    ``f1``.

    Parameters
    ----------
    f1, f2, d, g, dg : ndarray, shape (N, F, H, W), one float dtype
        ``f1``, ``f2``, ``d`` C-contiguous; ``g``, ``dg`` may be channel slices of a larger
        array (the adjoint convolution of the concatenated features).

    Returns
    -------
    bar, dbar, c1, c0 : ndarray, shape (N, F, H, W)
        The gradient with respect to the block's input (``ā`` or ``b̄``), its perturbation
        (``d̄a``), and the two coefficient fields of the RBF weight gradient.
    """
    shape, dtype = f1.shape, f1.dtype
    for name, a in (("f1", f1), ("f2", f2), ("d", d), ("g", g), ("dg", dg)):
        if a.shape != shape or a.dtype != dtype or a.ndim != 4:
            raise ValueError(f"{name}: expected shape {shape} and dtype {dtype}, got {a.shape} {a.dtype}")
    out = [np.empty(shape, dtype) for _ in range(4)]
    _step_input_terms(f1, f2, d, g, dg, *out)
    return tuple(out)


@njit(cache=True, parallel=True)
def _scaled_concat(a1, da, b1, db, out):
    """``out = concatenate([a1 da, b1 db], axis=1)`` without the two temporaries."""
    N, Fa, H, W = a1.shape
    Fb = b1.shape[1]
    for job in prange(N * (Fa + Fb) * H):
        n = job // ((Fa + Fb) * H)
        c = (job // H) % (Fa + Fb)
        p = job % H
        if c < Fa:
            for q in range(W):
                out[n, c, p, q] = a1[n, c, p, q] * da[n, c, p, q]
        else:
            for q in range(W):
                out[n, c, p, q] = b1[n, c - Fa, p, q] * db[n, c - Fa, p, q]


def scaled_concat(a1, da, b1, db):
    """``np.concatenate([a1 * da, b1 * db], axis=1)`` in one pass (the perturbation ``df`` of
    the features); shapes (N, Fa, H, W) and (N, Fb, H, W), one float dtype."""
    if a1.shape != da.shape or b1.shape != db.shape or a1.shape[0] != b1.shape[0] \
            or a1.shape[2:] != b1.shape[2:] or len({a1.dtype, da.dtype, b1.dtype, db.dtype}) != 1:
        raise ValueError(f"scaled_concat: incompatible blocks {a1.shape}, {da.shape}, {b1.shape}, {db.shape}")
    N, Fa, H, W = a1.shape
    out = np.empty((N, Fa + b1.shape[1], H, W), a1.dtype)
    _scaled_concat(a1, da, b1, db, out)
    return out
