"""Finite-difference checks (float64, central differences along random directions) of the
hand-derived backward pass: per step (input gradient = v - Hv, each parameter group) and
for the whole loss through an unrolled network."""
import helpers
import numpy as np
import pytest
from helpers import interior, network_batch, network_params, one_step, rel

from vnumba.vn import model
from vnumba.vn.config import PARAM_NAMES, ModelConfig

# All centres evaluated: the loss is then smooth in every parameter (a window would add
# ~1e-8 jumps where a value crosses between centres).
CFG = ModelConfig(n_steps=3, nf_u=3, nf_m=2, ks_u=5, ks_m=3, ks=3, rbf_radius=31)


def _params(rng, cfg=CFG):
    return network_params(cfg, rng)


def _data(rng, N=2, H=9, W=8):
    return network_batch(rng, N, H, W)  # m0 in [0.4, 0.6]: no pixel sits on the clip's kink


def test_states_of_the_test_network_stay_off_the_clip_kinks():
    rng = np.random.default_rng(0)
    p = _params(rng)
    u0, gu, gm, m0 = _data(rng)
    _, _, states = model.forward(p, CFG, u0, m0, return_states=True)
    assert interior(states)
    # ... and the network does move the state, so the checks below are not trivial.
    assert np.abs(states[-1][0] - u0).max() > 1e-3
    assert np.abs(states[-1][1] - m0).max() > 1e-3


def test_one_step_input_gradient_is_v_minus_hessian_vector_product():
    rng, p, u0, u, m, ubar, mbar = one_step(CFG, 1, 0)
    helpers.assert_step_input_gradient(p, CFG, u, m, u0, ubar, mbar, rng)


def test_hessian_of_one_step_is_symmetric():
    rng, p, u0, u, m, *v1 = one_step(CFG, 2, 1)
    v2 = (rng.standard_normal(u.shape), rng.standard_normal(m.shape))
    # with all pixels active, step_backward returns v - Hv
    h1 = [v - x for v, x in zip(v1, model.step_backward(p, CFG, u, m, u0, *v1)[:2])]
    h2 = [v - x for v, x in zip(v2, model.step_backward(p, CFG, u, m, u0, *v2)[:2])]
    a = np.vdot(v2[0], h1[0]) + np.vdot(v2[1], h1[1])
    b = np.vdot(v1[0], h2[0]) + np.vdot(v1[1], h2[1])
    assert rel(a, b) < 1e-10


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_one_step_parameter_gradient_matches_finite_differences(name):
    rng, p, u0, u, m, ubar, mbar = one_step(CFG, 3, 0)
    helpers.assert_step_param_gradient(p, CFG, u, m, u0, ubar, mbar, name, rng)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_whole_unrolled_loss_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(4)
    p = _params(rng)
    helpers.assert_unrolled_loss_gradient(p, CFG, _data(rng), name, rng, n_dirs=2)


def test_gradient_through_the_clip_counts_only_active_pixels():
    # With m0 = 0 most mask pixels are clipped in the first step; the gradient must
    # still match finite differences along directions that do not cross the kinks.
    rng = np.random.default_rng(5)
    p = _params(rng)
    u0, gu, gm, _ = _data(rng)
    loss, grads, _, _ = model.loss_and_grad(p, CFG, u0, gu, gm)
    d = rng.standard_normal(p["w"].shape)
    eps = 1e-7
    lp = model.loss_and_grad({**p, "w": p["w"] + eps * d}, CFG, u0, gu, gm)[0]
    lm = model.loss_and_grad({**p, "w": p["w"] - eps * d}, CFG, u0, gu, gm)[0]
    assert rel((lp - lm) / (2 * eps), float(np.sum(grads["w"] * d))) < 1e-5


def test_float32_forward_matches_float64():
    rng = np.random.default_rng(6)
    p = _params(rng)
    u0, _, _, m0 = _data(rng)
    u64, m64 = model.forward(p, CFG, u0, m0)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    u32, m32 = model.forward(p32, CFG, u0.astype(np.float32), m0.astype(np.float32))
    np.testing.assert_allclose(u32, u64, atol=2e-5)
    np.testing.assert_allclose(m32, m64, atol=2e-5)


def test_forward_rejects_bad_input():
    rng = np.random.default_rng(7)
    p = _params(rng)
    u0, _, _, _ = _data(rng)
    helpers.assert_forward_refuses_bad_input(model.forward, p, CFG, u0)
    with pytest.raises(TypeError, match="dtype"):
        model.forward(p, CFG, u0.astype(np.float32))


@pytest.mark.parametrize("chunk,store", [(1, "convs"), (2, "convs"), (1, "states"), (3, "states")])
def test_batch_chunks_and_stored_quantities_do_not_change_loss_or_gradient(chunk, store):
    # Reference: the whole batch at once, recomputing every step (the article's scheme).
    rng = np.random.default_rng(8)
    p = _params(rng)
    u0, gu, gm, m0 = _data(rng, N=3)
    ref = model.loss_and_grad(p, CFG, u0, gu, gm, m0, chunk=3, store="states")
    got = model.loss_and_grad(p, CFG, u0, gu, gm, m0, chunk=chunk, store=store)
    assert got[0] == pytest.approx(ref[0], rel=1e-13)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got[1][k], ref[1][k], rtol=1e-11, atol=1e-14, err_msg=k)
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_array_equal(got[3], ref[3])


def test_one_step_backward_from_the_record_equals_the_recomputed_one():
    rng, p, u0, u, m, ubar, mbar = one_step(CFG, 9, 1)
    un, mn, rec = model.step_forward(p, CFG, u, m, u0, keep="record")
    un2, mn2 = model.step_forward(p, CFG, u, m, u0)
    np.testing.assert_array_equal(un, un2)
    np.testing.assert_array_equal(mn, mn2)
    a = model.step_backward(p, CFG, u, m, u0, ubar, mbar, record=rec)
    b = model.step_backward(p, CFG, u, m, u0, ubar, mbar)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-15)
    for k in a[2]:
        np.testing.assert_allclose(a[2][k], b[2][k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_loss_and_grad_rejects_bad_chunk_and_store():
    rng = np.random.default_rng(10)
    p = _params(rng)
    u0, gu, gm, m0 = _data(rng)
    with pytest.raises(ValueError, match="chunk"):
        model.loss_and_grad(p, CFG, u0, gu, gm, m0, chunk=0)
    with pytest.raises(ValueError, match="store"):
        model.loss_and_grad(p, CFG, u0, gu, gm, m0, store="everything")
    with pytest.raises(ValueError, match="keep"):
        model.step_forward(model.step_params(p, 0), CFG, u0, m0, u0, keep="some")


def test_forward_in_chunks_equals_the_whole_batch():
    rng = np.random.default_rng(11)
    p = _params(rng)
    u0, _, _, m0 = _data(rng, N=3)
    whole = model.forward(p, CFG, u0, m0, chunk=3)
    for chunk in (1, 2):
        got = model.forward(p, CFG, u0, m0, chunk=chunk)
        np.testing.assert_array_equal(got[0], whole[0])
        np.testing.assert_array_equal(got[1], whole[1])
    with pytest.raises(ValueError, match="chunk"):
        model.forward(p, CFG, u0, m0, chunk=0)


def test_loss_and_grad_checks_its_input_like_forward():
    rng = np.random.default_rng(12)
    p = _params(rng)
    u0, gu, gm, m0 = _data(rng)
    with pytest.raises(ValueError, match="channels"):
        model.loss_and_grad(p, CFG, u0[:, :2].copy(), gu[:, :2].copy(), gm, m0)
    with pytest.raises(ValueError, match="smaller than"):
        model.loss_and_grad(p, CFG, u0[:, :, :1, :1].copy(), gu[:, :, :1, :1].copy(),
                            gm[:, :1, :1].copy(), m0[:, :1, :1].copy())
    bad = u0.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.loss_and_grad(p, CFG, bad, gu, gm, m0)


def _unfused_step(p, cfg, u, m, u0, order=1):
    """One step as the separate operators compute it (before the activations were fused
    into the convolutions' epilogues and φ'(a) ⊙ g into the adjoint's padding); ``order``
    2 as the backward pass's forward evaluates φ' (with φ'', rounded differently)."""
    from vnumba.ops.conv import conv_adjoint, conv_forward
    from vnumba.ops.rbf import RBFGrid, rbf_apply

    grid, Fu = RBFGrid(cfg), cfg.nf_u
    m4 = m if m.ndim == 4 else m[:, None]
    f = np.empty((u.shape[0], cfg.nf) + u.shape[2:], u.dtype)
    _, fa1, *_ = rbf_apply(conv_forward(u, p["Ku"]), p["wu"], grid, order=order, out=f, offset=0)
    _, fb1, *_ = rbf_apply(conv_forward(m4, p["Km"]), p["wm"], grid, order=order, out=f,
                           offset=Fu)
    (r,) = rbf_apply(conv_forward(f, p["K"]), p["w"], grid, order=0)
    g = conv_adjoint(r, p["K"])
    grad_u = conv_adjoint(fa1 * g[:, :Fu], p["Ku"])
    grad_u += p["lam"] * (u - u0)
    grad_m = conv_adjoint(fb1 * g[:, Fu:], p["Km"])
    grad_m = grad_m if m.ndim == 4 else grad_m[:, 0]
    return np.clip(u - grad_u, 0.0, 1.0), np.clip(m - grad_m, 0.0, 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("keep", [False, "record", True])
def test_fused_step_equals_the_separate_operators_bit_for_bit(dtype, keep):
    cfg = ModelConfig(n_steps=1, nf_u=5, nf_m=2, ks_u=5, ks_m=3, ks=3)   # 7: a padding row
    rng, p, u0, u, m, _, _ = one_step(cfg, 4, 0)
    p = {k: np.asarray(v, dtype) for k, v in p.items()}
    u0, u, m = (np.ascontiguousarray(v, dtype) for v in (u0, u, m))
    ref = _unfused_step(p, cfg, u, m, u0, order=2 if keep is True else 1)
    got = model.step_forward(p, cfg, u, m, u0, keep=keep)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
