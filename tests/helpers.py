"""Shared helpers of the operator and network tests (not a test module).

* :func:`dot_test`: the dot-product (adjoint) test of a linear operator pair.
* :func:`corr_data`: random arrays of a valid correlation and its adjoint.
* :func:`close`: max-error closeness relative to the reference's largest entry (float32
  device results against float64 references).
* :func:`network_params`, :func:`network_batch`: perturbed parameters and a random batch of
  the coupled network, the same draws in every test file that uses them.
* :func:`rel`, :func:`interior`, :func:`one_step`, :func:`assert_step_input_gradient`,
  :func:`assert_step_param_gradient`, :func:`assert_unrolled_loss_gradient`: the
  finite-difference checks (float64, central differences along random directions) of the
  hand-derived backward pass (``tests/test_model_grad.py``, ``tests/test_multiclass_grad.py``).
* :func:`device_one_step`, :func:`assert_step_matches_cpu`, :func:`train_side_by_side`,
  :func:`assert_training_matches_cpu`, :func:`assert_forward_refuses_bad_input`: a CUDA
  engine (simulator or GPU) against the CPU path: one step, training iterations (Adam and
  projection) on the same batches, and the input checks every backend's forward pass makes.
"""
import numpy as np

from vnumba.ops.optim import Adam
from vnumba.ops.projections import project_params
from vnumba.vn import model


# ----------------------------------------------------------------------------- operators
def dot_test(A, AT, xshape, yshape, rng, rtol=1e-10):
    """``<A x, y> == <x, AT y>`` for random float64 ``x`` of ``xshape`` and ``y`` of ``yshape``
    to ``rtol`` of the larger side (at least 1)."""
    x = rng.standard_normal(xshape)
    y = rng.standard_normal(yshape)
    lhs = np.vdot(A(x), y)
    rhs = np.vdot(x, AT(y))
    assert abs(lhs - rhs) <= rtol * max(abs(lhs), abs(rhs), 1.0), (lhs, rhs)


def corr_data(rng, N, C, O, H, W, ks):
    """``xp, k, y`` of a valid correlation: the padded input (N, C, H+ks-1, W+ks-1), the
    kernel (O, C, ks, ks) and an output-sized array (N, O, H, W), standard normal."""
    xp = rng.standard_normal((N, C, H + ks - 1, W + ks - 1))
    k = rng.standard_normal((O, C, ks, ks))
    y = rng.standard_normal((N, O, H, W))
    return xp, k, y


def close(got, ref, rtol=1e-4):
    """The largest error of ``got`` is at most ``rtol`` times the largest entry of ``ref``."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    assert float(np.abs(got - ref).max()) <= rtol * scale, (np.abs(got - ref).max(), scale)


# ----------------------------------------------------------------------------- the network
def network_params(cfg, rng, dtype=np.float64):
    """``model.init_params`` with the functions perturbed, so that the checks are not
    near-identity and trivially linear."""
    p = model.init_params(cfg, rng, dtype)
    for k in ("wu", "wm"):
        p[k] = (p[k] + 0.2 * rng.standard_normal(p[k].shape)).astype(dtype)
    p["w"] = (0.2 * p["w"] + 0.05 * rng.standard_normal(p["w"].shape)).astype(dtype)
    return p


def network_batch(rng, N, H, W, C=3, Cm=None, dtype=np.float64, with_m0=True):
    """``u0, gu, gm[, m0]``: images in [0.3, 0.7], a target mask in [0, 1] and a start mask in
    [0.4, 0.6] (off the clip's kinks); masks (N, H, W) when ``Cm`` is None, else (N, Cm, H, W)."""
    mshape = (N, H, W) if Cm is None else (N, Cm, H, W)
    u0 = (0.3 + 0.4 * rng.random((N, C, H, W))).astype(dtype)
    gu = (0.3 + 0.4 * rng.random((N, C, H, W))).astype(dtype)
    gm = rng.random(mshape).astype(dtype)
    if not with_m0:
        return u0, gu, gm
    m0 = (0.4 + 0.2 * rng.random(mshape)).astype(dtype)
    return u0, gu, gm, m0


def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def interior(states, margin=1e-3):
    """Every value of every state lies off the clip's kinks at 0 and 1."""
    return all(np.all((x > margin) & (x < 1 - margin)) for st in states for x in st)


def one_step(cfg, seed, t, N=2, H=9, W=8, Cm=None):
    """``rng, p, u0, u, m, ubar, mbar``: the generator (for further draws), step ``t``'s
    parameters, the network input ``u0``, a state (u, m) off the clip's kinks and random
    output gradients (float64)."""
    rng = np.random.default_rng(seed)
    p = model.step_params(network_params(cfg, rng), t)
    u0, _, _, m = network_batch(rng, N, H, W, Cm=Cm)
    u = 0.3 + 0.4 * rng.random(u0.shape)
    return rng, p, u0, u, m, rng.standard_normal(u.shape), rng.standard_normal(m.shape)


def _step_objective(p, cfg, u0, ubar, mbar):
    def J(uu, mm, pp=p):
        a, b = model.step_forward(pp, cfg, uu, mm, u0)
        return np.sum(a * ubar) + np.sum(b * mbar)
    return J


def assert_step_input_gradient(p, cfg, u, m, u0, ubar, mbar, rng, n_dirs=3, eps=1e-6):
    """One step's input gradient (``v - Hv``) equals central differences along ``n_dirs``
    random directions to 1e-6; returns the step's mask gradient."""
    ui, mi, _ = model.step_backward(p, cfg, u, m, u0, ubar, mbar)
    J = _step_objective(p, cfg, u0, ubar, mbar)
    for _ in range(n_dirs):
        du = rng.standard_normal(u.shape)
        dm = rng.standard_normal(m.shape)
        fd = (J(u + eps * du, m + eps * dm) - J(u - eps * du, m - eps * dm)) / (2 * eps)
        an = np.sum(ui * du) + np.sum(mi * dm)
        assert rel(fd, an) < 1e-6, (fd, an)
    return mi


def assert_step_param_gradient(p, cfg, u, m, u0, ubar, mbar, name, rng, eps=1e-6):
    """One step's gradient in parameter ``name`` equals a central difference along a random
    direction to 1e-6."""
    _, _, g = model.step_backward(p, cfg, u, m, u0, ubar, mbar)
    J = _step_objective(p, cfg, u0, ubar, mbar)
    d = rng.standard_normal(np.shape(p[name]))
    pp, pm = dict(p), dict(p)
    pp[name] = p[name] + eps * d
    pm[name] = p[name] - eps * d
    fd = (J(u, m, pp) - J(u, m, pm)) / (2 * eps)
    an = float(np.sum(g[name] * d))
    assert rel(fd, an) < 1e-6, (name, fd, an)


def assert_unrolled_loss_gradient(p, cfg, batch, name, rng, n_dirs=1, eps=1e-6, mask_weights=None):
    """The whole unrolled loss (with class weights ``mask_weights``, if given) is positive and
    its gradient in ``name`` equals central differences along ``n_dirs`` random directions to
    1e-6, no perturbed network crossing a clip kink; returns ``m_T``."""
    u0, gu, gm, m0 = batch
    loss, grads, _, m_T = model.loss_and_grad(p, cfg, u0, gu, gm, m0, mask_weights=mask_weights)
    assert loss > 0
    for _ in range(n_dirs):
        d = rng.standard_normal(p[name].shape)
        vals = []
        for s in (1, -1):
            q = dict(p)
            q[name] = p[name] + s * eps * d
            _, _, states = model.forward(q, cfg, u0, m0, return_states=True)
            assert interior(states)  # no clip kink crossed by the perturbation
            vals.append(model.loss_and_grad(q, cfg, u0, gu, gm, m0, mask_weights=mask_weights)[0])
        fd = (vals[0] - vals[1]) / (2 * eps)
        an = float(np.sum(grads[name] * d))
        assert rel(fd, an) < 1e-6, (name, fd, an)
    return m_T


# ----------------------------------------------------------------------------- CPU vs device
def device_one_step(cfg, seed, t, H, W, Cm=None):
    """float32 ``p, u0, u, m, ubar, mbar``: step ``t``'s parameters, the network input, a state
    (u in [0.2, 0.8], m in [0.4, 0.6]) and random output gradients, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    p = model.step_params(network_params(cfg, rng, np.float32), t)
    u0, _, _, m = network_batch(rng, 2, H, W, Cm=Cm, dtype=np.float32)
    u = (0.2 + 0.6 * rng.random(u0.shape)).astype(np.float32)
    ubar = rng.standard_normal(u.shape).astype(np.float32)
    mbar = rng.standard_normal(m.shape).astype(np.float32)
    return p, u0, u, m, ubar, mbar


def assert_step_matches_cpu(engine, cfg, p, u0, u, m, ubar, mbar):
    """A device step forward (to 1e-6) and its backward pass (input gradient and every
    parameter gradient, to 1e-4 of the largest entry) equal the CPU's; returns the device's
    new mask, the CPU's new state and the device's input and parameter gradients."""
    un, mn = engine.step_forward(p, cfg, u, m, u0)
    uc, mc = model.step_forward(p, cfg, u, m, u0)
    np.testing.assert_allclose(un, uc, atol=1e-6)
    np.testing.assert_allclose(mn, mc, atol=1e-6)
    ui, mi, g = engine.step_backward(p, cfg, u, m, u0, ubar, mbar)
    uic, mic, gc = model.step_backward(p, cfg, u, m, u0, ubar, mbar)
    close(ui, uic)
    close(mi, mic)
    assert set(g) == set(gc)
    for k in gc:
        assert g[k].shape == np.shape(gc[k]), k
        close(g[k], gc[k])
    return mn, (uc, mc), (mi, g)


def train_side_by_side(engine, cfg, p, lr, batches):
    """Train a copy of ``p`` on the CPU (model.loss_and_grad, Adam with the projection) and an
    ``engine.CudaTrainer`` on ``batches``.  Returns the CPU parameters, its optimiser, the
    trainer and per batch ``((loss, u, m) of the device, (loss, u, m) of the CPU)``."""
    cpu = {k: v.copy() for k, v in p.items()}
    opt = Adam(lr, project=lambda q: project_params(q, cfg))
    tr = engine.CudaTrainer(cfg, p, lr)
    steps = []
    for b in batches:
        lc, gc, uc, mc = model.loss_and_grad(cpu, cfg, *b)
        opt.step(cpu, gc)
        steps.append((tr.step(*b), (lc, uc, mc)))
    return cpu, opt, tr, steps


def assert_training_matches_cpu(engine, cfg, seed, H, W, Cm=None, n_batches=2, lr=1e-3):
    """``train_side_by_side`` from float32 parameters and ``n_batches`` one-image batches drawn
    from ``seed``, in float32 tolerances: per iteration the same loss and outputs, then the same
    parameters, each group moved well beyond the tolerance (so the comparison bites), and the
    same Adam state.  Returns the start parameters, the per-batch results and the trainer's
    parameters."""
    from vnumba.vn.config import PARAM_NAMES
    rng = np.random.default_rng(seed)
    p = network_params(cfg, rng, np.float32)
    batches = [network_batch(rng, 1, H, W, Cm=Cm, dtype=np.float32)[:3] for _ in range(n_batches)]
    cpu, opt, tr, steps = train_side_by_side(engine, cfg, p, lr, batches)
    for (loss, u, m), (lc, uc, mc) in steps:
        assert abs(loss - lc) <= 1e-6 * lc
        np.testing.assert_allclose(u, uc, atol=2e-6)
        np.testing.assert_allclose(m, mc, atol=2e-6)
    got = tr.params()
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[k], cpu[k], atol=1e-6, err_msg=k)
        # moved by about lr, less where the projection pulls back
        assert np.abs(cpu[k] - p[k]).max() > 2e-5, k
    st, stc = tr.optimizer_state(), opt.state_dict()
    assert sorted(st) == sorted(stc) and int(st["t"]) == int(stc["t"]) == n_batches
    for k in stc:
        if k != "t":
            close(st[k], stc[k], 1e-3)
    return p, steps, got


def assert_forward_refuses_bad_input(forward, p, cfg, u0):
    """The checks every backend's ``forward(params, cfg, u0)`` makes: the channel count, NaN
    in the image, a parameter of the wrong shape."""
    import pytest
    with pytest.raises(ValueError, match="channels"):
        forward(p, cfg, u0[:, :2].copy())
    bad = u0.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        forward(p, cfg, bad)
    with pytest.raises(ValueError, match="shape"):
        forward({**p, "K": p["K"][:, :1]}, cfg, u0)
