"""RBF pointwise functions: window + Horner polynomials vs all-Gaussian reference, derivatives by
finite differences, weight gradients."""
import naive
import numpy as np
import pytest

from vnumba.ops.rbf import RBFGrid, rbf_apply, rbf_weight_grad
from vnumba.vn.config import ModelConfig


def _setup(radius, seed=0, dtype=np.float64):
    cfg = ModelConfig(nf_u=3, rbf_radius=radius)
    grid = RBFGrid(cfg)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.6, 1.6, size=(2, 3, 5, 7)).astype(dtype)
    x[0, 0, 0, :3] = [-40.0, 40.0, 0.0]  # far outside the grid and exactly on a centre
    w = rng.standard_normal((3, cfg.n_w)).astype(dtype)
    return grid, x, w, rng


def test_all_centres_match_the_gaussian_sum_definition():
    grid, x, w, _ = _setup(radius=31)
    got = rbf_apply(x, w, grid, order=2)
    ref = naive.rbf(x, w, grid.centres, grid.sigma)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-11)


def test_window_of_six_centres_is_accurate_to_about_1e_minus_6():
    grid, x, w, _ = _setup(radius=6)
    got = rbf_apply(x, w, grid, order=2)
    ref = naive.rbf(x, w, grid.centres, grid.sigma)
    scale = np.abs(w).sum()
    for g, r, s in zip(got, ref, (1.0, 1.0 / grid.sigma, 1.0 / grid.sigma**2)):
        assert np.max(np.abs(g - r)) < 1e-6 * scale * s * 10


def test_derivatives_match_central_differences():
    grid, x, w, _ = _setup(radius=31)
    eps = 1e-6
    v0, v1, v2 = rbf_apply(x, w, grid, order=2)
    p0, p1, _ = rbf_apply(x + eps, w, grid, order=2)
    m0, m1, _ = rbf_apply(x - eps, w, grid, order=2)
    np.testing.assert_allclose((p0 - m0) / (2 * eps), v1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose((p1 - m1) / (2 * eps), v2, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("radius", [31, 6])
def test_weight_gradient_matches_reference_and_directional_derivative(radius):
    grid, x, w, rng = _setup(radius=radius)
    c0 = rng.standard_normal(x.shape)
    c1 = rng.standard_normal(x.shape)
    got = rbf_weight_grad(x, c0, c1, grid)
    if radius == 31:
        np.testing.assert_allclose(got, naive.rbf_weight_grad(x, c0, c1, grid.centres, grid.sigma),
                                   rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(rbf_weight_grad(x, c0, None, grid),
                                   naive.rbf_weight_grad(x, c0, None, grid.centres, grid.sigma),
                                   rtol=1e-11, atol=1e-11)
    # sum(c0 phi + c1 phi') is linear in w: its derivative along d is its value at d.
    d = rng.standard_normal(w.shape)
    v0, v1 = rbf_apply(x, d, grid, order=1)
    np.testing.assert_allclose(np.sum(got * d), np.sum(c0 * v0 + c1 * v1), rtol=1e-10)


def test_float32_matches_float64():
    grid, x, w, _ = _setup(radius=6)
    v64 = rbf_apply(x, w, grid, order=2)
    v32 = rbf_apply(x.astype(np.float32), w.astype(np.float32), grid, order=2)
    for a, b in zip(v32, v64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_rejects_mismatched_weights():
    grid, x, w, _ = _setup(radius=6)
    with pytest.raises(ValueError, match="weights shape"):
        rbf_apply(x, w[:2], grid)
    with pytest.raises(TypeError, match="dtype"):
        rbf_apply(x, w.astype(np.float32), grid)


def test_phi_written_into_a_channel_range_of_a_larger_array():
    grid, x, w = _setup(6)[:3]
    N, F, H, W = x.shape
    big = np.full((N, F + 3, H, W), 7.0)
    phi, d1 = rbf_apply(x, w, grid, order=1, out=big, offset=2)
    ref = rbf_apply(x, w, grid, order=1)
    np.testing.assert_array_equal(big[:, 2:2 + F], ref[0])
    np.testing.assert_array_equal(d1, ref[1])
    assert np.shares_memory(phi, big) and phi.shape == x.shape
    # channels outside the range are untouched
    assert np.all(big[:, :2] == 7.0) and np.all(big[:, 2 + F:] == 7.0)
    with pytest.raises(ValueError, match="offset"):
        rbf_apply(x, w, grid, order=0, out=big, offset=4)
    with pytest.raises(TypeError):
        rbf_apply(x, w, grid, order=0, out=big.astype(np.float32), offset=0)
