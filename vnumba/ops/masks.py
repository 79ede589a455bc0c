"""Mask operators: the disc concentration of the density rules (scenarios 1 and 2), shared by
the generator (``synth.masks``) and the evaluation on real annotations; the pixel count of
every label of an instance map (objects and nucleus classes).

Concentration rule (scenarios 1 and 2)
--------------------------------------
For an object (cell) with centre ``c`` let ``D`` be the set of pixels of the image whose
centres lie in the closed disc of radius ``R`` around ``round(c)`` (pixels outside the image
are not part of ``D``).  The *concentration* of a reference category in that disc is::

    |{p in D : p is covered by a cell of the reference category}| / |D|

i.e. the fraction of the disc's pixels covered by such cells (a cell's own pixels count when
it belongs to the reference category).  A target cell enters the mask when its
concentration is **strictly greater** than the threshold; the mask is the set of its pixels.
"""
from __future__ import annotations

import numpy as np

__all__ = ["disc_offsets", "disc_concentration", "label_areas"]


def disc_offsets(radius: float) -> np.ndarray:
    """Integer offsets (m, 2) (dy, dx) with ``dy**2 + dx**2 <= radius**2``."""
    r = int(np.floor(radius))
    d = np.arange(-r, r + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    keep = dy * dy + dx * dx <= radius * radius
    return np.stack([dy[keep], dx[keep]], axis=1)


def disc_concentration(coverage, centers, radius: float) -> np.ndarray:
    """Fraction of each disc's in-image pixels that are covered.

    Parameters
    ----------
    coverage : ndarray (H, W) bool
    centers : array_like (n, 2) float
        (row, col); rounded to the nearest pixel (halves round up).
    radius : float
        Disc radius in pixels (> 0).

    Returns
    -------
    ndarray (n,) float64
    """
    cov = np.asarray(coverage)
    if cov.ndim != 2 or cov.dtype != np.bool_:
        raise TypeError("coverage must be a 2-D bool array")
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(c)):
        raise ValueError("centers contain NaN or inf")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    H, W = cov.shape
    r = int(np.floor(radius))
    d = np.arange(-r, r + 1)
    disc = (d[:, None] ** 2 + d[None, :] ** 2) <= radius * radius
    # integral images make each disc an exact masked sum over its bounding window
    out = np.empty(c.shape[0])
    pad = np.zeros((H + 2 * r, W + 2 * r), dtype=np.int8)
    inside = np.zeros_like(pad)
    pad[r:r + H, r:r + W] = cov
    inside[r:r + H, r:r + W] = 1
    for k, (cy, cx) in enumerate(c):
        iy, ix = int(np.floor(cy + 0.5)), int(np.floor(cx + 0.5))
        y0, x0 = iy, ix  # window origin in padded coordinates = (iy - r) + r
        if iy < -r or ix < -r or iy >= H + r or ix >= W + r:
            out[k] = 0.0
            continue
        win_c = pad[max(0, y0):y0 + 2 * r + 1, max(0, x0):x0 + 2 * r + 1]
        win_i = inside[max(0, y0):y0 + 2 * r + 1, max(0, x0):x0 + 2 * r + 1]
        dsc = disc[max(0, -y0):max(0, -y0) + win_c.shape[0], max(0, -x0):max(0, -x0) + win_c.shape[1]]
        n_in = int(np.count_nonzero(win_i[dsc]))
        out[k] = np.count_nonzero(win_c[dsc]) / n_in if n_in else 0.0
    return out


def label_areas(labels: np.ndarray):
    """Every label's pixel count.

    Parameters
    ----------
    labels : ndarray int (H, W)
        0 is background.

    Returns
    -------
    flat : ndarray int64 (H * W,)
        The labels, flattened.
    area : ndarray int64 (max label + 1,)
        Pixels of each label value (``area[0]``: background).

    Raises
    ------
    ValueError
        For a negative label.
    """
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    flat = labels.ravel().astype(np.int64)
    return flat, np.bincount(flat, minlength=int(flat.max()) + 1 if flat.size else 1)
