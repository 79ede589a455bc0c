"""The networks by name: one record per architecture, looked up with :func:`get_network`.

A model file, the trainer and the backends name a network by a string (``"vn"``, ``"unet"``,
the ``arch`` attribute of a model file); everything that differs between the networks — the
config class, initialisation, projection, loss and gradient, forward pass, parameter check,
default Adam step size, memory of a training step, the devices it runs on — is one
:class:`Network` record, so that no other module branches on the name.

Each network declares its record in its own package: the coupled variational network here
(:mod:`vnumba.vn`), the U-Net as :data:`vnumba.unet.network.NETWORK` (a plain mapping, since
the U-Net's layer lies below this one and cannot import :class:`Network`).  The records are
built on first use, so naming a network imports its kernels only when it is needed.

Examples
--------
>>> from vnumba.vn.networks import NETWORKS, get_network
>>> NETWORKS
('vn', 'unet')
>>> net = get_network("unet")
>>> net.config.__name__, net.default_lr, net.devices
('UNetConfig', 5e-05, ('cpu',))
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Network", "NETWORKS", "get_network"]

#: Names of the networks, in the order the command line offers them (the first is the default).
NETWORKS = ("vn", "unet")


@dataclass(frozen=True)
class Network:
    """What one architecture provides; every callable takes the network's config ``cfg``.

    Attributes
    ----------
    name : str
        The ``arch`` tag of model files and of ``python -m vnumba.train --arch``.
    title : str
        How a message names the network ("the U-Net").
    config : type
        Frozen config dataclass (``to_dict``, ``receptive_radius``; read with
        :func:`vnumba.vn.config.from_dict`).
    param_shapes : callable
        ``param_shapes(cfg) -> {name: shape}``.
    init_params : callable
        ``init_params(cfg, rng, dtype) -> params``.
    check_params : callable
        ``check_params(params, cfg)``: raises ``KeyError``/``ValueError``/``TypeError`` for
        missing, misshapen or non-finite parameters.
    project : callable
        ``project(params, cfg)``: onto the constraint sets, in place (after every Adam step).
    loss_and_grad : callable
        ``loss_and_grad(params, cfg, u0, gu, gm) -> (loss, grads, u_T, m_T)``.
    forward : callable
        ``forward(params, cfg, u0, m0=None) -> (u, m)`` on the CPU.
    default_lr : float
        Adam's step size when none is given.
    state_values : callable
        ``state_values(cfg, channels) -> int``: values per pixel of one batch image that a
        training step's forward pass keeps for the backward pass (the memory estimate).
    size_fields : tuple of str
        Config fields that decide that memory (named when a run cannot fit).
    devices : tuple of str
        Backends (:func:`vnumba.vn.backend.get_backend`) that run it.
    """

    name: str
    title: str
    config: type
    param_shapes: Callable
    init_params: Callable
    check_params: Callable
    project: Callable
    loss_and_grad: Callable
    forward: Callable
    default_lr: float
    state_values: Callable
    size_fields: tuple
    devices: tuple = ("cpu",)


def _vn_state_values(cfg, channels: int) -> int:
    # per step: the image and mask, forward and backward, and their filter responses
    return int(cfg.n_steps) * (2 * (int(channels) + int(cfg.n_mask)) + 2 * (int(cfg.nf_u) + int(cfg.nf_m)))


def _vn() -> Network:
    from vnumba.ops.projections import project_params
    from vnumba.vn import model
    from vnumba.vn.config import ModelConfig, param_shapes

    return Network(name="vn", title="the variational network", config=ModelConfig,
                   param_shapes=param_shapes, init_params=model.init_params,
                   check_params=model.check_params, project=project_params,
                   loss_and_grad=model.loss_and_grad, forward=model.forward, default_lr=1e-4,
                   state_values=_vn_state_values, size_fields=("n_steps", "nf_u", "nf_m"),
                   devices=("cpu", "cuda"))


def _unet() -> Network:
    from vnumba.unet.network import NETWORK

    return Network(**NETWORK)


_BUILD = {"vn": functools.cache(_vn), "unet": functools.cache(_unet)}


def get_network(name: str) -> Network:
    """The record of the network called ``name`` (one of :data:`NETWORKS`).

    Raises
    ------
    ValueError
        Unknown name.
    """
    build = _BUILD.get(name) if isinstance(name, str) else None
    if build is None:
        raise ValueError(f"unknown architecture {name!r} (expected "
                         f"{' or '.join(repr(n) for n in NETWORKS)})")
    return build()
