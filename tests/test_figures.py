import imageio.v3 as iio
import numpy as np
import pytest
from predict_helpers import save_tiny_model

from vnumba import figures
from vnumba.analysis.plots import overlay_contours, plot_panels, plot_training_curves, read_training_log


def _log(path, n=60, extra=""):
    it = np.arange(1, n + 1)
    lines = ["iter,loss,accuracy,psnr,seconds" + (",phase" if extra else "")]
    for i in it:
        row = f"{i},{0.5 * np.exp(-i / 20) + 0.01:.5f},{0.9 + 0.09 * (1 - np.exp(-i / 15)):.5f}," \
              f"{20 + 5 * (1 - np.exp(-i / 30)):.4f},{0.7 * i:.2f}"
        lines.append(row + (f",{extra}" if extra else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_training_log_parses_columns(tmp_path):
    d = read_training_log(_log(tmp_path / "t.csv", n=5, extra="train"))
    assert d["iter"].tolist() == [1, 2, 3, 4, 5]
    assert d["loss"][0] == pytest.approx(0.5 * np.exp(-1 / 20) + 0.01, abs=1e-5)
    assert np.all(np.isnan(d["phase"]))           # a text column is carried, as NaN


def test_read_training_log_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("iter,loss,psnr\n1,0.5,20\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*accuracy"):
        read_training_log(bad)
    bad.write_text("iter,loss,accuracy,psnr\n1,x,0.9,20\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        read_training_log(bad)


def test_training_curves_png(tmp_path):
    out = plot_training_curves([_log(tmp_path / "a.csv"), _log(tmp_path / "b.csv", n=30)],
                               tmp_path / "fig" / "curves.png", labels=["s2", "s3"])
    img = iio.imread(out)
    assert img.ndim == 3 and img.shape[1] > img.shape[0] > 100
    assert img[..., :3].std() > 10                 # something was drawn


def test_curves_cli(tmp_path, capsys):
    log = _log(tmp_path / "train.csv")
    assert figures.main(["curves", str(log), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()
    assert figures.main(["curves", str(tmp_path / "none.csv"), "-o", str(tmp_path / "d.png")]) == 2
    assert "none.csv" in capsys.readouterr().err


def test_panels_png_with_missing_entries(tmp_path):
    rng = np.random.default_rng(0)
    synthetic = dict(input=rng.random((3, 20, 20)), target_image=rng.random((3, 20, 20)),
                     target_mask=rng.random((20, 20)) > 0.5, reconstruction=rng.random((3, 20, 20)),
                     mask=rng.random((20, 20)))
    real = dict(input=rng.random((30, 25, 3)), reconstruction=rng.random((30, 25, 3)),
                mask=rng.random((30, 25)))
    out = plot_panels([synthetic, real], tmp_path / "p.png", row_labels=["synthetic", "real"])
    img = iio.imread(out)
    # 5 columns, 2 rows of square panels
    assert img.shape[1] > 2 * img.shape[0]
    with pytest.raises(KeyError, match="unknown"):
        plot_panels([dict(unknown=np.zeros((2, 2)))], tmp_path / "q.png")


def test_overlay_paints_exactly_the_inner_boundary():
    img = np.full((10, 12, 3), 0.5, np.float32)
    lab = np.zeros((10, 12), np.int32)
    lab[2:7, 3:8] = 1                               # 5x5 square
    ov = overlay_contours(img, lab, color=(0, 255, 0))
    ring = np.zeros((10, 12), bool)
    ring[2:7, 3:8] = True
    ring[3:6, 4:7] = False
    assert np.all(ov[ring] == (0, 255, 0))
    assert np.all(ov[~ring] == 128)                 # round(0.5 * 255)
    grey = overlay_contours(np.zeros((10, 12, 1), np.uint8), lab)
    assert grey.shape == (10, 12, 3)
    with pytest.raises(ValueError, match="shape"):
        overlay_contours(img, lab[:5])


def test_overlay_paints_each_object_in_its_own_colour():
    img = np.full((10, 20, 3), 0.5, np.float32)
    lab = np.zeros((10, 20), np.int32)
    lab[2:7, 2:7] = 1
    lab[2:7, 11:16] = 2
    lut = np.array([[0, 0, 0], [200, 0, 0], [160, 90, 160]], np.uint8)
    ov = overlay_contours(img, lab, label_colors=lut)
    assert tuple(ov[2, 2]) == (200, 0, 0) and tuple(ov[6, 15]) == (160, 90, 160)
    assert tuple(ov[4, 4]) == (128, 128, 128) and tuple(ov[4, 13]) == (128, 128, 128)
    with pytest.raises(ValueError, match="label_colors"):
        overlay_contours(img, lab, label_colors=lut[:2])


def test_panels_cli_with_synthetic_data_and_a_real_image(tmp_path):
    from vnumba.io.dataset import write_dataset_arrays
    rng = np.random.default_rng(1)
    u0 = rng.random((2, 3, 24, 24)).astype(np.float32)
    write_dataset_arrays(tmp_path / "ds.h5", u0, u0, (u0[:, 0] > 0.5).astype(np.float32),
                         scenario="scenario3", seed=0, script="")
    iio.imwrite(tmp_path / "real.png", (rng.random((40, 50, 3)) * 255).astype(np.uint8))
    save_tiny_model(tmp_path / "m.h5")
    rc = figures.main(["panels", "--model", str(tmp_path / "m.h5"), "--synthetic",
                       str(tmp_path / "ds.h5"), "--index", "0,1", str(tmp_path / "real.png"),
                       "--crop", "5", "5", "30", "30", "-o", str(tmp_path / "panels.png")])
    assert rc == 0
    assert iio.imread(tmp_path / "panels.png").shape[0] > 300
