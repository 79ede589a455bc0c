"""Slide readers (vnumba/io/slides.py and its backends) and tissue detection
(vnumba/analysis/tissue.py) on tiny slides written with tifffile."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from vnumba.analysis.tissue import TissueMask, read_overview, tile_tissue_fraction, tissue_mask
from vnumba.io.slides import MAX_REGION_PIXELS, SlideError, open_slide

JPEG_TOL_MAX = 10      # largest per-pixel error of quality-95 JPEG on the smooth test pattern
JPEG_TOL_MEAN = 1.5


# ----------------------------------------------------------------------------- writers
def smooth_rgb(size: int) -> np.ndarray:
    """A smooth colourful uint8 image (JPEG keeps it within a few grey levels)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    r = 128 + 100 * np.sin(2 * np.pi * xx)
    g = 128 + 100 * np.cos(2 * np.pi * yy)
    b = 128 + 80 * np.sin(2 * np.pi * (xx + yy))
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def noisy_rgb(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def pyramid(img: np.ndarray, n: int) -> list[np.ndarray]:
    """Levels by 2×2 averaging, finest first."""
    levels = [img]
    for _ in range(n - 1):
        a = levels[-1].astype(np.float64)
        levels.append(((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4).round().astype(np.uint8))
    return levels


def write_svs(path, levels, mpp=0.25, tile=256, quality=95):
    """An Aperio-style SVS: JPEG tiles, a stripped thumbnail as the second IFD, MPP in the
    description (OpenSlide's Aperio detection: tiled, description starting with "Aperio")."""
    H, W = levels[0].shape[:2]
    desc = (f"Aperio Image Library v12.0.0\n{W}x{H} [0,0 {W}x{H}] ({tile}x{tile}) JPEG/RGB "
            f"Q={quality}|AppMag = 40|MPP = {mpp}")
    jpeg = dict(tile=(tile, tile), compression="jpeg", compressionargs={"level": quality},
                photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as w:
        w.write(levels[0], description=desc, **jpeg)
        w.write(levels[-1][::2, ::2], photometric="rgb", description=f"Aperio Image Library v12.0.0\n{W}x{H} -> thumb",
                metadata=None)
        for lv in levels[1:]:
            w.write(lv, description=f"Aperio Image Library v12.0.0\n{W}x{H} -> {lv.shape[1]}x{lv.shape[0]}", **jpeg)


def write_ome(path, levels, mpp=0.5, unit="µm", tile=128):
    """A lossless OME-TIFF pyramid: level 0 in the main IFD, the others as its SubIFDs."""
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(levels[0], subifds=len(levels) - 1, tile=(tile, tile), compression="zlib", photometric="rgb",
                metadata={"PhysicalSizeX": mpp, "PhysicalSizeXUnit": unit,
                          "PhysicalSizeY": mpp, "PhysicalSizeYUnit": unit})
        for lv in levels[1:]:
            w.write(lv, subfiletype=1, tile=(tile, tile), compression="zlib", photometric="rgb")


def write_generic_pyramid(path, levels, tile=None, rowsperstrip=None):
    """Reduced-resolution pages in the main IFD chain (NewSubfileType 1), no OME, no MPP."""
    with tifffile.TiffWriter(path) as w:
        for i, lv in enumerate(levels):
            kw = {"tile": (tile, tile)} if tile else {"rowsperstrip": rowsperstrip}
            w.write(lv, photometric="rgb", compression="zlib", subfiletype=0 if i == 0 else 1, metadata=None, **kw)


def expected_region(level_img, x, y, w, h):
    """``level_img[y:y+h, x:x+w]`` with white outside."""
    out = np.full((h, w, 3), 255, np.uint8)
    H, W = level_img.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 > x0 and y1 > y0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = level_img[y0:y1, x0:x1]
    return out


def regions_for(W, H):
    """Inside, crossing each edge and corner, and wholly outside."""
    return [(10, 20, 100, 70), (W - 40, H - 30, 90, 80), (-25, -15, 60, 50), (W // 2, -5, 33, 40),
            (-30, H // 2, 50, 17), (W + 5, 0, 10, 10), (0, 0, W, H)]


def assert_one_line_naming(exc: pytest.ExceptionInfo, path, *words):
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for wd in words:
        assert wd.lower() in msg.lower(), msg


def _pyramid_file(tmp_path_factory, folder, name, image, write):
    """A three-level pyramid of ``image`` written by ``write`` to a new folder: (path, levels)."""
    path = tmp_path_factory.mktemp(folder) / name
    levels = pyramid(image, 3)
    write(path, levels)
    return path, levels


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    return _pyramid_file(tmp_path_factory, "svs", "slide.svs", smooth_rgb(1024), write_svs)


@pytest.fixture(scope="module")
def ome(tmp_path_factory):
    return _pyramid_file(tmp_path_factory, "ome", "slide.ome.tif", noisy_rgb(512), write_ome)


# ----------------------------------------------------------------------------- (a) SVS
def test_svs_style_file_is_opened_by_openslide_with_its_levels_and_mpp(svs):
    path, levels = svs
    with open_slide(path) as s:
        assert s.backend == "openslide"
        assert s.vendor == "aperio"
        assert s.level_count == 3
        assert s.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
        assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert s.mpp == pytest.approx(0.25)
        assert s.mpp_source == "metadata"
        assert [s.level_mpp(i) for i in range(3)] == pytest.approx([0.25, 0.5, 1.0])


@pytest.mark.parametrize("level", [0, 1, 2])
def test_svs_read_region_matches_the_source_within_jpeg_tolerance_and_is_white_outside(svs, level):
    path, levels = svs
    src = levels[level]
    H, W = src.shape[:2]
    with open_slide(path) as s:
        for x, y, w, h in regions_for(W, H):
            got = s.read_region(level, x, y, w, h)
            assert got.shape == (h, w, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
            want = expected_region(src, x, y, w, h)
            outside = np.ones((h, w), bool)
            outside[max(-y, 0):max(min(H - y, h), 0), max(-x, 0):max(min(W - x, w), 0)] = False
            assert np.all(got[outside] == 255), (level, x, y, w, h)
            diff = np.abs(got.astype(int) - want.astype(int))
            assert diff.max() <= JPEG_TOL_MAX, (level, x, y, w, h, diff.max())
            assert diff.mean() <= JPEG_TOL_MEAN


def test_svs_falls_back_to_tifffile_when_openslide_does_not_recognise_it(svs, tmp_path, monkeypatch):
    """Same file through the tifffile backend (SVS series: baseline levels, thumbnail apart)."""
    import vnumba.io.slides as slides
    path, levels = svs
    monkeypatch.setattr(slides, "_detect_openslide", lambda p: None)
    with open_slide(path) as s:
        assert s.backend == "tifffile"
        assert s.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
        assert s.mpp == pytest.approx(0.25)
        got = s.read_region(1, 400, 400, 200, 200)
    want = expected_region(levels[1], 400, 400, 200, 200)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= JPEG_TOL_MAX
    assert (got[112:, :] == 255).all() and (got[:, 112:] == 255).all()


# ----------------------------------------------------------------------------- (b) OME-TIFF
def test_ome_tiff_pyramid_reads_back_bit_exactly_at_every_level_with_its_mpp(ome):
    path, levels = ome
    with open_slide(path) as s:
        assert s.backend == "tifffile"
        assert s.level_dimensions == ((512, 512), (256, 256), (128, 128))
        assert s.level_downsamples == (1.0, 2.0, 4.0)
        assert s.mpp == pytest.approx(0.5)
        for level, src in enumerate(levels):
            H, W = src.shape[:2]
            for x, y, w, h in regions_for(W, H):
                got = s.read_region(level, x, y, w, h)
                assert got.flags.c_contiguous
                np.testing.assert_array_equal(got, expected_region(src, x, y, w, h))


def test_ome_physical_size_unit_is_converted_to_micrometres(tmp_path):
    path = tmp_path / "nm.ome.tif"
    write_ome(path, pyramid(noisy_rgb(256), 2), mpp=250.0, unit="nm")
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.25)


@pytest.mark.parametrize("layout", ["tiled", "stripped"])
def test_generic_pyramidal_tiff_levels_from_reduced_resolution_pages(tmp_path, layout):
    path = tmp_path / f"{layout}.tif"
    levels = pyramid(noisy_rgb(384, seed=3), 3)
    write_generic_pyramid(path, levels, **({"tile": 128} if layout == "tiled" else {"rowsperstrip": 16}))
    with open_slide(path) as s:
        assert s.backend == "tifffile"
        assert s.level_dimensions == ((384, 384), (192, 192), (96, 96))
        assert s.mpp is None and s.mpp_source is None
        for level, src in enumerate(levels):
            H, W = src.shape[:2]
            for x, y, w, h in regions_for(W, H):
                np.testing.assert_array_equal(s.read_region(level, x, y, w, h), expected_region(src, x, y, w, h))


def test_plain_grey_16bit_tiff_is_read_as_rgb_uint8(tmp_path):
    path = tmp_path / "grey16.tif"
    grey = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 13
    tifffile.imwrite(path, grey, photometric="minisblack")
    with open_slide(path) as s:
        got = s.read_region(0, 0, 0, 80, 64)
    want = np.round(grey.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(got, np.repeat(want[:, :, None], 3, axis=2))


def test_float_tiff_falls_back_to_the_whole_image_reader(tmp_path):
    path = tmp_path / "float.tif"
    img = np.random.default_rng(2).random((40, 50, 3)).astype(np.float32)
    tifffile.imwrite(path, img, photometric="rgb")
    with open_slide(path) as s:
        assert s.backend == "image"
        got = s.read_region(0, -2, 0, 52, 40)
    np.testing.assert_array_equal(got[:, 2:], np.round(img * 255).astype(np.uint8))
    assert (got[:, :2] == 255).all()


# ----------------------------------------------------------------------------- (c) PNG
def test_png_is_one_level_through_the_image_backend(tmp_path):
    from vnumba.io.images import write_png
    path = tmp_path / "field.png"
    img = noisy_rgb(70, seed=5)[:50]
    write_png(path, img)
    with open_slide(path) as s:
        assert s.backend == "image"
        assert s.level_count == 1 and s.level_dimensions == ((70, 50),)
        assert s.level_downsamples == (1.0,)
        assert s.mpp is None
        for x, y, w, h in regions_for(70, 50):
            np.testing.assert_array_equal(s.read_region(0, x, y, w, h), expected_region(img, x, y, w, h))


def test_grey_png_becomes_three_equal_channels(tmp_path):
    from vnumba.io.images import write_png
    path = tmp_path / "grey.png"
    grey = noisy_rgb(32)[:, :, 0]
    write_png(path, grey)
    with open_slide(path) as s:
        got = s.read_region(0, 0, 0, 32, 32)
    np.testing.assert_array_equal(got, np.repeat(grey[:, :, None], 3, axis=2))


# ----------------------------------------------------------------------------- (d) mpp, best level
def test_mpp_given_overrides_the_metadata(svs):
    path, _ = svs
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "given"
        assert s.metadata_mpp == pytest.approx(0.25)
        assert s.level_mpp(2) == pytest.approx(2.0)


def test_mpp_given_to_a_png_without_pixel_size(tmp_path):
    from vnumba.io.images import write_png
    path = tmp_path / "p.png"
    write_png(path, noisy_rgb(16))
    with open_slide(path, mpp=0.3) as s:
        assert s.mpp == 0.3 and s.best_level(0.5) == 0


@pytest.mark.parametrize("target, level", [
    (0.25, 0), (0.1, 0), (0.5, 1), (0.6, 1), (0.75, 2), (1.0, 2), (8.0, 2),
    (math.sqrt(0.25 * 0.5), 0),   # exact tie in log ratio between levels 0 and 1: the finer
    (math.sqrt(0.5 * 1.0), 1),
    (0.36, 1), (0.35, 0),
])
def test_best_level_is_closest_in_log_ratio_and_ties_go_to_the_finer(svs, target, level):
    path, _ = svs
    with open_slide(path) as s:
        assert s.best_level(target) == level


def test_best_level_without_pixel_size_asks_for_mpp(tmp_path):
    path = tmp_path / "no_mpp.tif"
    write_generic_pyramid(path, pyramid(noisy_rgb(64), 2), tile=32)
    with open_slide(path) as s, pytest.raises(SlideError) as exc:
        s.best_level(0.5)
    assert_one_line_naming(exc, path, "--mpp")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), 1e6, "abc"])
def test_invalid_mpp_argument_is_refused(svs, bad):
    path, _ = svs
    with pytest.raises(SlideError) as exc:
        open_slide(path, mpp=bad)
    assert_one_line_naming(exc, path, "mpp")


# ----------------------------------------------------------------------------- (e) errors
def test_text_file_named_svs_is_not_a_slide(tmp_path):
    path = tmp_path / "x.svs"
    path.write_text("this is not a slide\n")
    with pytest.raises(SlideError) as exc:
        open_slide(path)
    assert_one_line_naming(exc, path, "not a slide")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(SlideError) as exc:
        open_slide(tmp_path / "nowhere.svs")
    assert_one_line_naming(exc, tmp_path / "nowhere.svs", "no such file")
    other = tmp_path / "slide.czi"
    other.write_bytes(b"ZISRAWFILE")
    with pytest.raises(SlideError) as exc:
        open_slide(other)
    assert_one_line_naming(exc, other, "unsupported file type")


@pytest.mark.parametrize("which, keep", [("svs", 0.5), ("svs", 0.97), ("svs", 64), ("ome", 0.5), ("ome", 0.97)])
def test_truncated_tiff_is_refused_at_open_naming_the_file(svs, ome, tmp_path, which, keep):
    src, _ = svs if which == "svs" else ome
    data = src.read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    path = tmp_path / ("cut.svs" if which == "svs" else "cut.ome.tif")
    path.write_bytes(data[:n])
    with pytest.raises(SlideError) as exc:
        with open_slide(path) as s:  # if it opened, every tile must still be readable
            for level, (W, H) in enumerate(s.level_dimensions):
                s.read_region(level, 0, 0, W, H)
    assert_one_line_naming(exc, path)


def _overwrite_segments(src, dst, page_of, indices, fill):
    """Copy ``src`` to ``dst`` with the bytes of the given tiles of one page replaced."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = page_of(tif)
        for i in indices:
            off, n = page.dataoffsets[i], page.databytecounts[i]
            data[off:off + n] = fill * n
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["svs", "ome"])
def test_corrupt_tile_raises_from_read_region_naming_file_level_and_region(svs, ome, tmp_path, which):
    if which == "svs":
        src, _ = svs
        path = tmp_path / "corrupt.svs"
        _overwrite_segments(src, path, lambda t: t.pages[0], [5], b"\x00")   # tile (1, 1) of 4×4
        box = (300, 300, 50, 50)
    else:
        src, _ = ome
        path = tmp_path / "corrupt.ome.tif"
        _overwrite_segments(src, path, lambda t: t.series[0].levels[0].pages[0], [5], b"\xff")  # tile (1, 1) of 4×4
        box = (150, 150, 50, 50)
    with open_slide(path) as s:
        s.read_region(0, 0, 0, 100, 100)              # a good tile still reads
        with pytest.raises(SlideError) as exc:
            s.read_region(0, *box)
    assert_one_line_naming(exc, path, "level 0", f"x={box[0]}", f"y={box[1]}")


def test_bad_arguments_to_read_region(ome):
    path, _ = ome
    with open_slide(path) as s:
        for args, word in [((3, 0, 0, 10, 10), "out of range"), ((-1, 0, 0, 10, 10), "out of range"),
                           ((0, 0, 0, -1, 10), ">= 0"), ((0, 0, 0, 10, -5), ">= 0"),
                           ((0, 0.5, 0, 10, 10), "integers"),
                           ((0, 0, 0, MAX_REGION_PIXELS, 2), "larger")]:
            with pytest.raises(SlideError) as exc:
                s.read_region(*args)
            assert_one_line_naming(exc, path, word)
        assert s.read_region(0, 5, 5, 0, 7).shape == (7, 0, 3)
        assert s.read_region(np.int64(1), np.int32(3), 4, 5, 6).shape == (6, 5, 3)
    with pytest.raises(SlideError) as exc:
        s.read_region(0, 0, 0, 4, 4)
    assert_one_line_naming(exc, path, "closed")


# ----------------------------------------------------------------------------- (f) reads only what it needs
def test_tifffile_backend_reads_only_the_tiles_a_region_covers(ome, monkeypatch):
    path, levels = ome
    requested: list[list[int]] = []
    original = tifffile.FileHandle.read_segments

    def spy(self, offsets, bytecounts, *args, indices=None, **kw):
        requested.append(list(indices) if indices is not None else list(range(len(offsets))))
        return original(self, offsets, bytecounts, *args, indices=indices, **kw)

    with open_slide(path) as s:
        monkeypatch.setattr(tifffile.FileHandle, "read_segments", spy)
        got = s.read_region(0, 140, 150, 20, 30)                 # inside tile (1, 1) of the 4×4 grid
        assert requested == [[5]]
        np.testing.assert_array_equal(got, levels[0][150:180, 140:160])
        requested.clear()
        s.read_region(0, 120, 250, 20, 10)                       # across four tiles: columns 0-1, rows 1-2
        assert sorted(requested[0]) == [4, 5, 8, 9]
        requested.clear()
        s.read_region(2, 0, 0, 128, 128)                         # level 2 is one tile
        assert requested == [[0]]


def test_openslide_backend_reads_a_small_box_of_a_file_whose_other_tiles_are_corrupt(svs, tmp_path):
    src, levels = svs
    path = tmp_path / "mostly_corrupt.svs"
    _overwrite_segments(src, path, lambda t: t.pages[0], range(1, 16), b"\x00")   # all but tile (0, 0)
    with open_slide(path) as s:
        got = s.read_region(0, 40, 30, 200, 220)
        want = levels[0][30:250, 40:240]
        assert np.abs(got.astype(int) - want.astype(int)).max() <= JPEG_TOL_MAX
        with pytest.raises(SlideError):
            s.read_region(0, 250, 0, 10, 10)


# ----------------------------------------------------------------------------- tissue
def tissue_slide(size=1024, seed=0, hole=True, speck=True):
    """White glass with JPEG-like noise, a pink tissue disc of radius 0.3·size at the centre
    (a small white hole in it) and a tiny pink speck in a corner; returns (image, disc mask,
    hole box, speck box) in level-0 pixels."""
    rng = np.random.default_rng(seed)
    img = rng.integers(244, 256, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2
    disc = (yy - c) ** 2 + (xx - c) ** 2 < (0.3 * size) ** 2
    tissue = np.clip(np.array([225, 150, 200]) + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    img[disc] = tissue[disc]
    hole_box = (int(c + 0.1 * size), int(c), 12, 12)
    if hole:
        x, y, w, h = hole_box
        img[y:y + h, x:x + w] = 250
    speck_box = (40, 40, 8, 8)
    if speck:
        x, y, w, h = speck_box
        img[y:y + h, x:x + w] = (140, 60, 150)
    return img, disc, hole_box, speck_box


def _box_in_mask(t: TissueMask, box):
    x, y, w, h = box
    ds = t.downsample
    return t.mask[int(y // ds):int(math.ceil((y + h) / ds)), int(x // ds):int(math.ceil((x + w) / ds))]


@pytest.fixture(scope="module")
def tissue_ome(tmp_path_factory):
    img, disc, hole_box, speck_box = tissue_slide()
    path = tmp_path_factory.mktemp("tissue") / "tissue.ome.tif"
    write_ome(path, pyramid(img, 3), mpp=0.5)
    return path, img, disc, hole_box, speck_box


def test_tissue_mask_covers_the_blob_not_the_background(tissue_ome):
    path, img, disc, hole_box, speck_box = tissue_ome
    with open_slide(path) as s:
        t = tissue_mask(s, max_side=600)
    assert t.level == 1 and t.downsample == 2.0 and t.mpp == pytest.approx(1.0)
    assert t.mask.shape == (512, 512) and t.mask.dtype == bool
    disc_small = disc[::2, ::2]
    assert t.mask[disc_small].mean() > 0.99            # the tissue is found
    assert t.mask[~disc_small].mean() < 0.005          # the glass is not
    assert _box_in_mask(t, hole_box).all()             # a 6 µm hole is filled
    assert not _box_in_mask(t, speck_box).any()        # a 4 µm speck is removed
    assert t.area_mm2 == pytest.approx(math.pi * (0.3 * 1024 * 0.5e-3) ** 2, rel=0.03)
    assert 0.05 <= t.threshold <= 0.15


def test_tissue_mask_reads_a_coarse_level_block_by_block_when_every_level_is_too_large(tissue_ome, monkeypatch):
    import vnumba.analysis.tissue as tissue_mod
    path, img, disc, *_ = tissue_ome
    monkeypatch.setattr(tissue_mod, "_BLOCK_PIXELS", 64 * 64)   # several blocks
    with open_slide(path) as s:
        calls = []
        read = s.read_region
        monkeypatch.setattr(s, "read_region", lambda *a: calls.append(a) or read(*a))
        rgb, level, ds = read_overview(s, max_side=100)
        t = tissue_mask(s, max_side=100)
        coarse = read(2, 0, 0, 256, 256).astype(np.float64)
    assert level == 2 and ds == 12.0 and rgb.shape == (86, 86, 3)
    assert len(calls) > 2 and all(c[0] == 2 and c[3] * c[4] <= 64 * 64 for c in calls)
    # each view pixel is the mean of its 3×3 block of level 2, edge blocks over their valid pixels
    padded = np.full((258, 258, 3), np.nan)
    padded[:256, :256] = coarse
    want = np.nanmean(padded.reshape(86, 3, 86, 3, 3), axis=(1, 3))
    assert np.abs(rgb.astype(np.float64) - want).max() <= 0.5 + 1e-9
    assert t.downsample == 12.0 and t.mask.shape == (86, 86)
    centre = t.mask[30:56, 30:56]
    assert centre.all() and not t.mask[:5, :5].any()


def test_all_white_slide_gives_an_empty_mask(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(246, 256, (512, 512, 3)).astype(np.uint8)
    path = tmp_path / "white.svs"
    write_svs(path, pyramid(img, 2), mpp=0.5)
    with open_slide(path) as s:
        t = tissue_mask(s)
    assert t.mask.shape == (512, 512) and not t.mask.any()
    assert t.area_mm2 == 0.0 and t.fraction == 0.0
    assert tile_tissue_fraction(t, 0, 0, 512, 512) == 0.0


def test_slide_that_is_all_tissue_gives_a_full_mask(tmp_path):
    """Pale pink and dark purple halves: Otsu alone would call the pale half background."""
    img = np.empty((256, 256, 3), np.uint8)
    img[:, :128] = (235, 180, 215)   # pale eosin, saturation ~0.23
    img[:, 128:] = (110, 60, 150)    # haematoxylin, saturation 0.6
    path = tmp_path / "full.png"
    from vnumba.io.images import write_png
    write_png(path, img)
    with open_slide(path, mpp=0.5) as s:
        t = tissue_mask(s)
    assert t.mask.all()
    assert tile_tissue_fraction(t, 0, 0, 256, 256) == 1.0


def test_tile_tissue_fraction_weights_mask_pixels_by_their_overlap_with_the_box():
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True                                  # left half: level-0 x in [0, 20)
    t = TissueMask(mask, downsample=10.0, mpp=5.0, level=0, threshold=0.1)
    assert tile_tissue_fraction(t, 0, 0, 20, 40) == 1.0
    assert tile_tissue_fraction(t, 10, 0, 20, 40) == pytest.approx(0.5)
    assert tile_tissue_fraction(t, 15, 0, 10, 10) == pytest.approx(0.5)    # half a pixel each side
    assert tile_tissue_fraction(t, 30, 0, 30, 30) == 0.0                   # background and beyond
    assert tile_tissue_fraction(t, -20, 0, 40, 40) == pytest.approx(0.5)   # half of the box is off the slide
    assert tile_tissue_fraction(t, 100, 100, 10, 10) == 0.0
    assert tile_tissue_fraction(t, 0, 0, 0, 10) == 0.0
    assert t.area_mm2 == pytest.approx(8 * 25e-6)
