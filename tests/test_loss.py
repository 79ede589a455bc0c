"""The training loss (3) of vnumba.ops.loss: against the image-by-image NumPy reference
(tests/naive.py) in float64 and float32, chunks adding up to the batch, the constants that the
GPU engine uses, central finite differences (float64) of the output gradients, the input
checks, and the networks' losses being this one definition."""
import naive
import numpy as np
import pytest

from vnumba.ops import loss as L


def _data(rng, N=2, C=3, H=4, W=5, dtype=np.float64):
    u = rng.random((N, C, H, W)).astype(dtype)
    gu = rng.random((N, C, H, W)).astype(dtype)
    m = rng.random((N, H, W)).astype(dtype)
    gm = rng.random((N, H, W)).astype(dtype)
    return u, gu, m, gm


@pytest.mark.parametrize("batch_size", [None, 5])
def test_loss_and_output_gradients_match_the_reference_in_float64(batch_size):
    u, gu, m, gm = _data(np.random.default_rng(0))
    loss, du, dm = L.loss_value_and_output_grad(u, gu, m, gm, batch_size=batch_size)
    lr, dur, dmr = naive.training_loss(u, gu, m, gm, batch_size)
    assert isinstance(loss, float)
    assert loss == pytest.approx(lr, rel=1e-14)
    assert du.dtype == dm.dtype == np.float64 and du.shape == u.shape and dm.shape == m.shape
    assert du.flags.c_contiguous and dm.flags.c_contiguous
    np.testing.assert_allclose(du, dur, rtol=1e-14, atol=0)
    np.testing.assert_allclose(dm, dmr, rtol=1e-14, atol=0)


def test_float32_inputs_give_float32_gradients_and_a_float64_accumulated_loss():
    u, gu, m, gm = _data(np.random.default_rng(1), N=3, H=6, W=7, dtype=np.float32)
    loss, du, dm = L.loss_value_and_output_grad(u, gu, m, gm)
    lr, dur, dmr = naive.training_loss(u, gu, m, gm)
    assert du.dtype == dm.dtype == np.float32
    # The differences are formed in float32 (one rounding), the squares summed in float64.
    assert loss == pytest.approx(lr, rel=1e-6)
    np.testing.assert_allclose(du, dur, rtol=1e-6, atol=0)
    np.testing.assert_allclose(dm, dmr, rtol=1e-6, atol=0)
    # The inputs are not modified.
    u2, gu2, m2, gm2 = _data(np.random.default_rng(1), N=3, H=6, W=7, dtype=np.float32)
    for a, b in ((u, u2), (gu, gu2), (m, m2), (gm, gm2)):
        np.testing.assert_array_equal(a, b)


def test_the_article_weights_one_sixth_and_one_half_on_one_image():
    """Eq. (3) for one image with constant errors: 1/6 · C H W e_u² + 1/2 · H W e_m²."""
    C, H, W = 3, 2, 3
    u = np.full((1, C, H, W), 0.75)
    gu = np.full((1, C, H, W), 0.25)
    m = np.full((1, H, W), 1.0)
    gm = np.zeros((1, H, W))
    loss, du, dm = L.loss_value_and_output_grad(u, gu, m, gm)
    assert loss == pytest.approx((C * H * W * 0.5 ** 2 / 6 + H * W / 2) / (H * W), rel=1e-15)
    np.testing.assert_allclose(du, 0.5 / 3 / (H * W), rtol=1e-15)
    np.testing.assert_allclose(dm, 1.0 / (H * W), rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunks_with_the_batch_size_add_up_to_the_batch(dtype):
    u, gu, m, gm = _data(np.random.default_rng(2), N=4, dtype=dtype)
    loss, du, dm = L.loss_value_and_output_grad(u, gu, m, gm)
    total = 0.0
    for s0 in (0, 1, 3):
        sl = slice(s0, {0: 1, 1: 3, 3: 4}[s0])
        lc, duc, dmc = L.loss_value_and_output_grad(u[sl], gu[sl], m[sl], gm[sl], batch_size=4)
        total += lc
        np.testing.assert_array_equal(duc, du[sl])  # the same float operations
        np.testing.assert_array_equal(dmc, dm[sl])
    assert total == pytest.approx(loss, rel=1e-14)


def test_the_constants_for_the_gpu_kernel_give_the_same_loss_and_gradients():
    """The device kernel forms ``(u − g) f`` and the float64 sums of squares; the host combines
    them with ``loss_from_sums``: both reproduce ``loss_value_and_output_grad`` exactly."""
    u, gu, m, gm = _data(np.random.default_rng(3), dtype=np.float32)
    N, C, H, W = u.shape
    loss, du, dm = L.loss_value_and_output_grad(u, gu, m, gm)
    scale = L.loss_scale(N, H, W)
    assert scale == 1.0 / (N * H * W)
    f_u, f_m = L.output_grad_factors(scale)
    assert f_u == scale / 3.0 and f_m == scale
    np.testing.assert_array_equal((u - gu) * np.float32(f_u), du)
    np.testing.assert_array_equal((m - gm) * np.float32(f_m), dm)
    su = np.sum((u - gu).astype(np.float64) ** 2)
    sm = np.sum((m - gm).astype(np.float64) ** 2)
    assert L.loss_from_sums(su, sm, scale) == loss
    assert 2.0 * scale / L.IMAGE_DIVISOR == pytest.approx(f_u, rel=1e-15)
    assert 2.0 * scale / L.MASK_DIVISOR == pytest.approx(f_m, rel=1e-15)
    with pytest.raises(ValueError, match=">= 1"):
        L.loss_scale(0, H, W)


def test_output_gradients_match_central_finite_differences_in_float64():
    rng = np.random.default_rng(4)
    u, gu, m, gm = _data(rng, N=2, C=3, H=3, W=4)
    _, du, dm = L.loss_value_and_output_grad(u, gu, m, gm, batch_size=3)

    def f(uu, mm):
        return L.loss_value_and_output_grad(uu, gu, mm, gm, batch_size=3)[0]

    eps = 1e-6
    # Every entry of both gradients.
    for x, g, which in ((u, du, "u"), (m, dm, "m")):
        fd = np.empty_like(x)
        for i in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[i] += eps
            xm[i] -= eps
            lp = f(xp, m) if which == "u" else f(u, xp)
            lm = f(xm, m) if which == "u" else f(u, xm)
            fd[i] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(fd, g, rtol=1e-6, atol=1e-12, err_msg=which)
    # And a joint random direction.
    vu, vm = rng.standard_normal(u.shape), rng.standard_normal(m.shape)
    fd = (f(u + eps * vu, m + eps * vm) - f(u - eps * vu, m - eps * vm)) / (2 * eps)
    an = float(np.sum(du * vu) + np.sum(dm * vm))
    assert fd == pytest.approx(an, rel=1e-7)


def test_bad_inputs_are_rejected_with_clear_errors():
    u, gu, m, gm = _data(np.random.default_rng(5))
    f = L.loss_value_and_output_grad
    with pytest.raises(TypeError, match="numpy.ndarray"):
        f(u.tolist(), gu, m, gm)
    with pytest.raises(TypeError, match="float32 or float64"):
        f(u.astype(np.int64), gu, m, gm)
    with pytest.raises(TypeError, match="must match"):
        f(u, gu.astype(np.float32), m, gm)
    with pytest.raises(TypeError, match="must match"):
        f(u, gu, m, gm.astype(np.float32))
    with pytest.raises(ValueError, match="4 dimensions"):
        f(u[0], gu, m, gm)
    # m and gm must agree: (N, H, W) or (N, C_m, H, W) both
    with pytest.raises(ValueError, match="gm must have 4 dimensions"):
        f(u, gu, m[:, None], gm)
    with pytest.raises(ValueError, match="m must have 3 dimensions"):
        f(u, gu, m[:, None, None], gm)
    with pytest.raises(ValueError, match="C-contiguous"):
        f(u, gu[:, :, :, ::-1], m, gm)
    with pytest.raises(ValueError, match="C-contiguous"):
        f(u, gu, m.transpose(0, 2, 1), gm)
    with pytest.raises(ValueError, match="gu has shape"):
        f(u, gu[:, :2].copy(), m, gm)
    with pytest.raises(ValueError, match="gm has shape"):
        f(u, gu, m, gm[:1].copy())
    with pytest.raises(ValueError, match="m has shape"):
        f(u, gu, m[:, :, :3].copy(), gm)
    with pytest.raises(ValueError, match="batch_size"):
        f(u, gu, m, gm, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        f(u, gu, m, gm, batch_size=2.5)


def test_non_finite_inputs_give_a_non_finite_loss():
    u, gu, m, gm = _data(np.random.default_rng(6))
    m[0, 1, 1] = np.nan
    assert not np.isfinite(L.loss_value_and_output_grad(u, gu, m, gm)[0])


def test_both_networks_report_this_loss_of_their_outputs():
    from vnumba.unet import network as unet
    from vnumba.vn import model
    from vnumba.vn.config import ModelConfig

    rng = np.random.default_rng(7)
    cfg = ModelConfig(n_steps=2, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3, n_w=11)
    p = model.init_params(cfg, rng, np.float64)
    u0, gu, _, gm = _data(rng, N=3, H=6, W=5)
    loss, _, u_T, m_T = model.loss_and_grad(p, cfg, u0, gu, gm, chunk=2)
    assert loss == pytest.approx(L.loss_value_and_output_grad(u_T, gu, m_T, gm)[0], rel=1e-14)

    ucfg = unet.UNetConfig(scales=2, convs_per_scale=1, width=4)
    q = unet.init_params(ucfg, rng, np.float64)
    u0, gu, _, gm = _data(rng, N=2, H=4, W=6)
    loss, _, u, m = unet.loss_and_grad(q, ucfg, u0, gu, gm)
    assert loss == L.loss_value_and_output_grad(u, gu, m, gm)[0]


# --------------------------------------------------------------------------- class weights
def _classes(rng, N=2, Cm=3, H=4, W=5, dtype=np.float64):
    u, gu, _, _ = _data(rng, N=N, H=H, W=W, dtype=dtype)
    m = rng.random((N, Cm, H, W)).astype(dtype)
    gm = rng.random((N, Cm, H, W)).astype(dtype)
    return u, gu, m, gm


@pytest.mark.parametrize("batch_size", [None, 4])
def test_class_weights_scale_each_mask_channel_term_and_its_gradient_as_the_reference(batch_size):
    u, gu, m, gm = _classes(np.random.default_rng(7))
    w = (1.0, 2.5, 0.5)
    loss, du, dm = L.loss_value_and_output_grad(u, gu, m, gm, batch_size=batch_size, mask_weights=w)
    lr, dur, dmr = naive.training_loss(u, gu, m, gm, batch_size, mask_weights=w)
    assert loss == pytest.approx(lr, rel=1e-14)
    np.testing.assert_allclose(du, dur, rtol=1e-14, atol=0)
    np.testing.assert_allclose(dm, dmr, rtol=1e-14, atol=0)
    # The weighted loss is the unweighted one plus (w_c - 1) times each channel's term.
    l1, _, dm1 = L.loss_value_and_output_grad(u, gu, m, gm, batch_size=batch_size)
    n = (batch_size or 2) * 4 * 5
    per_channel = np.sum((m - gm) ** 2, axis=(0, 2, 3)) / 2 / n
    assert loss == pytest.approx(l1 + np.dot(np.subtract(w, 1.0), per_channel), rel=1e-13)
    np.testing.assert_allclose(dm, dm1 * np.reshape(w, (1, 3, 1, 1)), rtol=1e-15)


def test_unit_class_weights_are_the_article_loss_bit_for_bit():
    for dtype in (np.float32, np.float64):
        u, gu, m, gm = _classes(np.random.default_rng(8), dtype=dtype)
        a = L.loss_value_and_output_grad(u, gu, m, gm)
        b = L.loss_value_and_output_grad(u, gu, m, gm, mask_weights=[1, 1, 1])
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[2], b[2])


def test_central_differences_of_the_weighted_loss_equal_its_output_gradient():
    u, gu, m, gm = _classes(np.random.default_rng(9), H=3, W=3)
    w = (0.5, 1.0, 4.0)
    _, _, dm = L.loss_value_and_output_grad(u, gu, m, gm, mask_weights=w)
    eps = 1e-6
    for idx in [(0, 0, 1, 2), (1, 2, 0, 0), (1, 1, 2, 1)]:
        mp, mm = m.copy(), m.copy()
        mp[idx] += eps
        mm[idx] -= eps
        fd = (L.loss_value_and_output_grad(u, gu, mp, gm, mask_weights=w)[0]
              - L.loss_value_and_output_grad(u, gu, mm, gm, mask_weights=w)[0]) / (2 * eps)
        assert fd == pytest.approx(dm[idx], rel=1e-7)


@pytest.mark.parametrize("weights, match", [
    ((1.0, 2.0), "2 class weights for 3 mask channel"),
    ((1.0, 0.0, 1.0), "positive and finite"),
    ((1.0, float("nan"), 1.0), "positive and finite"),
    ((1.0, -2.0, 1.0), "positive and finite"),
    (("a", 1, 1), "must be numbers"),
])
def test_bad_class_weights_are_refused_in_one_line(weights, match):
    u, gu, m, gm = _classes(np.random.default_rng(10))
    with pytest.raises(ValueError, match=match):
        L.loss_value_and_output_grad(u, gu, m, gm, mask_weights=weights)


def test_a_one_channel_mask_takes_one_class_weight():
    u, gu, m, gm = _data(np.random.default_rng(11))
    loss, _, dm = L.loss_value_and_output_grad(u, gu, m, gm, mask_weights=[3.0])
    l1, _, dm1 = L.loss_value_and_output_grad(u, gu, m, gm)
    np.testing.assert_allclose(dm, 3.0 * dm1, rtol=1e-15)
    assert loss > l1
    assert L.check_mask_weights(None, 3) is None and L.check_mask_weights([2], 1) == (2.0,)
