"""Target-mask rules: :func:`concentration_mask`, the concentration rule of scenarios 1 and 2.

The rule itself (the disc ``D`` around a cell, the covered fraction, "strictly greater than
the threshold") is defined once, with :func:`~vnumba.ops.masks.disc_concentration`, in
:mod:`vnumba.ops.masks`, which the evaluation on real annotations uses too.
"""
from __future__ import annotations

import numpy as np

from vnumba.ops.masks import disc_concentration, disc_offsets  # noqa: F401 (part of synth.masks)

__all__ = ["disc_offsets", "disc_concentration", "concentration_mask"]


def concentration_mask(target_labels, target_centers, reference_coverage, radius: float,
                       threshold: float, occluded=None):
    """Mask of the target cells whose disc concentration of the reference exceeds a threshold.

    Parameters
    ----------
    target_labels : ndarray (H, W) int32
        Target cell ids 1..n (0 = none).
    target_centers : array_like (n, 2)
        Centre of cell ``id`` at row ``id - 1``.
    reference_coverage : ndarray (H, W) bool
        Pixels covered by cells of the reference category.
    radius, threshold : float
    occluded : ndarray (H, W) bool, optional
        Pixels removed from the mask (e.g. covered by opaque upper layers).

    Returns
    -------
    mask : ndarray (H, W) float32 in {0, 1}
    concentration : ndarray (n,) float64
    """
    lab = np.asarray(target_labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise TypeError("target_labels must be a 2-D integer array")
    if reference_coverage.shape != lab.shape:
        raise ValueError("reference_coverage and target_labels shapes differ")
    conc = disc_concentration(reference_coverage, target_centers, radius)
    selected = np.zeros(conc.shape[0] + 1, dtype=bool)
    selected[1:] = conc > threshold
    m = selected[np.clip(lab, 0, conc.shape[0])]
    if occluded is not None:
        m &= ~np.asarray(occluded, dtype=bool)
    return m.astype(np.float32), conc
