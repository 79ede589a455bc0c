"""Reference bundle for scenario 3 (synth.reference): extraction, cohorts, storage, errors."""
import os

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
from skimage.color import rgb2lab

from synth import reference as R
from synth.__main__ import main as synth_main

BG = (235, 225, 238)          # bright: the "background" colour rule (L* >= 70) takes it
NUC = (80, 40, 130)           # tumour nucleus
CYTO = ((205, 130, 205), (165, 90, 175), (125, 60, 150))   # three cytoplasm colour groups
IMM = ((40, 20, 100), (70, 40, 130), (100, 60, 160))       # three immune shades


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def write_labelled(folder, name, rgb, inst, cls):
    folder.mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / f"{name}.png", rgb.astype(np.uint8))
    np.savez(folder / f"{name}_labels.npz", instances=inst.astype(np.int32),
             classes=cls.astype(np.uint8))
    return folder / f"{name}.png"


def cohort_image():
    """9 tumour cells (3 cytoplasm colours) in a row, 9 immune nuclei (3 shades) below.

    Returns rgb, instances, classes and the colour group of every instance id.
    """
    H, W = 80, 290
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = BG
    inst = np.zeros((H, W), np.int32)
    cls = np.zeros((H, W), np.uint8)
    group = {}
    for k in range(9):
        cx = 20 + 30 * k
        rgb[_disc((H, W), 22, cx, 14)] = CYTO[k // 3]
        m = _disc((H, W), 22, cx, 5)
        rgb[m] = NUC
        inst[m] = k + 1
        cls[m] = R.TUMOUR_CLASS
        group[k + 1] = k // 3
        m = _disc((H, W), 60, cx, 6)
        rgb[m] = IMM[k // 3]
        inst[m] = k + 10
        cls[m] = R.IMMUNE_CLASS
        group[k + 10] = k // 3
    return rgb, inst, cls, group


COHORT_CFG = R.ExtractionConfig(patch_size=4, max_patches_per_cell=1, cytoplasm_width=8.0)


def count_image():
    """3 interior tumour nuclei, one touching the border, one tiny, 3 immune, 1 'other'."""
    H, W = 70, 120
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = CYTO[0]
    inst = np.zeros((H, W), np.int32)
    cls = np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    shapes = [
        _disc((H, W), 20, 20, 6),                                           # disc
        ((yy - 20) / 5.0) ** 2 + ((xx - 55) / 9.0) ** 2 <= 1,               # ellipse
        (yy >= 14) & (yy < 26) & (xx >= 84) & (xx < 94),                    # square
        _disc((H, W), 50, 0, 7),                                            # touches border
        _disc((H, W), 50, 40, 2),                                           # tiny (13 px)
    ]
    for i, m in enumerate(shapes, start=1):
        inst[m] = i
        cls[m] = R.TUMOUR_CLASS
        rgb[m] = (NUC[0] + 10 * i, NUC[1], NUC[2] - 5 * i)
    for j, cx in enumerate((70, 90, 110)):
        m = _disc((H, W), 52, cx, 6)
        inst[m] = 6 + j
        cls[m] = R.IMMUNE_CLASS
        rgb[m] = IMM[j]
    m = _disc((H, W), 62, 20, 4)
    inst[m] = 9
    cls[m] = 3
    rgb[m] = (90, 90, 90)
    return rgb, inst, cls


@pytest.fixture
def count_path(tmp_path):
    rgb, inst, cls = count_image()
    return write_labelled(tmp_path / "imgs", "counts", rgb, inst, cls), rgb, inst


@pytest.fixture
def cohort_path(tmp_path):
    rgb, inst, cls, group = cohort_image()
    return write_labelled(tmp_path / "imgs", "cohorts", rgb, inst, cls), rgb, inst, group


def test_nucleus_patch_count_excludes_border_tiny_and_non_tumour(count_path):
    path, rgb, inst = count_path
    b = R.build_reference([path], config=R.ExtractionConfig(patch_size=4))
    # 5 tumour nuclei: one touches the border, one is below min_nucleus_area (40 px).
    assert len(b.nuclei) == 3
    assert sorted(b.nuclei_instance.tolist()) == [1, 2, 3]
    assert np.all(b.nuclei_source == 0)


def test_nucleus_alpha_equals_the_annotated_nucleus(count_path):
    path, rgb, inst = count_path
    b = R.build_reference([path], config=R.ExtractionConfig(patch_size=4))
    for patch, iid, (r0, c0, r1, c1) in zip(b.nuclei, b.nuclei_instance, b.nuclei_bbox):
        assert patch.shape == (r1 - r0, c1 - c0, 4)
        m = inst[r0:r1, c0:c1] == iid
        np.testing.assert_array_equal(patch[..., 3] == 255, m)
        assert set(np.unique(patch[..., 3])) <= {0, 255}
        # bbox is tight: the nucleus touches every side of it
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
        # RGB is the (self-normalised, hence unchanged up to rounding) image under alpha
        diff = np.abs(patch[..., :3].astype(int) - rgb[r0:r1, c0:c1].astype(int))
        assert diff[m].max() <= 1
        assert np.all(patch[~m, :3] == 0)


def test_texture_patches_lie_inside_their_cells(count_path):
    path, rgb, inst = count_path
    b = R.build_reference([path], config=R.ExtractionConfig(patch_size=4))
    P = b.patch_size
    imm = b.textures["immune"]
    assert len(imm) >= 3
    for p, iid, (r0, c0, r1, c1) in zip(imm.patches, imm.instance, imm.bbox):
        assert (r1 - r0, c1 - c0) == (P, P)
        assert np.all(inst[r0:r1, c0:c1] == iid)
        assert np.abs(p.astype(int) - rgb[r0:r1, c0:c1].astype(int)).max() <= 1
    tum = b.textures["tumour"]
    assert len(tum) >= 3
    for p, iid, (r0, c0, r1, c1) in zip(tum.patches, tum.instance, tum.bbox):
        assert np.all(inst[r0:r1, c0:c1] == 0)          # cytoplasm, not nucleus
        assert 1 <= iid <= 5                            # owned by a tumour nucleus
    # patches of one cell do not overlap
    for ts in (imm, tum):
        for iid in np.unique(ts.instance):
            boxes = ts.bbox[ts.instance == iid]
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    a, c = boxes[i], boxes[j]
                    assert a[2] <= c[0] or c[2] <= a[0] or a[3] <= c[1] or c[3] <= a[1]


def test_cohorts_split_by_colour(cohort_path):
    path, rgb, inst, group = cohort_path
    b = R.build_reference([path], config=COHORT_CFG)
    for kind in ("tumour", "immune"):
        ts = b.textures[kind]
        assert len(ts) == 9                              # one patch per cell
        assert np.bincount(ts.cohort, minlength=3).tolist() == [3, 3, 3]
        groups = np.array([group[int(i)] for i in ts.instance])
        L = rgb2lab(ts.patches.reshape(len(ts), -1, 3)).mean(axis=1)[:, 0]
        for k in range(3):
            assert len(set(groups[ts.cohort == k])) == 1, f"{kind} cohort {k} mixes colours"
        # cohort 0 is the darkest
        means = [L[ts.cohort == k].mean() for k in range(3)]
        assert means[0] < means[1] < means[2]


def test_assign_cohorts_equal_sizes_and_order():
    rng = np.random.default_rng(3)
    levels = rng.permutation(np.repeat([30, 120, 220], 5)).astype(np.uint8)
    patches = np.broadcast_to(levels[:, None, None, None], (15, 4, 4, 3)).copy()
    coh = R.assign_cohorts(patches, 3)
    for k, lev in enumerate((30, 120, 220)):
        assert set(coh[levels == lev].tolist()) == {k}
    with pytest.raises(ValueError, match="at least 3 patches"):
        R.assign_cohorts(patches[:2], 3)


def test_colour_statistics_from_labels_and_rules(cohort_path):
    path, rgb, inst, group = cohort_path
    b = R.build_reference([path], config=dataclasses_replace(COHORT_CFG, min_colour_pixels=50))
    bg = b.colours["background"]
    assert bg.valid and bg.n_pixels > 1000
    np.testing.assert_allclose(bg.mean, np.array(BG) / 255.0, atol=1.5 / 255)
    assert np.all(np.abs(bg.cov) < 1e-4)                 # one flat colour
    tn = b.colours["tumour_nucleus"]
    assert tn.n_pixels == int(np.isin(inst, range(1, 10)).sum())
    np.testing.assert_allclose(tn.mean, np.array(NUC) / 255.0, atol=1.5 / 255)
    imm = b.colours["immune_nucleus"]
    np.testing.assert_allclose(imm.mean, np.mean(IMM, axis=0) / 255.0, atol=1.5 / 255)
    # no red pixel at all: the vessel rule finds nothing and gives NaN statistics
    assert b.colours["vessel"].n_pixels == 0 and not b.colours["vessel"].valid


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_reinhard_to_a_reference_image_moves_colours(tmp_path, cohort_path):
    path, rgb, inst, group = cohort_path
    # a reference that is the same tissue, darker: normalised colours must get darker
    ref = tmp_path / "ref.png"
    iio.imwrite(ref, (rgb * 0.7).astype(np.uint8))
    cfg = dataclasses_replace(COHORT_CFG, min_colour_pixels=50)
    b0 = R.build_reference([path], config=cfg)
    b1 = R.build_reference([path], ref_image=ref, config=cfg)
    assert b1.ref_image == str(ref)
    from synth.color import lab_stats
    np.testing.assert_allclose(b1.ref_lab_mean, lab_stats(iio.imread(ref))[0])
    for name in ("tumour_nucleus", "tumour_cytoplasm"):
        assert b1.colours[name].mean.sum() < b0.colours[name].mean.sum() - 0.1


def test_save_load_round_trip_and_atomic(tmp_path, count_path):
    path, rgb, inst = count_path
    b = R.build_reference([path], config=R.ExtractionConfig(patch_size=4), mpp=0.24)
    out = R.save_reference(b, tmp_path / "out" / "ref.h5")
    assert sorted(os.listdir(out.parent)) == ["ref.h5"]    # no temporary left behind
    with h5py.File(out) as f:
        assert f.attrs["format"] == R.FORMAT and f.attrs["version"] == R.VERSION
    c = R.load_reference(out)
    assert c.mpp == pytest.approx(0.24)
    assert c.config == b.config
    assert c.sources == b.sources and c.source_sha256 == b.source_sha256
    assert len(c.nuclei) == len(b.nuclei)
    for x, y in zip(c.nuclei, b.nuclei):
        np.testing.assert_array_equal(x, y)
    for a in ("nuclei_source", "nuclei_instance", "nuclei_bbox", "ref_lab_mean", "ref_lab_std"):
        np.testing.assert_array_equal(getattr(c, a), getattr(b, a))
    for kind in R.TEXTURE_KINDS:
        for a in ("patches", "cohort", "source", "instance", "bbox"):
            np.testing.assert_array_equal(getattr(c.textures[kind], a),
                                          getattr(b.textures[kind], a))
    assert c.fingerprint() == b.fingerprint()
    other = R.build_reference([path], config=R.ExtractionConfig(patch_size=4), mpp=0.5)
    assert other.fingerprint() != b.fingerprint()     # the pixel size changes the images
    other = R.build_reference([path], config=R.ExtractionConfig(patch_size=5), mpp=0.24)
    assert other.fingerprint() != b.fingerprint()
    for name in R.COLOUR_CLASSES:
        np.testing.assert_array_equal(c.colours[name].mean, b.colours[name].mean)
        np.testing.assert_array_equal(c.colours[name].cov, b.colours[name].cov)
        assert c.colours[name].n_pixels == b.colours[name].n_pixels


def test_failed_save_leaves_no_file(tmp_path, count_path, monkeypatch):
    path, rgb, inst = count_path
    b = R.build_reference([path], config=R.ExtractionConfig(patch_size=4))
    broken = dataclasses_replace_bundle(b, colours={"background": None})
    with pytest.raises(AttributeError):
        R.save_reference(broken, tmp_path / "ref.h5")
    assert os.listdir(tmp_path) == ["imgs"]


def dataclasses_replace_bundle(b, **kw):
    import dataclasses
    return dataclasses.replace(b, **kw)


def test_missing_label_file_is_a_clear_error(tmp_path):
    rgb, inst, cls = count_image()
    iio.imwrite(tmp_path / "lonely.png", rgb)
    with pytest.raises(FileNotFoundError, match="lonely_labels.npz: labels file not found"):
        R.build_reference([tmp_path / "lonely.png"])
    with pytest.raises(FileNotFoundError, match="no NAME.png with NAME_labels.npz"):
        R.build_reference([tmp_path])
    with pytest.raises(FileNotFoundError, match="no such image file or folder"):
        R.build_reference([tmp_path / "nope.png"])


def _bad_labels(tmp_path, kind):
    rgb, inst, cls = count_image()
    iio.imwrite(tmp_path / "bad.png", rgb)
    lp = tmp_path / "bad_labels.npz"
    if kind == "missing_classes":
        np.savez(lp, instances=inst)
    elif kind == "wrong_shape":
        np.savez(lp, instances=inst[:-1], classes=cls[:-1])
    elif kind == "float":
        np.savez(lp, instances=inst.astype(np.float32), classes=cls)
    elif kind == "negative":
        np.savez(lp, instances=inst - 1, classes=cls)
    elif kind == "garbage":
        lp.write_bytes(b"this is not a zip archive")
    elif kind == "truncated":
        np.savez(lp, instances=inst, classes=cls)
        data = lp.read_bytes()
        lp.write_bytes(data[: len(data) // 2])
    return tmp_path / "bad.png", lp


@pytest.mark.parametrize("kind,msg", [
    ("missing_classes", r"missing key\(s\) \['classes'\]"),
    ("wrong_shape", r"'instances' has shape \(69, 120\), the image has \(70, 120\)"),
    ("float", "'instances' must be an integer array"),
    ("negative", "'instances' has negative values"),
    ("garbage", "not a readable .npz labels file"),
    ("truncated", "labels file"),
])
def test_malformed_label_file_is_a_clear_error(tmp_path, kind, msg):
    img, lp = _bad_labels(tmp_path, kind)
    with pytest.raises(ValueError, match=msg) as e:
        R.build_reference([img])
    assert str(lp) in str(e.value)


def test_non_rgb_image_is_rejected(tmp_path):
    rgb, inst, cls = count_image()
    p = write_labelled(tmp_path, "grey", rgb[..., 0], inst, cls)
    with pytest.raises(ValueError, match=r"grey.png: expected an RGB image"):
        R.build_reference([p])


def test_too_few_texture_patches_is_a_clear_error(count_path):
    path, rgb, inst = count_path
    with pytest.raises(ValueError,
                       match=r"only 0 tumour texture patches of 20x20 px found in .*counts.png"):
        R.build_reference([path], patch_size=20)


def test_load_reference_errors(tmp_path, count_path):
    with pytest.raises(FileNotFoundError, match="reference bundle not found"):
        R.load_reference(tmp_path / "none.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        R.load_reference(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something-else"
        f.create_dataset("u0", data=np.zeros(3))
    with pytest.raises(ValueError, match="not a synth reference bundle"):
        R.load_reference(foreign)
    path, rgb, inst = count_path
    good = R.save_reference(R.build_reference([path], patch_size=4), tmp_path / "good.h5")
    import shutil
    old = tmp_path / "old.h5"
    shutil.copy(good, old)
    with h5py.File(old, "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(ValueError, match="version 99 is not supported"):
        R.load_reference(old)
    cut = tmp_path / "cut.h5"
    shutil.copy(good, cut)
    with h5py.File(cut, "a") as f:
        del f["textures/immune"]
    with pytest.raises(ValueError, match=r"cut.h5: malformed reference bundle"):
        R.load_reference(cut)
    bad = tmp_path / "badshape.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "a") as f:
        del f["nuclei/offset"]
        f["nuclei/offset"] = np.full(len(f["nuclei/shape"]), 10 ** 9, np.int64)
    with pytest.raises(ValueError, match="beyond the pixel data"):
        R.load_reference(bad)


def test_cli_builds_a_bundle_and_reports_errors(tmp_path, cohort_path, capsys):
    path, rgb, inst, group = cohort_path
    out = tmp_path / "cli.h5"
    rc = synth_main(["reference", str(path.parent), "-o", str(out), "--patch-size", "4",
                     "--max-patches-per-cell", "1", "--mpp", "0.5"])
    assert rc == 0 and out.is_file()
    b = R.load_reference(out)
    assert b.mpp == 0.5 and b.patch_size == 4 and len(b.textures["immune"]) == 9
    assert "wrote" in capsys.readouterr().out
    rc = synth_main(["reference", str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.h5")])
    assert rc == 2 and "missing.png" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_puma_bundle(real_data_dir, tmp_path):
    puma = real_data_dir / "he_melanoma_puma"
    if not puma.is_dir():
        pytest.skip(f"{puma} not found")
    b = R.build_reference([puma], mpp=0.24)
    src = R.read_labelled_image(b.sources[0])
    # every nucleus patch is exactly its annotated tumour nucleus
    assert len(b.nuclei) >= 50
    for patch, iid, (r0, c0, r1, c1) in zip(b.nuclei, b.nuclei_instance, b.nuclei_bbox):
        np.testing.assert_array_equal(patch[..., 3] > 0, src.instances[r0:r1, c0:c1] == iid)
        assert np.all(src.classes[r0:r1, c0:c1][patch[..., 3] > 0] == R.TUMOUR_CLASS)
    for kind in R.TEXTURE_KINDS:
        ts = b.textures[kind]
        counts = np.bincount(ts.cohort, minlength=3)
        assert counts.max() - counts.min() <= 1 and counts.min() >= 30
    # immune nuclei are darker than tumour nuclei, which are darker than the cytoplasm
    L = {k: rgb2lab(b.colours[k].mean[None, None])[0, 0, 0]
         for k in ("immune_nucleus", "tumour_nucleus", "tumour_cytoplasm")}
    assert L["immune_nucleus"] < L["tumour_nucleus"] < L["tumour_cytoplasm"]
    out = R.save_reference(b, tmp_path / "puma.h5")
    assert len(R.load_reference(out).nuclei) == len(b.nuclei)
