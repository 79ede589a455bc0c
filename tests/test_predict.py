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
