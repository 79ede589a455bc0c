"""The coupled network with one mask channel per nucleus class (``ModelConfig.n_mask = C_m``):
finite-difference checks in float64 of one step (input gradient = v − Hv, each parameter
group) and of the whole unrolled loss, the loss (3) summed over the mask channels, and the
one-channel network as the special case ``C_m = 1`` of the multi-channel code."""
import helpers
import numpy as np
import pytest
from helpers import network_batch, network_params, one_step

from vnumba.ops.loss import loss_value_and_output_grad
from vnumba.vn import model
from vnumba.vn.config import PARAM_NAMES, ModelConfig, param_shapes

CFG = ModelConfig(n_steps=2, n_mask=3, nf_u=3, nf_m=2, ks_u=5, ks_m=3, ks=3, rbf_radius=31)


def _params(rng, cfg=CFG):
    return network_params(cfg, rng)


def _data(rng, N=2, H=9, W=8, Cm=3):
    return network_batch(rng, N, H, W, Cm=Cm)  # m0 off the clip's kinks


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
    rng, p, u0, u, m, ubar, mbar = one_step(CFG, 1, 0, Cm=3)
    mi = helpers.assert_step_input_gradient(p, CFG, u, m, u0, ubar, mbar, rng)
    assert mi.shape == m.shape


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_one_step_parameter_gradient_with_class_channels_matches_finite_differences(name):
    rng, p, u0, u, m, ubar, mbar = one_step(CFG, 3, 1, Cm=3)
    helpers.assert_step_param_gradient(p, CFG, u, m, u0, ubar, mbar, name, rng)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_whole_unrolled_multiclass_loss_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(4)
    p = _params(rng)
    batch = _data(rng)
    m_T = helpers.assert_unrolled_loss_gradient(p, CFG, batch, name, rng)
    assert m_T.shape == batch[2].shape


@pytest.mark.parametrize("name", ["Km", "wm", "K"])
def test_whole_unrolled_loss_with_class_weights_matches_finite_differences(name):
    """The class weights of the loss's mask term (``--class-weights``) reach every step's
    parameters through the same backward pass."""
    rng = np.random.default_rng(6)
    p = _params(rng)
    batch = _data(rng)
    helpers.assert_unrolled_loss_gradient(p, CFG, batch, name, rng, mask_weights=(1.0, 2.0, 5.0))
    lw, gw = model.loss_and_grad(p, CFG, *batch[:3], batch[3], mask_weights=(1.0, 2.0, 5.0))[:2]
    l1, g1 = model.loss_and_grad(p, CFG, *batch[:3], batch[3])[:2]
    assert lw > l1 and not np.allclose(gw[name], g1[name])


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
