"""Projections onto the admissible parameter set P of the article (eq. 4).

* ``λ_t >= 0`` — truncation.
* every filter of the coupling ``K_t`` — Euclidean projection onto the l1 ball
  (Duchi, Shalev-Shwartz, Singer, Chandra 2008: sort, find the threshold, soft-threshold).
* every filter of ``K^u_t``, ``K^m_t`` — projection onto ``{k : sum(k) = 0, ||k||_1 <= ρ}``.

The intersection is handled through its one-dimensional dual: by the KKT conditions the
projection of ``k0`` is ``P_B(k0 − ν·1)`` (``P_B`` = projection onto the l1 ball) for the
multiplier ``ν`` that makes the result sum to zero.  ``ν ↦ sum P_B(k0 − ν·1)`` is continuous
and non-increasing (``P_B`` is monotone) and changes sign on ``[min k0, max k0]``, so
bisection finds it to machine precision; every filter is solved independently, in parallel.
This replaces the article's accelerated gradient method with an exact dual solve
(``docs/gradients.md`` §5).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["project_l1_ball", "project_zero_mean_l1_ball", "project_params"]


@njit(cache=True)
def _l1_ball_inplace(v, radius, work):
    # Duchi et al. (2008), Fig. 1: O(n log n) by sorting |v| in decreasing order.
    n = v.shape[0]
    s = 0.0
    for i in range(n):
        s += abs(v[i])
    if s <= radius:
        return
    for i in range(n):
        work[i] = abs(v[i])
    srt = np.sort(work[:n])[::-1]
    cum = 0.0
    theta = 0.0
    for i in range(n):
        cum += srt[i]
        t = (cum - radius) / (i + 1)
        if srt[i] - t > 0.0:
            theta = t
    for i in range(n):
        a = abs(v[i]) - theta
        if a > 0.0:
            v[i] = a if v[i] > 0 else -a
        else:
            v[i] = 0.0


@njit(cache=True, parallel=True)
def _proj_l1_cpu(k, radius):
    nf = k.shape[0]
    n = k.shape[1]
    for f in prange(nf):
        work = np.empty(n, dtype=np.float64)
        v = np.empty(n, dtype=np.float64)
        for i in range(n):
            v[i] = k[f, i]
        _l1_ball_inplace(v, radius, work)
        for i in range(n):
            k[f, i] = v[i]


@njit(cache=True, parallel=True)
def _proj_zm_l1_cpu(k, radius, max_iter):
    nf = k.shape[0]
    n = k.shape[1]
    for f in prange(nf):
        work = np.empty(n, dtype=np.float64)
        v = np.empty(n, dtype=np.float64)
        k0 = np.empty(n, dtype=np.float64)
        lo = np.inf
        hi = -np.inf
        for i in range(n):
            k0[i] = k[f, i]
            lo = min(lo, k0[i])
            hi = max(hi, k0[i])
        # sum P_B(k0 - nu) >= 0 at nu = lo and <= 0 at nu = hi.
        for it in range(max_iter):
            nu = 0.5 * (lo + hi)
            for i in range(n):
                v[i] = k0[i] - nu
            _l1_ball_inplace(v, radius, work)
            s = 0.0
            for i in range(n):
                s += v[i]
            if s > 0.0:
                lo = nu
            else:
                hi = nu
            if hi - lo <= 1e-15 * (1.0 + abs(nu)):
                break
        nu = 0.5 * (lo + hi)
        for i in range(n):
            v[i] = k0[i] - nu
        _l1_ball_inplace(v, radius, work)
        # The bisection leaves |sum| at rounding level; remove it from the nonzero entries
        # (zero entries must stay zero to keep the l1 norm).
        s = 0.0
        nz = 0
        for i in range(n):
            s += v[i]
            if v[i] != 0.0:
                nz += 1
        if nz > 0:
            for i in range(n):
                if v[i] != 0.0:
                    v[i] -= s / nz
        for i in range(n):
            k[f, i] = v[i]


def _as_filters(k, filter_ndim):
    if not isinstance(k, np.ndarray) or k.dtype.type not in (np.float32, np.float64):
        raise TypeError("filters must be a float32/float64 ndarray")
    if not k.flags.c_contiguous:
        raise ValueError("filters must be C-contiguous (projected in place)")
    if k.ndim < filter_ndim or filter_ndim < 1:
        raise ValueError(f"filters must have at least {filter_ndim} dimensions")
    return k.reshape(-1, int(np.prod(k.shape[k.ndim - filter_ndim:])))


def project_l1_ball(k, radius=1.0, filter_ndim=3):
    """Project every filter of ``k`` onto the l1 ball of ``radius``, in place.

    Parameters
    ----------
    k : ndarray, shape (..., C, kh, kw), float32/float64, C-contiguous
    radius : float
    filter_ndim : int
        The trailing dimensions that form one filter (3: one output channel's kernel
        over all its input channels).

    Returns
    -------
    ndarray
        ``k`` itself.
    """
    _proj_l1_cpu(_as_filters(k, filter_ndim), float(radius))
    return k


def project_zero_mean_l1_ball(k, radius=1.0, max_iter=200, filter_ndim=3):
    """Project every filter of ``k`` onto ``{sum = 0} ∩ {||·||_1 <= radius}``, in place.

    Parameters
    ----------
    k : ndarray, shape (..., C, kh, kw), float32/float64, C-contiguous
    radius : float
    max_iter : int
        Bisection steps on the dual variable (converges to machine precision well before).
    filter_ndim : int
        As in :func:`project_l1_ball`.

    Returns
    -------
    ndarray
        ``k`` itself.
    """
    _proj_zm_l1_cpu(_as_filters(k, filter_ndim), float(radius), int(max_iter))
    return k


def project_params(params: dict, cfg) -> dict:
    """Project a full parameter dict onto the admissible set, in place.

    Notes
    -----
    A filter is one output channel's kernel over all its input channels, as in the
    article's ``K_t^{u,i}`` (i = 1..N_fu), ``K_t^{m,j}`` and ``K_t^l`` (l = 1..N_f): e.g. the
    3×11×11 kernel that makes feature ``i`` from the RGB image.  Zero mean over the whole
    filter still lets a feature respond to colour contrasts; the l1 bound over the whole
    filter keeps ``|K f| <= max|f|``, i.e. features stay inside the RBF grid.
    """
    r = cfg.l1_radius
    if cfg.zero_mean_u:
        project_zero_mean_l1_ball(params["Ku"], r)
    else:
        project_l1_ball(params["Ku"], r)
    if cfg.zero_mean_m:
        project_zero_mean_l1_ball(params["Km"], r)
    else:
        project_l1_ball(params["Km"], r)
    project_l1_ball(params["K"], r)
    np.maximum(params["lam"], 0.0, out=params["lam"])
    return params
