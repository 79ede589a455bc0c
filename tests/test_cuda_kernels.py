"""CUDA kernels under the CUDA simulator: every kernel family against the NumPy references
(tests/naive.py) and the CPU kernels, in float32 tolerance, with the simulator's default
tiles and with tiles smaller than the images (partial and multiple tiles per launch)."""
import naive
import numpy as np
import pytest
from helpers import close

from vnumba.ops import conv as cpu_conv
from vnumba.ops import projections as cpu_proj
from vnumba.ops.optim import Adam
from vnumba.ops.rbf import RBFGrid
from vnumba.ops.rbf import rbf_apply as cpu_rbf_apply
from vnumba.ops.rbf import rbf_weight_grad as cpu_rbf_wgrad
from vnumba.vn.config import ModelConfig

pytestmark = pytest.mark.usefixtures("cuda_simulator")


@pytest.fixture(scope="module")
def ops():
    from vnumba.vn.gpu import ops
    return ops


def _tilings():
    from vnumba.vn.gpu.tiling import Tiling
    small = Tiling(conv_bx=4, conv_by=2, conv_py=2, conv_opt=2, conv_cch=2, kg_th=3, kg_tw=4,
                   kg_to=2, kg_cb=2, kg_blocks=2, red_threads=4, red_blocks=3, ew_threads=4,
                   ew_blocks=3)
    return {"default": Tiling.simulator(), "small": small}


TILINGS = ("default", "small")


def _close(got, ref, tol=2e-6):
    close(got, ref, tol)  # float32 results against float64 references


SHAPES = [  # N, C, O, H, W, ks
    (2, 3, 3, 6, 7, 5),
    (1, 2, 5, 5, 9, 3),
]


@pytest.mark.parametrize("tiling", TILINGS)
@pytest.mark.parametrize("N,C,O,H,W,ks", SHAPES)
def test_convolution_its_adjoint_pieces_and_kernel_gradient_match_reference_and_cpu(N, C, O, H, W, ks, tiling, ops):
    tl = _tilings()[tiling]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    k = rng.standard_normal((O, C, ks, ks)).astype(np.float32)
    y = rng.standard_normal((N, O, H, W)).astype(np.float32)
    y2 = rng.standard_normal((N, O, H, W)).astype(np.float32)
    x2 = rng.standard_normal((N, C, H, W)).astype(np.float32)
    r = ks // 2
    x64, k64, y64 = (a.astype(np.float64) for a in (x, k, y))

    got = ops.conv_forward(x, k, tiling=tl)
    ref = naive.corr_valid(naive.pad_symmetric(x64, r), k64)
    _close(got, ref)
    _close(got, cpu_conv.conv_forward(x, k).astype(np.float64))

    full = ops.corr_full(y, k, tiling=tl)
    _close(full, naive.corr_valid_adjoint(y64, k64))
    folded = ops.pad_symmetric_adjoint(full, r, tiling=tl)
    _close(folded, naive.pad_symmetric_adjoint(full.astype(np.float64), r))
    adj = ops.conv_adjoint(y, k, tiling=tl)
    _close(adj, naive.pad_symmetric_adjoint(naive.corr_valid_adjoint(y64, k64), r))
    _close(adj, cpu_conv.conv_adjoint(y, k).astype(np.float64))

    kg = ops.conv_kernel_grad(y, x, ks, tiling=tl)
    _close(kg, naive.corr_valid_kernel_grad(y64, naive.pad_symmetric(x64, r), ks), 5e-6)
    _close(kg, cpu_conv.conv_kernel_grad(y, x, ks).astype(np.float64), 5e-6)
    kg2 = ops.conv_kernel_grad(y, x, ks, y2, x2, tiling=tl)
    ref2 = (naive.corr_valid_kernel_grad(y64, naive.pad_symmetric(x64, r), ks)
            + naive.corr_valid_kernel_grad(y2.astype(np.float64), naive.pad_symmetric(x2.astype(np.float64), r), ks))
    _close(kg2, ref2, 5e-6)


def test_gpu_adjoint_and_kernel_gradient_pass_the_dot_product_test(ops):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    y = rng.standard_normal((2, 4, 6, 7)).astype(np.float32)
    k = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    d = rng.standard_normal(k.shape).astype(np.float32)
    lhs = np.vdot(ops.conv_forward(x, k).astype(np.float64), y)
    rhs = np.vdot(x.astype(np.float64), ops.conv_adjoint(y, k))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    lhs = np.vdot(ops.conv_forward(x, d).astype(np.float64), y)
    rhs = np.vdot(d.astype(np.float64), ops.conv_kernel_grad(y, x, 5))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


@pytest.mark.parametrize("r", [0, 1, 3, 6])
def test_padding_adjoint_folds_every_border_copy_back(r, ops):
    rng = np.random.default_rng(2)
    xp = rng.standard_normal((2, 2, 6 + 2 * r, 7 + 2 * r)).astype(np.float32)
    _close(ops.pad_symmetric_adjoint(xp, r), naive.pad_symmetric_adjoint(xp.astype(np.float64), r))


def _rbf_setup(radius, seed=0):
    cfg = ModelConfig(nf_u=3, n_w=11, rbf_radius=radius)
    grid = RBFGrid(cfg)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.6, 1.6, size=(2, 3, 4, 5)).astype(np.float32)
    x[0, 0, 0, :3] = [-40.0, 40.0, 0.0]  # far outside the grid and exactly on a centre
    w = rng.standard_normal((3, cfg.n_w)).astype(np.float32)
    return grid, x, w, rng


@pytest.mark.parametrize("radius", [11, 3])
def test_rbf_values_and_derivatives_match_cpu_and_definition(radius, ops):
    grid, x, w, _ = _rbf_setup(radius)
    got = ops.rbf_apply(x, w, grid)
    cpu = cpu_rbf_apply(x.astype(np.float64), w.astype(np.float64), grid, order=2)
    for g, c in zip(got, cpu):
        _close(g, c, 5e-6)
    if radius >= grid.n_w:  # the window holds every centre: the plain definition
        ref = naive.rbf(x.astype(np.float64), w.astype(np.float64), grid.centres, grid.sigma)
        for g, r in zip(got, ref):
            _close(g, r, 5e-6)


@pytest.mark.parametrize("with_c1", [False, True])
@pytest.mark.parametrize("radius", [11, 3])
def test_rbf_weight_gradient_matches_cpu_and_definition(radius, with_c1, ops):
    grid, x, _, rng = _rbf_setup(radius, seed=3)
    c0 = rng.standard_normal(x.shape).astype(np.float32)
    c1 = rng.standard_normal(x.shape).astype(np.float32) if with_c1 else None
    got = ops.rbf_weight_grad(x, c0, c1, grid)
    c1_64 = None if c1 is None else c1.astype(np.float64)
    cpu = cpu_rbf_wgrad(x.astype(np.float64), c0.astype(np.float64), c1_64, grid)
    _close(got, cpu, 5e-6)
    if radius >= grid.n_w:
        ref = naive.rbf_weight_grad(x.astype(np.float64), c0.astype(np.float64), c1_64,
                                    grid.centres, grid.sigma)
        _close(got, ref, 5e-6)


def _filters(rng):
    # 7 filters of 3x3x3: large (ball active), tiny (inside the ball), one whose centred
    # version is inside the ball but not the original, one with ties, one all-equal.
    k = rng.standard_normal((7, 3, 3, 3)) * 0.2
    k[1] *= 0.01
    k[2] = 0.05 + 0.001 * rng.standard_normal((3, 3, 3))
    k[3] = np.round(k[3] * 4) / 4
    k[4] = 0.3
    return k.astype(np.float32)


@pytest.mark.parametrize("name,seed,zero_mean", [("l1_ball", 4, False), ("zero_mean_l1_ball", 5, True)])
def test_l1_ball_projections_match_cpu_and_definition(name, seed, zero_mean, ops):
    """project_l1_ball and project_zero_mean_l1_ball against the CPU and the definition."""
    k = _filters(np.random.default_rng(seed))
    got = getattr(ops, f"project_{name}")(k, 1.0)
    cpu = getattr(cpu_proj, f"project_{name}")(k.astype(np.float64).copy(), 1.0)
    _close(got, cpu, 1e-6)
    definition = naive.gpu_project_zero_mean_l1_ball if zero_mean else naive.project_l1_ball
    for f in range(k.shape[0]):
        _close(got[f], definition(k[f].ravel(), 1.0).reshape(k.shape[1:]), 1e-6)
        if zero_mean:
            assert abs(float(got[f].astype(np.float64).sum())) <= 1e-6
        assert np.abs(got[f]).sum() <= 1.0 + 1e-5
    if zero_mean:  # a feasible filter is a fixed point
        np.testing.assert_allclose(ops.project_zero_mean_l1_ball(got, 1.0), got, atol=1e-7)


def test_adam_update_matches_optimiser_and_definition(ops):
    rng = np.random.default_rng(6)
    p = rng.standard_normal(37).astype(np.float32)
    g1 = rng.standard_normal(37).astype(np.float32)
    g2 = (1e-3 * rng.standard_normal(37)).astype(np.float32)
    opt = Adam(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-7)
    pc = {"x": p.copy()}
    m = np.zeros(37)
    v = np.zeros(37)
    pg = p.copy()
    pr = p.astype(np.float64)
    mr, vr = m.copy(), v.copy()
    for t, g in enumerate((g1, g2), start=1):
        opt.step(pc, {"x": g})
        pg, m, v = ops.adam_update(pg, g, m, v, t, 1e-2, 0.8, 0.99, 1e-7)
        pr, mr, vr = naive.gpu_adam_step(pr, g, mr, vr, t, 1e-2, 0.8, 0.99, 1e-7)
    np.testing.assert_allclose(pg, pc["x"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(pg, pr, rtol=0, atol=1e-6)
    st = opt.state_dict()
    # vnumba.ops.optim forms (1 - b1) g in float32 (NumPy's scalar rules), the kernel in float64.
    np.testing.assert_allclose(m, st["m/x"], rtol=1e-6)
    np.testing.assert_allclose(v, st["v/x"], rtol=1e-6)
    np.testing.assert_allclose(m, mr, rtol=1e-12)
    np.testing.assert_allclose(v, vr, rtol=1e-12)


def test_training_loss_and_its_gradient_match_definition(ops):
    rng = np.random.default_rng(7)
    u, gu = (rng.random((2, 3, 5, 6)).astype(np.float32) for _ in range(2))
    m, gm = (rng.random((2, 5, 6)).astype(np.float32) for _ in range(2))
    loss, ub, mb = ops.training_loss(u, gu, m, gm)
    lr, ubr, mbr = naive.gpu_training_loss(u, gu, m, gm)
    assert abs(loss - lr) <= 1e-6 * lr
    _close(ub, ubr)
    _close(mb, mbr)


@pytest.mark.parametrize("tiling", TILINGS)
def test_training_loss_kernel_equals_the_one_loss_definition(ops, tiling):
    """The device-reduced loss (3) against vnumba.ops.loss on the same inputs: the gradients
    are the same float32 operations, the loss differs only by the summation order."""
    from vnumba.ops.loss import loss_value_and_output_grad
    rng = np.random.default_rng(8)
    u, gu = (rng.random((3, 3, 5, 7)).astype(np.float32) for _ in range(2))
    m, gm = (rng.random((3, 5, 7)).astype(np.float32) for _ in range(2))
    loss, ub, mb = ops.training_loss(u, gu, m, gm, tiling=_tilings()[tiling])
    lr, ubr, mbr = loss_value_and_output_grad(u, gu, m, gm)
    assert loss == pytest.approx(lr, rel=1e-12)
    np.testing.assert_array_equal(ub, ubr)
    np.testing.assert_array_equal(mb, mbr)


def test_kernel_wrappers_reject_bad_input_with_clear_errors(ops):
    x = np.zeros((1, 3, 8, 8), np.float32)
    k = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(TypeError, match="float32"):
        ops.conv_forward(x.astype(np.float64), k)
    with pytest.raises(ValueError, match="4 dimensions"):
        ops.conv_forward(x[0], k)
    with pytest.raises(ValueError, match="input channels"):
        ops.conv_forward(x, k[:, :2].copy())
    with pytest.raises(ValueError, match="odd"):
        ops.conv_forward(x, np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.conv_forward(np.zeros((1, 3, 8, 16), np.float32)[..., ::2], k)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ops.conv_forward(bad, k)
    with pytest.raises(ValueError, match="pad width"):
        ops.conv_adjoint(np.zeros((1, 2, 3, 3), np.float32), np.zeros((2, 3, 11, 11), np.float32))
    with pytest.raises(ValueError, match="radius"):
        ops.project_l1_ball(k, 0.0)
