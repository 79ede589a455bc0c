"""Layers, merging, filters and ellipse placement (synth.layers)."""
import naive
import numpy as np
import pytest

from synth.layers import FilterSpec, Layer, blur_rgba, colorize, merge_layers, paint_ellipses, place_ellipses


def _layer(h, w, color, box):
    a = np.zeros((h, w, 4), np.float32)
    y0, y1, x0, x1 = box
    a[y0:y1, x0:x1, :3] = color
    a[y0:y1, x0:x1, 3] = 1.0
    return a


def test_top_layer_replaces_what_it_overlaps_and_transparent_intersection_stays_transparent():
    bottom = _layer(6, 8, (1.0, 0.0, 0.0), (0, 4, 0, 5))   # red, rows 0-3, cols 0-4
    top = _layer(6, 8, (0.0, 0.0, 1.0), (2, 6, 3, 8))      # blue, rows 2-5, cols 3-7
    out = merge_layers([bottom, top])
    np.testing.assert_array_equal(out[3, 4], [0, 0, 1, 1])   # overlap: top wins
    np.testing.assert_array_equal(out[0, 0], [1, 0, 0, 1])   # bottom only
    np.testing.assert_array_equal(out[5, 7], [0, 0, 1, 1])   # top only
    np.testing.assert_array_equal(out[5, 0], [0, 0, 0, 0])   # transparent in both
    transparent = (bottom[..., 3] == 0) & (top[..., 3] == 0)
    np.testing.assert_array_equal(out[..., 3] == 0, transparent)
    # order matters: swapping puts red on top
    np.testing.assert_array_equal(merge_layers([top, bottom])[3, 4], [1, 0, 0, 1])


def test_merge_matches_closed_form_for_fractional_alpha():
    rng = np.random.default_rng(0)
    layers = [rng.random((7, 9, 4)).astype(np.float32) for _ in range(4)]
    layers[1][..., 3] = (layers[1][..., 3] > 0.5)  # mix binary and fractional alpha
    np.testing.assert_allclose(merge_layers(layers), naive.synth_merge(layers), atol=2e-6)


def test_merge_accepts_layer_objects_and_rejects_bad_alpha():
    a = _layer(4, 4, (0.2, 0.4, 0.6), (0, 2, 0, 2))
    L = Layer("x", "x", a)
    np.testing.assert_array_equal(merge_layers([L]), a)
    bad = a.copy()
    bad[0, 0, 3] = 1.5
    with pytest.raises(ValueError, match="alpha"):
        merge_layers([bad])
    with pytest.raises(ValueError, match="shape"):
        merge_layers([a, np.zeros((3, 4, 4), np.float32)])
    with pytest.raises(ValueError):
        Layer("x", "x", a.astype(np.float64))


def test_blur_softens_edges_without_bleeding_transparent_colour():
    a = _layer(21, 21, (0.2, 0.5, 0.8), (5, 16, 5, 16))
    b = blur_rgba(a, 1.5)
    assert 0 < b[10, 4, 3] < 1            # soft edge
    assert b[10, 10, 3] > 0.99
    inside = b[..., 3] > 1e-3
    np.testing.assert_allclose(b[inside][:, :3], np.broadcast_to([0.2, 0.5, 0.8], (inside.sum(), 3)), atol=1e-5)
    assert b.dtype == np.float32


def test_noisy_rendering_applies_noise_and_only_noisy_filters():
    rng = np.random.default_rng(1)
    a = _layer(16, 16, (0.5, 0.5, 0.5), (0, 16, 0, 16))
    noise = np.full((16, 16, 3), 0.1, np.float32)
    L = Layer("x", "x", a, noise=noise, filters=(FilterSpec("noise", 0.0),))
    np.testing.assert_allclose(L.noisy_rgba(rng)[..., :3], 0.6, atol=1e-6)
    np.testing.assert_array_equal(L.clean_rgba(), a)


def test_colorize_gives_object_colours_and_alpha():
    lab = np.array([[0, 1], [2, 1]], np.int32)
    out = colorize(lab, [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    np.testing.assert_allclose(out[0, 1], [0.1, 0.2, 0.3, 1.0], atol=1e-7)
    np.testing.assert_allclose(out[1, 0], [0.4, 0.5, 0.6, 1.0], atol=1e-7)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0, 0])
    with pytest.raises(ValueError):
        colorize(np.array([[3]], np.int32), [[0.1, 0.2, 0.3]])


def test_place_ellipses_matches_sequential_reference():
    rng = np.random.default_rng(2)
    shape = (40, 50)
    m = 60
    params = np.column_stack([rng.uniform(-2, 42, m), rng.uniform(-2, 52, m), rng.uniform(2, 6, m),
                              rng.uniform(1.5, 5, m), rng.uniform(0, np.pi, m)])
    region = np.zeros(shape, bool)
    region[:, :35] = True
    blocked = np.zeros(shape, bool)
    blocked[30:, :10] = True
    forbid = np.zeros(shape, bool)
    forbid[:8, :] = True
    for no_overlap in (True, False):
        lab, acc = place_ellipses(shape, params, region=region, blocked=blocked,
                                  centre_forbidden=forbid, no_overlap=no_overlap, max_count=15)
        rl, ra = naive.synth_place_ellipses(shape, params, region, blocked, forbid, no_overlap, 15)
        np.testing.assert_array_equal(acc, ra)
        np.testing.assert_array_equal(lab, rl)
        assert 0 < len(acc) <= 15


def test_paint_ellipses_clipped_to_parent_labels():
    parent = np.zeros((20, 20), np.int32)
    parent[:, :10] = 1
    parent[:, 10:] = 2
    p = np.array([[10.0, 10.0, 6.0, 6.0, 0.0], [10.0, 10.0, 3.0, 3.0, 0.0]])
    out = paint_ellipses((20, 20), p[:1], [1], clip_labels=parent)
    disc = naive.synth_ellipse_mask((20, 20), 10, 10, 6, 6, 0)
    np.testing.assert_array_equal(out == 1, disc & (parent == 1))
    out2 = paint_ellipses((20, 20), p[1:], [2])
    np.testing.assert_array_equal(out2 == 2, naive.synth_ellipse_mask((20, 20), 10, 10, 3, 3, 0))


def test_place_ellipses_rejects_bad_params():
    with pytest.raises(ValueError, match="shape"):
        place_ellipses((5, 5), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="semi-axes"):
        place_ellipses((5, 5), np.array([[1.0, 1.0, 0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        place_ellipses((5, 5), np.array([[np.nan, 1.0, 1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="region"):
        place_ellipses((5, 5), np.array([[1.0, 1.0, 1.0, 1.0, 0.0]]), region=np.ones((5, 5)))


def test_colorize_and_noisy_rendering_match_naive_references():
    rng = np.random.default_rng(5)
    lab = rng.integers(0, 6, (13, 17)).astype(np.int32)
    cols = rng.random((5, 3))
    np.testing.assert_allclose(colorize(lab, cols), naive.synth_colorize(lab, cols), atol=1e-7)
    rgba = colorize(lab, cols)
    noise = (0.3 * rng.standard_normal((13, 17, 3))).astype(np.float32)
    L = Layer("x", "x", rgba, noise=noise)
    np.testing.assert_allclose(L.noisy_rgba(rng), naive.synth_add_noise(rgba, noise), atol=1e-6)
