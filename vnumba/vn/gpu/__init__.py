"""GPU backend: the coupled variational network as ``numba.cuda`` kernels.

Importing this package imports nothing that needs a GPU driver or ``numba.cuda``;
:mod:`vnumba.vn.gpu.engine` loads the kernels on first use.  Select the backend through
:func:`vnumba.vn.backend.get_backend` (``"cuda"``), which calls
:func:`vnumba.vn.gpu.engine.is_available` and reports why a GPU cannot be used.

Modules
-------
engine
    ``is_available``, ``forward``, ``loss_and_grad``, ``step_forward``, ``step_backward`` and
    ``CudaTrainer`` (parameters, Adam moments and states stay on the device).
ops
    Host-level wrappers of every kernel family (NumPy in, NumPy out), with input checks;
    used by the tests and handy for experiments.
kernels
    The ``cuda.jit`` kernel factories (compile-time tile sizes as closure constants).
tiling
    Launch geometry: hardware defaults and tiny blocks for the CUDA simulator.

Everything on the device is float32 (Adam moments and reductions: float64).

Why ``vnumba.vn.gpu`` and not ``vnumba.cuda``: numba-cuda installs an import hook that
redirects every module whose name *contains* ``numba.cuda`` — ``vnumba.cuda`` included —
and importing such a module then fails with ``RecursionError``.
"""
