import numpy as np
import pytest

from vnumba.analysis.baseline import BaselineConfig, haematoxylin, segment_nuclei
from vnumba.analysis.objects import object_table

BACKGROUND = (0.93, 0.80, 0.88)   # eosin-pink, light
NUCLEUS = (0.30, 0.18, 0.50)      # haematoxylin blue-purple, dark

CENTRES = [(20, 20), (20, 60), (55, 35), (60, 85)]
RADIUS = 7


def _slide(rng, centres=CENTRES, radius=RADIUS, shape=(80, 110), noise=0.02):
    img = np.empty(shape + (3,))
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    truth = np.zeros(shape, bool)
    for cy, cx in centres:
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        img[d] = NUCLEUS
        truth |= d
    img += noise * rng.standard_normal(img.shape)
    return np.clip(img, 0, 1), truth


def test_haematoxylin_is_higher_on_nuclei():
    img, truth = _slide(np.random.default_rng(0))
    h = haematoxylin(img)
    assert h.shape == truth.shape
    assert h[truth].mean() > h[~truth].mean() + 5 * h[~truth].std()


def test_finds_hand_drawn_dark_blobs_on_light_background():
    img, truth = _slide(np.random.default_rng(1))
    mask, labels, thr = segment_nuclei(img)
    assert labels.max() == len(CENTRES)
    t = object_table(labels)
    found = sorted(zip(np.round(t.y), np.round(t.x)))
    np.testing.assert_allclose(found, sorted(CENTRES), atol=1.0)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.85
    assert np.isfinite(thr)


def test_uint8_input_gives_the_same_objects_as_float():
    img, _ = _slide(np.random.default_rng(2))
    u8 = np.round(img * 255).astype(np.uint8)
    _, lab_f, _ = segment_nuclei(u8 / 255.0)
    _, lab_u, _ = segment_nuclei(u8)
    assert np.array_equal(lab_f, lab_u)


def test_touching_nuclei_are_split():
    img, _ = _slide(np.random.default_rng(3), centres=[(30, 30), (30, 47)], radius=9,
                    shape=(60, 80), noise=0.01)
    _, labels, _ = segment_nuclei(img)
    assert labels.max() == 2


def test_small_specks_are_removed_and_fixed_threshold_is_used():
    img, _ = _slide(np.random.default_rng(4), centres=[(20, 20), (50, 50)], radius=2)
    # radius-2 discs have 13 pixels < min_area 30
    mask, labels, _ = segment_nuclei(img, BaselineConfig(min_area=30))
    assert labels.max() == 0 and not mask.any()
    h = haematoxylin(img)
    _, _, thr = segment_nuclei(img, BaselineConfig(threshold=float(h.max()) + 1.0))
    assert thr == float(h.max()) + 1.0


def test_flat_image_has_no_nuclei():
    img = np.full((20, 20, 3), 0.8)
    mask, labels, _ = segment_nuclei(img)
    assert not mask.any() and labels.max() == 0


def test_config_validation_names_the_key():
    with pytest.raises(KeyError, match="sigmaa"):
        BaselineConfig.from_dict({"sigmaa": 1.0})
    with pytest.raises(ValueError, match="sigma"):
        BaselineConfig(sigma=-1.0)
    with pytest.raises(ValueError, match="RGB"):
        haematoxylin(np.zeros((5, 5)))
