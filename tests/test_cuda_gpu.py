"""The CUDA kernels and engine on a real NVIDIA GPU, with the hardware tiles, at the
article's channel counts and kernel sizes, against the CPU path.

Marked ``gpu``: deselected by default, run with ``pytest -m gpu`` (``bench/run_gpu_checks.sh``)
in a process that has not imported the CUDA simulator; skipped where no GPU is usable.
"""
import dataclasses

import numpy as np
import pytest
from helpers import close as _close
from helpers import network_batch, network_params, train_side_by_side

from vnumba.ops import conv as cpu_conv
from vnumba.ops import projections as cpu_proj
from vnumba.ops.rbf import RBFGrid
from vnumba.ops.rbf import rbf_apply as cpu_rbf_apply
from vnumba.ops.rbf import rbf_weight_grad as cpu_rbf_wgrad
from vnumba.vn import model
from vnumba.vn.config import PARAM_NAMES, ModelConfig

pytestmark = pytest.mark.gpu

PAPER = ModelConfig()  # 20 + 4 feature channels, 11x11 / 5x5 / 5x5 kernels, 31 RBFs


@pytest.fixture(scope="module", autouse=True)
def _gpu():
    from vnumba.vn.gpu.engine import is_available
    from vnumba.vn.gpu.launch import is_simulator
    if is_simulator():
        pytest.skip("numba.cuda runs as the simulator in this process; run -m gpu on its own")
    ok, reason = is_available()
    if not ok:
        pytest.skip(f"no usable GPU: {reason}")




@pytest.mark.parametrize("O,C,ks", [(20, 3, 11), (3, 20, 11), (4, 1, 5), (1, 4, 5), (24, 24, 5)])
def test_paper_sized_convolutions_match_cpu(O, C, ks):
    from vnumba.vn.gpu import ops
    rng = np.random.default_rng(0)
    x = rng.random((2, C, 45, 61)).astype(np.float32)
    y = rng.standard_normal((2, O, 45, 61)).astype(np.float32)
    y2 = rng.standard_normal((2, O, 45, 61)).astype(np.float32)
    k = (rng.standard_normal((O, C, ks, ks)) / (C * ks * ks)).astype(np.float32)
    _close(ops.conv_forward(x, k), cpu_conv.conv_forward(x, k), 1e-5)
    _close(ops.conv_adjoint(y, k), cpu_conv.conv_adjoint(y, k), 1e-5)
    ref = cpu_conv.conv_kernel_grad(y, x, ks) + cpu_conv.conv_kernel_grad(y2, x, ks)
    _close(ops.conv_kernel_grad(y, x, ks, y2, x), ref, 1e-4)


def test_rbf_functions_weight_gradients_and_projections_match_cpu():
    from vnumba.vn.gpu import ops
    rng = np.random.default_rng(1)
    grid = RBFGrid(PAPER)
    x = rng.uniform(-1.5, 1.5, (2, 24, 30, 40)).astype(np.float32)
    w = rng.standard_normal((24, PAPER.n_w)).astype(np.float32)
    for g, c in zip(ops.rbf_apply(x, w, grid), cpu_rbf_apply(x, w, grid, order=2)):
        _close(g, c, 1e-5)
    c0, c1 = (rng.standard_normal(x.shape).astype(np.float32) for _ in range(2))
    _close(ops.rbf_weight_grad(x, c0, c1, grid), cpu_rbf_wgrad(x, c0, c1, grid), 1e-4)
    k = (0.05 * rng.standard_normal((10, 20, 3, 11, 11))).astype(np.float32)
    _close(ops.project_zero_mean_l1_ball(k), cpu_proj.project_zero_mean_l1_ball(k.astype(np.float64)), 1e-6)
    _close(ops.project_l1_ball(k), cpu_proj.project_l1_ball(k.astype(np.float64)), 1e-6)


def _params(cfg, seed):
    rng = np.random.default_rng(seed)
    return network_params(cfg, rng, np.float32), rng


def _batch(rng, N, H, W, n_mask=None):
    return network_batch(rng, N, H, W, Cm=n_mask, dtype=np.float32, with_m0=False)


def test_benchmark_sized_forward_matches_cpu():
    from vnumba.vn.gpu import engine
    cfg = dataclasses.replace(PAPER, n_steps=2)
    p, rng = _params(cfg, 2)
    u0, _, _ = _batch(rng, 1, 300, 300)
    u, m = engine.forward(p, cfg, u0)
    uc, mc = model.forward(p, cfg, u0)
    np.testing.assert_allclose(u, uc, atol=1e-5)
    np.testing.assert_allclose(m, mc, atol=1e-5)


def test_paper_sized_loss_and_gradient_match_cpu():
    from vnumba.vn.gpu import engine
    cfg = dataclasses.replace(PAPER, n_steps=2)
    p, rng = _params(cfg, 3)
    u0, gu, gm = _batch(rng, 2, 48, 56)
    loss, g, u, m = engine.loss_and_grad(p, cfg, u0, gu, gm)
    lc, gc, uc, mc = model.loss_and_grad(p, cfg, u0, gu, gm)
    assert abs(loss - lc) <= 1e-5 * lc
    for k in PARAM_NAMES:
        _close(g[k], gc[k], 1e-3)


def test_paper_sized_training_iterations_match_cpu():
    from vnumba.vn.gpu import engine
    cfg = dataclasses.replace(PAPER, n_steps=2)
    p, rng = _params(cfg, 4)
    batches = [_batch(rng, 2, 40, 40) for _ in range(3)]
    cpu, _, tr, steps = train_side_by_side(engine, cfg, p, 1e-4, batches)
    for (loss, _, _), (lc, _, _) in steps:
        assert abs(loss - lc) <= 1e-5 * lc
    got = tr.params()
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[k], cpu[k], atol=2e-6, err_msg=k)


def test_paper_sized_multiclass_loss_gradient_and_training_match_cpu():
    """Three mask channels (issue 20): K^m over the class channels, loss (3) summed over
    them, every gradient, and two training iterations (Adam, projection of K^m's 3·5·5-entry
    filters) against the CPU."""
    from vnumba.vn.gpu import engine
    cfg = dataclasses.replace(PAPER, n_steps=2, n_mask=3)
    p, rng = _params(cfg, 5)
    u0, gu, gm = _batch(rng, 2, 48, 56, n_mask=3)
    loss, g, u, m = engine.loss_and_grad(p, cfg, u0, gu, gm)
    lc, gc, uc, mc = model.loss_and_grad(p, cfg, u0, gu, gm)
    assert m.shape == mc.shape == (2, 3, 48, 56)
    assert abs(loss - lc) <= 1e-5 * lc
    np.testing.assert_allclose(m, mc, atol=1e-5)
    for k in PARAM_NAMES:
        _close(g[k], gc[k], 1e-3)
    batches = [_batch(rng, 2, 40, 40, n_mask=3) for _ in range(2)]
    cpu, _, tr, steps = train_side_by_side(engine, cfg, p, 1e-4, batches)
    for (loss, _, m), (lc, _, _) in steps:
        assert abs(loss - lc) <= 1e-5 * lc and m.shape == (2, 3, 40, 40)
    got = tr.params()
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[k], cpu[k], atol=2e-6, err_msg=k)
