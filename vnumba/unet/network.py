"""The article's U-Net baseline (Ronneberger et al. 2015, as used in Effland et al. 2019,
section 4): forward pass, loss and hand-written backward pass over NumPy arrays.

Architecture (defaults: ``scales = 3``, ``convs_per_scale = 2``, ``width = 32``,
``kernel = 3``; every convolution has a bias and zero "same" padding)::

    enc0: [conv kxk + ReLU] x 2   C  -> 32 -> 32      full resolution   --- skip0 ---.
          max-pool 2x2                                                              |
    enc1: [conv kxk + ReLU] x 2   32 -> 32 -> 32      1/2               - skip1 -.  |
          max-pool 2x2                                                           |  |
    enc2: [conv kxk + ReLU] x 2   32 -> 32 -> 32      1/4 (bottom)               |  |
          upsample 2x (nearest), concatenate [up, skip1]                <--------'  |
    dec1: [conv kxk + ReLU] x 2   64 -> 32 -> 32      1/2                           |
          upsample 2x (nearest), concatenate [up, skip0]                <-----------'
    dec0: [conv kxk + ReLU] x 2   64 -> 32 -> 32      full resolution
    head: conv 1x1                32 -> C + 1

All scales keep ``width`` channels (the article: "two convolution layers and subsequent ReLU
layers that operate on 32 feature channels"), unlike the original U-Net, which doubles them
at every pooling.

Output head.  The article's U-Net only segments.  To report the same loss, PSNR and accuracy
as the variational network, the last convolution has ``C + 1`` channels: the first ``C`` are
a residual added to the input, ``u = clip(u0 + z[:C], 0, 1)``, the last is the mask logit,
``m = sigmoid(z[C])``.

Parameters are a dict ``name -> array`` (see :func:`param_shapes`): ``enc{s}_conv{k}_w``
``(width, C_in, kernel, kernel)`` and ``enc{s}_conv{k}_b`` ``(width,)`` for
``s = 0..scales-1`` (``enc{scales-1}`` is the bottom), ``dec{s}_conv{k}_w/_b`` for
``s = scales-2..0``, ``head_w`` ``(C + 1, width, 1, 1)``, ``head_b`` ``(C + 1,)``.

The derivation of every backward line is in ``docs/unet.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numba
import numpy as np

from vnumba.ops.checks import check_batch
from vnumba.ops.fields import Checked, PositiveInt, PositiveOddInt
from vnumba.ops.loss import loss_value_and_output_grad
from vnumba.unet.kernels import (
    _concat_impl,
    _conv2d_impl,
    _conv2d_input_adjoint_impl,
    _conv2d_param_grad_impl,
    _maxpool2_backward_impl,
    _maxpool2_impl,
    _output_head_backward_impl,
    _output_head_impl,
    _relu_backward_impl,
    _split_impl,
    _upsample2_adjoint_impl,
    _upsample2_impl,
)

__all__ = [
    "NETWORK", "UNetConfig", "param_shapes", "init_params", "check_params", "forward",
    "loss_and_grad", "project", "param_count", "pad_to_multiple", "crop",
]

@dataclass(frozen=True)
class UNetConfig(Checked):
    """Architecture of the U-Net baseline.

    Attributes
    ----------
    n_channels : int
        Image channels ``C`` (3).
    n_mask : int
        Mask channels ``C_m``: 1 (the article's mask) or one per nucleus class, as the
        variational network's ``n_mask``; the head has ``C + C_m`` output channels.
    width : int
        Feature channels of every convolution (32).
    scales : int
        Resolution levels including the bottom (3); ``scales - 1`` poolings.
    convs_per_scale : int
        Convolution + ReLU layers per level in the encoder and in the decoder (2).
    kernel : int
        Odd spatial size of the convolutions (3).
    """

    n_channels: PositiveInt = 3
    n_mask: PositiveInt = 1
    width: PositiveInt = 32
    scales: PositiveInt = 3
    convs_per_scale: PositiveInt = 2
    kernel: PositiveOddInt = 3

    @property
    def size_multiple(self) -> int:
        """Height and width of an input must be multiples of this (``2**(scales-1)``)."""
        return 2 ** (self.scales - 1)

    @property
    def receptive_radius(self) -> int:
        """Pixels of input context on each side that one output pixel depends on.

        A pixel of level ``s`` stands for a ``2^s x 2^s`` block of input pixels; a kxk
        convolution there widens the dependence by ``(k // 2) 2^s`` on each side, pooling
        keeps it (the pooled block is the union of its four children's blocks), and the
        nearest-neighbour upsampling to level ``s`` adds up to ``2^s`` on one side (the
        parent block overhangs the child block).  The skip branch's dependence is always
        contained in the upsampled branch's, so only the main path counts.
        """
        r = self.kernel // 2
        rad = 0
        for s in range(self.scales):
            rad += self.convs_per_scale * r * 2 ** s
        for s in range(self.scales - 2, -1, -1):
            rad += 2 ** s
            rad += self.convs_per_scale * r * 2 ** s
        return rad

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- parameters
def _conv_layers(cfg: UNetConfig):
    """``(name, c_in, c_out, ks)`` of every convolution in forward order."""
    layers = []
    w = cfg.width
    for s in range(cfg.scales):
        for k in range(cfg.convs_per_scale):
            cin = (cfg.n_channels if s == 0 else w) if k == 0 else w
            layers.append((f"enc{s}_conv{k}", cin, w, cfg.kernel))
    for s in range(cfg.scales - 2, -1, -1):
        for k in range(cfg.convs_per_scale):
            layers.append((f"dec{s}_conv{k}", 2 * w if k == 0 else w, w, cfg.kernel))
    layers.append(("head", w, cfg.n_channels + cfg.n_mask, 1))
    return layers


def param_shapes(cfg: UNetConfig) -> dict:
    """Parameter names and shapes, in forward order.

    Returns
    -------
    dict
        ``"<layer>_w" -> (c_out, c_in, ks, ks)`` and ``"<layer>_b" -> (c_out,)`` for the
        layers ``enc{s}_conv{k}``, ``dec{s}_conv{k}`` and ``head`` (see the module docstring).
    """
    shapes = {}
    for name, cin, cout, ks in _conv_layers(cfg):
        shapes[name + "_w"] = (cout, cin, ks, ks)
        shapes[name + "_b"] = (cout,)
    return shapes


def init_params(cfg: UNetConfig, rng: np.random.Generator, dtype=np.float32) -> dict:
    """Initial parameters.

    Hidden convolutions: He-normal weights (std ``sqrt(2 / fan_in)``, fan_in = c_in ks²,
    the scale that keeps activations' second moment through ReLU layers), zero biases.
    Head: normal with std ``0.1 / sqrt(fan_in)`` and zero bias, so that the network starts
    close to ``u = u0`` (the clip inactive, so gradients reach every pixel) and ``m ≈ 1/2``.

    Parameters
    ----------
    cfg : UNetConfig
    rng : numpy.random.Generator
    dtype : float32 or float64

    Returns
    -------
    dict of C-contiguous ndarray, keys and shapes as :func:`param_shapes`
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    dtype = np.dtype(dtype)
    if dtype.type not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    p = {}
    for name, cin, cout, ks in _conv_layers(cfg):
        fan_in = cin * ks * ks
        std = 0.1 / np.sqrt(fan_in) if name == "head" else np.sqrt(2.0 / fan_in)
        p[name + "_w"] = np.ascontiguousarray(std * rng.standard_normal((cout, cin, ks, ks)), dtype=dtype)
        p[name + "_b"] = np.zeros(cout, dtype=dtype)
    return p


def check_params(params: dict, cfg: UNetConfig, dtype=None) -> np.dtype:
    """Validate names, shapes, dtype, contiguity and finiteness; return the common dtype."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    shapes = param_shapes(cfg)
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise KeyError(f"U-Net parameter dict: missing {missing}, unknown {extra}")
    dt = np.dtype(dtype) if dtype is not None else np.asarray(params["head_w"]).dtype
    if dt.type not in (np.float32, np.float64):
        raise TypeError(f"parameters must be float32 or float64, got {dt}")
    for k, shp in shapes.items():
        v = params[k]
        if not isinstance(v, np.ndarray):
            raise TypeError(f"parameter {k} must be a numpy.ndarray, got {type(v).__name__}")
        if v.shape != shp:
            raise ValueError(f"parameter {k} has shape {v.shape}, expected {shp}")
        if v.dtype != dt:
            raise TypeError(f"parameter {k} has dtype {v.dtype}, expected {dt}")
        if not v.flags.c_contiguous:
            raise ValueError(f"parameter {k} must be C-contiguous")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"parameter {k} contains NaN or inf")
    return dt


def param_count(params: dict) -> int:
    """Total number of scalars in a parameter dict."""
    return int(sum(np.asarray(v).size for v in params.values()))


def project(params: dict, cfg: UNetConfig | None = None) -> None:
    """No constraints on the U-Net's parameters: does nothing.

    Exists so that the trainer can call ``project(params, cfg)`` after every Adam step for
    both architectures.
    """
    return None


# ----------------------------------------------------------------------------- sizes
def pad_to_multiple(x, mult: int):
    """Pad the last two axes at the bottom/right to multiples of ``mult`` by mirroring.

    Mirroring (``numpy.pad(mode="symmetric")``) continues the image's texture, so the padded
    border does not look like an edge to the network.

    Parameters
    ----------
    x : ndarray, shape (..., H, W)
    mult : int, >= 1 (``UNetConfig.size_multiple``)

    Returns
    -------
    xp : ndarray, shape (..., H', W'), C-contiguous, H' and W' the next multiples of ``mult``
    hw : tuple (H, W)
        Original size, for :func:`crop`.
    """
    mult = int(mult)
    if mult < 1:
        raise ValueError(f"mult must be >= 1, got {mult}")
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"need at least 2 dimensions, got shape {x.shape}")
    H, W = x.shape[-2:]
    ph, pw = (-H) % mult, (-W) % mult
    if ph > H or pw > W:
        raise ValueError(f"image {H}x{W} too small to mirror-pad to a multiple of {mult}")
    if ph or pw:
        pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
        x = np.pad(x, pad, mode="symmetric")
    return np.ascontiguousarray(x), (H, W)


def crop(y, hw):
    """Undo :func:`pad_to_multiple`: the top-left ``hw = (H, W)`` of the last two axes.

    Returns
    -------
    ndarray, shape (..., H, W), C-contiguous
    """
    H, W = (int(v) for v in hw)
    if y.shape[-2] < H or y.shape[-1] < W:
        raise ValueError(f"cannot crop {y.shape[-2:]} to {(H, W)}")
    return np.ascontiguousarray(y[..., :H, :W])


# ----------------------------------------------------------------------------- network
#: Below this many multiply-adds in the largest convolution of a call, the kernels run on
#: the calling thread only (~1 ms of one core).  Waking Numba's worker threads costs little
#: on an idle machine, but on a busy one each parallel launch waits for a time slice
#: (measured ~8 ms per launch, 40x slower iterations on tiny batches); large layers
#: amortise that, small ones do not.
SERIAL_BELOW_MACS = 2e7


@contextlib.contextmanager
def _threads_for(cfg, shape):
    N, _, H, W = shape
    macs = N * H * W * cfg.width * cfg.width * cfg.kernel ** 2
    if macs >= SERIAL_BELOW_MACS:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _check_input(params, cfg, u0):
    dt = check_params(params, cfg)
    check_batch("u0", u0, 4, dt)
    N, C, H, W = u0.shape
    if C != cfg.n_channels:
        raise ValueError(f"u0 has {C} channels, the U-Net expects {cfg.n_channels}")
    mult = cfg.size_multiple
    if H % mult or W % mult:
        raise ValueError(
            f"U-Net input {H}x{W} is not divisible by 2**(scales-1) = {mult}; "
            f"pad it with vnumba.unet.network.pad_to_multiple(x, {mult}) and crop the outputs")
    return dt, np.ascontiguousarray(u0)


def _forward(params, cfg, u0, keep):
    """Forward pass; with ``keep`` also the activations the backward pass needs.

    The cache holds, per convolution, its input (``in``) and ReLU output (``out``); inputs
    of the decoders' first convolutions (the concatenations) are not stored but rebuilt in
    the backward pass, which costs one copy and saves ``2 width`` full-size channels.
    """
    S, K = cfg.scales, cfg.convs_per_scale
    cache = {}
    h = u0
    skips = []
    for s in range(S):
        for k in range(K):
            name = f"enc{s}_conv{k}"
            x = h
            h = _conv2d_impl(x, params[name + "_w"], params[name + "_b"], True)
            if keep:
                cache[name] = (x, h)
        if s < S - 1:
            skips.append(h)
            h, idx = _maxpool2_impl(h)
            if keep:
                cache[f"pool{s}"] = idx
    for s in range(S - 2, -1, -1):
        if keep:
            cache[f"below{s}"] = h
        x = _concat_impl(_upsample2_impl(h), skips[s])
        for k in range(K):
            name = f"dec{s}_conv{k}"
            inp = x
            x = _conv2d_impl(inp, params[name + "_w"], params[name + "_b"], True)
            if keep:
                cache[name] = (None if k == 0 else inp, x)
        h = x
    z = _conv2d_impl(h, params["head_w"], params["head_b"], False)
    u, m = _output_head_impl(z, u0)
    if cfg.n_mask == 1:
        m = m[:, 0]  # the article's (N, H, W) mask
    if keep:
        cache["head"] = (h, z)
        cache["skips"] = skips
    return u, m, cache


def forward(params: dict, cfg: UNetConfig, u0):
    """U-Net forward pass.

    Parameters
    ----------
    params : dict
        As :func:`init_params`; one dtype for all.
    cfg : UNetConfig
    u0 : ndarray, shape (N, C, H, W), the parameters' dtype
        Input image(s), values in [0, 1]; ``H`` and ``W`` multiples of
        ``cfg.size_multiple`` (``ValueError`` otherwise).

    Returns
    -------
    u : ndarray, shape (N, C, H, W)
        Reconstruction ``clip(u0 + residual, 0, 1)``.
    m : ndarray, shape (N, H, W), or (N, C_m, H, W) with ``cfg.n_mask = C_m > 1``
        Mask ``sigmoid(logit)`` in (0, 1), one channel per class.
    """
    _, u0 = _check_input(params, cfg, u0)
    with _threads_for(cfg, u0.shape):
        u, m, _ = _forward(params, cfg, u0, keep=False)
    return u, m


def _backward_conv(params, name, ks, x, out, dout, grads, need_input_grad=True):
    """Backward through ``out = relu(conv(x))``; fills grads, returns ``d x``."""
    dpre = _relu_backward_impl(dout, out)
    grads[name + "_w"], grads[name + "_b"] = _conv2d_param_grad_impl(dpre, x, ks)
    if not need_input_grad:
        return None
    return _conv2d_input_adjoint_impl(dpre, params[name + "_w"])


def loss_and_grad(params: dict, cfg: UNetConfig, u0, gu, gm, mask_weights=None):
    """Training loss and its exact gradient with respect to every parameter.

    Parameters
    ----------
    params : dict
    cfg : UNetConfig
    u0, gu : ndarray, shape (N, C, H, W), the parameters' dtype
        Input and clean target image.
    gm : ndarray, shape (N, H, W), or (N, C_m, H, W) with ``cfg.n_mask = C_m > 1``
        Target mask.
    mask_weights : sequence of float, optional
        One weight per mask channel in the loss's mask term (default: the article's loss).

    Returns
    -------
    loss : float
        ``mean_s [ 1/6 ||u_s - gu_s||² + 1/2 ||m_s - gm_s||² ] / (H W)`` — loss (3) as
        :func:`vnumba.ops.loss.loss_value_and_output_grad` defines it for both architectures,
        so they report comparable losses.
    grads : dict
        Same keys, shapes and dtype as ``params``.
    u : ndarray, shape (N, C, H, W)
    m : ndarray, shape (N, H, W)
    """
    dt, u0 = _check_input(params, cfg, u0)
    check_batch("gu", gu, 4, dt, u0.shape)
    N, C, H, W = u0.shape
    mshape = (N, H, W) if cfg.n_mask == 1 else (N, cfg.n_mask, H, W)
    check_batch("gm", gm, len(mshape), dt, mshape)
    with _threads_for(cfg, u0.shape):
        return _loss_and_grad(params, cfg, u0, gu, gm, mask_weights)


def _loss_and_grad(params, cfg, u0, gu, gm, mask_weights=None):
    u, m, cache = _forward(params, cfg, u0, keep=True)

    loss, ubar, mbar = loss_value_and_output_grad(
        np.ascontiguousarray(u), np.ascontiguousarray(gu), np.ascontiguousarray(m),
        np.ascontiguousarray(gm), mask_weights=mask_weights)

    S, K, ks = cfg.scales, cfg.convs_per_scale, cfg.kernel
    grads = {}
    h, z = cache["head"]
    m4 = m[:, None] if m.ndim == 3 else m
    mbar4 = mbar[:, None] if mbar.ndim == 3 else mbar
    dz = _output_head_backward_impl(np.ascontiguousarray(ubar), np.ascontiguousarray(mbar4), z,
                                    u0, np.ascontiguousarray(m4))
    grads["head_w"], grads["head_b"] = _conv2d_param_grad_impl(dz, h, 1)
    dh = _conv2d_input_adjoint_impl(dz, params["head_w"])

    skips = cache["skips"]
    dskips = [None] * (S - 1)
    for s in range(S - 1):
        for k in range(K - 1, -1, -1):
            name = f"dec{s}_conv{k}"
            x, out = cache[name]
            if k == 0:
                x = _concat_impl(_upsample2_impl(cache[f"below{s}"]), skips[s])
            dh = _backward_conv(params, name, ks, x, out, dh, grads)
        dup, dskips[s] = _split_impl(dh, cfg.width)
        dh = _upsample2_adjoint_impl(dup)

    for s in range(S - 1, -1, -1):
        if s < S - 1:
            dh = _maxpool2_backward_impl(dh, cache[f"pool{s}"])
            dh += dskips[s]
        for k in range(K - 1, -1, -1):
            name = f"enc{s}_conv{k}"
            x, out = cache[name]
            # The image itself has no gradient to pass on.
            dh = _backward_conv(params, name, ks, x, out, dh, grads,
                                need_input_grad=not (s == 0 and k == 0))

    grads = {k: grads[k] for k in params}
    return float(loss), grads, u, m


def _network_forward(params, cfg, u0, m0=None):
    # The U-Net starts from the image alone: an initial mask has no input to go to.
    return forward(params, cfg, u0)


def state_values(cfg: UNetConfig, channels: int) -> int:
    """Values per pixel of one batch image that a training step keeps for the backward pass
    (the memory estimate): per level of the encoder and decoder, images, masks and feature
    maps, every level counted at full resolution (a rough count)."""
    return 2 * int(cfg.scales) * (2 * (int(channels) + int(cfg.n_mask)) + 6 * int(cfg.width))


#: This network's record in the registry of networks (:func:`vnumba.vn.networks.get_network`):
#: a plain mapping, because the record type lives in a layer above this one.
NETWORK = dict(
    name="unet", title="the U-Net", config=UNetConfig, param_shapes=param_shapes,
    init_params=init_params, check_params=check_params, project=project,
    loss_and_grad=loss_and_grad, forward=_network_forward, default_lr=5e-5,
    state_values=state_values, size_fields=("width",), devices=("cpu",),
)
