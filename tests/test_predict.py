import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
from predict_helpers import FakeLocalModel, FakePoolModel, puma_crop, save_tiny_model, tiny_model

from vnumba import predict
from vnumba.analysis.inference import predict_array, predict_image, tile_windows
from vnumba.io.images import decode_mask16


@pytest.fixture
def image():
    return np.random.default_rng(3).random((53, 71, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- tiling
def test_tile_windows_partition_the_image_and_carry_the_margin():
    H, W, T, M = 50, 37, 16, 5
    cover = np.zeros((H, W), int)
    for (r0, r1, c0, c1), (wr0, wr1, wc0, wc1) in tile_windows(H, W, T, M):
        cover[r0:r1, c0:c1] += 1
        assert r1 - r0 <= T and c1 - c0 <= T
        assert wr0 == max(0, r0 - M) and wr1 == min(H, r1 + M)
        assert wc0 == max(0, c0 - M) and wc1 == min(W, c1 + M)
    assert np.all(cover == 1)


@pytest.mark.parametrize("tile", [2, 7, 13, 32, 500])
def test_tiled_equals_untiled_exactly_for_a_local_model(image, tile):
    model = FakeLocalModel(r=2, passes=3)
    u_ref, m_ref = model.apply(np.ascontiguousarray(np.moveaxis(image, 2, 0))[None])
    u, m = predict_array(model, image, tile=tile)
    assert np.array_equal(u, np.moveaxis(u_ref[0], 0, 2))
    assert np.array_equal(m, m_ref[0])


def test_a_margin_below_the_receptive_radius_changes_the_result(image):
    # The invariance above is not vacuous: too little context does change the output.
    model = FakeLocalModel(r=2, passes=3)
    u, m = predict_array(model, image, tile=10)
    u2, m2 = predict_array(model, image, tile=10, margin=model.receptive_radius - 2)
    assert not np.array_equal(m, m2)


def test_tiled_equals_untiled_for_the_real_network(image):
    model = tiny_model()
    u_ref, m_ref = predict_array(model, image, tile=1000)
    assert len(tile_windows(53, 71, 1000, model.receptive_radius)) == 1
    for tile in (13, 24):
        u, m = predict_array(model, image, tile=tile)
        np.testing.assert_array_equal(u, u_ref)
        np.testing.assert_array_equal(m, m_ref)


def test_windows_are_aligned_for_networks_with_pooling():
    H, W, T, M, K = 50, 37, 16, 5, 4
    for (r0, r1, c0, c1), (wr0, wr1, wc0, wc1) in tile_windows(H, W, T, M, K):
        assert wr0 % K == 0 and wc0 % K == 0
        assert (wr1 - wr0) % K == 0 or wr1 == H
        assert (wc1 - wc0) % K == 0 or wc1 == W
        assert wr0 <= max(0, r0 - M) and wr1 >= min(H, r1 + M)
        assert wc0 <= max(0, c0 - M) and wc1 >= min(W, c1 + M)


def test_pooling_model_needs_and_gets_aligned_windows(image):
    aligned = FakePoolModel(size_multiple=2)
    u_ref, m_ref = predict_array(aligned, image, tile=1000)
    for tile in (5, 16):
        u, m = predict_array(aligned, image, tile=tile)
        assert np.array_equal(u, u_ref) and np.array_equal(m, m_ref)
    # The same network tiled without alignment gives a different answer.
    unaligned = FakePoolModel(size_multiple=1)
    _, m_bad = predict_array(unaligned, image, tile=5)
    assert not np.array_equal(m_bad, m_ref)


def test_tiled_equals_untiled_for_the_real_unet(image):
    from vnumba.io.models import Model
    from vnumba.unet.network import UNetConfig, init_params
    cfg = UNetConfig(width=4, scales=3, convs_per_scale=1)
    model = Model("unet", cfg, init_params(cfg, np.random.default_rng(0)), {"channels": 3})
    u_ref, m_ref = predict_array(model, image, tile=1000)   # 53x71: padded to 56x72
    for tile in (11, 30):
        u, m = predict_array(model, image, tile=tile)
        np.testing.assert_array_equal(u, u_ref)
        np.testing.assert_array_equal(m, m_ref)


def test_predict_array_checks_its_input(image):
    model = FakeLocalModel()
    with pytest.raises(TypeError, match="float32"):
        predict_array(model, image.astype(np.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict_array(model, image * 2)
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_array(model, bad)


# ----------------------------------------------------------------------------- pipeline
def test_resamples_to_the_model_pixel_size_and_back():
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    model = FakeLocalModel(meta={"mpp": 0.5})
    pred = predict_image(model, img, mpp=0.25, tile=1000)
    assert model.calls == [(1, 3, 20, 30)]          # half size at twice the pixel size
    assert pred.mask.shape == (40, 60) and pred.reconstruction.shape == (40, 60, 3)
    assert pred.scale == pytest.approx(0.5)
    model.calls.clear()
    predict_image(model, img, mpp=None, tile=1000)  # unknown input pixel size: no resampling
    assert model.calls == [(1, 3, 40, 60)]


def test_applies_the_model_reinhard_normalisation():
    from synth.color import lab_stats, reinhard_normalize
    rng = np.random.default_rng(1)
    img = (rng.random((24, 30, 3)) * 0.5 + 0.3).astype(np.float32)
    target_mean, target_std = np.array([60.0, 20.0, -10.0]), np.array([12.0, 6.0, 5.0])

    class Identity(FakeLocalModel):
        def apply(self, u0):
            self.calls.append(u0)
            return u0.copy(), np.zeros((u0.shape[0],) + u0.shape[2:], np.float32)

    model = Identity(meta={"reinhard_mean": target_mean.tolist(),
                           "reinhard_std": target_std.tolist()})
    pred = predict_image(model, img, tile=1000)
    expected = np.clip(reinhard_normalize(img.astype(np.float64), target_mean, target_std), 0, 1)
    np.testing.assert_allclose(pred.reconstruction, expected, atol=1e-6)
    mean, _ = lab_stats(pred.reconstruction.astype(np.float64))
    np.testing.assert_allclose(mean, target_mean, atol=1.0)
    np.testing.assert_array_equal(pred.image, img)  # the overlay uses the original colours


def test_wrong_channel_count_names_the_file(tmp_path):
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :, 0] = 200  # coloured: not a grey image stored as RGB
    iio.imwrite(tmp_path / "rgb.png", img)
    from vnumba.io.images import read_image
    with pytest.raises(ValueError, match=r"rgb\.png.*3 channel.*expects 1"):
        predict_image(FakeLocalModel(channels=1), read_image(tmp_path / "rgb.png"))


# ----------------------------------------------------------------------------- CLI
def _run(argv, capsys):
    rc = predict.main(argv)
    out = capsys.readouterr()
    return rc, out.err


def test_cli_end_to_end_on_a_real_crop_with_a_fake_model(real_data_dir, tmp_path, capsys,
                                                         monkeypatch):
    path, img, _ = puma_crop(real_data_dir, tmp_path / "in")
    model = FakeLocalModel()
    monkeypatch.setattr(predict, "load_model_arg", lambda m, s: model)
    out = tmp_path / "out"
    rc, err = _run([str(path), "--model", "fake", "--out", str(out), "--tile", "50"], capsys)
    assert rc == 0, err
    assert "tile 1/" in err                            # progress output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["crop_mask.png", "crop_objects.csv", "crop_objects.geojson",
                     "crop_overlay.png", "crop_reconstruction.png"]
    # The mask file holds the model's probabilities, 16-bit.
    mask = iio.imread(out / "crop_mask.png")
    assert mask.dtype == np.uint16 and mask.shape == img.shape[:2]
    ref = predict_image(model, img, tile=10_000)
    np.testing.assert_allclose(decode_mask16(mask), ref.mask, atol=0.5 / 65535 + 1e-7)
    rec = iio.imread(out / "crop_reconstruction.png")
    assert rec.shape == img.shape and rec.dtype == np.uint8
    ov = iio.imread(out / "crop_overlay.png")
    assert ov.shape == img.shape and not np.array_equal(ov, img)
    rows = list(csv.DictReader(open(out / "crop_objects.csv")))
    assert len(rows) > 3
    fc = json.loads((out / "crop_objects.geojson").read_text())
    assert len(fc["features"]) == len(rows)
    # Every object centre lies on the mask above the threshold (x = column, y = row).
    m = decode_mask16(mask)
    for r in rows:
        assert 0 <= float(r["x"]) < img.shape[1] and 0 <= float(r["y"]) < img.shape[0]
        assert float(r["mean_mask"]) > 0.5
    inside = [m[int(round(float(r["y"]))), int(round(float(r["x"])))] > 0.5 for r in rows]
    assert np.mean(inside) > 0.9  # centroids of non-convex objects may fall just outside
    assert fc["features"][0]["properties"]["classification"]["name"] == "Tumor"


def test_cli_with_a_real_model_file_and_tiff_pixel_size(real_data_dir, tmp_path, capsys):
    import tifffile
    _, img, _ = puma_crop(real_data_dir, tmp_path / "in", rows=slice(200, 264),
                          cols=slice(300, 380))
    # 40000 px/cm = 0.25 µm/px; the model is at 0.5 µm/px -> processed at half size
    tifffile.imwrite(tmp_path / "in" / "slide.tif", img, photometric="rgb",
                     resolution=(40000, 40000), resolutionunit="CENTIMETER")
    save_tiny_model(tmp_path / "tiny.h5", mpp=0.5)
    rc, err = _run([str(tmp_path / "in" / "slide.tif"), "--model", str(tmp_path / "tiny.h5"),
                    "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert "resampled by 0.500" in err
    for suffix in ("reconstruction.png", "mask.png", "overlay.png", "objects.csv",
                   "objects.geojson"):
        assert (tmp_path / "o" / f"slide_{suffix}").is_file()
    assert iio.imread(tmp_path / "o" / "slide_mask.png").shape == img.shape[:2]


def test_cli_default_model_comes_from_the_scenario(tmp_path, capsys, monkeypatch):
    from vnumba.io import models as modelio
    monkeypatch.setattr(modelio, "MODELS_DIR", tmp_path / "models")
    save_tiny_model(tmp_path / "models" / "scenario2.h5", scenario="scenario2")
    iio.imwrite(tmp_path / "a.png", np.full((30, 30, 3), 200, np.uint8))
    rc, err = _run([str(tmp_path / "a.png"), "--scenario", "scenario2", "--out",
                    str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert "scenario scenario2" in err
    rc, err = _run([str(tmp_path / "a.png"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "scenario3" in err          # no shipped scenario-3 model there


def test_cli_errors_name_the_file(tmp_path, capsys):
    save_tiny_model(tmp_path / "tiny.h5")
    good = tmp_path / "good.png"
    iio.imwrite(good, np.full((30, 30, 3), 200, np.uint8))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    grey = tmp_path / "grey.png"
    iio.imwrite(grey, np.arange(900, dtype=np.uint8).reshape(30, 30))
    rc, err = _run([str(bad), str(grey), str(good), "--model", str(tmp_path / "tiny.h5"),
                    "--out", str(tmp_path / "o"), "-q"], capsys)
    assert rc == 1
    assert "broken.png" in err and "grey.png" in err and "expects 3" in err
    assert (tmp_path / "o" / "good_mask.png").is_file()   # the good image still ran
    junk = tmp_path / "model.h5"
    junk.write_bytes(b"this is not HDF5")
    rc, err = _run([str(good), "--model", str(junk), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "model.h5" in err
    rc, err = _run([str(good), "--model", str(tmp_path / "missing.h5"), "--out",
                    str(tmp_path / "o")], capsys)
    assert rc == 2 and "missing.h5" in err
    with pytest.raises(SystemExit):
        predict.main([str(good)])                    # --out is required


# ----------------------------------------------------------------------------- multi-class (issue 20)
def _multiclass():
    from multiclass_helpers import FakeMultiClassModel, paint
    return FakeMultiClassModel, paint


@pytest.mark.parametrize("tile", [3, 11, 500])
def test_multiclass_maps_are_tiled_exactly_like_the_mask(image, tile):
    FakeMultiClassModel, _ = _multiclass()
    model = FakeMultiClassModel(r=2, passes=3)
    _, m_ref = model.apply(np.ascontiguousarray(np.moveaxis(image, 2, 0))[None])
    assert m_ref.shape == (1, 3) + image.shape[:2]
    u, m = predict_array(model, image, tile=tile)
    assert m.shape == (3,) + image.shape[:2]
    assert np.array_equal(m, m_ref[0])
    pred = predict_image(model, image, tile=tile)
    assert pred.mask_classes == ("tumour", "immune", "other")
    assert np.array_equal(pred.class_probs, m_ref[0])
    assert np.array_equal(pred.mask, m_ref[0].max(axis=0))   # nucleus = max over classes


def test_multiclass_maps_are_resampled_like_the_mask():
    FakeMultiClassModel, _ = _multiclass()
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    model = FakeMultiClassModel(meta={"mpp": 0.5})
    pred = predict_image(model, img, mpp=0.25, tile=1000)
    assert model.calls == [(1, 3, 20, 30)]
    assert pred.class_probs.shape == (3, 40, 60) and pred.class_probs.dtype == np.float32
    # each class map goes back through the same resampling as a one-channel mask would
    from vnumba.analysis.inference import resample
    _, m_small = predict_array(model, resample(img.astype(np.float32) / 255, (20, 30)), 1000)
    for k in range(3):
        np.testing.assert_allclose(pred.class_probs[k], resample(m_small[k], (40, 60)),
                                   atol=1e-6)
    np.testing.assert_array_equal(pred.mask, pred.class_probs.max(axis=0))


def test_model_mask_classes_contract():
    from vnumba.analysis.inference import model_mask_classes
    FakeMultiClassModel, _ = _multiclass()
    assert model_mask_classes(FakeLocalModel()) is None           # one channel
    assert model_mask_classes(tiny_model()) is None
    assert model_mask_classes(FakeMultiClassModel()) == ("tumour", "immune", "other")
    bad = FakeMultiClassModel()
    bad.meta.pop("mask_classes")
    with pytest.raises(ValueError, match="mask_classes"):
        model_mask_classes(bad)
    with pytest.raises(ValueError, match="mask_classes"):
        model_mask_classes(FakeMultiClassModel(n_mask=2))
    with pytest.raises(ValueError, match="distinct"):
        model_mask_classes(FakeMultiClassModel(classes=["a/b", "c", "d"]))
    # a model whose apply gives one map fewer than it announces is refused
    wrong = FakeMultiClassModel(classes=["tumour", "immune"])
    wrong.apply = lambda u0: (u0, np.zeros((u0.shape[0], 3) + u0.shape[2:], np.float32))
    with pytest.raises(RuntimeError, match="shapes"):
        predict_array(wrong, np.zeros((8, 8, 3), np.float32))


def _class_image():
    _, paint = _multiclass()
    # tumour, immune, other nuclei, one of each, 6x6 px squares
    return paint((20, 40), [(2, 2, "tumour"), (2, 14, "immune"), (11, 26, "other")])


def test_write_prediction_of_a_multiclass_model(tmp_path):
    from vnumba.analysis.inference import write_prediction
    FakeMultiClassModel, _ = _multiclass()
    img, inst = _class_image()
    model = FakeMultiClassModel()
    pred = predict_image(model, img, mpp=0.25, tile=1000)
    # make the immune nucleus less certain: immune 0.6, tumour 0.3, other 0 on its pixels
    sel = inst == 2
    pred.class_probs[1][sel], pred.class_probs[0][sel], pred.class_probs[2][sel] = 0.6, 0.3, 0.0
    pred.mask = pred.class_probs.max(axis=0)
    res = write_prediction(tmp_path, "x", pred, min_area=4, scenario="scenario3")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x_classes.png", "x_mask.png", "x_mask_immune.png", "x_mask_other.png",
                     "x_mask_tumour.png", "x_objects.csv", "x_objects.geojson", "x_overlay.png",
                     "x_reconstruction.png"]
    rows = list(csv.DictReader(open(tmp_path / "x_objects.csv")))
    assert list(rows[0]) == ["id", "x", "y", "area", "mean_mask", "max_mask", "area_um2",
                             "class", "p_tumour", "p_immune", "p_other"]
    assert [r["class"] for r in rows] == ["tumour", "immune", "other"]
    assert [float(r["p_tumour"]) for r in rows] == pytest.approx([1.0, 1 / 3, 0.0], abs=1e-5)
    assert [float(r["p_immune"]) for r in rows] == pytest.approx([0.0, 2 / 3, 0.0], abs=1e-5)
    assert [float(r["p_other"]) for r in rows] == pytest.approx([0.0, 0.0, 1.0])
    assert float(rows[1]["mean_mask"]) == pytest.approx(0.6, abs=1e-5)       # the nucleus probability
    fc = json.loads((tmp_path / "x_objects.geojson").read_text())
    cls = [f["properties"]["classification"] for f in fc["features"]]
    assert [(c["name"], c["color"]) for c in cls] == [
        ("Tumor", [200, 0, 0]), ("Immune cells", [160, 90, 160]), ("Other", [255, 200, 0])]
    assert fc["features"][1]["properties"]["name"] == "Immune cells 2"
    meas = fc["features"][1]["properties"]["measurements"]
    assert (meas["p_tumour"], meas["p_immune"], meas["p_other"]) == pytest.approx((1 / 3, 2 / 3, 0), abs=1e-5)
    # Pixel outputs: class map, per-class probability maps, class-coloured outlines.
    cmap = iio.imread(tmp_path / "x_classes.png")
    assert cmap.dtype == np.uint8
    np.testing.assert_array_equal(cmap, np.array([0, 1, 2, 3], np.uint8)[inst])
    np.testing.assert_allclose(decode_mask16(iio.imread(tmp_path / "x_mask_immune.png")),
                               pred.class_probs[1], atol=1e-5)
    np.testing.assert_allclose(decode_mask16(iio.imread(tmp_path / "x_mask.png")), pred.mask,
                               atol=1e-5)
    ov = iio.imread(tmp_path / "x_overlay.png")
    assert tuple(ov[2, 2]) == (200, 0, 0) and tuple(ov[2, 14]) == (160, 90, 160)
    assert tuple(ov[11, 26]) == (255, 200, 0) and tuple(ov[4, 4]) == tuple(img[4, 4])
    assert res["table"].classes.labels == ["tumour", "immune", "other"]


def test_cli_writes_the_class_outputs_of_a_multiclass_model(tmp_path, capsys, monkeypatch):
    FakeMultiClassModel, _ = _multiclass()
    img, _ = _class_image()
    iio.imwrite(tmp_path / "t.png", img)
    monkeypatch.setattr(predict, "load_model_arg", lambda m, s: FakeMultiClassModel())
    rc, err = _run([str(tmp_path / "t.png"), "--model", "fake", "--out", str(tmp_path / "o"),
                    "--mpp", "0.25", "--min-area", "4"], capsys)
    assert rc == 0, err
    assert "mask classes tumour, immune, other" in err and "3 objects (1 tumour, 1 immune, 1 other)" in err
    assert (tmp_path / "o" / "t_classes.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "o" / "t_objects.csv")))
    assert [r["class"] for r in rows] == ["tumour", "immune", "other"]
    # the extra outputs are checked against the inputs like the others
    iio.imwrite(tmp_path / "t_classes.png", img)
    rc, err = _run([str(tmp_path / "t.png"), str(tmp_path / "t_classes.png"), "--model", "fake",
                    "--out", str(tmp_path), "-q"], capsys)
    assert rc == 2 and "t_classes.png" in err and "same file" in err


def test_one_channel_outputs_have_no_class_columns(tmp_path):
    from vnumba.analysis.inference import write_prediction
    img = np.full((20, 40, 3), 255, np.uint8)
    img[2:8, 2:8] = img[11:17, 26:32] = 0          # two dark nuclei
    pred = predict_image(FakeLocalModel(r=0, passes=1), img, tile=1000)
    assert pred.class_probs is None and pred.mask_classes is None
    write_prediction(tmp_path, "x", pred, min_area=4, scenario="scenario3")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x_mask.png", "x_objects.csv", "x_objects.geojson", "x_overlay.png",
        "x_reconstruction.png"]
    header = (tmp_path / "x_objects.csv").read_text().splitlines()[0]
    assert header == "id,x,y,area,mean_mask,max_mask"
    fc = json.loads((tmp_path / "x_objects.geojson").read_text())
    assert [f["properties"]["classification"]["name"] for f in fc["features"]] == ["Tumor"] * 2
    assert not any("p_tumour" in f["properties"]["measurements"] for f in fc["features"])


def test_cli_with_a_saved_multiclass_model(tmp_path, capsys):
    import dataclasses

    from vnumba.vn.config import ModelConfig
    if "n_mask" not in {f.name for f in dataclasses.fields(ModelConfig)}:
        pytest.skip("TODO(issue 20): ModelConfig has no n_mask yet (the model side has not "
                    "landed); write_prediction is tested directly above")
    from vnumba.io.models import save_model
    m = tiny_model(mask_classes=["tumour", "immune", "other"])
    m.config = dataclasses.replace(m.config, n_mask=3)
    from vnumba.vn.model import init_params
    m.params = init_params(m.config, np.random.default_rng(0))
    save_model(tmp_path / "mc.h5", m)
    iio.imwrite(tmp_path / "a.png", np.random.default_rng(1).integers(0, 256, (30, 34, 3),
                                                                     dtype=np.uint8))
    rc, err = _run([str(tmp_path / "a.png"), "--model", str(tmp_path / "mc.h5"), "--out",
                    str(tmp_path / "o"), "--threshold", "0.01"], capsys)
    assert rc == 0, err
    for k in ("mask_tumour.png", "mask_immune.png", "mask_other.png", "classes.png"):
        assert (tmp_path / "o" / f"a_{k}").is_file()
    header = (tmp_path / "o" / "a_objects.csv").read_text().splitlines()[0]
    assert header.endswith(",class,p_tumour,p_immune,p_other")
