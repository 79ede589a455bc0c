"""Fast marching (Eikonal travel times), region decompositions and random velocity fields.

The solver is Sethian's first-order fast marching method on the pixel grid (4-neighbours,
grid spacing 1): it computes the unique solution ``T`` of the upwind (Godunov) discretisation
of ``|grad T| * speed = 1`` with ``T = 0`` on the source pixels, accepting pixels in order of
increasing ``T`` from a binary heap.  Every accepted pixel also inherits the *label* of the
accepted neighbour it was reached from, which gives a fast-marching region decomposition
(each seed's region is where its front arrives first) in the same single pass.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .noise import gaussian_random_field

__all__ = ["travel_time", "fmm_labels", "fmm_regions", "voronoi_labels", "random_speed_field",
           "region_boundaries", "grow"]


@njit(cache=True, inline="always")
def _heap_push(hv, hi, n, v, idx):
    i = n
    hv[i] = v
    hi[i] = idx
    while i > 0:
        p = (i - 1) >> 1
        if hv[p] <= hv[i]:
            break
        hv[p], hv[i] = hv[i], hv[p]
        hi[p], hi[i] = hi[i], hi[p]
        i = p
    return n + 1


@njit(cache=True, inline="always")
def _heap_pop(hv, hi, n):
    v = hv[0]
    idx = hi[0]
    n -= 1
    hv[0] = hv[n]
    hi[0] = hi[n]
    i = 0
    while True:
        l = 2 * i + 1
        if l >= n:
            break
        c = l
        if l + 1 < n and hv[l + 1] < hv[l]:
            c = l + 1
        if hv[i] <= hv[c]:
            break
        hv[c], hv[i] = hv[i], hv[c]
        hi[c], hi[i] = hi[i], hi[c]
        i = c
    return v, idx, n


@njit(cache=True)
def _local_update(T, known, speed, i, j, H, W):
    inf = np.inf
    a = inf
    if i > 0 and known[i - 1, j]:
        a = T[i - 1, j]
    if i < H - 1 and known[i + 1, j] and T[i + 1, j] < a:
        a = T[i + 1, j]
    b = inf
    if j > 0 and known[i, j - 1]:
        b = T[i, j - 1]
    if j < W - 1 and known[i, j + 1] and T[i, j + 1] < b:
        b = T[i, j + 1]
    f = 1.0 / speed[i, j]
    if a > b:
        a, b = b, a
    if a == inf:
        return inf
    if b - a >= f:
        return a + f
    return 0.5 * (a + b + np.sqrt(2.0 * f * f - (a - b) * (a - b)))


@njit(cache=True)
def _fmm(speed, T, labels, max_time):
    # T: 0 on sources, inf elsewhere (in/out); labels: source labels (>= 0) on sources, -1
    # elsewhere (in/out).  Pixels with T > max_time stay inf / -1.
    H, W = T.shape
    known = np.zeros((H, W), dtype=np.bool_)
    cap = 4 * H * W + 8
    hv = np.empty(cap, dtype=np.float64)
    hi = np.empty(cap, dtype=np.int64)
    n = 0
    for i in range(H):
        for j in range(W):
            if T[i, j] == 0.0:
                n = _heap_push(hv, hi, n, 0.0, i * W + j)
    di = (-1, 1, 0, 0)
    dj = (0, 0, -1, 1)
    while n > 0:
        v, idx, n = _heap_pop(hv, hi, n)
        i = idx // W
        j = idx - i * W
        if known[i, j] or v > T[i, j]:
            continue  # stale heap entry
        if v > max_time:
            break
        known[i, j] = True
        if labels[i, j] < 0:
            # inherit the label of the accepted neighbour with the smallest time
            best = np.inf
            for k in range(4):
                ii = i + di[k]
                jj = j + dj[k]
                if 0 <= ii < H and 0 <= jj < W and known[ii, jj] and T[ii, jj] < best:
                    best = T[ii, jj]
                    labels[i, j] = labels[ii, jj]
        for k in range(4):
            ii = i + di[k]
            jj = j + dj[k]
            if 0 <= ii < H and 0 <= jj < W and not known[ii, jj]:
                t = _local_update(T, known, speed, ii, jj, H, W)
                if t < T[ii, jj]:
                    T[ii, jj] = t
                    n = _heap_push(hv, hi, n, t, ii * W + jj)
    for i in range(H):
        for j in range(W):
            if not known[i, j]:
                T[i, j] = np.inf
                labels[i, j] = -1


def _check_speed(speed, shape=None) -> np.ndarray:
    s = np.asarray(speed, dtype=np.float64)
    if shape is not None and s.ndim == 0:
        s = np.full(shape, float(s))
    if s.ndim != 2:
        raise ValueError(f"speed must be a 2-D array, got shape {s.shape}")
    if shape is not None and s.shape != tuple(shape):
        raise ValueError(f"speed shape {s.shape} does not match {tuple(shape)}")
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise ValueError("speed must be finite and > 0 everywhere")
    return np.ascontiguousarray(s)


def fmm_labels(source_labels, speed, max_time: float = np.inf):
    """Travel time and first-arrival labels from labelled sources.

    Parameters
    ----------
    source_labels : ndarray (H, W) of int
        Label >= 0 on source pixels (where ``T = 0``), -1 elsewhere.
    speed : ndarray (H, W) or float
        Front speed (> 0, finite), pixels per unit time.
    max_time : float
        Stop once every pixel with ``T <= max_time`` is accepted; others get ``inf`` / -1.

    Returns
    -------
    T : ndarray (H, W) float64
    labels : ndarray (H, W) int32
    """
    lab = np.asarray(source_labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"source_labels must be a 2-D integer array, got {lab.dtype} {lab.shape}")
    if not np.any(lab >= 0):
        raise ValueError("source_labels has no source pixel (label >= 0)")
    s = _check_speed(speed, lab.shape)
    if not (max_time >= 0):
        raise ValueError(f"max_time must be >= 0, got {max_time!r}")
    labels = np.ascontiguousarray(np.where(lab >= 0, lab, -1).astype(np.int32))
    T = np.where(labels >= 0, 0.0, np.inf)
    _fmm(s, T, labels, float(max_time))
    return T, labels


def travel_time(sources, speed, max_time: float = np.inf) -> np.ndarray:
    """First-order fast-marching solution of ``|grad T| speed = 1``, ``T = 0`` on ``sources``.

    Parameters
    ----------
    sources : ndarray (H, W) of bool
        Initial front (at least one pixel).
    speed : ndarray (H, W) or float
        Speed > 0 (pixels per unit time); constant speed 1 gives (approximate) Euclidean
        distance in pixels.
    max_time : float
        Pixels farther than this are left at ``inf`` (saves time).

    Returns
    -------
    ndarray (H, W) float64
    """
    src = np.asarray(sources)
    if src.ndim != 2 or src.dtype != np.bool_:
        raise TypeError(f"sources must be a 2-D bool array, got {src.dtype} {src.shape}")
    return fmm_labels(np.where(src, 0, -1), speed, max_time)[0]


def grow(initial, speed, max_time: float) -> np.ndarray:
    """Pixels reached from ``initial`` within ``max_time`` (bool (H, W)); e.g. cell growth."""
    return np.isfinite(travel_time(initial, speed, max_time))


def fmm_regions(seeds, speed) -> np.ndarray:
    """Fast-marching region decomposition: label of the seed whose front arrives first.

    Parameters
    ----------
    seeds : array_like (k, 2) of int
        (row, col) seed pixels, inside the image; duplicates keep the lowest index.
    speed : ndarray (H, W)
        Velocity field (> 0).

    Returns
    -------
    ndarray (H, W) int32 in ``0 .. k-1``
    """
    s = _check_speed(speed)
    sd = np.asarray(seeds)
    if sd.ndim != 2 or sd.shape[1] != 2 or sd.shape[0] < 1:
        raise ValueError(f"seeds must have shape (k, 2), k >= 1, got {sd.shape}")
    sd = np.round(sd).astype(np.int64)
    H, W = s.shape
    if np.any(sd < 0) or np.any(sd[:, 0] >= H) or np.any(sd[:, 1] >= W):
        raise ValueError("seeds must lie inside the image")
    src = np.full((H, W), -1, dtype=np.int32)
    for k in range(sd.shape[0] - 1, -1, -1):
        src[sd[k, 0], sd[k, 1]] = k
    return fmm_labels(src, s)[1]


def voronoi_labels(shape, seeds) -> np.ndarray:
    """Voronoi tessellation: index of the nearest seed (Euclidean) for every pixel centre.

    Parameters
    ----------
    shape : tuple (H, W)
    seeds : array_like (k, 2) float
        (row, col) seed positions (may be sub-pixel or outside the image).

    Returns
    -------
    ndarray (H, W) int32; ties go to the lowest seed index.
    """
    H, W = (int(v) for v in shape)
    sd = np.asarray(seeds, dtype=np.float64)
    if sd.ndim != 2 or sd.shape[1] != 2 or sd.shape[0] < 1:
        raise ValueError(f"seeds must have shape (k, 2), k >= 1, got {sd.shape}")
    if not np.all(np.isfinite(sd)):
        raise ValueError("seeds contain NaN or inf")
    out = np.empty((H, W), dtype=np.int32)
    yy = np.arange(H, dtype=np.float64)[:, None, None]
    xx = np.arange(W, dtype=np.float64)[None, :, None]
    step = max(1, int(4_000_000 // max(1, W * sd.shape[0])))
    for r0 in range(0, H, step):
        d = (yy[r0:r0 + step] - sd[:, 0]) ** 2 + (xx - sd[:, 1]) ** 2
        out[r0:r0 + step] = np.argmin(d, axis=-1)
    return out


def random_speed_field(rng: np.random.Generator, shape, mean: float = 1.0, std: float = 0.3,
                       corr: float = 10.0, minimum: float = 0.05) -> np.ndarray:
    """Random velocity field ``max(mean + std * Z, minimum)``, Z a unit Gaussian field.

    Returns
    -------
    ndarray (H, W) float64, all values >= ``minimum`` > 0.
    """
    if not minimum > 0:
        raise ValueError("minimum speed must be > 0")
    z = gaussian_random_field(rng, shape, corr, dtype=np.float64)
    return np.maximum(mean + std * z, minimum)


def region_boundaries(labels) -> np.ndarray:
    """Pixels with a 4-neighbour of a different label (bool (H, W))."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError("labels must be 2-D")
    b = np.zeros(lab.shape, dtype=bool)
    dv = lab[1:, :] != lab[:-1, :]
    b[1:, :] |= dv
    b[:-1, :] |= dv
    dh = lab[:, 1:] != lab[:, :-1]
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b
