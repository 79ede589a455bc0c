"""Convolution operators: kernels vs NumPy references and dot-product (adjoint) tests."""
import naive
import numpy as np
import pytest
from helpers import corr_data, dot_test

from vnumba.ops import conv

SHAPES = [  # N, C, O, H, W, ks
    (2, 3, 4, 9, 8, 5),
    (1, 4, 2, 6, 7, 3),
    (2, 1, 3, 12, 11, 11),
]


@pytest.mark.parametrize("N,C,O,H,W,ks", SHAPES)
def test_corr_valid_and_adjoint_and_kernel_grad_match_numpy_reference(N, C, O, H, W, ks):
    xp, k, y = corr_data(np.random.default_rng(0), N, C, O, H, W, ks)
    np.testing.assert_allclose(conv.corr_valid(xp, k), naive.corr_valid(xp, k), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.corr_valid_adjoint(y, k), naive.corr_valid_adjoint(y, k), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.corr_valid_kernel_grad(y, xp, ks), naive.corr_valid_kernel_grad(y, xp, ks),
                               rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("r", [0, 1, 2, 5])
def test_symmetric_padding_and_its_adjoint_match_numpy(r):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 6))
    xp = conv.pad_symmetric(x, r)
    np.testing.assert_array_equal(xp, naive.pad_symmetric(x, r))
    z = rng.standard_normal(xp.shape)
    np.testing.assert_allclose(conv.pad_symmetric_adjoint(z, r), naive.pad_symmetric_adjoint(z, r), rtol=1e-13)


@pytest.mark.parametrize("N,C,O,H,W,ks", SHAPES)
def test_dot_product_every_operator_pair(N, C, O, H, W, ks):
    rng = np.random.default_rng(2)
    k = rng.standard_normal((O, C, ks, ks))
    r = ks // 2
    dot_test(lambda x: conv.pad_symmetric(x, r), lambda y: conv.pad_symmetric_adjoint(y, r),
             (N, C, H, W), (N, C, H + 2 * r, W + 2 * r), rng)
    dot_test(lambda x: conv.corr_valid(x, k), lambda y: conv.corr_valid_adjoint(y, k),
             (N, C, H + ks - 1, W + ks - 1), (N, O, H, W), rng)
    dot_test(lambda x: conv.conv_forward(x, k), lambda y: conv.conv_adjoint(y, k),
             (N, C, H, W), (N, O, H, W), rng)
    # the kernel gradient is the adjoint of k -> conv_forward(x, k) for fixed x
    x = rng.standard_normal((N, C, H, W))
    dot_test(lambda kk: conv.conv_forward(x, kk), lambda y: conv.conv_kernel_grad(y, x, ks),
             (O, C, ks, ks), (N, O, H, W), rng)


def test_float32_kernels_agree_with_float64():
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 10, 9))
    k = rng.standard_normal((4, 3, 5, 5))
    y64 = conv.conv_forward(x, k)
    y32 = conv.conv_forward(x.astype(np.float32), k.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)


def test_public_functions_reject_bad_input():
    x = np.zeros((1, 3, 8, 8))
    k = np.zeros((2, 3, 5, 5))
    with pytest.raises(ValueError, match="4 dimensions"):
        conv.conv_forward(x[0], k)
    with pytest.raises(TypeError, match="float32 or float64"):
        conv.conv_forward(x.astype(np.int32), k)
    with pytest.raises(TypeError, match="dtype"):
        conv.conv_forward(x, k.astype(np.float32))
    with pytest.raises(ValueError, match="input channels"):
        conv.conv_forward(x, np.zeros((2, 2, 5, 5)))
    with pytest.raises(ValueError, match="odd"):
        conv.conv_forward(x, np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="C-contiguous"):
        conv.conv_forward(np.zeros((1, 3, 8, 16))[..., ::2], k)
    with pytest.raises(ValueError, match="pad width"):
        conv.conv_forward(np.zeros((1, 3, 3, 3)), np.zeros((2, 3, 11, 11)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scaled_adjoint_equals_adjoint_of_the_product_bit_for_bit(dtype):
    # the network's K^T(φ'(a) ⊙ g[:, :F]): g is a channel slice of a larger array (a strided
    # view for N > 1), the product formed while the adjoint pads it
    rng = np.random.default_rng(5)
    g = rng.standard_normal((2, 7, 9, 13)).astype(dtype)
    s = rng.standard_normal((2, 4, 9, 13)).astype(dtype)
    k = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
    y = g[:, 2:6]
    assert not y.flags.c_contiguous
    np.testing.assert_array_equal(conv.conv_adjoint(y, k, scale=s), conv.conv_adjoint(s * y, k))
    # and it is the adjoint of the forward operator followed by the same scaling
    x = rng.standard_normal((2, 3, 9, 13))
    w = rng.standard_normal((2, 4, 9, 13))
    s64 = s.astype(np.float64)
    lhs = np.vdot(s64 * conv.conv_forward(x, k.astype(np.float64)), w)
    rhs = np.vdot(x, conv.conv_adjoint(w, k.astype(np.float64), scale=s64))
    assert lhs == pytest.approx(rhs, rel=1e-10)


def test_scaled_adjoint_checks_its_arguments():
    k = np.zeros((4, 3, 3, 3), np.float32)
    s = np.zeros((1, 4, 6, 6), np.float32)
    with pytest.raises(ValueError, match="shape and dtype"):
        conv.conv_adjoint(np.zeros((1, 4, 6, 5), np.float32), k, scale=s)
    with pytest.raises(ValueError, match="shape and dtype"):
        conv.conv_adjoint(np.zeros((1, 4, 6, 6)), k, scale=s)
    with pytest.raises(ValueError, match="channels"):
        conv.conv_adjoint(s[:, :3], k, scale=np.ascontiguousarray(s[:, :3]))
    with pytest.raises(TypeError):
        conv.conv_adjoint(s, k.astype(np.float64), scale=s)
