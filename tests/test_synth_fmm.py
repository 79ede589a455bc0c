"""Fast marching, region decompositions and random fields (synth.fmm, synth.noise)."""
import naive
import numpy as np
import pytest

from synth import fmm
from synth.noise import gaussian_random_field


def test_travel_time_equals_discrete_upwind_solution_on_random_speed():
    rng = np.random.default_rng(0)
    speed = fmm.random_speed_field(rng, (23, 31), mean=1.0, std=0.5, corr=3.0, minimum=0.1)
    src = np.zeros((23, 31), bool)
    src[3, 4] = src[17, 25] = True
    src[10:12, 12:15] = True
    T = fmm.travel_time(src, speed)
    ref = naive.synth_godunov_solution(src, speed)
    np.testing.assert_allclose(T, ref, rtol=1e-12, atol=1e-12)


def test_travel_time_is_exact_for_a_planar_front_at_constant_speed():
    src = np.zeros((20, 30), bool)
    src[:, 0] = True
    T = fmm.travel_time(src, 2.0)
    np.testing.assert_allclose(T, np.broadcast_to(np.arange(30) / 2.0, (20, 30)), atol=1e-12)


def test_travel_time_approximates_euclidean_distance_from_a_disc():
    # First-order FMM overestimates diagonal distances by a few per cent; far from the
    # source the relative error must stay small.
    H = W = 81
    y, x = np.mgrid[:H, :W]
    r = np.hypot(y - 40, x - 40)
    src = r <= 5.0
    T = fmm.travel_time(src, 1.0)
    exact = np.maximum(r - 5.0, 0.0)
    far = r > 15
    rel = np.abs(T[far] - exact[far]) / exact[far]
    assert rel.max() < 0.12
    assert np.median(rel) < 0.06
    assert np.all(T[src] == 0)


def test_max_time_leaves_far_pixels_infinite_and_near_pixels_exact():
    src = np.zeros((15, 15), bool)
    src[7, 7] = True
    full = fmm.travel_time(src, 1.0)
    part = fmm.travel_time(src, 1.0, max_time=4.0)
    near = full <= 4.0
    np.testing.assert_array_equal(part[near], full[near])
    assert np.all(np.isinf(part[~near]))
    np.testing.assert_array_equal(fmm.grow(src, 1.0, 4.0), near)


def test_fmm_labels_match_first_arrival_reference():
    rng = np.random.default_rng(3)
    speed = fmm.random_speed_field(rng, (25, 27), std=0.6, corr=4.0, minimum=0.05)
    src = np.full((25, 27), -1)
    seeds = [(2, 3), (20, 5), (12, 22), (24, 26)]
    for k, (i, j) in enumerate(seeds):
        src[i, j] = k
    T, lab = fmm.fmm_labels(src, speed)
    np.testing.assert_array_equal(lab, naive.synth_labels_from_times(T, src))
    assert set(np.unique(lab)) == {0, 1, 2, 3}


def test_fmm_regions_with_constant_speed_mostly_agree_with_voronoi():
    rng = np.random.default_rng(4)
    seeds = np.stack([rng.integers(0, 60, 6), rng.integers(0, 70, 6)], 1)
    lab = fmm.fmm_regions(seeds, np.ones((60, 70)))
    vor = fmm.voronoi_labels((60, 70), seeds)
    assert np.mean(lab == vor) > 0.95
    for k, (i, j) in enumerate(seeds):
        assert lab[i, j] == k


def test_voronoi_labels_match_brute_force_nearest_seed():
    rng = np.random.default_rng(5)
    seeds = rng.random((9, 2)) * [17, 23]
    np.testing.assert_array_equal(fmm.voronoi_labels((17, 23), seeds), naive.synth_voronoi((17, 23), seeds))
    # ties (integer seeds, equal distances) go to the lowest index
    seeds = np.array([[0.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(fmm.voronoi_labels((5, 5), seeds), naive.synth_voronoi((5, 5), seeds))


def test_region_boundaries_mark_both_sides_of_a_label_change():
    lab = np.zeros((4, 6), int)
    lab[:, 3:] = 1
    b = fmm.region_boundaries(lab)
    expect = np.zeros((4, 6), bool)
    expect[:, 2:4] = True
    np.testing.assert_array_equal(b, expect)


@pytest.mark.parametrize("bad, err", [
    (dict(speed=np.zeros((5, 5))), ValueError),
    (dict(speed=np.full((5, 5), np.nan)), ValueError),
    (dict(speed=np.ones((4, 5))), ValueError),
    (dict(sources=np.zeros((5, 5), int)), TypeError),
    (dict(sources=np.zeros((5, 5), bool)), ValueError),
])
def test_travel_time_rejects_bad_input(bad, err):
    src = np.zeros((5, 5), bool)
    src[0, 0] = True
    kw = dict(sources=src, speed=np.ones((5, 5)))
    kw.update(bad)
    with pytest.raises(err):
        fmm.travel_time(kw["sources"], kw["speed"])


def test_random_speed_field_respects_minimum_and_moments():
    rng = np.random.default_rng(6)
    s = fmm.random_speed_field(rng, (200, 200), mean=2.0, std=0.5, corr=2.0, minimum=0.01)
    assert s.min() >= 0.01
    assert abs(s.mean() - 2.0) < 0.05
    assert abs(s.std() - 0.5) < 0.05


@pytest.mark.parametrize("corr", [0.0, 1.0, 2.5])
def test_gaussian_random_field_has_unit_variance_and_expected_correlation(corr):
    rng = np.random.default_rng(7)
    z = gaussian_random_field(rng, (64, 64), corr, channels=200, dtype=np.float64)
    assert abs(z.mean()) < 0.02
    assert abs(z.var() - 1.0) < 0.03
    lag1 = np.mean(z[:, :, 1:] * z[:, :, :-1])
    if corr == 0:
        assert abs(lag1) < 0.02
    else:
        # continuous-kernel value exp(-1 / (4 corr^2)); sampling makes it slightly larger
        assert abs(lag1 - np.exp(-1.0 / (4 * corr * corr))) < 0.03
