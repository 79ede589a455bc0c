"""Object-level classification after the mask (vnumba.objfilter, earlier vnumba.objclass): features,
the logistic fit, the stored filter and its use in evaluation."""
import json

import numpy as np
import pytest
from predict_helpers import FakeLocalModel

from vnumba import evaluate
from vnumba.analysis.objfilter import FEATURES, ObjectFilter, fit_logistic, object_features, object_targets


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _scene():
    """One big pale nucleus alone, and a packed group of small dark ones (an 'aggregate')."""
    H, W = 80, 120
    rgb = np.full((H, W, 3), 0.85, np.float32)
    lab = np.zeros((H, W), np.int32)
    m = _disc((H, W), 40, 25, 12)
    rgb[m] = (0.45, 0.25, 0.55)
    lab[m] = 1
    k = 2
    for cy in (30, 40, 50):
        for cx in (75, 85, 95):
            d = _disc((H, W), cy, cx, 4)
            rgb[d] = (0.20, 0.10, 0.40)
            lab[d] = k
            k += 1
    prob = np.where(lab > 0, 0.9, 0.05).astype(np.float32)
    return rgb, prob, lab


def test_features_tell_a_lone_large_nucleus_from_packed_small_dark_ones():
    rgb, prob, lab = _scene()
    X = object_features(rgb, prob, lab, mpp=0.5)
    assert X.shape == (10, len(FEATURES))
    f = {k: X[:, i] for i, k in enumerate(FEATURES)}
    assert f["area_um2"][0] == pytest.approx(np.count_nonzero(lab == 1) * 0.25)
    assert np.all(f["area_um2"][1:] < 0.2 * f["area_um2"][0])
    assert f["axis_ratio"][0] == pytest.approx(1.0, abs=0.05)
    assert np.all(f["mask_mean"] == pytest.approx(0.9))
    assert f["neighbours"][0] == 0 and f["neighbours"][5] == 8         # 12 µm = 24 px
    assert np.all(f["h_mean"][1:] > f["h_mean"][0])                     # darker haematoxylin
    assert f["ring_dark"][5] > 0.2 and f["ring_dark"][0] == 0.0         # crowded by dark nuclei
    assert object_features(rgb, prob, np.zeros_like(lab), 0.5).shape == (0, len(FEATURES))
    with pytest.raises(ValueError, match="mpp"):
        object_features(rgb, prob, lab, mpp=0.0)


def test_object_targets_use_the_half_pixel_rule():
    lab = np.array([[1, 1, 2, 2, 3]], np.int32)
    tgt = np.array([[1, 0, 1, 1, 0]], bool)
    np.testing.assert_array_equal(object_targets(lab, tgt), [1, 1, 0])


def test_logistic_fit_separates_and_the_filter_round_trips_through_meta():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, len(FEATURES)))
    y = (X[:, 0] - 0.5 * X[:, 3] > 0).astype(int)
    mean, std, coef, b = fit_logistic(X, y)
    f = ObjectFilter(tuple(mean), tuple(std), tuple(coef), b, 0.5)
    acc = np.mean((f.probability(X) >= 0.5) == y)
    assert acc > 0.97
    g = ObjectFilter.from_meta(json.loads(json.dumps(f.to_meta())))
    np.testing.assert_allclose(g.probability(X), f.probability(X))
    bad = f.to_meta()
    bad["coef"] = bad["coef"][:-1]
    with pytest.raises(ValueError, match="object_filter.coef"):
        ObjectFilter.from_meta(bad)
    bad = dict(f.to_meta(), threshold=float("nan"))
    with pytest.raises(ValueError, match="object_filter.threshold"):
        ObjectFilter.from_meta(bad)


def test_apply_removes_rejected_objects_and_renumbers():
    rgb, prob, lab = _scene()
    n = len(FEATURES)
    # reject everything with more than 2 neighbours (the packed group)
    coef = np.zeros(n)
    coef[FEATURES.index("neighbours")] = -10.0
    f = ObjectFilter(tuple(np.full(n, 0.0)), tuple(np.ones(n)), tuple(coef), 25.0, 0.5)
    kept = f.apply(rgb, prob, lab, 0.5)
    assert set(np.unique(kept)) == {0, 1}
    np.testing.assert_array_equal(kept == 1, lab == 1)


def test_evaluation_reports_the_filtered_variant_beside_the_model(tmp_path, monkeypatch, capsys):
    import imageio.v3 as iio

    import vnumba.evaluate

    rgb, prob, lab = _scene()
    d = tmp_path / "data" / "tile"
    d.mkdir(parents=True)
    iio.imwrite(d / "t.png", (rgb * 255).astype(np.uint8))
    cls = np.where(lab == 1, 1, np.where(lab > 0, 2, 0)).astype(np.uint8)
    np.savez_compressed(d / "t_labels.npz", instances=lab, classes=cls)
    (tmp_path / "data" / "manifest.csv").write_text("file,magnification,mpp\ntile/t.png,,0.5\n")
    n = len(FEATURES)
    coef = np.zeros(n)
    coef[FEATURES.index("neighbours")] = -10.0
    filt = ObjectFilter(tuple(np.zeros(n)), tuple(np.ones(n)), tuple(coef), 25.0, 0.5)
    model = FakeLocalModel(r=0, passes=1, meta={"object_filter": filt.to_meta()})
    monkeypatch.setattr(vnumba.evaluate, "load_model_arg", lambda arg, scen: model)
    out = tmp_path / "rep"
    assert evaluate.main(["--model", "fake.h5", str(tmp_path / "data"), "--out", str(out),
                          "--no-overlays", "--min-area", "5"]) == 0
    rep = json.loads((out / "report.json").read_text())
    plain, filt_r = rep["overall"]["fake"], rep["overall"]["fake + object filter"]
    assert plain["classes"]["immune"]["marked"] == 9
    assert filt_r["classes"]["immune"]["marked"] == 0
    assert filt_r["classes"]["tumour"]["marked"] == 1
    assert filt_r["objects"]["f1"] == 1.0 and plain["objects"]["fp"] == 9
    # the figure shows the filtered variant beside the model
    import matplotlib

    from vnumba.analysis.plots import plot_marked_fractions
    matplotlib.use("Agg")
    captured = {}
    import matplotlib.axes
    orig = matplotlib.axes.Axes.bar

    def bar(self, x, h, *a, **k):
        captured.setdefault(k.get("label"), []).append(list(np.atleast_1d(h)))
        return orig(self, x, h, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    plot_marked_fractions(rep, tmp_path / "f.png")
    assert "fake + object filter" in captured and "fake" in captured


def test_predict_cli_writes_only_the_objects_the_filter_keeps(tmp_path, monkeypatch):
    import csv

    import imageio.v3 as iio

    import vnumba.predict

    rgb, _, lab = _scene()
    iio.imwrite(tmp_path / "t.png", (rgb * 255).astype(np.uint8))
    n = len(FEATURES)
    coef = np.zeros(n)
    coef[FEATURES.index("neighbours")] = -10.0
    filt = ObjectFilter(tuple(np.zeros(n)), tuple(np.ones(n)), tuple(coef), 25.0, 0.5)
    model = FakeLocalModel(r=0, passes=1, meta={"object_filter": filt.to_meta(), "mpp": 0.5})
    monkeypatch.setattr(vnumba.predict, "load_model_arg", lambda arg, scen: model)

    def rows(out):
        with open(out / "t_objects.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    args = [str(tmp_path / "t.png"), "--mpp", "0.5", "--min-area", "5", "-q"]
    assert vnumba.predict.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert vnumba.predict.main(args + ["--out", str(tmp_path / "b"), "--no-object-filter"]) == 0
    assert len(rows(tmp_path / "a")) == 1 and len(rows(tmp_path / "b")) == 10
    # the mask PNG is the network's either way
    np.testing.assert_array_equal(iio.imread(tmp_path / "a" / "t_mask.png"),
                                  iio.imread(tmp_path / "b" / "t_mask.png"))
