"""U-Net baseline (vnumba.unet.network): configuration, parameters, forward pass against a NumPy
reference built from the architecture description, receptive field, loss normalisation,
whole-network finite differences in float64 and a short Adam training run."""
import naive
import numpy as np
import pytest

from vnumba.unet import network as unet
from vnumba.vn.config import from_dict


# ----------------------------------------------------------------------------- config
def test_config_defaults_follow_the_article_and_round_trip_through_a_dict():
    cfg = unet.UNetConfig()
    assert (cfg.n_channels, cfg.width, cfg.scales, cfg.convs_per_scale, cfg.kernel) == (3, 32, 3, 2, 3)
    assert cfg.size_multiple == 4
    assert from_dict(unet.UNetConfig, cfg.to_dict()) == cfg
    with pytest.raises(KeyError, match="depth"):
        from_dict(unet.UNetConfig, {"depth": 4})


@pytest.mark.parametrize("kw", [{"width": 0}, {"scales": -1}, {"kernel": 4}, {"kernel": 3.0},
                                {"convs_per_scale": True}, {"n_channels": "3"}])
def test_config_rejects_invalid_values(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        unet.UNetConfig(**kw)


# ----------------------------------------------------------------------------- parameters
def test_parameter_names_and_shapes_follow_the_architecture():
    cfg = unet.UNetConfig()
    shapes = unet.param_shapes(cfg)
    k, w, C = 3, 32, 3
    expected = {}
    for s in range(3):
        for j in range(2):
            expected[f"enc{s}_conv{j}"] = (w, C if (s, j) == (0, 0) else w, k, k)
    for s in (1, 0):
        expected[f"dec{s}_conv0"] = (w, 2 * w, k, k)
        expected[f"dec{s}_conv1"] = (w, w, k, k)
    expected["head"] = (C + 1, w, 1, 1)
    assert list(shapes) == [n + sfx for n in expected for sfx in ("_w", "_b")]
    for n, shp in expected.items():
        assert shapes[n + "_w"] == shp
        assert shapes[n + "_b"] == (shp[0],)
    p = unet.init_params(cfg, np.random.default_rng(0))
    assert unet.param_count(p) == sum(int(np.prod(s)) + s[0] for s in expected.values())


def test_init_params_is_reproducible_and_he_scaled():
    cfg = unet.UNetConfig(width=16)
    p = unet.init_params(cfg, np.random.default_rng(3), np.float64)
    q = unet.init_params(cfg, np.random.default_rng(3), np.float64)
    for k in p:
        np.testing.assert_array_equal(p[k], q[k])
        assert p[k].dtype == np.float64 and p[k].flags.c_contiguous
    for k, v in p.items():
        if k.endswith("_b"):
            assert not v.any()
        elif k != "head_w":
            fan_in = v.shape[1] * v.shape[2] * v.shape[3]
            assert abs(v.std() / np.sqrt(2.0 / fan_in) - 1.0) < 0.1, k
    assert unet.init_params(cfg, np.random.default_rng(0)).get("head_w").dtype == np.float32
    with pytest.raises(TypeError, match="Generator"):
        unet.init_params(cfg, 0)


def test_project_is_a_no_op():
    cfg = unet.UNetConfig(width=4)
    p = unet.init_params(cfg, np.random.default_rng(1), np.float64)
    before = {k: v.copy() for k, v in p.items()}
    assert unet.project(p, cfg) is None
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])


# ----------------------------------------------------------------------------- forward
def _params(cfg, seed, dtype=np.float64, head_gain=10.0):
    """Random parameters with a head large enough that the outputs depend visibly on the body."""
    rng = np.random.default_rng(seed)
    p = unet.init_params(cfg, rng, dtype)
    p["head_w"] *= head_gain
    for k in p:
        if k.endswith("_b"):
            p[k][:] = rng.normal(0.0, 0.1, p[k].shape)
    return p


@pytest.mark.parametrize("scales,convs,H,W", [(3, 2, 8, 12), (2, 1, 6, 4), (1, 2, 5, 7), (4, 1, 16, 8)])
def test_forward_matches_numpy_reference(scales, convs, H, W):
    cfg = unet.UNetConfig(width=4, scales=scales, convs_per_scale=convs)
    p = _params(cfg, 2)
    u0 = np.random.default_rng(3).uniform(0, 1, (2, 3, H, W))
    u, m = unet.forward(p, cfg, u0)
    ru, rm, *_ = naive.unet_forward(p, scales, convs, u0)
    assert u.shape == (2, 3, H, W) and m.shape == (2, H, W)
    np.testing.assert_allclose(u, ru, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(m, rm, rtol=1e-12, atol=1e-13)


def test_forward_with_class_channels_matches_numpy_reference():
    # one mask logit per class in the head (issue 20): (N, C_m, H, W) masks
    cfg = unet.UNetConfig(width=4, n_mask=3)
    assert unet.param_shapes(cfg)["head_w"] == (6, 4, 1, 1)
    p = _params(cfg, 5)
    u0 = np.random.default_rng(6).uniform(0, 1, (2, 3, 8, 8))
    u, m = unet.forward(p, cfg, u0)
    ru, rm, *_ = naive.unet_forward(p, cfg.scales, cfg.convs_per_scale, u0)
    assert m.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(u, ru, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(m, rm, rtol=1e-12, atol=1e-13)
    u0_, gu, gm = _task(cfg, 7)
    with pytest.raises(ValueError, match="gm has shape"):
        unet.loss_and_grad(p, cfg, u0_, gu, np.ascontiguousarray(gm[:, :2]))


def test_forward_in_float32_agrees_with_float64():
    cfg = unet.UNetConfig(width=8)
    p = _params(cfg, 4)
    u0 = np.random.default_rng(5).uniform(0, 1, (2, 3, 16, 12))
    u, m = unet.forward(p, cfg, u0)
    u32, m32 = unet.forward({k: v.astype(np.float32) for k, v in p.items()}, cfg, u0.astype(np.float32))
    assert u32.dtype == np.float32 and m32.dtype == np.float32
    np.testing.assert_allclose(u32, u, atol=2e-5)
    np.testing.assert_allclose(m32, m, atol=2e-5)


def test_forward_rejects_bad_inputs():
    cfg = unet.UNetConfig(width=4)
    p = _params(cfg, 6)
    with pytest.raises(ValueError, match="pad_to_multiple"):
        unet.forward(p, cfg, np.zeros((1, 3, 10, 8)))
    with pytest.raises(ValueError, match="channels"):
        unet.forward(p, cfg, np.zeros((1, 2, 8, 8)))
    with pytest.raises(TypeError, match="dtype"):
        unet.forward(p, cfg, np.zeros((1, 3, 8, 8), dtype=np.float32))
    bad = np.zeros((1, 3, 8, 8))
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        unet.forward(p, cfg, bad)
    q = dict(p)
    del q["head_b"]
    with pytest.raises(KeyError, match="head_b"):
        unet.forward(q, cfg, np.zeros((1, 3, 8, 8)))
    q = dict(p, enc0_conv0_w=np.zeros((4, 3, 5, 5)))
    with pytest.raises(ValueError, match="enc0_conv0_w"):
        unet.forward(q, cfg, np.zeros((1, 3, 8, 8)))


@pytest.mark.parametrize("cfg", [unet.UNetConfig(width=4),
                                 unet.UNetConfig(width=4, scales=2, convs_per_scale=1, kernel=5)])
def test_receptive_radius_is_exact(cfg):
    """Perturb one input column at every alignment: output pixels farther than the radius
    never change, and the farthest changed pixel is exactly at the radius."""
    R = cfg.receptive_radius
    p = _params(cfg, 7)
    for k in p:
        if k.endswith("_b"):
            p[k][:] = 0.5  # live ReLUs, so the dependence is not hidden by dead units
    S = 4 * ((2 * R + 8) // 4 + 1)
    rng = np.random.default_rng(8)
    u0 = rng.uniform(0.3, 0.7, (1, 3, S, S))
    _, m0 = unet.forward(p, cfg, u0)
    farthest = 0
    for col in range(S // 2, S // 2 + cfg.size_multiple):
        x = u0.copy()
        x[..., col] += 5.0
        _, m1 = unet.forward(p, cfg, x)
        changed = np.nonzero((m1 != m0).any(axis=(0, 1)))[0]
        farthest = max(farthest, int(np.abs(changed - col).max()))
    assert farthest == R


def test_pad_to_multiple_and_crop_allow_any_image_size():
    cfg = unet.UNetConfig(width=4)
    p = _params(cfg, 9)
    x = np.random.default_rng(10).uniform(0, 1, (1, 3, 10, 13))
    xp, hw = unet.pad_to_multiple(x, cfg.size_multiple)
    assert xp.shape == (1, 3, 12, 16) and hw == (10, 13)
    np.testing.assert_array_equal(xp[..., :10, :13], x)
    np.testing.assert_array_equal(xp[..., 10:, :13], x[..., 9:7:-1, :])  # mirrored rows
    u, m = unet.forward(p, cfg, xp)
    assert unet.crop(u, hw).shape == (1, 3, 10, 13) and unet.crop(m, hw).shape == (1, 10, 13)
    same, hw2 = unet.pad_to_multiple(xp, 4)
    assert same.shape == xp.shape and hw2 == (12, 16)


# ----------------------------------------------------------------------------- loss and gradient
def _task(cfg, seed, N=2, H=8, W=8):
    rng = np.random.default_rng(seed)
    u0 = rng.uniform(0.2, 0.8, (N, cfg.n_channels, H, W))
    gu = rng.uniform(0, 1, u0.shape)
    mshape = (N, H, W) if cfg.n_mask == 1 else (N, cfg.n_mask, H, W)
    gm = (rng.uniform(0, 1, mshape) > 0.5).astype(np.float64)
    return u0, gu, gm


def test_loss_has_the_shared_normalisation():
    cfg = unet.UNetConfig(width=4)
    p = _params(cfg, 11)
    u0, gu, gm = _task(cfg, 12, N=3, H=8, W=12)
    loss, grads, u, m = unet.loss_and_grad(p, cfg, u0, gu, gm)
    fu, fm = unet.forward(p, cfg, u0)
    np.testing.assert_array_equal(u, fu)
    np.testing.assert_array_equal(m, fm)
    per_sample = [(np.sum((u[s] - gu[s]) ** 2) / 6 + np.sum((m[s] - gm[s]) ** 2) / 2) / (8 * 12) for s in range(3)]
    assert loss == pytest.approx(np.mean(per_sample), rel=1e-13)
    assert set(grads) == set(p)
    for k in p:
        assert grads[k].shape == p[k].shape and grads[k].dtype == p[k].dtype


def _kinks_are_safe(p, cfg, u0, direction, eps):
    """True if no ReLU pre-activation, max-pool arg-max or clip region changes on the segment
    p ± eps·direction: at the centre every pre-activation, pooling gap (largest minus second
    largest) and pre-clip value is farther than 1e-4 from its kink and farther than four
    times the largest change of any of those quantities between the centre and the ends."""
    ends = []
    for t in (0.0, -eps, eps):
        q = {k: p[k] + t * direction[k] for k in p}
        _, _, pre, gaps, v = naive.unet_forward(q, cfg.scales, cfg.convs_per_scale, u0)
        ends.append((pre, v))
        if t == 0.0:
            margin = min(min(np.abs(a).min() for a in pre),
                         min((g.min() for g in gaps), default=np.inf),
                         np.abs(v).min(), np.abs(v - 1).min())
    (pre0, v0), rest = ends[0], ends[1:]
    delta = max(max(max(np.abs(a - b).max() for a, b in zip(pre, pre0)), np.abs(v - v0).max())
                for pre, v in rest)
    return margin > max(1e-4, 4.0 * delta)


@pytest.mark.parametrize("cfg", [unet.UNetConfig(width=4),
                                 unet.UNetConfig(n_channels=2, width=3, scales=2, convs_per_scale=1, kernel=5),
                                 unet.UNetConfig(width=3, scales=2, n_mask=3)])
def test_whole_network_gradient_matches_finite_differences(cfg):
    """Central differences in float64 along random directions: all parameters at once and
    each parameter array alone (one layer at a time through the whole network).  Draws whose
    kinks (ReLU, max-pool ties, clip) come within 1e-4 of the difference step are redrawn."""
    _assert_whole_network_fd(cfg)


def test_whole_network_gradient_with_class_weights_matches_finite_differences():
    """The loss's class weights (``--class-weights``) pass through the U-Net's backward pass."""
    _assert_whole_network_fd(unet.UNetConfig(width=3, scales=2, n_mask=3), (1.0, 2.0, 5.0))


def _assert_whole_network_fd(cfg, mask_weights=None):
    eps = 1e-5
    for seed in range(100, 140):
        rng = np.random.default_rng(seed)
        p = _params(cfg, seed, head_gain=3.0)
        u0, gu, gm = _task(cfg, seed + 1000)
        d = {k: rng.standard_normal(v.shape) for k, v in p.items()}
        if _kinks_are_safe(p, cfg, u0, d, eps):
            break
    else:
        pytest.fail("no draw kept the kinks away from the difference step")
    _, grads, _, _ = unet.loss_and_grad(p, cfg, u0, gu, gm, mask_weights=mask_weights)

    def L(t, keys):
        q = {k: p[k] + t * d[k] if k in keys else p[k] for k in p}
        return unet.loss_and_grad(q, cfg, u0, gu, gm, mask_weights=mask_weights)[0]

    groups = [list(p)] + [[k] for k in p]
    for keys in groups:
        analytic = sum(np.vdot(grads[k], d[k]) for k in keys)
        fd = (L(eps, keys) - L(-eps, keys)) / (2 * eps)
        assert abs(analytic - fd) <= 1e-6 * abs(analytic) + 1e-11, (keys, analytic, fd)


def test_loss_and_grad_in_float32_agrees_with_float64():
    cfg = unet.UNetConfig(width=4)
    p = _params(cfg, 13)
    u0, gu, gm = _task(cfg, 14)
    loss, g, _, _ = unet.loss_and_grad(p, cfg, u0, gu, gm)
    f = {k: v.astype(np.float32) for k, v in p.items()}
    loss32, g32, _, _ = unet.loss_and_grad(f, cfg, *(a.astype(np.float32) for a in (u0, gu, gm)))
    assert loss32 == pytest.approx(loss, rel=1e-5)
    for k in p:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g[k], rtol=1e-3, atol=1e-4 * np.abs(g[k]).max())


# ----------------------------------------------------------------------------- training
def _blur(x, passes=3):
    for _ in range(passes):
        x = (x + np.roll(x, 1, -1) + np.roll(x, -1, -1) + np.roll(x, 1, -2) + np.roll(x, -1, -2)) / 5.0
    return x


def test_adam_training_fits_a_small_synthetic_task():
    """100 Adam steps on 'mask = thresholded blurred input, clean image = blurred input':
    the loss falls far below its starting value."""
    from vnumba.ops.optim import Adam

    cfg = unet.UNetConfig(width=8)
    rng = np.random.default_rng(20)
    N, H, W = 4, 16, 16
    clean = _blur(rng.uniform(0, 1, (N, 3, H, W)))
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    u0 = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1)
    gm = (clean.mean(axis=1) > np.median(clean.mean(axis=1))).astype(np.float64)
    p = unet.init_params(cfg, np.random.default_rng(21), np.float64)
    opt = Adam(lr=5e-3, project=lambda q: unet.project(q, cfg))
    losses = []
    for _ in range(100):
        loss, g, _, _ = unet.loss_and_grad(p, cfg, u0, clean, gm)
        losses.append(loss)
        opt.step(p, g)
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])
    _, m = unet.forward(p, cfg, u0)
    assert np.mean((m > 0.5) == (gm > 0.5)) > 0.9


def test_serial_and_parallel_execution_give_identical_results(monkeypatch):
    """Small calls run on one thread (SERIAL_BELOW_MACS); the result must not depend on it,
    and the caller's Numba thread count is restored afterwards."""
    import numba

    cfg = unet.UNetConfig(width=4)
    p = _params(cfg, 30)
    u0, gu, gm = _task(cfg, 31)
    threads = numba.get_num_threads()
    results = []
    for threshold in (np.inf, 0.0):
        monkeypatch.setattr(unet, "SERIAL_BELOW_MACS", threshold)
        results.append(unet.loss_and_grad(p, cfg, u0, gu, gm))
        assert numba.get_num_threads() == threads
    (l1, g1, u1, m1), (l2, g2, u2, m2) = results
    assert l1 == l2
    np.testing.assert_array_equal(u1, u2)
    np.testing.assert_array_equal(m1, m2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
