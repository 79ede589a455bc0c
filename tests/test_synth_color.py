"""Colour: Lab, Reinhard normalisation, colour model statistics (synth.color)."""
import numpy as np
import pytest

from synth.color import (
    ColorSpec,
    color_noise,
    lab_stats,
    lab_to_rgb,
    psd_factor,
    reinhard_normalize,
    rgb_to_lab,
    sample_object_colors,
)


def _image(seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([0.7, 0.45, 0.65])
    img = base + 0.08 * rng.standard_normal((40, 50, 3)) @ np.array([[1, 0.5, 0.3], [0, 1, 0.2], [0, 0, 1]])
    return np.clip(img, 0.05, 0.95)


def test_lab_round_trip():
    img = _image()
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(img)), img, atol=1e-6)
    u8 = (img * 255).round().astype(np.uint8)
    np.testing.assert_allclose(rgb_to_lab(u8), rgb_to_lab(u8 / 255.0))


def test_reinhard_normalisation_transfers_lab_mean_and_std():
    src = _image(1)
    ref = np.clip(_image(2)[..., ::-1] * 0.9 + 0.05, 0, 1)
    tm, ts = lab_stats(ref)
    out = reinhard_normalize(src, tm, ts)
    m, s = lab_stats(out)
    np.testing.assert_allclose(m, tm, atol=0.3)
    np.testing.assert_allclose(s, ts, rtol=0.03)
    assert out.min() >= 0 and out.max() <= 1 and out.shape == src.shape
    # normalising an image to its own statistics is the identity
    sm, ss = lab_stats(src)
    np.testing.assert_allclose(reinhard_normalize(src, sm, ss), src, atol=1e-6)
    assert reinhard_normalize(src.astype(np.float32), tm, ts).dtype == np.float32


def test_lab_stats_with_mask_uses_only_masked_pixels():
    img = np.zeros((4, 4, 3))
    img[:2] = [1.0, 1.0, 1.0]
    m = np.zeros((4, 4), bool)
    m[:2] = True
    mean, std = lab_stats(img, m)
    np.testing.assert_allclose(mean, [100, 0, 0], atol=1e-2)  # white in D65 Lab
    np.testing.assert_allclose(std, 0, atol=1e-6)
    with pytest.raises(ValueError):
        lab_stats(img, np.ones((3, 3), bool))


def test_reinhard_rejects_bad_input():
    with pytest.raises(ValueError):
        reinhard_normalize(np.zeros((4, 4)), [50, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError):
        reinhard_normalize(np.full((4, 4, 3), np.nan), [50, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError):
        reinhard_normalize(np.zeros((4, 4, 3)), [50, 0, 0], [1, 0, 1])


COV = ((0.004, 0.002, 0.001), (0.002, 0.003, -0.0005), (0.001, -0.0005, 0.002))
COVB = ((0.002, 0.001, 0.0), (0.001, 0.003, 0.0), (0.0, 0.0, 0.001))


@pytest.mark.parametrize("corr", [0.0, 1.5])
def test_generated_colour_noise_matches_script_covariance(corr):
    spec = ColorSpec(mean=(0.5, 0.4, 0.6), cov=COV, corr=corr)
    rng = np.random.default_rng(3)
    n = np.concatenate([color_noise(rng, (128, 128), spec).reshape(-1, 3) for _ in range(8)])
    np.testing.assert_allclose(n.mean(0), 0, atol=2e-3)
    np.testing.assert_allclose(np.cov(n.T), COV, atol=2.5e-4)


def test_object_colours_match_script_mean_and_between_covariance():
    spec = ColorSpec(mean=(0.5, 0.4, 0.6), cov_between=COVB)
    c = sample_object_colors(np.random.default_rng(4), spec, 40000)
    np.testing.assert_allclose(c.mean(0), spec.mean, atol=2e-3)
    np.testing.assert_allclose(np.cov(c.T), COVB, atol=1e-4)


def test_psd_factor_reproduces_covariance_even_when_singular():
    c = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
    L = psd_factor(c)
    np.testing.assert_allclose(L @ L.T, c, atol=1e-12)
