"""Constraint projections checked against their definition: feasibility, idempotence,
the variational inequality of a Euclidean projection, and optimality against random
feasible points."""
import naive
import numpy as np
import pytest

from vnumba.ops.projections import project_l1_ball, project_params, project_zero_mean_l1_ball
from vnumba.vn.config import ModelConfig


def _random_zero_mean_l1(rng, n, radius):
    y = rng.standard_normal(n)
    y -= y.mean()
    return y * (rng.uniform(0, 1) * radius / np.abs(y).sum())


def _check_projection(k0, k, feasible_points):
    # Euclidean projection onto a convex set: <k0 - k, y - k> <= 0 for every feasible y,
    # hence ||k0 - k|| <= ||k0 - y||.
    for y in feasible_points:
        assert np.dot(k0 - k, y - k) <= 1e-10
        assert np.linalg.norm(k0 - k) <= np.linalg.norm(k0 - y) + 1e-12


def test_l1_ball_projection_matches_reference_and_is_feasible_idempotent():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((6, 3, 5, 5)) * 0.3
    k[0] *= 1e-3  # already inside: unchanged
    k0 = k.copy()
    project_l1_ball(k, 1.0)
    flat0, flat = k0.reshape(6, -1), k.reshape(6, -1)
    np.testing.assert_array_equal(flat[0], flat0[0])
    for i in range(6):
        np.testing.assert_allclose(flat[i], naive.project_l1_ball(flat0[i], 1.0), atol=1e-12)
        assert np.abs(flat[i]).sum() <= 1.0 + 1e-12
        pts = []
        for _ in range(50):
            y = rng.standard_normal(flat.shape[1])
            pts.append(y * rng.uniform(0, 1) / np.abs(y).sum())
        _check_projection(flat0[i], flat[i], pts)
    again = k.copy()
    project_l1_ball(again, 1.0)
    np.testing.assert_allclose(again, k, atol=1e-14)


@pytest.mark.parametrize("scale", [0.01, 0.3, 3.0])
def test_zero_mean_l1_projection_satisfies_definition(scale):
    rng = np.random.default_rng(1)
    k = rng.standard_normal((5, 3, 5, 5)) * scale + 0.05
    k0 = k.copy().reshape(5, -1)
    project_zero_mean_l1_ball(k, 1.0)
    flat = k.reshape(5, -1)
    for i in range(5):
        assert abs(flat[i].sum()) < 1e-12
        assert np.abs(flat[i]).sum() <= 1.0 + 1e-12
        pts = [_random_zero_mean_l1(rng, flat.shape[1], 1.0) for _ in range(100)]
        # also points on the boundary near the solution
        for _ in range(20):
            y = flat[i] + 1e-3 * rng.standard_normal(flat.shape[1])
            y -= y.mean()
            pts.append(y / max(1.0, np.abs(y).sum()))
        _check_projection(k0[i], flat[i], pts)
    again = k.copy()
    project_zero_mean_l1_ball(again, 1.0)
    np.testing.assert_allclose(again, k, atol=1e-13)


def test_zero_mean_projection_of_small_filter_is_plain_mean_removal():
    rng = np.random.default_rng(2)
    k = 1e-3 * rng.standard_normal((1, 1, 5, 5)) + 1e-3
    ref = k - k.mean()
    project_zero_mean_l1_ball(k, 1.0)
    np.testing.assert_allclose(k, ref, atol=1e-15)


def test_project_params_honours_the_scenario1_switch():
    cfg = ModelConfig(n_steps=2, nf_u=3, nf_m=2, zero_mean_u=False)
    rng = np.random.default_rng(3)
    from vnumba.vn.config import param_shapes
    p = {k: rng.standard_normal(s) + 0.5 for k, s in param_shapes(cfg).items()}
    p["lam"] = np.array([-1.0, 0.3])
    project_params(p, cfg)
    assert p["lam"].tolist() == [0.0, 0.3]
    assert np.all(np.abs(p["Ku"]).sum(axis=(2, 3, 4)) <= 1 + 1e-12)
    assert np.any(np.abs(p["Ku"].sum(axis=(2, 3, 4))) > 1e-3)  # mean not forced to zero
    np.testing.assert_allclose(p["Km"].sum(axis=(2, 3, 4)), 0.0, atol=1e-12)
    assert np.all(np.abs(p["K"]).sum(axis=(2, 3, 4)) <= 1 + 1e-12)
