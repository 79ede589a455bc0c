"""The CUDA engine with one mask channel per nucleus class (``ModelConfig.n_mask = C_m``,
issue 20), under the CUDA simulator against the CPU reference (vnumba.vn.model, itself
checked by finite differences in tests/test_multiclass_grad.py): one step and its
Hessian-vector product, the unrolled forward pass, loss (3) summed over the mask channels and
every parameter gradient, training iterations (Adam and the projection of the C_m-channel
``K^m`` filters), the training command on the cuda backend, and the one-channel model in its
4-d form.  Float32 tolerances as tests/test_cuda_engine.py (the device computes in float32)."""
import dataclasses

import cudasim
import naive
import numpy as np
import pytest

from vnumba.ops.loss import loss_value_and_output_grad
from vnumba.ops.optim import Adam
from vnumba.ops.projections import project_params
from vnumba.vn import model
from vnumba.vn.config import PARAM_NAMES, ModelConfig

# Three classes; odd channel counts (idle register slots in the simulator's tiles), three
# kernel sizes, an RBF window narrower than the grid, 9 x 8 images (partial tiles).
CFG = ModelConfig(n_steps=2, n_mask=3, nf_u=3, nf_m=2, ks_u=5, ks_m=3, ks=3, n_w=11, rbf_radius=3)
H, W = 9, 8


@pytest.fixture(scope="module", autouse=True)
def _simulator():
    undo = cudasim.use_simulator()
    yield
    undo()


@pytest.fixture(scope="module")
def engine():
    from vnumba.vn.gpu import engine
    return engine


def _params(rng, cfg=CFG):
    p = model.init_params(cfg, rng, np.float32)
    # Perturbed functions, so that the checks are not near-identity (as test_cuda_engine).
    for k in ("wu", "wm"):
        p[k] = (p[k] + 0.2 * rng.standard_normal(p[k].shape)).astype(np.float32)
    p["w"] = (0.2 * p["w"] + 0.05 * rng.standard_normal(p["w"].shape)).astype(np.float32)
    return p


def _batch(rng, N=2, Cm=3):
    u0 = (0.3 + 0.4 * rng.random((N, 3, H, W))).astype(np.float32)
    gu = (0.3 + 0.4 * rng.random((N, 3, H, W))).astype(np.float32)
    gm = rng.random((N, Cm, H, W)).astype(np.float32)
    m0 = (0.4 + 0.2 * rng.random((N, Cm, H, W))).astype(np.float32)
    return u0, gu, gm, m0


def _close(got, ref, rtol=1e-4):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    assert float(np.abs(got - ref).max()) <= rtol * scale, (np.abs(got - ref).max(), scale)


def test_one_step_forward_matches_cpu(engine):
    rng = np.random.default_rng(0)
    p = model.step_params(_params(rng), 1)
    u0, _, _, m = _batch(rng)
    u = (0.2 + 0.6 * rng.random(u0.shape)).astype(np.float32)
    un, mn = engine.step_forward(p, CFG, u, m, u0)
    uc, mc = model.step_forward(p, CFG, u, m, u0)
    assert mn.shape == m.shape == (2, 3, H, W)
    np.testing.assert_allclose(un, uc, atol=1e-6)
    np.testing.assert_allclose(mn, mc, atol=1e-6)
    assert np.abs(mc - m).max() > 1e-3  # the step does move the class maps


def test_one_step_backward_hessian_vector_product_and_gradients_match_cpu(engine):
    rng = np.random.default_rng(1)
    p = model.step_params(_params(rng), 0)
    u0, _, _, m = _batch(rng)
    u = (0.2 + 0.6 * rng.random(u0.shape)).astype(np.float32)
    ubar = rng.standard_normal(u.shape).astype(np.float32)
    mbar = rng.standard_normal(m.shape).astype(np.float32)
    ui, mi, g = engine.step_backward(p, CFG, u, m, u0, ubar, mbar)
    uic, mic, gc = model.step_backward(p, CFG, u, m, u0, ubar, mbar)
    assert mi.shape == m.shape
    _close(ui, uic)
    _close(mi, mic)
    assert set(g) == set(gc)
    for k in gc:
        assert g[k].shape == np.shape(gc[k]), k
        _close(g[k], gc[k])
    assert g["Km"].shape == (CFG.nf_m, 3, CFG.ks_m, CFG.ks_m)


@pytest.mark.parametrize("with_m0", [False, True])
def test_unrolled_forward_matches_cpu(with_m0, engine):
    rng = np.random.default_rng(2)
    p = _params(rng)
    u0, _, _, m0 = _batch(rng)
    m0 = m0 if with_m0 else None
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
    rng = np.random.default_rng(3)
    p = _params(rng)
    u0, gu, gm, m0 = _batch(rng)
    m0 = m0 if with_m0 else None
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


def test_training_iterations_give_the_parameters_and_adam_state_of_the_cpu_path(engine):
    # Ku without zero mean, Km (filters over all three class channels) and K with: both
    # projections run on filters of C_m·ks_m² entries.
    cfg = dataclasses.replace(CFG, zero_mean_u=False)
    rng = np.random.default_rng(5)
    p = _params(rng, cfg)
    batches = [_batch(rng, N=1)[:3] for _ in range(2)]
    lr = 1e-3
    cpu = {k: v.copy() for k, v in p.items()}
    opt = Adam(lr, project=lambda q: project_params(q, cfg))
    tr = engine.CudaTrainer(cfg, p, lr)
    for b in batches:
        lc, gc, uc, mc = model.loss_and_grad(cpu, cfg, *b)
        opt.step(cpu, gc)
        loss, u, m = tr.step(*b)
        assert abs(loss - lc) <= 1e-6 * lc
        assert m.shape == (1, 3, H, W)
        np.testing.assert_allclose(u, uc, atol=2e-6)
        np.testing.assert_allclose(m, mc, atol=2e-6)
    got = tr.params()
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[k], cpu[k], atol=1e-6, err_msg=k)
        assert np.abs(cpu[k] - p[k]).max() > 2e-5, k
    # the zero-mean l1 projection acted on whole C_m-channel filters
    km = got["Km"].astype(np.float64).reshape(cfg.n_steps * cfg.nf_m, -1)
    assert np.abs(km.sum(axis=1)).max() < 1e-5
    assert np.abs(km).sum(axis=1).max() <= cfg.l1_radius + 1e-5
    st, stc = tr.optimizer_state(), opt.state_dict()
    assert sorted(st) == sorted(stc) and int(st["t"]) == 2
    for k in stc:
        if k != "t":
            _close(st[k], stc[k], 1e-3)


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
