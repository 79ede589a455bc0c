"""The coupled network with one mask channel per nucleus class (``ModelConfig.n_mask = C_m``):
finite-difference checks in float64 of one step (input gradient = v − Hv, each parameter
group) and of the whole unrolled loss, the loss (3) summed over the mask channels, and the
one-channel network as the special case ``C_m = 1`` of the multi-channel code."""
import numpy as np
import pytest

from vnumba.ops.loss import loss_value_and_output_grad
from vnumba.vn import model
from vnumba.vn.config import PARAM_NAMES, ModelConfig, param_shapes

CFG = ModelConfig(n_steps=2, n_mask=3, nf_u=3, nf_m=2, ks_u=5, ks_m=3, ks=3, rbf_radius=31)


def _params(rng, cfg=CFG):
    p = model.init_params(cfg, rng, np.float64)
    for k in ("wu", "wm"):
        p[k] = p[k] + 0.2 * rng.standard_normal(p[k].shape)
    p["w"] = 0.2 * p["w"] + 0.05 * rng.standard_normal(p["w"].shape)
    return p


def _data(rng, N=2, H=9, W=8, C=3, Cm=3):
    u0 = 0.3 + 0.4 * rng.random((N, C, H, W))
    gu = 0.3 + 0.4 * rng.random((N, C, H, W))
    gm = rng.random((N, Cm, H, W))
    m0 = 0.4 + 0.2 * rng.random((N, Cm, H, W))  # off the clip's kinks
    return u0, gu, gm, m0


def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def _interior(states, margin=1e-3):
    return all(np.all((x > margin) & (x < 1 - margin)) for st in states for x in st)


def test_mask_filters_read_every_class_channel():
    assert param_shapes(CFG)["Km"] == (2, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="n_mask"):
        ModelConfig(n_mask=0)


def test_forward_keeps_one_map_per_class_and_they_interact():
    rng = np.random.default_rng(0)
    p = _params(rng)
    u0, _, _, m0 = _data(rng)
    u, m = model.forward(p, CFG, u0, m0)
    assert u.shape == u0.shape and m.shape == m0.shape
    # Each class map is updated, and changing one class's start changes the others' result
    # (K^m mixes the channels): the channels are coupled, not three separate networks.
    m1 = m0.copy()
    m1[:, 0] += 0.05
    _, mb = model.forward(p, CFG, u0, m1)
    assert np.abs(mb[:, 1:] - m[:, 1:]).max() > 1e-8
    # Without m0 the start is zeros of the class count.
    _, mz = model.forward(p, CFG, u0)
    assert mz.shape == (2, 3, 9, 8)


def test_one_step_input_gradient_with_class_channels_is_v_minus_hessian_vector_product():
    rng = np.random.default_rng(1)
    p = model.step_params(_params(rng), 0)
    u0, _, _, m = _data(rng)
    u = 0.3 + 0.4 * rng.random(u0.shape)
    ubar, mbar = rng.standard_normal(u.shape), rng.standard_normal(m.shape)
    ui, mi, _ = model.step_backward(p, CFG, u, m, u0, ubar, mbar)
    assert mi.shape == m.shape

    def J(uu, mm):
        a, b = model.step_forward(p, CFG, uu, mm, u0)
        return np.sum(a * ubar) + np.sum(b * mbar)

    for _ in range(3):
        du, dm = rng.standard_normal(u.shape), rng.standard_normal(m.shape)
        eps = 1e-6
        fd = (J(u + eps * du, m + eps * dm) - J(u - eps * du, m - eps * dm)) / (2 * eps)
        an = np.sum(ui * du) + np.sum(mi * dm)
        assert _rel(fd, an) < 1e-6, (fd, an)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_one_step_parameter_gradient_with_class_channels_matches_finite_differences(name):
    rng = np.random.default_rng(3)
    p = model.step_params(_params(rng), 1)
    u0, _, _, m = _data(rng)
    u = 0.3 + 0.4 * rng.random(u0.shape)
    ubar, mbar = rng.standard_normal(u.shape), rng.standard_normal(m.shape)
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
def test_whole_unrolled_multiclass_loss_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(4)
    p = _params(rng)
    u0, gu, gm, m0 = _data(rng)
    loss, grads, _, m_T = model.loss_and_grad(p, CFG, u0, gu, gm, m0)
    assert loss > 0 and m_T.shape == gm.shape
    d = rng.standard_normal(p[name].shape)
    eps = 1e-6
    vals = []
    for s in (1, -1):
        q = dict(p)
        q[name] = p[name] + s * eps * d
        _, _, states = model.forward(q, CFG, u0, m0, return_states=True)
        assert _interior(states)
        vals.append(model.loss_and_grad(q, CFG, u0, gu, gm, m0)[0])
    fd = (vals[0] - vals[1]) / (2 * eps)
    an = float(np.sum(grads[name] * d))
    assert _rel(fd, an) < 1e-6, (name, fd, an)


def test_multiclass_loss_sums_the_mask_term_over_the_channels():
    rng = np.random.default_rng(5)
    u = rng.random((2, 3, 4, 5))
    gu = rng.random(u.shape)
    m = rng.random((2, 3, 4, 5))
    gm = rng.random(m.shape)
    loss, du, dm = loss_value_and_output_grad(u, gu, m, gm)
    per_channel = [loss_value_and_output_grad(u, gu, np.ascontiguousarray(m[:, c]),
                                              np.ascontiguousarray(gm[:, c]))[0] for c in range(3)]
    image_term = np.sum((u - gu) ** 2) / 6.0 / (2 * 4 * 5)
    assert loss == pytest.approx(sum(per_channel) - 2 * image_term, rel=1e-12)
    np.testing.assert_allclose(dm, (m - gm) / (2 * 4 * 5), rtol=1e-12)
    with pytest.raises(ValueError, match="gm has shape"):
        loss_value_and_output_grad(u, gu, m, np.ascontiguousarray(gm[:, :2]))


def test_one_channel_network_is_the_multichannel_code_with_one_class():
    # The article's (N, H, W) mask and the (N, 1, H, W) form give the same bits.
    cfg = ModelConfig(n_steps=2, nf_u=3, nf_m=2, ks_u=5, ks_m=3, ks=3, rbf_radius=31)
    rng = np.random.default_rng(6)
    p = _params(rng, cfg)
    u0, gu, gm, m0 = _data(rng, Cm=1)
    l4, g4, u4, m4 = model.loss_and_grad(p, cfg, u0, gu, gm, m0)
    l3, g3, u3, m3 = model.loss_and_grad(p, cfg, u0, gu, gm[:, 0], m0[:, 0])
    assert l4 == l3 and m4.shape == (2, 1, 9, 8) and m3.shape == (2, 9, 8)
    np.testing.assert_array_equal(m4[:, 0], m3)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(g4[k], g3[k])


def test_multiclass_network_refuses_a_mask_with_the_wrong_class_count():
    rng = np.random.default_rng(7)
    p = _params(rng)
    u0, gu, gm, m0 = _data(rng, Cm=2)
    with pytest.raises(ValueError, match="m0 has shape"):
        model.forward(p, CFG, u0, m0)
    with pytest.raises(ValueError, match="m0 has shape|gm has shape"):
        model.loss_and_grad(p, CFG, u0, gu, gm)
    with pytest.raises(ValueError):
        model.loss_and_grad(p, CFG, u0, gu, gm[:, 0])
