"""A three-class network whose tumour channel comes from a one-channel tumour network
(vnumba.io.models.CombinedModel, the shipped scenario-3 model): the combination rule, the
file round trip, refusals, and prediction through it."""
import dataclasses

import numpy as np
import pytest
from predict_helpers import tiny_model

from vnumba.io.models import TUMOUR_GROUP, CombinedModel, Model, load_model, save_model
from vnumba.vn.model import init_params

CLASSES = ["tumour", "immune", "other"]


def three_class(seed=0, **meta):
    m = tiny_model(mpp=0.48, mask_classes=CLASSES, seed=seed, **meta)
    m.config = dataclasses.replace(m.config, n_mask=3)
    m.params = init_params(m.config, np.random.default_rng(seed))
    return m


def u0(shape=(1, 3, 24, 20), seed=1):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def test_combination_rule_tumour_from_the_tumour_network_others_outside_it():
    base, tum = three_class(), tiny_model(mpp=0.48, seed=3)
    c = CombinedModel(base, tum)
    x = u0()
    u, m = c.apply(x)
    ub, mb = base.apply(x)
    _, t = tum.apply(x)
    np.testing.assert_array_equal(u, ub)
    assert m.shape == mb.shape == (1, 3, 24, 20)
    np.testing.assert_array_equal(m[:, 0], t)
    np.testing.assert_allclose(m[:, 1], mb[:, 1] * (1 - t), rtol=1e-6)
    np.testing.assert_allclose(m[:, 2], mb[:, 2] * (1 - t), rtol=1e-6)
    assert c.receptive_radius == max(base.receptive_radius, tum.receptive_radius)
    assert c.meta["mask_classes"] == CLASSES and "combine" in c.meta
    assert {k for k in c.params if k.startswith("tumour/")} == {f"tumour/{k}" for k in tum.params}


def test_combined_model_file_round_trip_holds_both_networks(tmp_path):
    c = CombinedModel(three_class(), tiny_model(mpp=0.48, seed=3))
    p = save_model(tmp_path / "c.h5", c)
    import h5py
    with h5py.File(p) as f:
        assert TUMOUR_GROUP in f and "params" in f[TUMOUR_GROUP]
    r = load_model(p)
    assert isinstance(r, CombinedModel)
    x = u0(seed=4)
    np.testing.assert_array_equal(r.apply(x)[1], c.apply(x)[1])
    r.device = "cpu"
    assert r.base.device == r.tumour.device == "cpu"


def test_class_gains_move_the_class_decision_and_keep_every_nucleus_pixel_bit_for_bit(tmp_path):
    """m''_k = g_k m'_k max_j m'_j / max_j g_j m'_j: the maximum over the maps (the nucleus
    probability) is unchanged bit for bit, the class with the largest g_k m'_k holds it, and
    the gains travel in the model file."""
    base, tum = three_class(), tiny_model(mpp=0.48, seed=3)
    plain = CombinedModel(base, tum)
    gained = CombinedModel(base, tum, gains={"other": 4.0})
    assert "class_gains" not in (base.meta or {})                       # the base is not modified
    x = u0(shape=(2, 3, 24, 20), seed=6)
    u, m = plain.apply(x)
    ug, mg = gained.apply(x)
    np.testing.assert_array_equal(ug, u)
    np.testing.assert_array_equal(mg.max(axis=1), m.max(axis=1))
    g = np.array([1.0, 1.0, 4.0], np.float32).reshape(1, 3, 1, 1)
    win = np.argmax(m * g, axis=1)
    np.testing.assert_array_equal(np.argmax(mg, axis=1)[m.max(axis=1) > 0],
                                  win[m.max(axis=1) > 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.nan_to_num(m * g * (m.max(axis=1, keepdims=True) / (m * g).max(axis=1, keepdims=True)))
    np.testing.assert_allclose(mg, ref, rtol=1e-6, atol=1e-7)
    assert (np.argmax(mg, axis=1) == 2).sum() > (np.argmax(m, axis=1) == 2).sum()
    assert gained.meta["combine"]["gains"] == {"tumour": 1.0, "immune": 1.0, "other": 4.0}
    r = load_model(save_model(tmp_path / "g.h5", gained))
    assert r.base.meta["class_gains"] == {"other": 4.0}
    np.testing.assert_array_equal(r.apply(x)[1], mg)
    # all gains 1 is the plain combination
    np.testing.assert_array_equal(CombinedModel(base, tum, gains={"other": 1.0}).apply(x)[1], m)


@pytest.mark.parametrize("gains, match", [({"other": 0.0}, "gains in"), ({"other": float("nan")}, "gains in"),
                                          ({"stroma": 2.0}, "not classes of the model"),
                                          (["other"], "must map class names")])
def test_bad_class_gains_are_refused_naming_the_key(gains, match):
    with pytest.raises(ValueError, match=f"class_gains.*{match}"):
        CombinedModel(three_class(), tiny_model(mpp=0.48, seed=3), gains=gains)


def test_a_plain_model_file_with_class_gains_is_refused_naming_the_key(tmp_path):
    m = three_class()
    m.meta = {**m.meta, "class_gains": {"other": 2.0}}
    p = save_model(tmp_path / "plain.h5", m)
    with pytest.raises(ValueError, match="plain.h5: meta 'class_gains' belongs to a combined model"):
        load_model(p)


def test_combined_model_refuses_mismatched_networks():
    with pytest.raises(ValueError, match="tumour"):
        CombinedModel(tiny_model(mpp=0.48), tiny_model(mpp=0.48))          # base has no classes
    with pytest.raises(ValueError, match="one mask channel"):
        CombinedModel(three_class(), three_class(seed=2))
    with pytest.raises(ValueError, match="mpp"):
        CombinedModel(three_class(), tiny_model(mpp=0.25))


def test_predict_through_a_combined_model_classes_every_nucleus(tmp_path):
    import csv

    import imageio.v3 as iio

    import vnumba.predict

    c = CombinedModel(three_class(), tiny_model(mpp=0.48, seed=3))
    save_model(tmp_path / "c.h5", c)
    img = np.full((40, 48, 3), 230, np.uint8)
    img[10:20, 12:22] = (60, 30, 110)
    img[25:33, 30:38] = (70, 40, 120)
    iio.imwrite(tmp_path / "a.png", img)
    rc = vnumba.predict.main([str(tmp_path / "a.png"), "--model", str(tmp_path / "c.h5"), "--out",
                              str(tmp_path / "o"), "--mpp", "0.48", "--threshold", "0.0001", "-q"])
    assert rc == 0
    with open(tmp_path / "o" / "a_objects.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["class"] in CLASSES for r in rows)
    for r in rows:
        p = [float(r[f"p_{k}"]) for k in CLASSES]
        assert abs(sum(p) - 1) < 1e-3 and r["class"] == CLASSES[int(np.argmax(p))]
    for k in CLASSES:
        assert (tmp_path / "o" / f"a_mask_{k}.png").is_file()


def test_shipped_scenario3_model_is_a_combined_three_class_model():
    m = load_model("scenario3")
    assert isinstance(m, CombinedModel) and isinstance(m.base, Model)
    assert m.meta["mask_classes"] == CLASSES and m.meta["mpp"] == pytest.approx(0.48)
    assert m.base.config.n_steps == 10 and m.tumour.config.n_steps == 10
