"""The one place where the compute backend is chosen.

``get_backend("cpu")`` runs the Numba ``@njit`` kernels; ``get_backend("cuda")`` the
``numba.cuda`` kernels of :mod:`vnumba.vn.gpu` (optional extra ``pip install -e .[cuda]``).
The CPU path never imports anything that needs a GPU driver; asking for ``cuda`` without a
usable GPU raises :class:`BackendUnavailable` with the reason.
"""
from __future__ import annotations

import numpy as np

__all__ = ["BackendUnavailable", "get_backend", "BACKENDS"]

BACKENDS = ("cpu", "cuda")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine."""


class CPUTrainer:
    """One training iteration on the CPU: loss and exact gradient, Adam, projection.

    Parameters
    ----------
    arch : {"vn", "unet"}
    cfg : ModelConfig or UNetConfig
    params : dict of ndarray
        Updated in place.
    lr, beta1, beta2, eps : float
        Adam settings.
    """

    def __init__(self, arch, cfg, params, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        from vnumba.ops.optim import Adam
        self.arch, self.cfg, self._params = arch, cfg, params
        if arch == "vn":
            from vnumba.ops.projections import project_params
            from vnumba.vn import model
            self._loss_and_grad = model.loss_and_grad
            project = lambda p: project_params(p, cfg)  # noqa: E731
        elif arch == "unet":
            from vnumba.unet import network as unet
            self._loss_and_grad = unet.loss_and_grad
            project = lambda p: unet.project(p, cfg)  # noqa: E731
        else:
            raise ValueError(f"unknown architecture {arch!r}")
        self.opt = Adam(lr, beta1, beta2, eps, project=project)

    def step(self, u0, gu, gm):
        """Returns ``(loss, u_T, m_T)`` before the update; updates the parameters."""
        loss, grads, u_T, m_T = self._loss_and_grad(self._params, self.cfg, u0, gu, gm)
        self.update(loss, grads)
        return loss, u_T, m_T

    def update(self, loss, grads):
        """Adam and the projections with gradients computed elsewhere (the sum of the shards'
        gradients of data-parallel training, :mod:`vnumba.training.parallel`)."""
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss}")
        self.opt.step(self._params, grads)

    def params(self):
        return self._params

    def optimizer_state(self):
        return self.opt.state_dict()

    def load_optimizer_state(self, d):
        self.opt.load_state_dict(d)


class CPUBackend:
    name = "cpu"

    @staticmethod
    def forward(params, cfg, u0, m0=None):
        from vnumba.vn import model
        return model.forward(params, cfg, u0, m0)

    @staticmethod
    def trainer(arch, cfg, params, lr, **kw):
        return CPUTrainer(arch, cfg, params, lr, **kw)


class CUDABackend:
    name = "cuda"

    def __init__(self, engine):
        self._engine = engine

    def forward(self, params, cfg, u0, m0=None):
        return self._engine.forward(params, cfg, u0, m0)

    def trainer(self, arch, cfg, params, lr, **kw):
        if arch != "vn":
            raise BackendUnavailable(f"the cuda backend trains the variational network only, not {arch!r}")
        return self._engine.CudaTrainer(cfg, params, lr, **kw)


def get_backend(name: str = "cpu"):
    """Return the backend object for ``name`` (``"cpu"`` or ``"cuda"``).

    Raises
    ------
    ValueError
        Unknown name.
    BackendUnavailable
        ``"cuda"`` without numba-cuda installed or without a usable GPU.
    """
    if name == "cpu":
        return CPUBackend()
    if name == "cuda":
        try:
            from vnumba.vn.gpu import engine
        except ImportError as e:
            raise BackendUnavailable(
                f"the cuda backend needs the optional extra: pip install -e .[cuda] ({e})") from None
        ok, reason = engine.is_available()
        if not ok:
            raise BackendUnavailable(f"no usable NVIDIA GPU for the cuda backend: {reason}")
        return CUDABackend(engine)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
