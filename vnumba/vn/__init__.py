"""Layer 2 — the coupled variational network: :mod:`~vnumba.vn.config` (frozen config,
parameter shapes), :mod:`~vnumba.vn.model` (one step of eq. (1), the unrolled forward pass,
the hand-derived backward pass, written over :mod:`vnumba.ops`), :mod:`~vnumba.vn.backend`
(the one place where CPU or GPU is chosen) and :mod:`~vnumba.vn.gpu` (the same network as
``numba.cuda`` kernels, imported lazily).  Imports :mod:`vnumba.ops` and :mod:`vnumba.unet`."""
