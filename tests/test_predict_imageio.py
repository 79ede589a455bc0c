"""Image reading/writing used by vnumba.predict (vnumba.io.images)."""
import os
import stat

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from vnumba.io.images import (
    decode_mask16,
    encode_mask16,
    image_to_float,
    match_channels,
    read_image,
    tiff_mpp,
    write_png,
)


@pytest.fixture
def rgb8():
    return np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)


@pytest.fixture
def rgb16():
    return np.random.default_rng(1).integers(0, 65536, (12, 17, 3), dtype=np.uint16)


def test_png_8bit_rgb_and_16bit_grey_read_back_exactly(tmp_path, rgb8, rgb16):
    write_png(tmp_path / "a.png", rgb8)
    r = read_image(tmp_path / "a.png")
    assert r.array.dtype == np.uint8 and np.array_equal(r.array, rgb8) and r.mpp is None
    assert r.name == "a"
    write_png(tmp_path / "g.png", rgb16[:, :, 0])
    g = read_image(tmp_path / "g.png")
    assert g.array.shape == (12, 17, 1) and g.array.dtype == np.uint16
    assert np.array_equal(g.array[:, :, 0], rgb16[:, :, 0])


def test_jpeg_reads_as_rgb(tmp_path, rgb8):
    iio.imwrite(tmp_path / "a.jpg", rgb8, quality=95)
    r = read_image(tmp_path / "a.jpg")
    assert r.array.shape == rgb8.shape and r.array.dtype == np.uint8


def test_tiff_16bit_with_resolution_in_centimetres(tmp_path, rgb16):
    # 40000 px/cm = 0.25 µm/px
    tifffile.imwrite(tmp_path / "a.tif", rgb16, photometric="rgb",
                     resolution=(40000, 40000), resolutionunit="CENTIMETER")
    r = read_image(tmp_path / "a.tif")
    assert np.array_equal(r.array, rgb16)
    assert r.mpp == pytest.approx(0.25)


def test_tiff_resolution_in_inches_and_screen_dpi(tmp_path, rgb8):
    tifffile.imwrite(tmp_path / "i.tif", rgb8, photometric="rgb", resolution=(50800, 50800),
                     resolutionunit="INCH")
    assert tiff_mpp(tmp_path / "i.tif") == pytest.approx(25400 / 50800)
    # 72 dpi is what tools write when they know nothing: not a microscope pixel size.
    tifffile.imwrite(tmp_path / "s.tif", rgb8, photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH")
    assert tiff_mpp(tmp_path / "s.tif") is None


def test_tiff_imagej_ome_and_aperio_pixel_sizes(tmp_path, rgb8):
    tifffile.imwrite(tmp_path / "ij.tif", rgb8[:, :, 0], imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "micron"})
    assert tiff_mpp(tmp_path / "ij.tif") == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "o.ome.tif", np.moveaxis(rgb8, 2, 0), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325})
    o = read_image(tmp_path / "o.ome.tif")
    assert o.mpp == pytest.approx(0.325) and np.array_equal(o.array, rgb8)
    tifffile.imwrite(tmp_path / "sv.tif", rgb8, photometric="rgb",
                     description="Aperio Image Library v12 |AppMag = 40|MPP = 0.2520")
    assert tiff_mpp(tmp_path / "sv.tif") == pytest.approx(0.252)


def test_channel_first_tiff_is_transposed(tmp_path, rgb16):
    tifffile.imwrite(tmp_path / "c.tif", np.moveaxis(rgb16, 2, 0), photometric="minisblack")
    r = read_image(tmp_path / "c.tif")
    assert np.array_equal(r.array, rgb16)


def test_volume_tiff_is_rejected_with_the_file_name(tmp_path):
    vol = np.zeros((5, 7, 8, 9), np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", vol, metadata={"axes": "ZCYX"})
    with pytest.raises(ValueError, match="v.tif"):
        read_image(tmp_path / "v.tif")


def test_unreadable_and_unknown_files_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match="x.bmp"):
        read_image(tmp_path / "x.bmp")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_wrong_channel_count_is_an_error_naming_the_file(rgb8):
    with pytest.raises(ValueError, match=r"slide\.png: image has 3 channel\(s\), the model expects 1"):
        match_channels(rgb8, 1, "slide.png")
    with pytest.raises(ValueError, match="expects 3"):
        match_channels(rgb8[:, :, :1], 3, "grey.png")


def test_lossless_channel_conversions(rgb8):
    rgba = np.concatenate([rgb8, np.full(rgb8.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(match_channels(rgba, 3), rgb8)
    rgba[0, 0, 3] = 10  # real transparency must not be dropped silently
    with pytest.raises(ValueError, match="4 channel"):
        match_channels(rgba, 3)
    grey3 = np.repeat(rgb8[:, :, :1], 3, axis=2)
    assert np.array_equal(match_channels(grey3, 1), rgb8[:, :, :1])


def test_image_to_float_scales_by_type_and_percentile(rgb8, rgb16):
    f8 = image_to_float(rgb8)
    assert f8.dtype == np.float32 and f8.flags.c_contiguous
    np.testing.assert_array_equal(f8, rgb8.astype(np.float32) / 255)
    np.testing.assert_allclose(image_to_float(rgb16), rgb16 / 65535.0, rtol=1e-6)
    dim = np.linspace(0, 235, 200).astype(np.uint16).reshape(10, 20, 1)
    p = image_to_float(dim, "percentile")
    assert p.min() == 0.0 and p.max() == 1.0
    with pytest.raises(ValueError, match="f.tif"):
        image_to_float(np.full((2, 2, 1), 2.0), path="f.tif")


def test_mask16_round_trip():
    rng = np.random.default_rng(0)
    m = rng.random((33, 21)).astype(np.float32)
    m[0, :3] = [0.0, 1.0, 0.5]
    enc = encode_mask16(m)
    assert enc.dtype == np.uint16 and enc[0, 0] == 0 and enc[0, 1] == 65535
    dec = decode_mask16(enc)
    assert np.max(np.abs(dec - m)) <= 0.5 / 65535 + 1e-7
    grid = (np.arange(0, 65536, 97) / 65535.0).reshape(1, -1)
    assert np.array_equal(encode_mask16(grid), np.arange(0, 65536, 97, dtype=np.uint16)[None])


def test_mask16_png_file_round_trip(tmp_path):
    m = np.random.default_rng(2).random((9, 14)).astype(np.float32)
    write_png(tmp_path / "m.png", encode_mask16(m))
    back = iio.imread(tmp_path / "m.png")
    assert back.dtype == np.uint16
    np.testing.assert_allclose(decode_mask16(back), m, atol=0.5 / 65535 + 1e-7)


def test_write_png_is_atomic_and_not_private(tmp_path, rgb8):
    write_png(tmp_path / "sub" / "o.png", rgb8)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["o.png"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    # Same permissions as a file made by open(), not mkstemp's private 0600.
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "o.png").st_mode) == 0o666 & ~umask
    with pytest.raises(TypeError):
        write_png(tmp_path / "f.png", rgb8.astype(np.float32))


def test_16_bit_rgb_png_round_trips_at_full_depth(tmp_path):
    from vnumba.io.images import read_image, write_png

    a = (np.arange(12 * 10 * 3).reshape(12, 10, 3) * 181 % 65536).astype(np.uint16)
    write_png(tmp_path / "a.png", a)
    back = read_image(tmp_path / "a.png").array
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, a)          # low bytes kept, not only the high ones


def test_png_alpha_opaque_is_dropped_transparent_is_refused(tmp_path):
    import imageio.v3 as iio

    from vnumba.io.images import read_image

    rgba = np.full((6, 7, 4), 200, np.uint8)
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "opaque.png", rgba)
    assert read_image(tmp_path / "opaque.png").array.shape == (6, 7, 3)
    rgba[0, 0, 3] = 0
    iio.imwrite(tmp_path / "cut.png", rgba)
    with pytest.raises(ValueError, match=r"cut.png.*transparent alpha"):
        read_image(tmp_path / "cut.png")


def test_predict_warns_once_per_image_when_the_pixel_size_is_assumed(tmp_path, monkeypatch, capsys):
    from predict_helpers import FakeLocalModel

    import vnumba.predict

    iio.imwrite(tmp_path / "x.png", np.full((10, 12, 3), 120, np.uint8))
    model = FakeLocalModel(r=0, passes=1, meta={"mpp": 0.48})
    monkeypatch.setattr(vnumba.predict, "load_model_arg", lambda arg, scen: model)
    # issue 20: the pixel size is no longer assumed but estimated from the nuclei; a flat
    # image has none, so it fails in one line asking for --mpp and writes nothing
    assert vnumba.predict.main([str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "-q"]) == 1
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "x.png" in err[0] and "--mpp" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert vnumba.predict.main([str(tmp_path / "x.png"), "--out", str(tmp_path / "p"), "-q",
                                "--mpp", "0.48"]) == 0
    assert "warning" not in capsys.readouterr().err
