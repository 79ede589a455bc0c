"""U-Net layers (vnumba.unet.kernels): Numba kernels vs the NumPy references in naive.py,
dot-product tests of the linear operators, central finite differences of every layer's
backward pass (float64), and argument checking."""
import naive
import numpy as np
import pytest
from helpers import dot_test

from vnumba.unet import kernels as uk


def _fd(f, x, d, eps=1e-6):
    """Central difference of the scalar function f at x along d."""
    return (f(x + eps * d) - f(x - eps * d)) / (2 * eps)


# ----------------------------------------------------------------------------- convolution
CONV_CASES = [  # N, C, O, H, W, ks — O covers full 4-blocks and tails, ks the 3x3 fast path and others
    (2, 3, 4, 6, 5, 3),
    (1, 5, 9, 7, 8, 3),
    (2, 4, 3, 5, 6, 1),
    (1, 2, 6, 6, 7, 5),
    (1, 2, 4, 3, 1, 3),  # a single column: the 3x3 path without interior columns
]


@pytest.mark.parametrize("N,C,O,H,W,ks", CONV_CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_matches_reference(N, C, O, H, W, ks, relu):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C, ks, ks))
    b = rng.standard_normal(O)
    np.testing.assert_allclose(uk.conv2d(x, w, b, relu=relu), naive.unet_conv2d(x, w, b, relu=relu),
                               rtol=1e-12, atol=1e-12)


def test_conv2d_float32_matches_float64_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 8, 9))
    w = rng.standard_normal((8, 6, 3, 3))
    b = rng.standard_normal(8)
    y = uk.conv2d(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), relu=True)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, naive.unet_conv2d(x, w, b, relu=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N,C,O,H,W,ks", CONV_CASES)
def test_conv2d_input_adjoint_matches_scatter_reference(N, C, O, H, W, ks):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((O, C, ks, ks))
    dy = rng.standard_normal((N, O, H, W))
    np.testing.assert_allclose(uk.conv2d_input_adjoint(dy, w), naive.unet_conv2d_input_adjoint(dy, w),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("N,C,O,H,W,ks", CONV_CASES)
def test_conv2d_input_adjoint_passes_dot_product_test(N, C, O, H, W, ks):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((O, C, ks, ks))
    zero = np.zeros(O)
    dot_test(lambda x: uk.conv2d(x, w, zero), lambda y: uk.conv2d_input_adjoint(y, w),
             (N, C, H, W), (N, O, H, W), rng)


@pytest.mark.parametrize("N,C,O,H,W,ks", CONV_CASES)
def test_conv2d_param_grad_matches_reference(N, C, O, H, W, ks):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, C, H, W))
    dy = rng.standard_normal((N, O, H, W))
    dw, db = uk.conv2d_param_grad(dy, x, ks)
    rw, rb = naive.unet_conv2d_param_grad(dy, x, ks)
    np.testing.assert_allclose(dw, rw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, rb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ks", [1, 3])
def test_conv_relu_layer_gradients_match_finite_differences(ks):
    """Layer y = relu(conv(x, w, b)) and J = <r, y>: its gradients with respect to x, w and b
    from relu_backward, conv2d_input_adjoint and conv2d_param_grad, against central
    differences along random directions (pre-activations kept away from the kink)."""
    rng = np.random.default_rng(6)
    N, C, O, H, W = 2, 3, 5, 6, 7
    for _ in range(20):
        x = rng.standard_normal((N, C, H, W))
        w = rng.standard_normal((O, C, ks, ks))
        b = rng.standard_normal(O)
        dx, dw, db = (rng.standard_normal(a.shape) for a in (x, w, b))
        if np.abs(naive.unet_conv2d(x, w, b)).min() > 1e-3:
            break
    else:
        pytest.fail("no draw with pre-activations away from 0")
    r = rng.standard_normal((N, O, H, W))
    y = uk.conv2d(x, w, b, relu=True)
    g = uk.relu_backward(r, y)
    gx = uk.conv2d_input_adjoint(g, w)
    gw, gb = uk.conv2d_param_grad(g, x, ks)

    def J(x_, w_, b_):
        return np.vdot(r, uk.conv2d(x_, w_, b_, relu=True))

    for analytic, fd in [
        (np.vdot(gx, dx), _fd(lambda t: J(t, w, b), x, dx)),
        (np.vdot(gw, dw), _fd(lambda t: J(x, t, b), w, dw)),
        (np.vdot(gb, db), _fd(lambda t: J(x, w, t), b, db)),
    ]:
        assert abs(analytic - fd) <= 1e-6 * abs(analytic)


# ----------------------------------------------------------------------------- ReLU
def test_relu_and_relu_backward_match_reference():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    y = uk.relu(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0.0))
    np.testing.assert_array_equal(uk.relu_backward(dy, y), naive.unet_relu_backward(dy, y))


# ----------------------------------------------------------------------------- max-pooling
def test_maxpool2_values_and_argmax_match_reference():
    x = np.random.default_rng(8).standard_normal((2, 3, 6, 8))
    y, idx = uk.maxpool2(x)
    ry, ridx = naive.unet_maxpool2(x)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)


def test_maxpool2_ties_go_to_the_first_window_position():
    x = np.zeros((1, 2, 4, 4))
    x[0, 1, 2:, 2:] = 1.0  # one window with four equal maxima, the rest all zeros
    y, idx = uk.maxpool2(x)
    np.testing.assert_array_equal(idx, 0)
    np.testing.assert_array_equal(y, naive.unet_maxpool2(x)[0])


def test_maxpool2_backward_matches_reference_and_finite_differences():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 4))
    dy = rng.standard_normal((2, 3, 3, 2))
    _, idx = uk.maxpool2(x)
    dx = uk.maxpool2_backward(dy, idx)
    np.testing.assert_array_equal(dx, naive.unet_maxpool2_backward(dy, idx))
    d = rng.standard_normal(x.shape)
    fd = _fd(lambda t: np.vdot(dy, uk.maxpool2(t)[0]), x, d)
    assert abs(np.vdot(dx, d) - fd) <= 1e-6 * abs(fd)


# ----------------------------------------------------------------------------- upsampling
def test_upsample2_and_adjoint_match_reference():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal((2, 3, 8, 10))
    np.testing.assert_array_equal(uk.upsample2(x), naive.unet_upsample2(x))
    np.testing.assert_allclose(uk.upsample2_adjoint(dy), naive.unet_upsample2_adjoint(dy), rtol=1e-14)


def test_upsample2_adjoint_passes_dot_product_test():
    dot_test(uk.upsample2, uk.upsample2_adjoint, (2, 3, 4, 5), (2, 3, 8, 10), np.random.default_rng(11))


# ----------------------------------------------------------------------------- concatenation
def test_concat_and_split_match_numpy_and_are_adjoint():
    rng = np.random.default_rng(12)
    a = rng.standard_normal((2, 3, 4, 5))
    b = rng.standard_normal((2, 2, 4, 5))
    np.testing.assert_array_equal(uk.concat_channels(a, b), np.concatenate([a, b], axis=1))
    d = rng.standard_normal((2, 5, 4, 5))
    da, db = uk.split_channels(d, 3)
    np.testing.assert_array_equal(da, d[:, :3])
    np.testing.assert_array_equal(db, d[:, 3:])
    np.testing.assert_allclose(np.vdot(uk.concat_channels(a, b), d), np.vdot(a, da) + np.vdot(b, db),
                               rtol=1e-12)


# ----------------------------------------------------------------------------- output head
def _head_data(rng, N=2, C=3, H=5, W=6):
    u0 = rng.uniform(0.0, 1.0, (N, C, H, W))
    z = rng.normal(0.0, 0.6, (N, C + 1, H, W))
    z[:, C] *= 20.0  # large logits exercise both branches of the stable sigmoid
    return z, u0


def _off_the_clip_kinks(z, u0):
    """Move the image logits whose ``u0 + z`` lies within 1e-3 of the clip's kinks at 0 and 1
    away from them (so central differences do not straddle a kink)."""
    v = u0 + z[:, :3]
    z[:, :3][np.abs(v) < 1e-3] += 0.01
    z[:, :3][np.abs(v - 1) < 1e-3] += 0.01


def _head_backward_and_fd(z, u0, ubar, mbar, rng):
    """The head's backward pass for output gradients (ubar, mbar), checked against the
    reference, with its directional derivative along a random ``d`` and the central
    difference of ``<ubar, u> + <mbar, m>`` along it."""
    dz = uk.output_head_backward(ubar, mbar, z, u0)
    np.testing.assert_allclose(dz, naive.unet_output_head_backward(ubar, mbar, z, u0), rtol=1e-12, atol=1e-15)

    def J(t):
        u, m = uk.output_head(t, u0)
        return np.vdot(ubar, u) + np.vdot(mbar, m)

    d = rng.standard_normal(z.shape)
    return dz, np.vdot(dz, d), _fd(J, z, d)


def test_output_head_matches_reference_and_handles_large_logits():
    z, u0 = _head_data(np.random.default_rng(13))
    z[0, 3, 0, 0], z[0, 3, 0, 1] = 800.0, -800.0
    u, m = uk.output_head(z, u0)
    ru, rm = naive.unet_output_head(z, u0)
    np.testing.assert_array_equal(u, ru)
    np.testing.assert_allclose(m, rm, rtol=1e-13, atol=1e-15)
    assert m[0, 0, 0] == 1.0 and m[0, 0, 1] == 0.0


def test_output_head_with_class_channels_matches_reference_and_finite_differences():
    rng = np.random.default_rng(15)
    u0 = rng.uniform(0.0, 1.0, (2, 3, 5, 6))
    z = rng.normal(0.0, 0.6, (2, 6, 5, 6))
    _off_the_clip_kinks(z, u0)
    u, m = uk.output_head(z, u0)
    ru, rm = naive.unet_output_head(z, u0)
    assert m.shape == (2, 3, 5, 6)
    np.testing.assert_array_equal(u, ru)
    np.testing.assert_allclose(m, rm, rtol=1e-13, atol=1e-15)
    ubar = rng.standard_normal(u0.shape)
    mbar = rng.standard_normal(m.shape)
    _, an, fd = _head_backward_and_fd(z, u0, ubar, mbar, rng)
    assert abs(an - fd) <= 1e-6 * abs(fd)


def test_output_head_backward_matches_reference_and_finite_differences():
    rng = np.random.default_rng(14)
    z, u0 = _head_data(rng)
    z[:, 3] /= 20.0
    _off_the_clip_kinks(z, u0)  # keep the clip's kinks away from the difference step
    ubar = rng.standard_normal(u0.shape)
    mbar = rng.standard_normal((2, 5, 6))
    dz, an, fd = _head_backward_and_fd(z, u0, ubar, mbar, rng)
    assert np.any(dz[:, :3] == 0) and np.any(dz[:, :3] != 0)  # the data hits both sides of the clip
    assert abs(an - fd) <= 1e-6 * abs(fd)


# ----------------------------------------------------------------------------- argument checks
def test_kernels_reject_bad_arguments_with_clear_errors():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        uk.conv2d(x.astype(np.int64), w)
    with pytest.raises(TypeError, match="must match"):
        uk.conv2d(x.astype(np.float32), w)
    with pytest.raises(ValueError, match="4 dimensions"):
        uk.conv2d(x[0], w)
    with pytest.raises(ValueError, match="C-contiguous"):
        uk.conv2d(np.asfortranarray(x), w)
    with pytest.raises(ValueError, match="input channels"):
        uk.conv2d(x, rng.standard_normal((3, 5, 3, 3)))
    with pytest.raises(ValueError, match="odd"):
        uk.conv2d(x, rng.standard_normal((3, 2, 2, 2)))
    with pytest.raises(ValueError, match="bias"):
        uk.conv2d(x, w, np.zeros(4))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        uk.conv2d(bad, w)
    with pytest.raises(ValueError, match="even"):
        uk.maxpool2(rng.standard_normal((1, 1, 5, 4)))
    with pytest.raises(ValueError, match="uint8"):
        uk.maxpool2_backward(x, np.zeros(x.shape, dtype=np.int64))
    with pytest.raises(ValueError, match="channels"):
        uk.conv2d_input_adjoint(x, w)
    with pytest.raises(ValueError, match="split point"):
        uk.split_channels(x, 2)
    with pytest.raises(ValueError, match="expected"):
        uk.output_head(x, x)
