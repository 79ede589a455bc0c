"""Finite-difference checks (float64, central differences along random directions) of the
hand-derived backward pass: per step (input gradient = v - Hv, each parameter group) and
for the whole loss through an unrolled network."""
import numpy as np
import pytest

from vnumba.vn import model
from vnumba.vn.config import PARAM_NAMES, ModelConfig

# All centres evaluated: the loss is then smooth in every parameter (a window would add
# ~1e-8 jumps where a value crosses between centres).
CFG = ModelConfig(n_steps=3, nf_u=3, nf_m=2, ks_u=5, ks_m=3, ks=3, rbf_radius=31)


def _params(rng, cfg=CFG):
    p = model.init_params(cfg, rng, np.float64)
    # Perturb the functions so the checks are not near-identity and trivially linear.
    for k in ("wu", "wm"):
        p[k] = p[k] + 0.2 * rng.standard_normal(p[k].shape)
    p["w"] = 0.2 * p["w"] + 0.05 * rng.standard_normal(p["w"].shape)
    return p


def _data(rng, N=2, H=9, W=8, C=3):
    u0 = 0.3 + 0.4 * rng.random((N, C, H, W))
    gu = 0.3 + 0.4 * rng.random((N, C, H, W))
    gm = rng.random((N, H, W))
    m0 = 0.4 + 0.2 * rng.random((N, H, W))  # interior start: no pixel sits on the clip's kink
    return u0, gu, gm, m0


def _interior(states, margin=1e-3):
    return all(np.all((x > margin) & (x < 1 - margin)) for st in states for x in st)


def _one_step(seed, t):
    """The generator (for further draws), one step's parameters, the network input u0, a
    state (u, m) off the clip's kinks and random output gradients (ubar, mbar)."""
    rng = np.random.default_rng(seed)
    p = model.step_params(_params(rng), t)
    u0, _, _, m = _data(rng)
    u = 0.3 + 0.4 * rng.random(u0.shape)
    return rng, p, u0, u, m, rng.standard_normal(u.shape), rng.standard_normal(m.shape)


def test_states_of_the_test_network_stay_off_the_clip_kinks():
    rng = np.random.default_rng(0)
    p = _params(rng)
    u0, gu, gm, m0 = _data(rng)
    _, _, states = model.forward(p, CFG, u0, m0, return_states=True)
    assert _interior(states)
    # ... and the network does move the state, so the checks below are not trivial.
    assert np.abs(states[-1][0] - u0).max() > 1e-3
    assert np.abs(states[-1][1] - m0).max() > 1e-3


def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def test_one_step_input_gradient_is_v_minus_hessian_vector_product():
    rng, p, u0, u, m, ubar, mbar = _one_step(1, 0)
    ui, mi, _ = model.step_backward(p, CFG, u, m, u0, ubar, mbar)

    def J(uu, mm):
        a, b = model.step_forward(p, CFG, uu, mm, u0)
        return np.sum(a * ubar) + np.sum(b * mbar)

    for _ in range(3):
        du = rng.standard_normal(u.shape)
        dm = rng.standard_normal(m.shape)
        eps = 1e-6
        fd = (J(u + eps * du, m + eps * dm) - J(u - eps * du, m - eps * dm)) / (2 * eps)
        an = np.sum(ui * du) + np.sum(mi * dm)
        assert _rel(fd, an) < 1e-6, (fd, an)


def test_hessian_of_one_step_is_symmetric():
    rng = np.random.default_rng(2)
    p = model.step_params(_params(rng), 1)
    u0, _, _, m = _data(rng)
    u = 0.3 + 0.4 * rng.random(u0.shape)
    v1 = (rng.standard_normal(u.shape), rng.standard_normal(m.shape))
    v2 = (rng.standard_normal(u.shape), rng.standard_normal(m.shape))
    # with all pixels active, step_backward returns v - Hv
    h1 = [v - x for v, x in zip(v1, model.step_backward(p, CFG, u, m, u0, *v1)[:2])]
    h2 = [v - x for v, x in zip(v2, model.step_backward(p, CFG, u, m, u0, *v2)[:2])]
    a = np.vdot(v2[0], h1[0]) + np.vdot(v2[1], h1[1])
    b = np.vdot(v1[0], h2[0]) + np.vdot(v1[1], h2[1])
    assert _rel(a, b) < 1e-10


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_one_step_parameter_gradient_matches_finite_differences(name):
    rng, p, u0, u, m, ubar, mbar = _one_step(3, 0)
    _, _, g = model.step_backward(p, CFG, u, m, u0, ubar, mbar)

    def J(pp):
        a, b = model.step_forward(pp, CFG, u, m, u0)
        return np.sum(a * ubar) + np.sum(b * mbar)

    d = rng.standard_normal(np.shape(p[name]))
    eps = 1e-6
    pp, pm = dict(p), dict(p)
    pp[name] = p[name] + eps * d
    pm[name] = p[name] - eps * d
    fd = (J(pp) - J(pm)) / (2 * eps)
    an = float(np.sum(g[name] * d))
    assert _rel(fd, an) < 1e-6, (fd, an)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_whole_unrolled_loss_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(4)
    p = _params(rng)
    u0, gu, gm, m0 = _data(rng)
    loss, grads, _, _ = model.loss_and_grad(p, CFG, u0, gu, gm, m0)
    assert loss > 0
    for _ in range(2):
        d = rng.standard_normal(p[name].shape)
        eps = 1e-6
        vals = []
        for s in (1, -1):
            q = dict(p)
            q[name] = p[name] + s * eps * d
            _, _, states = model.forward(q, CFG, u0, m0, return_states=True)
            assert _interior(states)  # no clip kink crossed by the perturbation
            vals.append(model.loss_and_grad(q, CFG, u0, gu, gm, m0)[0])
        fd = (vals[0] - vals[1]) / (2 * eps)
        an = float(np.sum(grads[name] * d))
        assert _rel(fd, an) < 1e-6, (name, fd, an)


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
    assert _rel((lp - lm) / (2 * eps), float(np.sum(grads["w"] * d))) < 1e-5


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
    with pytest.raises(ValueError, match="channels"):
        model.forward(p, CFG, u0[:, :2].copy())
    with pytest.raises(TypeError, match="dtype"):
        model.forward(p, CFG, u0.astype(np.float32))
    bad = u0.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.forward(p, CFG, bad)
    with pytest.raises(ValueError, match="shape"):
        model.forward({**p, "K": p["K"][:, :1]}, CFG, u0)


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
    rng, p, u0, u, m, ubar, mbar = _one_step(9, 1)
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
