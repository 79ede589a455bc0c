"""Colour statistics from annotated images (synth.stats) and the preview figure."""
import imageio.v3 as iio
import numpy as np
import pytest

from synth.__main__ import main
from synth.script import load_script, parse_script_text
from synth.stats import BEGIN, END, category_objects, estimate, replace_block


def _write_annotated(tmp_path, seed=0):
    """A 120x160 'H&E' image: pink background, tumour nuclei (class 1) of one colour with
    known noise, immune nuclei (class 2) of another colour."""
    rng = np.random.default_rng(seed)
    H, W = 120, 160
    img = np.empty((H, W, 3))
    img[:] = [0.85, 0.55, 0.80]
    inst = np.zeros((H, W), np.int32)
    cls = np.zeros((H, W), np.uint8)
    y, x = np.mgrid[:H, :W]
    k = 0
    for cy in (20, 60, 100):
        for cx in (20, 60):
            k += 1
            m = (y - cy) ** 2 + (x - cx) ** 2 <= 8 ** 2
            inst[m], cls[m] = k, 1
            img[m] = [0.40, 0.25, 0.60]
    for cy in range(15, 110, 14):
        for cx in (110, 130, 150):
            k += 1
            m = (y - cy) ** 2 + (x - cx) ** 2 <= 4 ** 2
            inst[m], cls[m] = k, 2
            img[m] = [0.20, 0.10, 0.45]
    img += 0.03 * rng.standard_normal(img.shape)
    png = tmp_path / "tile.png"
    iio.imwrite(png, (np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    np.savez(tmp_path / "tile_labels.npz", instances=inst, classes=cls)
    return png, img, inst, cls


def test_category_rules_on_a_hand_made_tile(tmp_path):
    _, img, inst, cls = _write_annotated(tmp_path)
    cats = category_objects(np.clip(img, 0, 1), inst, cls, mpp=0.5)
    tn, im, cyt, bg, cn = (cats[c] for c in ("tumour_nucleus", "immune", "tumour", "background", "connective"))
    assert set(np.unique(tn[tn > 0])) == set(range(1, 7))
    assert np.all(cls[tn > 0] == 1) and np.all(cls[im > 0] == 2)
    assert np.all(inst[cyt > 0] == 0)                       # cytoplasm is outside nuclei
    # every cytoplasm pixel is assigned to its nearest tumour nucleus
    ys, xs = np.nonzero(cyt)
    centres = np.array([(cy, cx) for cy in (20, 60, 100) for cx in (20, 60)])
    d = (ys[:, None] - centres[:, 0]) ** 2 + (xs[:, None] - centres[:, 1]) ** 2
    np.testing.assert_array_equal(cyt[ys, xs], np.argmin(d, axis=1) + 1)
    far = (bg > 0) | (cn > 0)
    assert not np.any((bg > 0) & (cn > 0)) and np.all(inst[far] == 0)
    assert 0.2 < (cn > 0).sum() / far.sum() < 0.3           # top quarter of a* is connective


def test_estimate_recovers_colour_means_and_noise(tmp_path):
    png, img, inst, cls = _write_annotated(tmp_path)
    from synth.color import lab_stats
    tm, ts = lab_stats(iio.imread(png))
    st = estimate([png], target_mean=tm, target_std=ts, image_mpp=0.5, mpp=0.5)
    np.testing.assert_allclose(st["tumour_nucleus"].mean, [0.40, 0.25, 0.60], atol=0.01)
    np.testing.assert_allclose(st["immune"].mean, [0.20, 0.10, 0.45], atol=0.01)
    np.testing.assert_allclose(np.sqrt(np.diag(st["tumour_nucleus"].cov)), 0.03, atol=0.005)
    assert st["tumour_nucleus"].n_objects == 6
    assert st["tumour_nucleus"].corr < 0.5                  # white noise: short correlation


def test_stats_block_replaces_the_marked_block_and_validates():
    s = load_script("scenario2")
    assert BEGIN in s.text and END in s.text
    text = replace_block(s.text, f"{BEGIN}\n[normalization]\nmethod = \"none\"\n\n"
                         + s.text[s.text.index("[colors.background]"):s.text.index(END)] + END + "\n")
    t = parse_script_text(text)
    assert t["colors"] == s["colors"] and t.normalization.method == "none"


def test_stats_cli_on_a_hand_made_tile(tmp_path, capsys):
    png, *_ = _write_annotated(tmp_path)
    out = tmp_path / "s.toml"
    rc = main(["stats", str(png), "--script", "scenario2", "-o", str(out), "--image-mpp", "0.5",
               "--reference", str(png)])
    assert rc == 0
    s = load_script(out)
    assert s.normalization.method == "reinhard"
    np.testing.assert_allclose(s["colors"]["immune"].mean, [0.20, 0.10, 0.45], atol=0.01)
    assert "tile.png" in s["colors"]["immune"].source


def test_stats_cli_reports_a_missing_label_file(tmp_path, capsys):
    png = tmp_path / "x.png"
    iio.imwrite(png, np.zeros((8, 8, 3), np.uint8))
    rc = main(["stats", str(png), "--script", "scenario2", "-o", str(tmp_path / "o.toml"),
               "--image-mpp", "0.5", "--reference", str(png)])
    assert rc == 2
    assert "x_labels.npz not found" in capsys.readouterr().err
    assert not (tmp_path / "o.toml").exists()


def test_shipped_scenario2_colours_are_the_stats_of_the_puma_tile(real_data_dir, tmp_path):
    d = real_data_dir / "he_melanoma_puma"
    out = tmp_path / "s2.toml"
    rc = main(["stats", str(d), "--script", "scenario2", "-o", str(out), "--image-mpp", "0.24",
               "--reference", str(d / "puma_metastatic_roi094_top.png")])
    assert rc == 0
    new, shipped = load_script(out), load_script("scenario2")
    for c, spec in shipped["colors"].items():
        np.testing.assert_allclose(new["colors"][c].mean, spec.mean, atol=1e-4)
        np.testing.assert_allclose(new["colors"][c].cov, spec.cov, atol=1e-6)
        np.testing.assert_allclose(new["colors"][c].cov_between, spec.cov_between, atol=1e-6)
    np.testing.assert_allclose(new.normalization.target_mean, shipped.normalization.target_mean, atol=1e-4)


def test_preview_writes_a_png_with_one_row_per_sample(tmp_path):
    from synth.preview import write_preview
    s = load_script("scenario2").with_size(40, 48)
    out = write_preview(s, tmp_path / "p.png", n=2, seed=1)
    im = iio.imread(out)
    assert im.ndim == 3 and im.shape[0] > 80 and im.shape[1] > 8 * 48


def test_cli_list_names_shipped_scripts(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "scenario1" in out and "scenario2" in out and "registered scenario kinds" in out


@pytest.mark.parametrize("corr", [0.7, 1.0, 1.6])
def test_correlation_length_fit_inverts_the_gaussian_model(corr):
    from synth.stats import fit_correlation_length
    rho = np.exp(-np.array([1.0, 4.0, 9.0]) / (4 * corr * corr))
    assert fit_correlation_length(rho) == pytest.approx(corr, rel=1e-9)
    assert fit_correlation_length([0.0, -0.1, 0.0]) == 0.0


def test_preview_with_a_real_image_adds_a_row_of_crops_at_the_script_scale(tmp_path, capsys):
    from synth.preview import real_crops
    s = load_script("scenario2").with_size(40, 48)            # 0.5 um/px, Reinhard target
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    crops = real_crops(s, real, 0.25, 3, seed=2)                # 0.25 -> 0.5: half size
    assert len(crops) == 3 and all(c.shape == (30, 40, 3) for c in crops)
    assert all(c.dtype == np.float32 and 0 <= c.min() and c.max() <= 1 for c in crops)
    same = real_crops(s, real, None, 1, seed=2)[0]
    assert same.shape == (40, 48, 3)
    out = tmp_path / "p.png"
    from synth.preview import write_preview
    with_real = iio.imread(write_preview(s, out, n=1, seed=1, real=real, real_mpp=0.25))
    without = iio.imread(write_preview(s, tmp_path / "q.png", n=1, seed=1))
    assert with_real.shape[0] > 1.5 * without.shape[0]          # one more row
    # the CLI refuses what it cannot show, in one line
    iio.imwrite(tmp_path / "grey.png", real[..., 0])
    with pytest.raises(SystemExit, match="not an RGB image"):
        main(["preview", "scenario2", "-o", str(out), "--n", "1", "--real", str(tmp_path / "grey.png")])
