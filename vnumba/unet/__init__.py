"""Layer 1 — the article's U-Net baseline: :mod:`~vnumba.unet.network` (forward, hand-derived
backward, projections) over the Numba kernels of :mod:`~vnumba.unet.kernels`.  Imports only
:mod:`vnumba.ops`."""
