"""The coupled variational network: one step, the unrolled forward pass, the loss and the
hand-derived backward pass (CPU).

Notation follows the article (eq. 1–3) and ``docs/gradients.md``, which derives every line of
:func:`step_backward`.  One step ``t`` with parameters ``θ_t = (K^u, w^u, K^m, w^m, K, w, λ)``:

.. code-block:: text

    a = K^u u,  b = K^m m                      feature extraction
    f = (φ^u(a), φ^m(b))                       pointwise RBF functions, concatenated
    z = K f,  r = ψ(z)                         coupling; ψ = φ_t' parameterised by w
    g = K^T r = (g_u, g_m)
    ∇_u E = (K^u)^T (φ^u'(a) ⊙ g_u) + λ (u − u_0),   ∇_m E = (K^m)^T (φ^m'(b) ⊙ g_m)
    u ← clip(u − ∇_u E, 0, 1),  m ← clip(m − ∇_m E, 0, 1)

Parameters are a dict ``name -> array`` stacked over steps (see
:func:`vnumba.vn.config.param_shapes`); ``step_params(params, t)`` views one step.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from vnumba.ops.checks import check_batch
from vnumba.ops.conv import conv_adjoint, conv_forward, conv_kernel_grad
from vnumba.ops.loss import loss_value_and_output_grad
from vnumba.ops.rbf import RBFGrid, conv_rbf_apply, rbf_apply, rbf_weight_grad
from vnumba.vn.config import PARAM_NAMES, ModelConfig, param_shapes
from vnumba.vn.pointwise import scaled_concat, step_input_terms

__all__ = [
    "init_params", "step_params", "step_forward", "step_backward", "forward",
    "loss_and_grad", "batch_metrics", "check_params",
]


# ----------------------------------------------------------------------------- parameters
def init_params(cfg: ModelConfig, rng: np.random.Generator,
                dtype: DTypeLike = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters: random feasible filters, near-linear functions.

    ``φ^u``, ``φ^m`` start close to the identity and ``ψ`` close to a small multiple of the
    identity (a quadratic energy, i.e. linear diffusion), plus small random perturbations so
    that the channels differ.  Filters are drawn at random and projected onto the
    constraint sets.

    Parameters
    ----------
    cfg : ModelConfig
    rng : numpy.random.Generator
    dtype : numpy dtype, float32 or float64

    Returns
    -------
    dict of ndarray
        Shapes as :func:`vnumba.vn.config.param_shapes`.

    Examples
    --------
    >>> import numpy as np
    >>> from vnumba.vn.config import ModelConfig
    >>> from vnumba.vn.model import init_params
    >>> cfg = ModelConfig(n_steps=2, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    >>> p = init_params(cfg, np.random.default_rng(0), np.float64)
    >>> sorted(p)
    ['K', 'Km', 'Ku', 'lam', 'w', 'wm', 'wu']
    >>> p["Ku"].shape, p["Ku"].dtype
    ((2, 2, 3, 3, 3), dtype('float64'))
    >>> p["lam"]
    array([0.05, 0.05])
    """
    from vnumba.ops.projections import project_params

    grid = RBFGrid(cfg)
    shapes = param_shapes(cfg)
    mu = grid.centres
    # Sum_j mu_j G_j(x) ≈ (sqrt(2π) σ / h) x for x inside the grid: divide to get ≈ x.
    ident = mu / (np.sqrt(2.0 * np.pi) * grid.sigma / grid.h)
    p = {}
    for name in ("Ku", "Km", "K"):
        k = rng.standard_normal(shapes[name])
        k /= np.abs(k).sum(axis=(-3, -2, -1), keepdims=True)
        p[name] = k
    T = cfg.n_steps
    p["wu"] = np.broadcast_to(ident, shapes["wu"]) * (1.0 + 0.1 * rng.standard_normal(shapes["wu"]))
    p["wm"] = np.broadcast_to(ident, shapes["wm"]) * (1.0 + 0.1 * rng.standard_normal(shapes["wm"]))
    p["w"] = 0.1 * np.broadcast_to(ident, shapes["w"]) * (1.0 + 0.1 * rng.standard_normal(shapes["w"]))
    p["lam"] = np.full((T,), 0.05)
    p = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in p.items()}
    project_params(p, cfg)
    return p


def check_params(params: dict, cfg: ModelConfig, dtype=None) -> np.dtype:
    """Validate names, shapes, dtype and finiteness of a parameter dict; return its dtype."""
    shapes = param_shapes(cfg)
    missing = [k for k in PARAM_NAMES if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise KeyError(f"parameter dict: missing {missing}, unknown {extra}")
    dt = np.dtype(dtype) if dtype is not None else params["K"].dtype
    for k, shp in shapes.items():
        v = params[k]
        if v.shape != shp:
            raise ValueError(f"parameter {k} has shape {v.shape}, expected {shp}")
        if v.dtype != dt:
            raise TypeError(f"parameter {k} has dtype {v.dtype}, expected {dt}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"parameter {k} contains NaN or inf")
    return dt


def step_params(params: dict, t: int) -> dict:
    """Views of the parameters of step ``t`` (``lam`` as a Python float)."""
    p = {k: params[k][t] for k in PARAM_NAMES if k != "lam"}
    p["lam"] = float(params["lam"][t])
    return p


# ----------------------------------------------------------------------------- one step
def _mask4(m):
    """The mask as a contiguous (N, C_m, H, W) array (a view where possible) and whether
    it came as the one-channel (N, H, W) form, which the step returns in the same form."""
    if m.ndim == 3:
        return np.ascontiguousarray(m[:, None]), True
    return np.ascontiguousarray(m), False


def _fused(res, kept):
    """``conv_rbf_apply``'s result with ``None`` in front where the convolution was not kept."""
    return res if kept else (None,) + res


def step_forward(p: dict, cfg: ModelConfig, u, m, u0, keep=False):
    """One projected gradient step (article eq. 1).

    Parameters
    ----------
    p : dict
        One step's parameters (:func:`step_params`).
    cfg : ModelConfig
    u, u0 : ndarray, shape (N, C, H, W)
    m : ndarray, shape (N, C_m, H, W), or (N, H, W) when ``cfg.n_mask == 1``
    keep : bool or "record"
        ``True``: also return every intermediate quantity needed by :func:`step_backward`.
        ``"record"``: also return only the convolution outputs ``a, b, z, g`` and the clip's
        active sets (:func:`step_backward` recomputes the pointwise functions from them,
        which costs no convolution).

    Returns
    -------
    u_next : ndarray, shape (N, C, H, W)
    m_next : ndarray, the shape of ``m``
    cache : dict, only if ``keep``
    """
    grid = RBFGrid(cfg)
    Fu = cfg.nf_u
    full = keep is True
    m4, squeeze = _mask4(m)
    # Each activation is evaluated in its convolution's epilogue (conv_rbf_apply: the same
    # values as conv_forward then rbf_apply, bit for bit): the convolution outputs a, b, z
    # are written to memory only when the backward pass keeps them.
    kc = bool(keep)
    # f = (φ^u(a), φ^m(b)) is written in place; second derivatives only for the backward pass
    order = 2 if full else 1
    N, _, H, W = u.shape
    f = np.empty((N, cfg.nf, H, W), u.dtype)
    a, _, fa1, *fa2 = _fused(conv_rbf_apply(u, p["Ku"], p["wu"], grid, order=order, out=f,
                                            offset=0, keep_conv=kc), kc)
    b, _, fb1, *fb2 = _fused(conv_rbf_apply(m4, p["Km"], p["wm"], grid, order=order, out=f,
                                            offset=Fu, keep_conv=kc), kc)
    fa2 = fa2[0] if fa2 else None
    fb2 = fb2[0] if fb2 else None
    # ψ' is needed only by the backward pass.
    z, r, *r1 = _fused(conv_rbf_apply(f, p["K"], p["w"], grid, order=1 if full else 0,
                                      keep_conv=kc), kc)
    r1 = r1[0] if r1 else None
    g = conv_adjoint(r, p["K"])
    # φ'(a) ⊙ g is formed while the adjoint pads it (no array of its own)
    grad_u = conv_adjoint(g[:, :Fu], p["Ku"], scale=fa1)
    grad_u += p["lam"] * (u - u0)
    grad_m = conv_adjoint(g[:, Fu:], p["Km"], scale=fb1)
    if squeeze:
        grad_m = grad_m[:, 0]
    un = u - grad_u
    mn = m - grad_m
    u_next = np.clip(un, 0.0, 1.0)
    m_next = np.clip(mn, 0.0, 1.0)
    if not keep:
        return u_next, m_next
    active_u = (un > 0.0) & (un < 1.0)
    active_m = (mn > 0.0) & (mn < 1.0)
    if not full:
        if keep != "record":
            raise ValueError(f"keep must be False, True or 'record', got {keep!r}")
        return u_next, m_next, dict(a=a, b=b, z=z, g=g, active_u=active_u, active_m=active_m)
    cache = dict(a=a, b=b, fa1=fa1, fa2=fa2, fb1=fb1, fb2=fb2, f=f, z=z, r=r, r1=r1,
                 gu=g[:, :Fu], gm=g[:, Fu:],
                 active_u=active_u, active_m=active_m)
    return u_next, m_next, cache


def _cache_from_record(p: dict, cfg: ModelConfig, rec: dict) -> dict:
    """The intermediate quantities of :func:`step_forward` (``keep=True``) from its record:
    only the pointwise functions are evaluated again, no convolution."""
    grid = RBFGrid(cfg)
    Fu = cfg.nf_u
    a, b, z, g = rec["a"], rec["b"], rec["z"], rec["g"]
    N, _, H, W = a.shape
    f = np.empty((N, cfg.nf, H, W), a.dtype)
    _, fa1, fa2 = rbf_apply(a, p["wu"], grid, order=2, out=f, offset=0)
    _, fb1, fb2 = rbf_apply(b, p["wm"], grid, order=2, out=f, offset=Fu)
    r, r1 = rbf_apply(z, p["w"], grid, order=1)
    return dict(a=a, b=b, fa1=fa1, fa2=fa2, fb1=fb1, fb2=fb2, f=f, z=z, r=r, r1=r1,
                gu=g[:, :Fu], gm=g[:, Fu:],
                active_u=rec["active_u"], active_m=rec["active_m"])


def step_backward(p: dict, cfg: ModelConfig, u, m, u0, ubar, mbar, record=None):
    """Backward pass through one step: the Hessian-vector product and parameter gradients.

    Parameters
    ----------
    p : dict
        One step's parameters.
    cfg : ModelConfig
    u, u0 : ndarray, shape (N, C, H, W)
        The step's input state and the network input.
    m : ndarray, shape (N, C_m, H, W), or (N, H, W) when ``cfg.n_mask == 1``
    ubar : ndarray, shape (N, C, H, W)
        Gradient of the loss with respect to the step's output image.
    mbar : ndarray, the shape of ``m``
        Gradient of the loss with respect to the step's output mask.
    record : dict, optional
        The step's record from :func:`step_forward` (``keep="record"``); without it the
        step's forward pass is recomputed (convolutions included).

    Returns
    -------
    ubar_in : ndarray, shape (N, C, H, W)
    mbar_in : ndarray, the shape of ``m``
        Gradients with respect to the step's inputs ``u``, ``m``.
    grads : dict
        Gradients with respect to this step's parameters (``lam`` as a 0-d array).

    Notes
    -----
    With ``v = (ubar, mbar)`` masked by the clip's active set and the symmetric Hessian
    ``H = ∇²E_t``, the input gradient is ``v − H v``; the parameter gradient is
    ``−∂_θ S`` with ``S(θ) = <v, ∇E(x; θ)> = <r, dz> + λ <v_u, u − u_0>``
    (``docs/gradients.md`` §3–4).
    """
    grid = RBFGrid(cfg)
    Fu = cfg.nf_u
    if record is None:
        _, _, c = step_forward(p, cfg, u, m, u0, keep=True)
    else:
        c = _cache_from_record(p, cfg, record)
    # multiplying by the boolean mask keeps the dtype (np.where with 0.0 would not)
    v_u = np.multiply(ubar, c.pop("active_u"), dtype=u.dtype)
    v_m = np.multiply(mbar, c.pop("active_m"), dtype=u.dtype)
    da = conv_forward(v_u, p["Ku"])
    vm, _ = _mask4(v_m)
    db = conv_forward(vm, p["Km"])
    df = scaled_concat(c["fa1"], da, c["fb1"], db)
    dz = conv_forward(df, p["K"])
    dr = c["r1"] * dz
    dg = conv_adjoint(dr, p["K"])
    dgu = dg[:, :Fu]
    dgm = dg[:, Fu:]
    # abar = φ^u' dg_u + φ^u'' da g_u, dabar = φ^u' g_u, and the RBF weight gradient's
    # coefficients da g_u, dg_u: one pass (vnumba.vn.pointwise), the same for the mask block;
    # each weight gradient right away, so that its two coefficient fields are freed before
    # the next block's are made (peak memory)
    abar, dabar, cu1, cu0 = step_input_terms(c["fa1"], c["fa2"], da, c["gu"], dgu)
    grad_wu = -rbf_weight_grad(c["a"], cu0, cu1, grid)
    del cu0, cu1
    bbar, dbbar, cm1, cm0 = step_input_terms(c["fb1"], c["fb2"], db, c["gm"], dgm)
    grad_wm = -rbf_weight_grad(c["b"], cm0, cm1, grid)
    del cm0, cm1
    hv_u = conv_adjoint(abar, p["Ku"])
    hv_u += p["lam"] * v_u
    hv_m = conv_adjoint(bbar, p["Km"])
    if v_m.ndim == 3:
        hv_m = hv_m[:, 0]
    ubar_in = v_u - hv_u
    mbar_in = v_m - hv_m

    mm, _ = _mask4(m)
    grads = {
        "K": -(conv_kernel_grad(dr, c["f"], cfg.ks) + conv_kernel_grad(c["r"], df, cfg.ks)),
        "w": -rbf_weight_grad(c["z"], dz, None, grid),
        "wu": grad_wu,
        "wm": grad_wm,
        "Ku": -(conv_kernel_grad(abar, u, cfg.ks_u) + conv_kernel_grad(dabar, v_u, cfg.ks_u)),
        "Km": -(conv_kernel_grad(bbar, mm, cfg.ks_m) + conv_kernel_grad(dbbar, vm, cfg.ks_m)),
        "lam": -np.asarray(np.sum(v_u * (u - u0), dtype=np.float64), dtype=u.dtype),
    }
    return ubar_in, mbar_in, grads


# ----------------------------------------------------------------------------- network
def forward(params: dict[str, np.ndarray], cfg: ModelConfig, u0: np.ndarray,
            m0: np.ndarray | None = None, return_states: bool = False,
            chunk: int = 1) -> tuple:
    """Unrolled forward pass of ``cfg.n_steps`` steps.

    Parameters
    ----------
    params : dict
        Stacked parameters (:func:`vnumba.vn.config.param_shapes`).
    cfg : ModelConfig
    u0 : ndarray, shape (N, C, H, W), the parameters' dtype, values in [0, 1]
    m0 : ndarray, shape (N, C_m, H, W), optional
        Initial mask (article: zeros); (N, H, W) is accepted when ``cfg.n_mask == 1``.
    return_states : bool
        Also return the list of states ``[(u_0, m_0), ..., (u_T, m_T)]``.
    chunk : int
        Without ``return_states``, the images go through the network ``chunk`` at a time
        (the images are independent): a chunk's feature arrays stay in the caches, which a
        whole batch's (70 MB per array at batch 8, 300×300) do not.

    Returns
    -------
    u_T : ndarray, shape (N, C, H, W)
    m_T : ndarray, shape (N, H, W) when ``cfg.n_mask == 1`` (and ``m0`` is None or
        (N, H, W)), else (N, C_m, H, W)
    states : list, only if ``return_states``

    Examples
    --------
    >>> import numpy as np
    >>> from vnumba.vn.config import ModelConfig
    >>> from vnumba.vn.model import forward, init_params
    >>> cfg = ModelConfig(n_steps=2, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    >>> p = init_params(cfg, np.random.default_rng(0), np.float64)
    >>> u0 = np.random.default_rng(1).random((1, 3, 8, 8))
    >>> u, m = forward(p, cfg, u0)
    >>> u.shape, m.shape
    ((1, 3, 8, 8), (1, 8, 8))
    >>> bool(m.min() >= 0 and m.max() <= 1)
    True
    >>> len(forward(p, cfg, u0, return_states=True)[2])  # (u_0, m_0), ..., (u_T, m_T)
    3
    """
    u0, m = _check_input(params, cfg, u0, m0)
    chunk = _check_chunk(chunk)
    N = u0.shape[0]
    if return_states:
        return _run_steps(params, cfg, u0, m)[0]
    u_T = np.empty_like(u0)
    m_T = np.empty_like(m)
    for s0 in range(0, N, chunk):
        sl = slice(s0, min(N, s0 + chunk))
        u_T[sl], m_T[sl] = _run_steps(params, cfg, u0[sl], m[sl], keep_states=False)[0][:2]
    return u_T, m_T


def _check_input(params, cfg, u0, m0):
    """Validate the parameters and a network input; return contiguous ``u0`` and ``m0``
    (zeros when ``m0`` is None).

    The mask is (N, C_m, H, W); a one-channel model keeps the article's (N, H, W) form when
    ``m0`` is None or given in that form."""
    dt = check_params(params, cfg)
    check_batch("u0", u0, 4, dt)
    N, C, H, W = u0.shape
    if C != cfg.n_channels:
        raise ValueError(f"u0 has {C} channels, the model expects {cfg.n_channels}")
    r = max(cfg.ks_u, cfg.ks_m, cfg.ks) // 2
    if H < r or W < r:
        raise ValueError(f"image {H}x{W} smaller than the largest kernel radius {r}")
    mshape = _mask_shape(cfg, N, H, W, None if m0 is None else np.ndim(m0))
    m = np.zeros(mshape, dt) if m0 is None else np.ascontiguousarray(m0)
    check_batch("m0", m, len(mshape), dt, mshape)
    return np.ascontiguousarray(u0), m


def _mask_shape(cfg, N, H, W, ndim=None):
    """Shape of the mask of ``N`` images: (N, H, W) for a one-channel model unless a
    4-d array was given (``ndim``), else (N, C_m, H, W)."""
    if cfg.n_mask == 1 and ndim in (None, 3):
        return (N, H, W)
    return (N, cfg.n_mask, H, W)


def _check_chunk(chunk):
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return chunk


def _run_steps(params, cfg, u0, m0, keep_states=True, record=False):
    """The unrolled steps on checked, contiguous inputs.

    Returns
    -------
    tuple
        ``(u_T, m_T, states)`` (``states`` = ``[(u_0, m_0), ..., (u_T, m_T)]``, or None
        without ``keep_states``) and the list of the steps' records (``keep="record"`` of
        :func:`step_forward`; empty without ``record``).
    """
    u, m = u0, m0
    states = [(u, m)] if keep_states else None
    records = []
    for t in range(cfg.n_steps):
        p = step_params(params, t)
        if record:
            u, m, rec = step_forward(p, cfg, u, m, u0, keep="record")
            records.append(rec)
        else:
            u, m = step_forward(p, cfg, u, m, u0)
        if keep_states:
            states.append((u, m))
    return (u, m, states), records


def loss_and_grad(params: dict[str, np.ndarray], cfg: ModelConfig, u0: np.ndarray,
                  gu: np.ndarray, gm: np.ndarray, m0: np.ndarray | None = None,
                  chunk: int = 1, store: str = "convs", batch_size: int | None = None,
                  mask_weights=None) -> tuple:
    """Training loss and its exact gradient for every parameter of every step.

    Parameters
    ----------
    params : dict
    cfg : ModelConfig
    u0, gu : ndarray, shape (N, C, H, W)
        Input and clean target image.
    gm : ndarray, shape (N, C_m, H, W), or (N, H, W) when ``cfg.n_mask == 1``
        Target mask, one channel per class.
    m0 : ndarray, the shape of ``gm``, optional
    chunk : int
        Images processed together (forward, then backward) before the next ones; the
        parameter gradients are summed over the chunks.  The result does not depend on it
        (up to summation order); memory does: the stored states and the backward step's
        feature-size temporaries scale with ``chunk``, not with ``N``.
    store : {"convs", "states"}
        What the forward pass keeps for the backward pass.  ``"states"`` (the article's
        scheme): only ``(u_t, m_t)``; every backward step recomputes its forward step,
        convolutions included.  ``"convs"`` (default): also each step's convolution outputs
        ``a = K^u u``, ``b = K^m m``, ``z = K f``, ``g = K^T ψ(z)`` and the clip's active
        sets, so a backward step only re-evaluates the pointwise functions: a quarter fewer
        multiply-adds per iteration, for ``N_t (nf_u + nf_m + 2 nf) H W`` more floats per
        chunk (≈ 260 MB for one 300×300 image and 10 steps).
    batch_size : int, optional
        The batch size the loss is normalised by (default ``N``): a shard of a larger batch
        (data-parallel training, :mod:`vnumba.training.parallel`) gives exactly its share of
        the batch's loss and gradient.
    mask_weights : sequence of float, optional
        One weight per mask channel in the loss's mask term (default: the article's loss;
        :func:`vnumba.ops.loss.loss_value_and_output_grad`).

    Returns
    -------
    loss : float
        ``mean_s [ 1/6 ||u_T - g_u||² + 1/2 ||m_T - g_m||² ] / (H W)`` (article eq. 3,
        divided by the batch size and the pixel count so it does not scale with either;
        :func:`vnumba.ops.loss.loss_value_and_output_grad`).
    grads : dict
        Same keys and shapes as ``params``.
    u_T : ndarray, shape (N, C, H, W)
    m_T : ndarray, the shape of ``gm``

    Notes
    -----
    With ``store="states"`` only the states ``(u_t, m_t)`` are stored and every other
    quantity of step ``t`` is recomputed in its backward step (memory ∝ ``N_t (C + 1) H W``
    per chunk).  The loss is a
    sum over images, so the gradient of the batch is the sum of the per-chunk gradients;
    processing one image at a time keeps a batch-8 iteration at 300×300 far below 1 GB
    (``bench/README.md``).

    Examples
    --------
    >>> import numpy as np
    >>> from vnumba.vn.config import ModelConfig
    >>> from vnumba.vn.model import init_params, loss_and_grad
    >>> cfg = ModelConfig(n_steps=2, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    >>> rng = np.random.default_rng(0)
    >>> p = init_params(cfg, rng, np.float64)
    >>> u0, gu = rng.random((2, 1, 3, 8, 8))
    >>> gm = (rng.random((1, 8, 8)) > 0.5).astype(np.float64)
    >>> loss, grads, u_T, m_T = loss_and_grad(p, cfg, u0, gu, gm)
    >>> bool(loss > 0), sorted(grads) == sorted(p), grads["K"].shape == p["K"].shape
    (True, True, True)
    >>> m_T.shape
    (1, 8, 8)
    """
    if m0 is None and np.ndim(gm) == 4:
        m0 = np.zeros(np.shape(gm), params["K"].dtype)
    u0, m0 = _check_input(params, cfg, u0, m0)
    dt = u0.dtype
    N, C, H, W = u0.shape
    check_batch("gu", gu, 4, dt, u0.shape)
    check_batch("gm", gm, m0.ndim, dt, m0.shape)
    if store not in ("convs", "states"):
        raise ValueError(f"store must be 'convs' or 'states', got {store!r}")
    chunk = _check_chunk(chunk)
    if batch_size is None:
        batch_size = N
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < N:
        raise ValueError(f"batch_size must be an integer >= the {N} images given, got {batch_size!r}")
    gu = np.ascontiguousarray(gu)
    gm = np.ascontiguousarray(gm)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    u_T = np.empty_like(u0)
    m_T = np.empty(m0.shape, dt)
    loss = 0.0
    for s0 in range(0, N, chunk):
        sl = slice(s0, min(N, s0 + chunk))
        loss += _loss_and_grad_chunk(params, cfg, u0[sl], gu[sl], gm[sl], m0[sl], int(batch_size), grads,
                                     u_T[sl], m_T[sl], store, mask_weights)
    return float(loss), grads, u_T, m_T


def _loss_and_grad_chunk(params, cfg, u0, gu, gm, m0, batch_size, grads, u_out, m_out, store,
                         mask_weights=None):
    """Loss contribution of some images (checked, contiguous inputs; normalised by the
    ``batch_size`` images of the whole batch); adds their parameter gradients to ``grads``
    and writes their final states to ``u_out``, ``m_out``."""
    (u_T, m_T, states), records = _run_steps(params, cfg, u0, m0, record=store == "convs")
    if not records:
        records = [None] * cfg.n_steps
    loss, ubar, mbar = loss_value_and_output_grad(u_T, gu, m_T, gm, batch_size=batch_size,
                                                  mask_weights=mask_weights)
    u_out[...] = u_T
    m_out[...] = m_T
    for t in range(cfg.n_steps - 1, -1, -1):
        u, m = states[t]
        states[t + 1] = None  # the backward pass no longer needs the later states
        rec, records[t] = records[t], None
        ubar, mbar, g = step_backward(step_params(params, t), cfg, u, m, u0, ubar, mbar, rec)
        del rec
        for k, v in g.items():
            grads[k][t] += v
    return loss


def batch_metrics(u_T, m_T, gu, gm):
    """Monitoring figures of the article's Fig. 3.

    Returns
    -------
    dict
        ``accuracy``: fraction of pixels where ``m_T > 1/2`` equals ``g_m > 1/2``;
        ``psnr``: PSNR of ``u_T`` against ``g_u`` in dB (peak 1), averaged over the batch.
    """
    acc = float(np.mean((m_T > 0.5) == (gm > 0.5)))
    mse = np.mean((u_T.astype(np.float64) - gu) ** 2, axis=(1, 2, 3))
    psnr = float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))))
    return {"accuracy": acc, "psnr": psnr}
