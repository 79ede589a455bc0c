"""The one place where the compute backend is chosen.

``get_backend("cpu")`` runs the Numba ``@njit`` kernels; ``get_backend("cuda")`` the
``numba.cuda`` kernels of :mod:`vnumba.vn.gpu` (optional extra ``pip install -e .[cuda]``).
The CPU path never imports anything that needs a GPU driver; asking for ``cuda`` without a
usable GPU raises :class:`BackendUnavailable` with the reason.

Both backends run any network of :mod:`vnumba.vn.networks` that lists them among its
``devices`` (:func:`run_network`), and train it through one interface, :class:`Trainer`.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from vnumba.vn.networks import get_network

__all__ = ["BackendUnavailable", "get_backend", "BACKENDS", "Trainer", "run_network"]

BACKENDS = ("cpu", "cuda")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine."""


@runtime_checkable
class Trainer(Protocol):
    """What the training loop asks of a backend's trainer (:meth:`CPUBackend.trainer`, the
    CUDA engine's ``CudaTrainer``).

    Attributes
    ----------
    lr : float
        Adam's step size for the next :meth:`step`; the loop sets it every iteration (the
        schedule).
    """

    lr: float

    def step(self, u0, gu, gm):
        """One iteration on a batch: ``(loss, u_T, m_T)`` before the update; updates the
        parameters (Adam, then the projections)."""

    def params(self) -> dict:
        """The current parameters (host arrays)."""

    def optimizer_state(self) -> dict:
        """Adam's moments and step count, as a checkpoint stores them."""

    def load_optimizer_state(self, d: dict) -> None:
        """Continue from a checkpoint's :meth:`optimizer_state`."""


class CPUTrainer:
    """One training iteration on the CPU: loss and exact gradient, Adam, projection
    (a :class:`Trainer`).

    Parameters
    ----------
    arch : str
        A name of :data:`vnumba.vn.networks.NETWORKS`.
    cfg : ModelConfig or UNetConfig
    params : dict of ndarray
        Updated in place.
    lr, beta1, beta2, eps : float
        Adam settings.
    mask_weights : sequence of float, optional
        Class weights of the loss's mask term (:func:`vnumba.ops.loss.check_mask_weights`);
        default the article's loss.
    """

    def __init__(self, arch, cfg, params, lr, beta1=0.9, beta2=0.999, eps=1e-8, mask_weights=None):
        from vnumba.ops.loss import check_mask_weights
        from vnumba.ops.optim import Adam
        net = get_network(arch)
        self.arch, self.cfg, self._params = arch, cfg, params
        self.mask_weights = check_mask_weights(mask_weights, getattr(cfg, "n_mask", 1))
        self._loss_and_grad = net.loss_and_grad
        self.opt = Adam(lr, beta1, beta2, eps, project=lambda p: net.project(p, cfg))

    @property
    def lr(self) -> float:
        return self.opt.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.opt.lr = float(value)

    def step(self, u0, gu, gm):
        """Returns ``(loss, u_T, m_T)`` before the update; updates the parameters."""
        kw = {} if self.mask_weights is None else {"mask_weights": self.mask_weights}
        loss, grads, u_T, m_T = self._loss_and_grad(self._params, self.cfg, u0, gu, gm, **kw)
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
    def forward(params, cfg, u0, m0=None, arch="vn"):
        """The network ``arch`` on the CPU (inputs as :func:`run_network` passes them)."""
        return get_network(arch).forward(params, cfg, u0, m0)

    @staticmethod
    def trainer(arch, cfg, params, lr, **kw) -> Trainer:
        return CPUTrainer(arch, cfg, params, lr, **kw)


class CUDABackend:
    name = "cuda"

    def __init__(self, engine):
        self._engine = engine

    @staticmethod
    def _check(arch, what):
        if "cuda" not in get_network(arch).devices:
            raise BackendUnavailable(f"the cuda backend {what} the variational network only, not {arch!r}")

    def forward(self, params, cfg, u0, m0=None, arch="vn"):
        """The network ``arch`` on the GPU (the variational network only)."""
        self._check(arch, "runs")
        return self._engine.forward(params, cfg, u0, m0)

    def trainer(self, arch, cfg, params, lr, **kw) -> Trainer:
        self._check(arch, "trains")
        return self._engine.CudaTrainer(cfg, params, lr, **kw)


def run_network(arch, cfg, params, u0, m0=None, device="cpu"):
    """Run a network on a batch on the chosen backend, after checking the input.

    Parameters
    ----------
    arch : str
        A name of :data:`vnumba.vn.networks.NETWORKS`.
    cfg : the network's config
    params : dict of ndarray
    u0 : ndarray, shape (N, C, H, W), values in [0, 1]
        Converted to the parameters' dtype; C must be the config's channel count and every
        value finite (``ValueError`` otherwise).
    m0 : ndarray, optional
        Initial mask (the variational network; ignored by the U-Net).
    device : {"cpu", "cuda"}
        The backend (:func:`get_backend`); it must be one of the network's ``devices``.

    Returns
    -------
    u : ndarray, shape (N, C, H, W)
    m : ndarray, shape (N, H, W), or (N, C_m, H, W) for ``cfg.n_mask = C_m > 1``
    """
    a = np.asarray(u0)
    if a.ndim != 4 or 0 in a.shape:
        raise ValueError(f"u0 must have shape (N, C, H, W) with no empty axis, got {a.shape}")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"u0 must be a numeric array, got {a.dtype}")
    want = getattr(cfg, "n_channels", None)
    if want is not None and a.shape[1] != int(want):
        raise ValueError(f"u0 has {a.shape[1]} channels, the model expects {want}")
    if not np.all(np.isfinite(a)):
        raise ValueError("u0 contains NaN or inf")
    dtype = next(iter(params.values())).dtype
    u0 = np.ascontiguousarray(a, dtype=dtype)
    net = get_network(arch)
    if device not in net.devices:
        raise ValueError(f"the {arch!r} model runs on the {'/'.join(net.devices)} only, not {device!r}")
    return get_backend(device).forward(params, cfg, u0, m0, arch=arch)


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
