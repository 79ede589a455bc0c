"""The CUDA engine with one mask channel per nucleus class (``ModelConfig.n_mask = C_m``,
issue 20), under the CUDA simulator against the CPU reference (vnumba.vn.model, itself
checked by finite differences in tests/test_multiclass_grad.py): one step and its
Hessian-vector product, the unrolled forward pass, loss (3) summed over the mask channels and
every parameter gradient, training iterations (Adam and the projection of the C_m-channel
``K^m`` filters), the training command on the cuda backend, and the one-channel model in its
4-d form.  Float32 tolerances as tests/test_cuda_engine.py (the device computes in float32)."""
import dataclasses

import naive
import numpy as np
import pytest
from helpers import assert_step_matches_cpu, assert_training_matches_cpu, device_one_step, network_batch, network_params
from helpers import close as _close

from vnumba.ops.loss import loss_value_and_output_grad
from vnumba.vn import model
from vnumba.vn.config import PARAM_NAMES, ModelConfig

# Three classes; odd channel counts (idle register slots in the simulator's tiles), three
# kernel sizes, an RBF window narrower than the grid, 9 x 8 images (partial tiles).
CFG = ModelConfig(n_steps=2, n_mask=3, nf_u=3, nf_m=2, ks_u=5, ks_m=3, ks=3, n_w=11, rbf_radius=3)
H, W = 9, 8


pytestmark = pytest.mark.usefixtures("cuda_simulator")


def _params(rng, cfg=CFG):
    # Perturbed functions, so that the checks are not near-identity (as test_cuda_engine).
    return network_params(cfg, rng, np.float32)


def _batch(rng, N=2, Cm=3):
    return network_batch(rng, N, H, W, Cm=Cm, dtype=np.float32)


def _case(seed, with_m0):
    """Parameters and a batch drawn from ``seed``; the start mask only ``with_m0``."""
    rng = np.random.default_rng(seed)
    p = _params(rng)
    u0, gu, gm, m0 = _batch(rng)
    return p, u0, gu, gm, (m0 if with_m0 else None)


@pytest.mark.parametrize("seed,t", [(0, 1), (1, 0)])
def test_one_step_forward_backward_hessian_vector_product_and_gradients_match_cpu(seed, t, engine):
    p, u0, u, m, ubar, mbar = device_one_step(CFG, seed, t, H=H, W=W, Cm=3)
    mn, (_, mc), (mi, g) = assert_step_matches_cpu(engine, CFG, p, u0, u, m, ubar, mbar)
    assert mn.shape == mi.shape == m.shape == (2, 3, H, W)
    assert np.abs(mc - m).max() > 1e-3  # the step does move the class maps
    assert g["Km"].shape == (CFG.nf_m, 3, CFG.ks_m, CFG.ks_m)


@pytest.mark.parametrize("with_m0", [False, True])
def test_unrolled_forward_matches_cpu(with_m0, engine):
    p, u0, _, _, m0 = _case(2, with_m0)
    u, m = engine.forward(p, CFG, u0, m0)
    uc, mc = model.forward(p, CFG, u0, m0)
    assert m.shape == mc.shape == (2, 3, H, W) and m.dtype == np.float32
    np.testing.assert_allclose(u, uc, atol=2e-6)
    np.testing.assert_allclose(m, mc, atol=2e-6)
    # the channels differ (K^m mixes them; each class map is its own state)
    assert np.abs(mc[:, 0] - mc[:, 1]).max() > 1e-4
    if with_m0:
        # float64 inputs: the device computes in float32 (rounded inputs, the same result)
        p64 = {k: v.astype(np.float64) for k, v in p.items()}
        u64, m64 = engine.forward(p64, CFG, u0.astype(np.float64), m0.astype(np.float64))
        assert m64.dtype == np.float32
        np.testing.assert_array_equal(u64, u)
        np.testing.assert_array_equal(m64, m)


@pytest.mark.parametrize("with_m0", [False, True])
def test_loss_and_every_parameter_gradient_match_cpu(with_m0, engine):
    p, u0, gu, gm, m0 = _case(3, with_m0)
    loss, g, u, m = engine.loss_and_grad(p, CFG, u0, gu, gm, m0)
    lc, gc, uc, mc = model.loss_and_grad(p, CFG, u0, gu, gm, m0)
    assert abs(loss - lc) <= 1e-6 * lc
    assert m.shape == mc.shape == gm.shape
    np.testing.assert_allclose(u, uc, atol=2e-6)
    np.testing.assert_allclose(m, mc, atol=2e-6)
    for k in PARAM_NAMES:
        assert g[k].dtype == np.float32 and g[k].shape == gc[k].shape, k
        _close(g[k], gc[k])
        assert np.abs(gc[k]).max() > 0, k  # every group is exercised
    # every class channel of K^m gets a gradient
    assert all(np.abs(gc["Km"][:, :, c]).max() > 0 for c in range(3))


# slow under the simulator (20-30 s); the default run keeps the step and gradient checks
@pytest.mark.slow
def test_device_loss_sums_the_mask_term_over_the_channels(engine):
    """The device loss kernel (vnumba.vn.gpu.ops.training_loss) against the NumPy reference
    and vnumba.ops.loss with C_m = 3, and the engine's loss equals vnumba.ops.loss of its
    outputs."""
    from vnumba.vn.gpu import ops
    rng = np.random.default_rng(4)
    u0, gu, gm, m0 = _batch(rng)
    loss, ub, mb = ops.training_loss(u0, gu, m0, gm)
    lr, ubr, mbr = naive.training_loss(u0, gu, m0, gm)
    assert mb.shape == m0.shape
    assert abs(loss - lr) <= 1e-6 * lr  # float32 differences against float64 ones
    _close(ub, ubr, 1e-6)
    _close(mb, mbr, 1e-6)
    lc, ubc, mbc = loss_value_and_output_grad(u0, gu, m0, gm)
    assert loss == pytest.approx(lc, rel=1e-12)
    np.testing.assert_array_equal(mb, mbc)
    # the sum over the channels, each class weighing like the one-channel mask
    one = [ops.training_loss(u0, gu, np.ascontiguousarray(m0[:, c]), np.ascontiguousarray(gm[:, c]))[0]
           for c in range(3)]
    img = ops.training_loss(u0, gu, np.zeros((2, H, W), np.float32), np.zeros((2, H, W), np.float32))[0]
    assert loss == pytest.approx(sum(one) - 2 * img, rel=1e-10)

    p = _params(rng)
    lg, _, u, m = engine.loss_and_grad(p, CFG, u0, gu, gm)
    assert lg == pytest.approx(loss_value_and_output_grad(u, gu, m, gm)[0], rel=1e-12)


# slow under the simulator (20-30 s); the default run keeps the step and gradient checks
@pytest.mark.slow
def test_training_iterations_give_the_parameters_and_adam_state_of_the_cpu_path(engine):
    # Ku without zero mean, Km (filters over all three class channels) and K with: both
    # projections run on filters of C_m·ks_m² entries.
    cfg = dataclasses.replace(CFG, zero_mean_u=False)
    _, steps, got = assert_training_matches_cpu(engine, cfg, 5, H=H, W=W, Cm=3)
    assert all(m.shape == (1, 3, H, W) for (_, _, m), _ in steps)
    # the zero-mean l1 projection acted on whole C_m-channel filters
    km = got["Km"].astype(np.float64).reshape(cfg.n_steps * cfg.nf_m, -1)
    assert np.abs(km.sum(axis=1)).max() < 1e-5
    assert np.abs(km).sum(axis=1).max() <= cfg.l1_radius + 1e-5


# slow under the simulator (20-30 s); the default run keeps the step and gradient checks
@pytest.mark.slow
def test_one_channel_model_keeps_both_mask_forms(engine):
    """n_mask = 1: the (N, H, W) form works as before and the (N, 1, H, W) form gives the
    same numbers in its own shape, as on the CPU."""
    cfg = dataclasses.replace(CFG, n_mask=1)
    rng = np.random.default_rng(6)
    p = _params(rng, cfg)
    u0, gu, gm, m0 = _batch(rng, N=1, Cm=1)
    l4, g4, u4, m4 = engine.loss_and_grad(p, cfg, u0, gu, gm, m0)
    l3, g3, u3, m3 = engine.loss_and_grad(p, cfg, u0, gu, gm[:, 0], m0[:, 0])
    lc, gc, _, mc = model.loss_and_grad(p, cfg, u0, gu, gm, m0)
    assert m4.shape == mc.shape == (1, 1, H, W) and m3.shape == (1, H, W)
    assert l4 == l3 and abs(l4 - lc) <= 1e-6 * lc
    np.testing.assert_array_equal(m4[:, 0], m3)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(g4[k], g3[k])
    _, mf = engine.forward(p, cfg, u0)
    assert mf.shape == (1, H, W)
    tr = engine.CudaTrainer(cfg, p, 1e-3)
    assert tr.step(u0, gu, gm)[2].shape == (1, 1, H, W)


def test_wrong_mask_shapes_are_refused_with_clear_errors(engine):
    rng = np.random.default_rng(7)
    p = _params(rng)
    u0, gu, gm, m0 = _batch(rng)
    with pytest.raises(ValueError, match=r"gm has shape \(2, 9, 8\), expected \(2, 3, 9, 8\)"):
        engine.loss_and_grad(p, CFG, u0, gu, gm[:, 0])
    with pytest.raises(ValueError, match="m0 has shape"):
        engine.forward(p, CFG, u0, m0[:, :2].copy())
    with pytest.raises(ValueError, match="gm has shape"):
        engine.loss_and_grad(p, CFG, u0, gu, gm[:, :2].copy(), m0)
    with pytest.raises(ValueError, match="shape"):  # K^m of a one-channel model
        engine.forward({**p, "Km": p["Km"][:, :, :1].copy()}, CFG, u0)
    tr = engine.CudaTrainer(CFG, p, 1e-3)
    with pytest.raises(ValueError, match="n_mask = 3"):
        tr.step(u0, gu, gm[:, 0])


# slow under the simulator (20-30 s); the default run keeps the step and gradient checks
@pytest.mark.slow
def test_training_command_on_the_cuda_backend_trains_a_multiclass_model(tmp_path):
    """``vnumba.train --device cuda`` (vnumba.training.trainer.train) on a three-class
    dataset: the CudaTrainer gives the CPU run's model."""
    from vnumba.io.dataset import write_dataset_arrays
    from vnumba.training.trainer import TrainOptions, train
    rng = np.random.default_rng(8)
    n = 2
    u0 = (0.3 + 0.4 * rng.random((n, 3, H, W))).astype(np.float32)
    gu = (0.3 + 0.4 * rng.random((n, 3, H, W))).astype(np.float32)
    gm = (rng.random((n, 3, H, W)) > 0.6).astype(np.float32)
    data = tmp_path / "mc.h5"
    write_dataset_arrays(data, u0, gu, gm, mask_classes=["tumour", "immune", "other"])
    models = {}
    for dev in ("cpu", "cuda"):
        opts = TrainOptions(data=str(data), steps=2, iters=2, batch=1, seed=3, device=dev,
                            out=str(tmp_path / f"{dev}.h5"), nf_u=3, nf_m=2, ks_u=5, ks_m=3,
                            ks=3, quiet=True, checkpoint_every=1)
        models[dev] = train(opts)
    cpu, gpu = models["cpu"], models["cuda"]
    assert gpu.config.n_mask == 3 and gpu.meta["mask_classes"] == ["tumour", "immune", "other"]
    for k in PARAM_NAMES:
        np.testing.assert_allclose(gpu.params[k], cpu.params[k], atol=2e-6, err_msg=k)
