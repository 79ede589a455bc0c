"""The CUDA training engine: forward, hand-derived backward, Adam and projections on the
device, with the same maths as :mod:`vnumba.vn.model`, :mod:`vnumba.ops.optim` and
:mod:`vnumba.ops.projections` (``docs/gradients.md``; launch design in ``docs/gpu.md``).

Public API
----------
``is_available()``
    ``(ok, reason)``; never raises.
``forward(params, cfg, u0, m0=None)``
    Prediction: ``(u_T, m_T)``.  The mask has ``cfg.n_mask = C_m`` channels, shape
    ``(N, C_m, H, W)``; a one-channel model keeps the article's ``(N, H, W)`` form, exactly as
    :mod:`vnumba.vn.model` (:func:`mask_shape`).
``loss_and_grad(params, cfg, u0, gu, gm, m0=None)``
    ``(loss, grads, u_T, m_T)`` as :func:`vnumba.vn.model.loss_and_grad`.
``step_forward(p, cfg, u, m, u0)``, ``step_backward(p, cfg, u, m, u0, ubar, mbar)``
    One step with one step's parameters, as the functions of :mod:`vnumba.vn.model`.
``CudaTrainer(cfg, params, lr, beta1, beta2, eps)``
    Keeps parameters, gradients, Adam moments and the states of the unrolled network on
    the device for a whole training run; ``step(u0, gu, gm)`` runs one iteration.

This module imports ``numba.cuda`` only when one of these is called, so importing it is
safe on any machine.  The device computes in float32: float64 inputs are rounded.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from vnumba.ops.loss import loss_from_sums, loss_scale, output_grad_factors
from vnumba.vn.config import PARAM_NAMES, ModelConfig, param_shapes

__all__ = ["is_available", "device_name", "forward", "loss_and_grad", "step_forward",
           "step_backward", "mask_shape", "CudaTrainer", "CudaUnavailable"]

_AVAILABLE = None  # cached (ok, reason) of is_available()


class CudaUnavailable(RuntimeError):
    """The CUDA backend cannot run here (no numba-cuda, no driver, no GPU, no NVVM)."""


def _import_cuda():
    with warnings.catch_warnings():
        # The built-in numba.cuda of older Numba versions warns that it is deprecated.
        warnings.simplefilter("ignore")
        from numba import cuda
    return cuda


def is_available() -> tuple:
    """Whether the CUDA backend can run, and why (not).

    Returns
    -------
    ok : bool
    reason : str
        The device name when ``ok``; otherwise what is missing (numba-cuda, the driver,
        a GPU, the NVVM compiler), with what to install.  Under the CUDA simulator
        (``NUMBA_ENABLE_CUDASIM=1`` when ``numba.cuda`` was first imported) ``ok`` is True
        and the reason says that it is the simulator.

    Notes
    -----
    Never raises.  The first successful check compiles and runs a one-element kernel, so
    a broken toolchain is reported here rather than in the middle of training.
    """
    global _AVAILABLE
    if _AVAILABLE is not None:
        return _AVAILABLE
    try:
        cuda = _import_cuda()
    except Exception as e:  # ImportError, or anything a broken installation raises
        return False, (f"numba.cuda cannot be imported ({type(e).__name__}: {e}); install the "
                       "optional extra: pip install -e .[cuda]")
    try:
        from vnumba.vn.gpu.launch import is_simulator
        if is_simulator():
            _AVAILABLE = (True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1): exact but very slow, for tests")
            return _AVAILABLE
        if not cuda.is_available():
            err = cuda.cuda_error() if hasattr(cuda, "cuda_error") else None
            msg = " ".join(str(err).split()) if err else "no CUDA-capable device is detected"
            return False, f"CUDA is not usable: {msg}"
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        cc = dev.compute_capability
        try:
            from numba.cuda.cudadrv import nvvm
            if not nvvm.is_available():
                return False, (f"{name}: the NVVM compiler (libnvvm) was not found; install "
                               "numba-cuda[cu12] (or [cu13]) or a CUDA toolkit")
        except ImportError:
            pass
        from vnumba.vn.gpu import kernels as K
        probe = cuda.to_device(np.zeros(1, np.float32))
        K.get("fill")[1, 1](probe, np.float32(1.0))
        if probe.copy_to_host()[0] != 1.0:
            return False, f"{name}: a test kernel ran but returned a wrong value"
        _AVAILABLE = (True, f"{name} (compute capability {cc[0]}.{cc[1]})")
        return _AVAILABLE
    except Exception as e:
        return False, f"CUDA is not usable: {type(e).__name__}: {' '.join(str(e).split())}"


def device_name() -> str:
    """Name of the current GPU (or the reason there is none)."""
    return is_available()[1]


def _require():
    ok, reason = is_available()
    if not ok:
        raise CudaUnavailable(f"no usable NVIDIA GPU for the cuda backend: {reason}")
    return _import_cuda()


# ----------------------------------------------------------------------------- input checks
def _check_cfg(cfg):
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a vnumba.vn.config.ModelConfig, got {type(cfg).__name__}")


def _as_f32(name, x, shape=None, ndim=None):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if shape is not None and x.shape != tuple(shape):
        raise ValueError(f"{name} has shape {x.shape}, expected {tuple(shape)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_params(params, cfg):
    if not isinstance(params, dict):
        raise TypeError("params must be a dict name -> ndarray")
    shapes = param_shapes(cfg)
    missing = [k for k in PARAM_NAMES if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise KeyError(f"parameter dict: missing {missing}, unknown {extra}")
    return {k: _as_f32(f"parameter {k}", np.asarray(params[k]), shapes[k]) for k in PARAM_NAMES}


def mask_shape(cfg, N, H, W, ndim=None) -> tuple:
    """Shape of the mask of ``N`` images of ``H × W`` pixels, as :mod:`vnumba.vn.model`:
    ``(N, H, W)`` for a one-channel model (``cfg.n_mask == 1``) unless a 4-d array was given
    (``ndim == 4``), else ``(N, C_m, H, W)`` with ``C_m = cfg.n_mask``."""
    if cfg.n_mask == 1 and ndim in (None, 3):
        return (N, H, W)
    return (N, cfg.n_mask, H, W)


def _as_mask(name, x, cfg, N, H, W):
    """A checked float32 mask of ``N`` images: ``(N, C_m, H, W)``, or ``(N, H, W)`` for a
    one-channel model (:func:`mask_shape` of its own dimension count)."""
    x = _as_f32(name, x)
    shape = mask_shape(cfg, N, H, W, x.ndim)
    if x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape} "
                         f"((N, C_m, H, W) with C_m = n_mask = {cfg.n_mask}"
                         + (", or (N, H, W)" if cfg.n_mask == 1 else "") + ")")
    return x


def _check_batch(cfg, u0, m0=None, m0_name="m0"):
    u0 = _as_f32("u0", u0, ndim=4)
    N, C, H, W = u0.shape
    if C != cfg.n_channels:
        raise ValueError(f"u0 has {C} channels, the model expects {cfg.n_channels}")
    r = max(cfg.ks_u, cfg.ks_m, cfg.ks) // 2
    if H < max(r, 1) or W < max(r, 1):
        raise ValueError(f"image {H}x{W} smaller than the largest kernel radius {r}")
    if m0 is not None:
        m0 = _as_mask(m0_name, m0, cfg, N, H, W)
    return u0, m0


def _mask4(cfg, m):
    """A host mask (``(N, H, W)`` or ``(N, C_m, H, W)``) as ``(N, C_m, H, W)`` (a view)."""
    N, H, W = m.shape[0], m.shape[-2], m.shape[-1]
    return m.reshape(N, cfg.n_mask, H, W)


# ----------------------------------------------------------------------------- device network
class _Workspace:
    """Device buffers for one batch shape ``(N, H, W)``."""

    def __init__(self, cuda, cfg, N, H, W, train, stream, launcher):
        f32 = np.float32
        C, F, Cm = cfg.n_channels, cfg.nf, cfg.n_mask
        self.shape = (N, H, W)
        self.train = train
        self.nbytes = 0

        def arr(shape, dtype=f32):
            a = cuda.device_array(shape, dtype, stream=stream)
            self.nbytes += int(np.prod(shape)) * np.dtype(dtype).itemsize
            return a

        T = cfg.n_steps
        feat = (N, F, H, W)
        nst = T + 1 if train else 2
        self.su = arr((nst, N, C, H, W))          # states u_t (forward-only: ping-pong)
        self.sm = arr((nst, N, Cm, H, W))         # mask states, C_m channels
        self.u0 = arr((N, C, H, W)) if not train else self.su[0]
        self.f, self.f1, self.r, self.h = (arr(feat) for _ in range(4))
        self.fullF = arr((N, F, H + cfg.ks - 1, W + cfg.ks - 1))
        self.fullU = arr((N, C, H + cfg.ks_u - 1, W + cfg.ks_u - 1))
        self.fullM = arr((N, Cm, H + cfg.ks_m - 1, W + cfg.ks_m - 1))
        if not train:
            return
        self.gu = arr((N, C, H, W))
        self.gm = arr((N, Cm, H, W))
        (self.pre, self.f2, self.z, self.r1, self.g, self.dpre, self.df, self.dz, self.dr,
         self.dg, self.abar) = (arr(feat) for _ in range(11))
        self.vu = arr((N, C, H, W))
        self.vm = arr((N, Cm, H, W))
        self.ub = arr((2, N, C, H, W))
        self.mb = arr((2, N, Cm, H, W))
        L = launcher
        rows, cols = [L.tl.red_blocks], [2]
        for O, Ci, ks in ((F, F, cfg.ks), (cfg.nf_u, C, cfg.ks_u), (cfg.nf_m, Cm, cfg.ks_m)):
            _, _, _, G, _, n = L.kgrad_geometry(O, Ci, ks, N, H, W)
            rows.append(G)
            cols.append(n)
        for nch in (F, cfg.nf_u, cfg.nf_m):
            rows.append(L.wgrad_blocks(nch))
            cols.append(nch * cfg.n_w)
        self.part = arr((max(rows), max(cols)))
        self.part64 = arr((L.tl.red_blocks, 2), np.float64)
        self.lossp = arr((L.tl.red_blocks, 2), np.float64)


class _Net:
    """Parameters on the device and the launch sequences of one step (forward, backward)."""

    def __init__(self, cfg, tiling, stream, train):
        from vnumba.vn.gpu.launch import Launcher, default_tiling, rbf_key

        self.cuda = cuda = _require()
        self.cfg = cfg
        self.stream = stream
        self.L = Launcher(tiling if tiling is not None else default_tiling(), stream)
        self.rbf = rbf_key(cfg)
        self.shapes = param_shapes(cfg)
        self.offsets = {}
        off = 0
        for name in PARAM_NAMES:
            self.offsets[name] = off
            off += int(np.prod(self.shapes[name]))
        self.size = off
        self.theta = cuda.device_array(off, np.float32, stream=stream)
        self.P = self._views(self.theta)
        self.nbytes = 4 * off
        if train:
            self.grad = cuda.device_array(off, np.float32, stream=stream)
            self.G = self._views(self.grad)
            self.nbytes += 4 * off
        self.ws = None

    def _views(self, flat):
        return {k: flat[self.offsets[k]:self.offsets[k] + int(np.prod(s))].reshape(s)
                for k, s in self.shapes.items()}

    def goff(self, name, t):
        """Offset of step ``t`` of parameter ``name`` in the flat buffers."""
        per = int(np.prod(self.shapes[name][1:]))
        return self.offsets[name] + t * per

    def upload(self, params):
        host = np.concatenate([params[k].ravel() for k in PARAM_NAMES])
        self.theta.copy_to_device(host, stream=self.stream)

    def download(self):
        host = self.theta.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return {k: host[self.offsets[k]:self.offsets[k] + int(np.prod(s))].reshape(s).copy()
                for k, s in self.shapes.items()}

    def workspace(self, N, H, W, train):
        if self.ws is None or self.ws.shape != (N, H, W) or self.ws.train != train:
            self.stream.synchronize()
            self.ws = None
            self.ws = _Workspace(self.cuda, self.cfg, N, H, W, train, self.stream, self.L)
        return self.ws

    # -------------------------------------------------------------- one step
    def step_forward(self, t, u, m, u0, u_out, m_out):
        """``(u_out, m_out) = step t (u, m)`` (article eq. 1), six convolutions, three folds;
        ``m`` has ``C_m = cfg.n_mask`` channels."""
        cfg, L, P, ws, rbf = self.cfg, self.L, self.P, self.ws, self.rbf
        C, Cm, Fu, Fm, F = cfg.n_channels, cfg.n_mask, cfg.nf_u, cfg.nf_m, cfg.nf
        L.conv(u, 0, C, P["Ku"], t, Fu, False, "rbf1", ws.f, ws.f1, wt=P["wu"], ooff=0, rbf=rbf)
        L.conv(m, 0, Cm, P["Km"], t, Fm, False, "rbf1", ws.f, ws.f1, wt=P["wm"], ooff=Fu, rbf=rbf)
        L.conv(ws.f, 0, F, P["K"], t, F, False, "psi0", ws.r, wt=P["w"], rbf=rbf)
        L.conv(ws.r, 0, F, P["K"], t, F, True, "store", ws.fullF)
        L.fold(ws.fullF, cfg.ks // 2, F, 0, "h", ws.h, a0=ws.f1)
        L.conv(ws.h, 0, Fu, P["Ku"], t, C, True, "store", ws.fullU)
        L.fold(ws.fullU, cfg.ks_u // 2, C, 0, "u", u_out, a0=u, a1=u0, lam=P["lam"], t=t)
        L.conv(ws.h, Fu, Fm, P["Km"], t, Cm, True, "store", ws.fullM)
        L.fold(ws.fullM, cfg.ks_m // 2, Cm, 0, "m", m_out, a0=m)

    def step_backward(self, t, u, m, u0, ubar, mbar, ubar_out, mbar_out):
        """Recompute step ``t`` from ``(u, m)``, then ``x̄_in = v − Hv`` into
        ``(ubar_out, mbar_out)`` and this step's parameter gradients into ``self.G``
        (``docs/gradients.md`` §4)."""
        cfg, L, P, G, ws, rbf = self.cfg, self.L, self.P, self.grad, self.ws, self.rbf
        C, Cm, Fu, Fm, F = cfg.n_channels, cfg.n_mask, cfg.nf_u, cfg.nf_m, cfg.nf
        ru, rm, rk = cfg.ks_u // 2, cfg.ks_m // 2, cfg.ks // 2
        lam = P["lam"]
        # Forward quantities with second derivatives.
        L.conv(u, 0, C, P["Ku"], t, Fu, False, "rbf2", ws.f, ws.f1, ws.f2, ws.pre, wt=P["wu"], ooff=0, rbf=rbf)
        L.conv(m, 0, Cm, P["Km"], t, Fm, False, "rbf2", ws.f, ws.f1, ws.f2, ws.pre, wt=P["wm"], ooff=Fu, rbf=rbf)
        L.conv(ws.f, 0, F, P["K"], t, F, False, "psi1", ws.r, ws.r1, e3=ws.z, wt=P["w"], rbf=rbf)
        L.conv(ws.r, 0, F, P["K"], t, F, True, "store", ws.fullF)
        L.fold(ws.fullF, rk, F, 0, "gh", ws.h, ws.g, a0=ws.f1)
        # v = incoming gradient masked by the clip's active set.
        L.conv(ws.h, 0, Fu, P["Ku"], t, C, True, "store", ws.fullU)
        L.fold(ws.fullU, ru, C, 0, "vu", ws.vu, a0=u, a1=u0, a2=ubar, lam=lam, t=t)
        L.conv(ws.h, Fu, Fm, P["Km"], t, Cm, True, "store", ws.fullM)
        L.fold(ws.fullM, rm, Cm, 0, "vm", ws.vm, a0=m, a2=mbar)
        # Directional derivatives along v and the Hessian-vector product.
        L.conv(ws.vu, 0, C, P["Ku"], t, Fu, False, "mul", ws.df, e3=ws.dpre, a0=ws.f1, ooff=0)
        L.conv(ws.vm, 0, Cm, P["Km"], t, Fm, False, "mul", ws.df, e3=ws.dpre, a0=ws.f1, ooff=Fu)
        L.conv(ws.df, 0, F, P["K"], t, F, False, "mul", ws.dr, e3=ws.dz, a0=ws.r1)
        L.conv(ws.dr, 0, F, P["K"], t, F, True, "store", ws.fullF)
        L.fold(ws.fullF, rk, F, 0, "dg", ws.abar, ws.dg, a0=ws.f1, a1=ws.f2, a2=ws.dpre, a3=ws.g)
        L.conv(ws.abar, 0, Fu, P["Ku"], t, C, True, "store", ws.fullU)
        L.fold(ws.fullU, ru, C, 0, "hvu", ubar_out, a0=ws.vu, lam=lam, t=t)
        L.conv(ws.abar, Fu, Fm, P["Km"], t, Cm, True, "store", ws.fullM)
        L.fold(ws.fullM, rm, Cm, 0, "hvm", mbar_out, a0=ws.vm)
        # Parameter gradients: −∂S/∂θ (docs/gradients.md §4).
        part = ws.part
        L.kgrad([(ws.dr, 0, ws.f, 0), (ws.r, 0, ws.df, 0)], F, F, cfg.ks, part, G, self.goff("K", t))
        L.kgrad([(ws.abar, 0, u, 0), (ws.h, 0, ws.vu, 0)], Fu, C, cfg.ks_u, part, G, self.goff("Ku", t))
        L.kgrad([(ws.abar, Fu, m, 0), (ws.h, Fu, ws.vm, 0)], Fm, Cm, cfg.ks_m, part, G, self.goff("Km", t))
        L.wgrad(ws.z, ws.dz, None, None, 0, F, rbf, part, G, self.goff("w", t))
        L.wgrad(ws.pre, ws.dg, ws.dpre, ws.g, 0, Fu, rbf, part, G, self.goff("wu", t))
        L.wgrad(ws.pre, ws.dg, ws.dpre, ws.g, Fu, Fm, rbf, part, G, self.goff("wm", t))
        L.lam_grad(ws.vu, u, u0, ws.part64, G, self.goff("lam", t))

    # -------------------------------------------------------------- whole network
    def forward(self, T):
        """Forward-only pass from ``ws.u0``, ``ws.sm[0]``; returns the final state views."""
        ws = self.ws
        u, m = ws.u0, ws.sm[0]
        for t in range(T):
            u_out, m_out = ws.su[(t + 1) % 2], ws.sm[(t + 1) % 2]
            self.step_forward(t, u, m, ws.u0, u_out, m_out)
            u, m = u_out, m_out
        return u, m

    def loss_and_grad(self):
        """Forward with stored states, loss partials into ``ws.lossp``, gradients into
        ``self.G``; returns ``(ws.lossp, scale)`` — the partial sums of squared differences
        and the normalisation that :func:`vnumba.ops.loss.loss_from_sums` combines."""
        cfg, ws, L = self.cfg, self.ws, self.L
        T = cfg.n_steps
        N, H, W = ws.shape
        for t in range(T):
            self.step_forward(t, ws.su[t], ws.sm[t], ws.u0, ws.su[t + 1], ws.sm[t + 1])
        # Loss (3) is reduced on the device, its mask term over all C_m channels; its
        # constants come from vnumba.ops.loss.
        scale = loss_scale(N, H, W)
        f_u, f_m = output_grad_factors(scale)
        L.loss(ws.su[T], ws.gu, ws.sm[T], ws.gm, ws.ub[0], ws.mb[0], f_u, f_m, ws.lossp)
        k = 0
        for t in range(T - 1, -1, -1):
            self.step_backward(t, ws.su[t], ws.sm[t], ws.u0, ws.ub[k], ws.mb[k], ws.ub[1 - k], ws.mb[1 - k])
            k = 1 - k
        return ws.lossp, scale

    def project(self):
        """Projection onto the admissible set (``vnumba.ops.projections.project_params``)."""
        cfg, L, P, T = self.cfg, self.L, self.P, self.cfg.n_steps
        r = cfg.l1_radius
        C = cfg.n_channels
        L.proj(P["Ku"].reshape(T * cfg.nf_u, C * cfg.ks_u ** 2), r, cfg.zero_mean_u)
        # A filter of K^m is one output channel's kernel over all C_m mask channels.
        L.proj(P["Km"].reshape(T * cfg.nf_m, cfg.n_mask * cfg.ks_m ** 2), r, cfg.zero_mean_m)
        L.proj(P["K"].reshape(T * cfg.nf, cfg.nf * cfg.ks ** 2), r, False)
        L.clamp_nonneg(P["lam"])


def _host_state(ws_u, ws_m, stream, mshape):
    """The device state ``(u, m)`` on the host, the mask in the caller's shape ``mshape``."""
    u = ws_u.copy_to_host(stream=stream)
    m = ws_m.copy_to_host(stream=stream)
    stream.synchronize()
    return u, m.reshape(mshape)


# ----------------------------------------------------------------------------- functions
def forward(params, cfg, u0, m0=None, *, tiling=None):
    """Unrolled forward pass on the GPU, as :func:`vnumba.vn.model.forward`.

    Parameters
    ----------
    params : dict of ndarray
        Stacked parameters (:func:`vnumba.vn.config.param_shapes`), float32 or float64.
    cfg : ModelConfig
    u0 : ndarray, shape (N, C, H, W), float32/float64, values in [0, 1]
    m0 : ndarray, shape (N, C_m, H, W), optional (zeros)
        Initial mask, ``C_m = cfg.n_mask``; (N, H, W) is accepted when ``C_m == 1``.
    tiling : vnumba.vn.gpu.tiling.Tiling, optional

    Returns
    -------
    u_T : ndarray, shape (N, C, H, W), float32
    m_T : ndarray, float32, shape (N, H, W) when ``cfg.n_mask == 1`` (and ``m0`` is None or
        (N, H, W)), else (N, C_m, H, W)

    Raises
    ------
    CudaUnavailable
        No usable GPU (see :func:`is_available`).
    """
    _check_cfg(cfg)
    params = _check_params(params, cfg)
    u0, m0 = _check_batch(cfg, u0, m0)
    N, _, H, W = u0.shape
    mshape = mask_shape(cfg, N, H, W, None if m0 is None else m0.ndim)
    stream, net, ws = _start(cfg, tiling, params, u0, train=False)
    if m0 is None:
        net.L.fill(ws.sm[0], np.float32(0.0))
    else:
        ws.sm[0].copy_to_device(_mask4(cfg, m0), stream=stream)
    u, m = net.forward(cfg.n_steps)
    return _host_state(u, m, stream, mshape)


def _start(cfg, tiling, params, u0, train: bool, into=None):
    """A stream, the network with ``params`` uploaded and its workspace (sized by ``u0``)
    holding ``u0`` in ``into(ws)`` (default ``ws.u0``)."""
    stream = _require().stream()
    net = _Net(cfg, tiling, stream, train=train)
    net.upload(params)
    N, _, H, W = u0.shape
    ws = net.workspace(N, H, W, train=train)
    (ws.u0 if into is None else into(ws)).copy_to_device(u0, stream=stream)
    return stream, net, ws


def loss_and_grad(params, cfg, u0, gu, gm, m0=None, *, tiling=None):
    """Training loss and its exact gradient on the GPU, as :func:`vnumba.vn.model.loss_and_grad`.

    Parameters
    ----------
    params : dict of ndarray
    cfg : ModelConfig
    u0, gu : ndarray, shape (N, C, H, W)
    gm : ndarray, shape (N, C_m, H, W), or (N, H, W) when ``cfg.n_mask == 1``
        Target mask, one channel per class (``C_m = cfg.n_mask``).
    m0 : ndarray, the shape of ``gm``, optional (zeros)

    Returns
    -------
    loss : float
        Loss (3), its mask term summed over the ``C_m`` channels
        (:func:`vnumba.ops.loss.loss_from_sums`).
    grads : dict of float32 ndarray, shapes of ``params``
    u_T : ndarray, shape (N, C, H, W), float32
    m_T : ndarray, the shape of ``gm``, float32
    """
    _check_cfg(cfg)
    params = _check_params(params, cfg)
    u0, m0 = _check_batch(cfg, u0, m0)
    N, C, H, W = u0.shape
    gu = _as_f32("gu", gu, u0.shape)
    if m0 is None:
        gm = _as_mask("gm", gm, cfg, N, H, W)
    else:
        gm = _as_f32("gm", gm, m0.shape)  # the shape of m0, as the CPU path
    mshape = gm.shape
    stream, net, ws = _start(cfg, tiling, params, u0, train=True)
    ws.gu.copy_to_device(gu, stream=stream)
    ws.gm.copy_to_device(_mask4(cfg, gm), stream=stream)
    if m0 is None:
        net.L.fill(ws.sm[0], np.float32(0.0))
    else:
        ws.sm[0].copy_to_device(_mask4(cfg, m0), stream=stream)
    loss_part, scale = net.loss_and_grad()
    s = loss_part.copy_to_host(stream=stream).sum(axis=0)
    g = net.grad.copy_to_host(stream=stream)
    u_T, m_T = _host_state(ws.su[cfg.n_steps], ws.sm[cfg.n_steps], stream, mshape)
    loss = loss_from_sums(s[0], s[1], scale)
    grads = {k: g[net.offsets[k]:net.offsets[k] + int(np.prod(sh))].reshape(sh).copy()
             for k, sh in net.shapes.items()}
    return loss, grads, u_T, m_T


def _one_step(p, cfg):
    # One step's parameters (vnumba.vn.model.step_params) as a one-step network.
    cfg1 = dataclasses.replace(cfg, n_steps=1)
    params = {k: np.asarray(p[k])[None] for k in PARAM_NAMES if k != "lam"}
    params["lam"] = np.asarray([float(p["lam"])])
    return cfg1, _check_params(params, cfg1)


def _step_inputs(cfg, u, m, u0):
    if m is None:
        raise TypeError("m must be a numpy.ndarray, got NoneType")
    u, m = _check_batch(cfg, u, m, "m")
    return u, m, _as_f32("u0", u0, u.shape)


def step_forward(p, cfg, u, m, u0, *, tiling=None):
    """One step on the GPU, as :func:`vnumba.vn.model.step_forward` (``keep=False``).

    Parameters
    ----------
    p : dict
        One step's parameters (:func:`vnumba.vn.model.step_params`).
    cfg : ModelConfig
    u, u0 : ndarray, shape (N, C, H, W)
    m : ndarray, shape (N, C_m, H, W), or (N, H, W) when ``cfg.n_mask == 1``

    Returns
    -------
    u_next : ndarray, shape (N, C, H, W), float32
    m_next : ndarray, the shape of ``m``, float32
    """
    _check_cfg(cfg)
    cfg1, params = _one_step(p, cfg)
    u, m, u0 = _step_inputs(cfg, u, m, u0)
    stream, net, ws = _start(cfg1, tiling, params, u0, train=False)
    cuda = _require()
    du = cuda.to_device(u, stream=stream)
    dm = cuda.to_device(_mask4(cfg, m), stream=stream)
    net.step_forward(0, du, dm, ws.u0, ws.su[1], ws.sm[1])
    return _host_state(ws.su[1], ws.sm[1], stream, m.shape)


def step_backward(p, cfg, u, m, u0, ubar, mbar, *, tiling=None):
    """Backward pass through one step on the GPU, as :func:`vnumba.vn.model.step_backward`.

    Parameters
    ----------
    p : dict
        One step's parameters.
    cfg : ModelConfig
    u, u0, ubar : ndarray, shape (N, C, H, W)
    m : ndarray, shape (N, C_m, H, W), or (N, H, W) when ``cfg.n_mask == 1``
    mbar : ndarray, the shape of ``m``

    Returns
    -------
    ubar_in : ndarray, shape (N, C, H, W), float32
    mbar_in : ndarray, the shape of ``m``, float32
    grads : dict
        This step's parameter gradients (``lam`` as a 0-d array), float32.
    """
    _check_cfg(cfg)
    cfg1, params = _one_step(p, cfg)
    u, m, u0 = _step_inputs(cfg, u, m, u0)
    ubar = _as_f32("ubar", ubar, u.shape)
    mbar = _as_f32("mbar", mbar, m.shape)
    stream, net, ws = _start(cfg1, tiling, params, u0, train=True, into=lambda ws: ws.su[0])
    cuda = _require()
    du = cuda.to_device(u, stream=stream)
    dm = cuda.to_device(_mask4(cfg, m), stream=stream)
    ws.ub[0].copy_to_device(ubar, stream=stream)
    ws.mb[0].copy_to_device(_mask4(cfg, mbar), stream=stream)
    net.step_backward(0, du, dm, ws.su[0], ws.ub[0], ws.mb[0], ws.ub[1], ws.mb[1])
    g = net.grad.copy_to_host(stream=stream)
    ubar_in, mbar_in = _host_state(ws.ub[1], ws.mb[1], stream, m.shape)
    grads = {k: g[net.offsets[k]:net.offsets[k] + int(np.prod(sh))].reshape(sh[1:]).copy()
             for k, sh in net.shapes.items()}
    grads["lam"] = grads["lam"].reshape(())
    return ubar_in, mbar_in, grads


# ----------------------------------------------------------------------------- trainer
class CudaTrainer:
    """Training on one GPU: forward, exact backward, Adam and projection on the device.

    Parameters, gradients, Adam moments (float64) and the states of the unrolled network
    stay on the device between iterations; each batch is staged in pinned host memory
    and copied on a second stream, so the copy overlaps the previous iteration's Adam
    update and projection.

    Parameters
    ----------
    cfg : ModelConfig
    params : dict of ndarray
        Initial parameters (float32 or float64; the device keeps float32).  Not modified;
        read the current values with :meth:`params`.
    lr, beta1, beta2, eps : float
        Adam settings, as :class:`vnumba.ops.optim.Adam`.
    tiling : vnumba.vn.gpu.tiling.Tiling, optional

    Raises
    ------
    CudaUnavailable
        No usable GPU.
    """

    def __init__(self, cfg, params, lr, beta1=0.9, beta2=0.999, eps=1e-8, *, tiling=None):
        _check_cfg(cfg)
        if not lr > 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or not eps > 0:
            raise ValueError("Adam needs lr > 0, 0 <= beta1, beta2 < 1 and eps > 0")
        params = _check_params(params, cfg)
        cuda = _require()
        self.cfg = cfg
        self.lr, self.beta1, self.beta2, self.eps = float(lr), float(beta1), float(beta2), float(eps)
        self._cuda = cuda
        self._stream = cuda.stream()
        self._copy_stream = cuda.stream()
        self._net = _Net(cfg, tiling, self._stream, train=True)
        self._net.upload(params)
        n = self._net.size
        self._m = cuda.device_array(n, np.float64, stream=self._stream)
        self._v = cuda.device_array(n, np.float64, stream=self._stream)
        self._net.L.fill(self._m, 0.0)
        self._net.L.fill(self._v, 0.0)
        self._flag = cuda.device_array(1, np.int32, stream=self._stream)
        self.t = 0
        self._pinned = None
        self._flip = 0

    # -------------------------------------------------------------- batches
    def _stage(self, u0, gu, gm):
        """Copy a batch into pinned memory and send it on the copy stream (``gm``:
        ``(N, C_m, H, W)``, or ``(N, H, W)`` for a one-channel model)."""
        cuda, ws = self._cuda, self._net.ws
        N, C, H, W = u0.shape
        if self._pinned is None or self._pinned[0][0].shape != u0.shape:
            self._pinned = [(cuda.pinned_array(u0.shape, np.float32),
                             cuda.pinned_array(u0.shape, np.float32),
                             cuda.pinned_array((N, self.cfg.n_mask, H, W), np.float32))
                            for _ in range(2)]
        hu, hg, hm = self._pinned[self._flip]
        self._flip = 1 - self._flip
        np.copyto(hu, u0)
        np.copyto(hg, gu)
        np.copyto(hm, _mask4(self.cfg, gm))
        s = self._copy_stream
        ws.u0.copy_to_device(hu, stream=s)
        ws.gu.copy_to_device(hg, stream=s)
        ws.gm.copy_to_device(hm, stream=s)
        ev = cuda.event()
        ev.record(s)
        ev.wait(self._stream)

    def step(self, u0, gu, gm):
        """One training iteration.

        Parameters
        ----------
        u0, gu : ndarray, shape (N, C, H, W)
        gm : ndarray, shape (N, C_m, H, W), or (N, H, W) when ``cfg.n_mask == 1``

        Returns
        -------
        loss : float
            At the parameters before the update (loss (3), the mask term summed over the
            ``C_m`` channels).
        u_T : ndarray, shape (N, C, H, W), float32
        m_T : ndarray, the shape of ``gm``, float32
            Network output before the update.

        Raises
        ------
        FloatingPointError
            Non-finite loss or gradient; the parameters and Adam state are left unchanged.
        """
        cfg, net = self.cfg, self._net
        u0, _ = _check_batch(cfg, u0)
        N, C, H, W = u0.shape
        gu = _as_f32("gu", gu, u0.shape)
        gm = _as_mask("gm", gm, cfg, N, H, W)
        ws = net.workspace(N, H, W, train=True)
        self._stage(u0, gu, gm)
        net.L.fill(ws.sm[0], np.float32(0.0))
        loss_part, scale = net.loss_and_grad()
        net.L.fill(self._flag, 0)
        net.L.count_nonfinite(net.grad, self._flag)
        s = self._stream
        part_h = loss_part.copy_to_host(stream=s)
        flag = self._flag.copy_to_host(stream=s)
        u_T, m_T = _host_state(ws.su[cfg.n_steps], ws.sm[cfg.n_steps], s, gm.shape)
        sums = part_h.sum(axis=0)
        loss = loss_from_sums(sums[0], sums[1], scale)
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss}")
        if flag[0]:
            g = net.grad.copy_to_host(stream=s)
            s.synchronize()
            bad = [k for k in PARAM_NAMES
                   if not np.all(np.isfinite(g[net.offsets[k]:net.offsets[k] + int(np.prod(net.shapes[k]))]))]
            raise FloatingPointError(f"gradient of {', '.join(bad)} contains NaN or inf")
        # Adam and the projection run asynchronously; the next batch's copy overlaps them.
        self.t += 1
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        net.L.adam(net.theta, net.grad, self._m, self._v, self.lr, self.beta1, self.beta2, c1, c2, self.eps)
        net.project()
        return loss, u_T, m_T

    # -------------------------------------------------------------- state
    def params(self) -> dict:
        """Current parameters as a new host dict of float32 arrays."""
        return self._net.download()

    def optimizer_state(self) -> dict:
        """Adam state in the format of :meth:`vnumba.ops.optim.Adam.state_dict`."""
        d = {"t": np.int64(self.t)}
        if self.t == 0:
            return d
        m = self._m.copy_to_host(stream=self._stream)
        v = self._v.copy_to_host(stream=self._stream)
        self._stream.synchronize()
        net = self._net
        for k in PARAM_NAMES:
            a, n = net.offsets[k], int(np.prod(net.shapes[k]))
            d["m/" + k] = m[a:a + n].reshape(net.shapes[k]).copy()
            d["v/" + k] = v[a:a + n].reshape(net.shapes[k]).copy()
        return d

    def load_optimizer_state(self, d: dict) -> None:
        """Restore a state from :meth:`optimizer_state` or :meth:`vnumba.ops.optim.Adam.state_dict`.

        Moments missing from ``d`` (a state saved before the first step) start at zero.
        """
        if "t" not in d:
            raise KeyError("optimizer state has no 't'")
        net = self._net
        m = np.zeros(net.size, np.float64)
        v = np.zeros(net.size, np.float64)
        for k in PARAM_NAMES:
            a, n = net.offsets[k], int(np.prod(net.shapes[k]))
            for prefix, dst in (("m/", m), ("v/", v)):
                if prefix + k in d:
                    arr = np.asarray(d[prefix + k], dtype=np.float64)
                    if arr.shape != net.shapes[k]:
                        raise ValueError(f"optimizer state {prefix + k} has shape {arr.shape}, "
                                         f"expected {net.shapes[k]}")
                    dst[a:a + n] = arr.ravel()
        self._m.copy_to_device(m, stream=self._stream)
        self._v.copy_to_device(v, stream=self._stream)
        self._stream.synchronize()
        self.t = int(d["t"])

    def device_bytes(self) -> int:
        """Bytes of device memory held by the trainer (parameters, moments, workspace)."""
        ws = self._net.ws
        return self._net.nbytes + 16 * self._net.size + (ws.nbytes if ws is not None else 0)
