"""The CUDA engine under the CUDA simulator against the CPU path: one step and its
Hessian-vector product, the unrolled forward pass, the loss and its gradient, and whole
training iterations (loss and exact gradient, Adam, projection) giving the same parameters
and optimiser state as vnumba.vn.model + vnumba.ops.optim.Adam + vnumba.ops.projections."""
import dataclasses

import helpers
import numpy as np
import pytest
from helpers import close as _close
from helpers import network_batch, network_params

from vnumba.ops.optim import Adam
from vnumba.ops.projections import project_params
from vnumba.vn import model
from vnumba.vn.config import PARAM_NAMES, ModelConfig

# Tiny but complete: three kernel sizes, odd channel counts (idle register slots in the
# simulator's tiles), a window narrower than the RBF grid.
CFG = ModelConfig(n_steps=2, nf_u=2, nf_m=1, ks_u=5, ks_m=3, ks=3, n_w=11, rbf_radius=3)


pytestmark = pytest.mark.usefixtures("cuda_simulator")


def _params(rng, cfg=CFG):
    # Perturbed functions, so that the checks are not near-identity (as test_model_grad).
    return network_params(cfg, rng, np.float32)


def _batch(rng, N=2, H=6, W=7):
    return network_batch(rng, N, H, W, dtype=np.float32)


def test_is_available_reports_the_simulator(engine):
    ok, reason = engine.is_available()
    assert ok and "simulator" in reason


@pytest.mark.parametrize("seed,t", [(0, 1), (1, 0)])
def test_one_step_forward_backward_hessian_vector_product_and_gradients_match_cpu(seed, t, engine):
    p, u0, u, m, ubar, mbar = helpers.device_one_step(CFG, seed, t, H=6, W=7)
    _, (uc, _), _ = helpers.assert_step_matches_cpu(engine, CFG, p, u0, u, m, ubar, mbar)
    assert np.abs(uc - u).max() > 1e-3  # the step does move the state


@pytest.mark.parametrize("with_m0", [False, True])
def test_unrolled_forward_matches_cpu(with_m0, engine):
    rng = np.random.default_rng(2)
    p = _params(rng)
    u0, _, _, m0 = _batch(rng)
    m0 = m0 if with_m0 else None
    u, m = engine.forward(p, CFG, u0, m0)
    uc, mc = model.forward(p, CFG, u0, m0)
    np.testing.assert_allclose(u, uc, atol=2e-6)
    np.testing.assert_allclose(m, mc, atol=2e-6)


def test_loss_and_exact_gradient_match_cpu(engine):
    rng = np.random.default_rng(3)
    p = _params(rng)
    u0, gu, gm, m0 = _batch(rng)
    loss, g, u, m = engine.loss_and_grad(p, CFG, u0, gu, gm, m0)
    lc, gc, uc, mc = model.loss_and_grad(p, CFG, u0, gu, gm, m0)
    assert abs(loss - lc) <= 1e-6 * lc
    np.testing.assert_allclose(u, uc, atol=2e-6)
    np.testing.assert_allclose(m, mc, atol=2e-6)
    for k in PARAM_NAMES:
        assert g[k].dtype == np.float32 and g[k].shape == gc[k].shape
        _close(g[k], gc[k])
        assert np.abs(gc[k]).max() > 0, k  # every group is exercised


def test_engine_loss_is_the_one_loss_definition_of_its_outputs(engine):
    """Loss (3) reduced on the device (engine.loss_and_grad and CudaTrainer.step) equals
    vnumba.ops.loss on the returned outputs and the same targets."""
    from vnumba.ops.loss import loss_value_and_output_grad
    rng = np.random.default_rng(5)
    p = _params(rng)
    u0, gu, gm, m0 = _batch(rng)
    loss, _, u, m = engine.loss_and_grad(p, CFG, u0, gu, gm, m0)
    assert loss == pytest.approx(loss_value_and_output_grad(u, gu, m, gm)[0], rel=1e-12)
    tr = engine.CudaTrainer(CFG, p, 1e-3)
    loss, u, m = tr.step(u0, gu, gm)
    assert loss == pytest.approx(loss_value_and_output_grad(u, gu, m, gm)[0], rel=1e-12)


def test_training_iterations_give_the_parameters_and_adam_state_of_the_cpu_path(engine):
    # Ku without the zero-mean constraint (scenario 1), Km and K with: both projections run.
    cfg = dataclasses.replace(CFG, zero_mean_u=False)
    p, _, got = helpers.assert_training_matches_cpu(engine, cfg, 4, H=6, W=7)
    assert all(got[k].dtype == np.float32 for k in PARAM_NAMES)
    # the input dict is not modified
    assert all(np.array_equal(p[k], _params(np.random.default_rng(4), cfg)[k]) for k in PARAM_NAMES)


def test_resuming_from_a_cpu_optimiser_state_continues_identically(engine):
    rng = np.random.default_rng(5)
    p = _params(rng)
    b1, b2 = (_batch(rng, N=1)[:3] for _ in range(2))
    cpu = {k: v.copy() for k, v in p.items()}
    opt = Adam(1e-3, project=lambda q: project_params(q, CFG))
    opt.step(cpu, model.loss_and_grad(cpu, CFG, *b1)[1])
    tr = engine.CudaTrainer(CFG, cpu, 1e-3)
    assert tr.optimizer_state() == {"t": 0}
    tr.load_optimizer_state(opt.state_dict())
    opt.step(cpu, model.loss_and_grad(cpu, CFG, *b2)[1])
    tr.step(*b2)
    got = tr.params()
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[k], cpu[k], atol=1e-6, err_msg=k)
    assert int(tr.optimizer_state()["t"]) == 2


def test_engine_rejects_bad_input_with_clear_errors(engine):
    rng = np.random.default_rng(6)
    p = _params(rng)
    u0, gu, gm, _ = _batch(rng)
    helpers.assert_forward_refuses_bad_input(engine.forward, p, CFG, u0)
    with pytest.raises(KeyError, match="missing"):
        engine.forward({k: v for k, v in p.items() if k != "w"}, CFG, u0)
    with pytest.raises(ValueError, match="smaller than"):
        engine.forward(p, CFG, np.zeros((1, 3, 1, 7), np.float32))
    with pytest.raises(TypeError, match="ModelConfig"):
        engine.forward(p, {"n_steps": 2}, u0)
    with pytest.raises(ValueError, match="lr"):
        engine.CudaTrainer(CFG, p, lr=0.0)
    tr = engine.CudaTrainer(CFG, p, 1e-3)
    with pytest.raises(ValueError, match="gm"):
        tr.step(u0, gu, gm[:, :3])
    with pytest.raises(KeyError, match="'t'"):
        tr.load_optimizer_state({})


def test_a_non_finite_gradient_stops_the_iteration_before_the_update(engine, monkeypatch):
    rng = np.random.default_rng(7)
    p = _params(rng)
    u0, gu, gm, _ = _batch(rng, N=1)
    tr = engine.CudaTrainer(CFG, p, 1e-3)
    net = tr._net
    original = type(net).loss_and_grad

    def poisoned(self):
        out = original(self)
        off = self.goff("K", 1) + 3  # one entry of step 1's coupling filters
        self.grad[off:off + 1].copy_to_device(np.array([np.nan], np.float32), stream=self.stream)
        return out

    monkeypatch.setattr(type(net), "loss_and_grad", poisoned)
    with pytest.raises(FloatingPointError, match=r"gradient of K contains NaN"):
        tr.step(u0, gu, gm)
    assert tr.optimizer_state() == {"t": 0}
    after = tr.params()
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(after[k], p[k])
