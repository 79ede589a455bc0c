"""Target-mask rules on hand-placed cells (synth.masks, synth.layered)."""
import naive
import numpy as np
import pytest

from synth.masks import concentration_mask, disc_concentration, disc_offsets


def test_disc_concentration_matches_per_pixel_reference_including_image_borders():
    rng = np.random.default_rng(0)
    cov = rng.random((37, 41)) < 0.3
    centers = np.array([[0, 0], [18.4, 20.6], [36, 40], [5.5, 39.2], [-3, 10], [20, 45]])
    np.testing.assert_allclose(disc_concentration(cov, centers, 7.5),
                               naive.synth_disc_concentration(cov, centers, 7.5))


def test_disc_offsets_are_the_closed_disc():
    off = disc_offsets(2.0)
    assert len(off) == 13   # 1 + 4 + 4 + 4 lattice points with d^2 <= 4
    assert set(map(tuple, off)) >= {(0, 2), (2, 0), (-2, 0), (0, -2), (1, 1)}


def _disc_count(radius):
    return len(disc_offsets(radius))


@pytest.mark.parametrize("extra, selected", [(0, False), (1, True)])
def test_cell_just_outside_or_inside_the_threshold(extra, selected):
    # A target cell at the centre of a 101x101 image; reference coverage is a set of pixels
    # inside its radius-40 disc.  The threshold is exactly k / |disc|: k covered pixels are
    # not enough (strictly greater is required), k + 1 are.
    H = W = 101
    radius = 40.0
    n_disc = _disc_count(radius)
    k = 1000
    threshold = k / n_disc
    off = disc_offsets(radius)
    cov = np.zeros((H, W), bool)
    pts = off[: k + extra] + 50
    cov[pts[:, 0], pts[:, 1]] = True
    labels = np.zeros((H, W), np.int32)
    labels[48:53, 48:53] = 1
    mask, conc = concentration_mask(labels, [[50.0, 50.0]], cov, radius, threshold)
    assert conc[0] == pytest.approx((k + extra) / n_disc)
    assert bool(mask.any()) is selected
    if selected:
        np.testing.assert_array_equal(mask == 1, labels == 1)
    assert mask.dtype == np.float32


def test_scenario_rules_on_hand_placed_cells_tumour_concentration():
    # Scenario 1 rule: immune cell near a tumour-cell block (40 % of its disc) qualifies,
    # an immune cell far away (0 %) does not; occluded pixels are removed.
    H, W = 120, 240
    radius, thr = 20.0, 0.3
    tumour = np.zeros((H, W), bool)
    off = disc_offsets(radius)
    n = len(off)
    pick = off[np.argsort(off[:, 1], kind="stable")][: int(0.4 * n)] + [60, 60]
    tumour[pick[:, 0], pick[:, 1]] = True
    immune = np.zeros((H, W), np.int32)
    immune[57:64, 57:64] = 1
    immune[57:64, 177:184] = 2
    occl = np.zeros((H, W), bool)
    occl[57, 57:64] = True
    mask, conc = concentration_mask(immune, [[60, 60], [60, 180]], tumour, radius, thr, occl)
    assert conc[0] == pytest.approx(int(0.4 * n) / n)
    assert conc[1] == 0
    np.testing.assert_array_equal(mask == 1, (immune == 1) & ~occl)


def test_concentration_mask_rejects_bad_input():
    with pytest.raises(TypeError):
        concentration_mask(np.zeros((4, 4)), [[1, 1]], np.zeros((4, 4), bool), 2, 0.1)
    with pytest.raises(ValueError):
        concentration_mask(np.zeros((4, 4), np.int32), [[1, 1]], np.zeros((5, 4), bool), 2, 0.1)
    with pytest.raises(ValueError):
        disc_concentration(np.zeros((4, 4), bool), [[1, 1]], 0.0)
