import json

import naive
import numpy as np
import pytest
from predict_helpers import FakeLocalModel, puma_crop, save_tiny_model

from vnumba import evaluate
from vnumba.analysis import evaluation
from vnumba.analysis.evaluation import (
    DensityRule,
    density_selection,
    detection_metrics,
    find_annotated_images,
    instance_majority_class,
    match_points,
    nominal_mpp,
    pixel_metrics,
    scenario_rule,
    target_from_annotations,
)


# ----------------------------------------------------------------------------- pixel scores
def test_pixel_metrics_hand_computed():
    pred = np.array([[1, 1, 0], [0, 0, 0]], bool)
    target = np.array([[1, 0, 0], [1, 0, 0]], bool)
    r = pixel_metrics(pred, target)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (1, 1, 1, 3)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["dice"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert r["iou"] == pytest.approx(1 / 3)


def test_pixel_metrics_edge_cases():
    z = np.zeros((4, 4), bool)
    r = pixel_metrics(z, z)
    assert r["accuracy"] == 1.0 and r["dice"] == 1.0 and r["iou"] == 1.0
    o = np.ones((4, 4), bool)
    r = pixel_metrics(o, z)
    assert r["accuracy"] == 0.0 and r["dice"] == 0.0 and r["iou"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(z, np.zeros((4, 5), bool))
    with pytest.raises(TypeError):
        pixel_metrics(z.astype(np.uint8), z)


# ----------------------------------------------------------------------------- matching
@pytest.mark.parametrize("d,matched", [(14.9, True), (15.0, True), (15.1, False)])
def test_centroid_rule_at_15_pixels(d, matched):
    gt = np.array([[100.0, 100.0]])
    pred = np.array([[100.0 + d * 0.6, 100.0 + d * 0.8]])   # distance d along a diagonal
    r = detection_metrics(pred, gt)
    assert r["tp"] == int(matched) and r["fp"] == 1 - int(matched) and r["fn"] == 1 - int(matched)


def test_matching_is_one_to_one_and_scores_hand_computed():
    gt = np.array([[0.0, 0.0], [0.0, 100.0]])
    pred = np.array([[0.0, 3.0], [0.0, -4.0], [50.0, 50.0]])  # two near the first nucleus
    r = detection_metrics(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    pi, gi, dist = match_points(pred, gt)
    assert pi.tolist() == [0] and gi.tolist() == [0] and dist.tolist() == [3.0]


def test_matching_maximises_pairs_where_greedy_nearest_first_would_not():
    # Greedy takes (p1, B) at distance 10 first and leaves p2 without a partner;
    # the optimum pairs p1-A (12) and p2-B (11).
    gt = np.array([[0.0, 0.0], [0.0, 22.0]])          # A, B
    pred = np.array([[0.0, 12.0], [0.0, 33.0]])       # p1, p2
    pi, gi, dist = match_points(pred, gt)
    assert sorted(zip(pi.tolist(), gi.tolist())) == [(0, 0), (1, 1)]
    np.testing.assert_allclose(sorted(dist), [11.0, 12.0])


def test_matching_against_exhaustive_search():
    rng = np.random.default_rng(5)
    for _ in range(40):
        P, G = rng.integers(0, 6), rng.integers(0, 6)
        pred = rng.uniform(0, 40, (P, 2))
        gt = rng.uniform(0, 40, (G, 2))
        pi, gi, dist = match_points(pred, gt, 15.0)
        n, total = naive.match_points_bruteforce(pred, gt, 15.0)
        assert len(pi) == n
        assert dist.sum() == pytest.approx(total, abs=1e-9)
        assert len(set(pi.tolist())) == len(pi) and len(set(gi.tolist())) == len(gi)
        np.testing.assert_allclose(dist, np.hypot(*(pred[pi] - gt[gi]).T))


def test_detection_scores_with_empty_sets():
    none = np.zeros((0, 2))
    one = np.array([[1.0, 1.0]])
    assert detection_metrics(none, none)["f1"] == 1.0
    r = detection_metrics(none, one)
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)
    r = detection_metrics(one, none)
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- targets
def test_instance_majority_class():
    inst = np.array([[1, 1, 1, 0], [2, 2, 0, 3]], np.int32)
    cls = np.array([[1, 1, 2, 0], [2, 0, 0, 0]], np.uint8)
    assert instance_majority_class(inst, cls).tolist() == [0, 1, 2, 0]


def _blobs(shape, centres, r, cls_values):
    inst = np.zeros(shape, np.int32)
    cls = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k, ((cy, cx), c) in enumerate(zip(centres, cls_values), 1):
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        inst[d] = k
        cls[d] = c
    return inst, cls


def test_scenario3_target_is_the_tumour_nuclei():
    inst, cls = _blobs((40, 60), [(10, 10), (10, 40), (30, 25)], 4, [1, 2, 1])
    mask, lab = target_from_annotations(inst, cls, "scenario3")
    assert np.array_equal(mask, cls == 1)
    assert sorted(np.unique(lab).tolist()) == [0, 1, 3]
    with pytest.raises(LookupError, match="classes"):
        target_from_annotations(inst, None, "scenario3")
    cls4 = cls.copy()
    cls4[inst == 2] = 4   # epithelial, tumour/normal unknown: tumour target undefined
    with pytest.raises(LookupError, match="class 4"):
        target_from_annotations(inst, cls4, "scenario3")
    m2, l2 = target_from_annotations(inst, None, "nuclei")
    assert np.array_equal(m2, inst > 0) and np.array_equal(l2, inst)


def test_density_rule_selects_crowded_immune_nuclei():
    # A cluster of five immune nuclei, one isolated immune nucleus, one tumour nucleus.
    centres = [(20, 20), (20, 29), (29, 20), (29, 29), (24, 24), (20, 80), (35, 60)]
    inst, cls = _blobs((50, 100), centres, 4, [2, 2, 2, 2, 2, 2, 1])
    rule = DensityRule(cell_class=2, density_class=2, radius=12.0, threshold=0.2)
    sel = density_selection(inst, cls, rule)
    # Reference: the pixel-by-pixel disc fraction around each immune centroid.
    from vnumba.analysis.evaluation import instance_centroids
    ids, cents = instance_centroids(inst)
    expected = [i for i, c in zip(ids, cents)
                if instance_majority_class(inst, cls)[i] == 2
                and naive.disc_fraction(cls == 2, c, 12.0) > 0.2]
    assert sel.tolist() == expected
    assert 6 not in sel.tolist() and 1 in sel.tolist() and 7 not in sel.tolist()
    mask, lab = target_from_annotations(inst, cls, "scenario2", rule)
    assert np.array_equal(mask, np.isin(inst, sel))


def test_scenario_rule_sources_and_scaling():
    r = scenario_rule("scenario2")
    assert (r.radius, r.threshold, r.cell_class, r.density_class) == (40.0, 0.2, 2, 2)
    r1 = scenario_rule("scenario1")
    assert (r1.radius, r1.threshold, r1.density_class) == (40.0, 0.3, 1)
    assert scenario_rule("scenario3") is None
    # The shipped script states the rule at 0.5 µm/px; a 0.25 µm/px image needs twice the radius.
    from vnumba.evaluate import script_rule

    r = scenario_rule("scenario2", image_mpp=0.25, script=script_rule("scenario2"))
    assert r.radius == pytest.approx(80.0) and "synth script" in r.source
    m = FakeLocalModel(meta={"density_radius": 30, "density_threshold": 0.25, "mpp": 0.6})
    r = scenario_rule("scenario2", m, image_mpp=0.3)
    assert (r.radius, r.threshold) == (60.0, 0.25) and r.source.startswith("model meta")


def test_nominal_mpp_from_manifest(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "manifest.csv").write_text(
        "file,magnification,mpp\nset/a.png,40x,~0.23-0.25\nset/b.png,unknown,0.5\n"
        "set/c.png,unknown,unknown\n")
    assert nominal_mpp(tmp_path, tmp_path / "set" / "a.png") == pytest.approx(0.25)
    assert nominal_mpp(tmp_path, tmp_path / "set" / "b.png") == pytest.approx(0.5)
    assert nominal_mpp(tmp_path, tmp_path / "set" / "c.png") is None
    assert nominal_mpp(tmp_path, tmp_path / "set" / "zzz.png") is None


def test_find_annotated_images(tmp_path):
    (tmp_path / "d").mkdir()
    for n in ("x", "y"):
        (tmp_path / "d" / f"{n}.png").write_bytes(b"")
        np.savez(tmp_path / "d" / f"{n}_labels.npz", instances=np.zeros((2, 2), np.int32))
    (tmp_path / "d" / "unlabelled.png").write_bytes(b"")
    pairs = find_annotated_images(tmp_path)
    assert [p[0].name for p in pairs] == ["x.png", "y.png"]
    np.savez(tmp_path / "orphan_labels.npz", instances=np.zeros((2, 2), np.int32))
    with pytest.raises(FileNotFoundError, match="orphan"):
        find_annotated_images(tmp_path)


# ----------------------------------------------------------------------------- end to end
def test_cli_on_a_real_crop_with_model_baseline_model_and_classical(real_data_dir, tmp_path,
                                                                    capsys):
    from vnumba.analysis.baseline import segment_nuclei
    from vnumba.analysis.evaluation import evaluate_masks

    data = tmp_path / "data"
    _, img, labels = puma_crop(real_data_dir, data / "puma")
    # An image without classes is skipped for the class-specific target.
    puma_crop(real_data_dir, data / "nocls", rows=slice(0, 64), cols=slice(0, 64),
              name="plain", keep_classes=False)
    save_tiny_model(tmp_path / "a.h5", scenario="scenario3")
    save_tiny_model(tmp_path / "b.h5", scenario="scenario3", seed=1)
    out = tmp_path / "report"
    rc = evaluate.main(["--model", str(tmp_path / "a.h5"), str(data), "--baseline-model",
                        str(tmp_path / "b.h5"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in rep["methods"]] == ["a", "b", "classical baseline"]
    by_image = {im["image"]: im for im in rep["images"]}
    assert "classes" in by_image["nocls/plain.png"]["skipped"]["all"]
    res = by_image["puma/crop.png"]["results"]
    assert set(res) == {"a", "b", "classical baseline"}
    # The classical numbers are exactly the direct computation's.
    mask, lab, _ = segment_nuclei(img / 255.0)
    t_mask, t_lab = target_from_annotations(labels["instances"], labels["classes"], "scenario3")
    direct = evaluate_masks(mask, lab, t_mask, t_lab)
    got = res["classical baseline"]
    assert got["pixel"]["accuracy"] == pytest.approx(direct["pixel"]["accuracy"])
    assert got["objects"]["f1"] == pytest.approx(direct["objects"]["f1"])
    assert got["n_target"] == len(np.unique(t_lab)) - 1 > 0
    # Pooled over one image = that image.
    assert rep["overall"]["a"]["pixel"] == res["a"]["pixel"]
    md = (out / "report.md").read_text()
    assert "classical baseline" in md and "| puma/crop.png | a |" in md
    assert "nocls/plain.png" in md.split("## Skipped")[1]
    for r in res.values():
        assert (out / r["overlay"]).is_file()


def test_cli_scenario2_target_and_all_nuclei_target(real_data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    # The top lymphocyte cluster: most immune nuclei there pass the density rule.
    _, img, labels = puma_crop(real_data_dir, data, rows=slice(0, 128), cols=slice(256, 448))
    save_tiny_model(tmp_path / "s2.h5", scenario="scenario2")
    rc = evaluate.main(["--model", str(tmp_path / "s2.h5"), str(data), "--out",
                        str(tmp_path / "r2"), "--mpp", "0.5", "-q", "--no-overlays"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "r2" / "report.json").read_text())
    im = rep["images"][0]
    assert im["rule"]["radius"] == 40.0 and im["rule"]["threshold"] == 0.2
    rule = DensityRule(**im["rule"])
    expected = len(density_selection(labels["instances"], labels["classes"], rule))
    assert im["results"]["s2"]["n_target"] == expected > 10
    rc = evaluate.main(["--model", str(tmp_path / "s2.h5"), str(data), "--out",
                        str(tmp_path / "r3"), "--target", "nuclei", "-q", "--no-overlays"])
    assert rc == 0
    rep = json.loads((tmp_path / "r3" / "report.json").read_text())
    n_all = len(np.unique(labels["instances"])) - 1
    assert rep["images"][0]["results"]["s2"]["n_target"] == n_all


def test_cli_reports_a_bad_model_file(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"nope")
    assert evaluate.main(["--model", str(junk), str(tmp_path / "d")]) == 2
    assert "junk.h5" in capsys.readouterr().err


# ----------------------------------------------------------------------------- per-class marking
def _squares(shape, squares, size=6):
    """Annotation and image of square nuclei: ``squares`` = [(row, col, class, n_dark)];
    the first ``n_dark`` pixels (raster order) of each square are black in the image, the
    rest of the image white.  Returns ``instances, classes, dark, rgb``."""
    inst = np.zeros(shape, np.int32)
    cls = np.zeros(shape, np.uint8)
    dark = np.zeros(shape, bool)
    for k, (r, c, cl, n_dark) in enumerate(squares, 1):
        inst[r:r + size, c:c + size] = k
        cls[r:r + size, c:c + size] = cl
        sq = np.zeros(size * size, bool)
        sq[:n_dark] = True
        dark[r:r + size, c:c + size] = sq.reshape(size, size)
    rgb = np.where(dark[:, :, None], 0, 255).astype(np.uint8).repeat(3, axis=2)
    return inst, cls, dark, rgb


def test_class_marking_half_of_the_pixels_rule():
    from vnumba.analysis.evaluation import class_marking
    # Two tumour nuclei: fully / exactly half in the mask (marked); immune: 17 of 36
    # (one pixel short of half, not marked) and 35 of 36 (marked); one other, unmarked.
    inst, cls, dark, _ = _squares((16, 60), [(2, 2, 1, 36), (2, 12, 1, 18), (2, 22, 2, 17),
                                             (2, 32, 2, 35), (2, 42, 3, 0)])
    # A class-map quirk: 4 pixels of nucleus 1 labelled immune; the nucleus stays tumour
    # (majority), the pixel fractions follow the class map.
    cls[2, 2:6] = 2
    r = class_marking(dark, inst, cls)
    assert list(r) == ["tumour", "immune", "other"]          # only classes that occur
    assert (r["tumour"]["nuclei"], r["tumour"]["marked"]) == (2, 2)
    assert (r["immune"]["nuclei"], r["immune"]["marked"]) == (2, 1)
    assert (r["other"]["nuclei"], r["other"]["marked"]) == (1, 0)
    assert r["immune"]["marked_fraction"] == 0.5 and r["other"]["marked_fraction"] == 0.0
    assert (r["tumour"]["pixels"], r["tumour"]["marked_pixels"]) == (68, 50)
    assert (r["immune"]["pixels"], r["immune"]["marked_pixels"]) == (76, 56)
    assert r["tumour"]["pixel_fraction"] == pytest.approx(50 / 68)
    assert r["other"]["pixel_fraction"] == 0.0
    # One pixel fewer in nucleus 2 and it is no longer marked.
    d2 = dark.copy()
    d2[np.nonzero((inst == 2) & dark)[0][-1], np.nonzero((inst == 2) & dark)[1][-1]] = False
    assert class_marking(d2, inst, cls)["tumour"]["marked"] == 1
    with pytest.raises(TypeError):
        class_marking(dark.astype(np.uint8), inst, cls)


def test_no_tumour_nuclei_gives_detection_not_applicable_and_pools_without_it():
    from vnumba.analysis.evaluation import evaluate_masks, pool_results
    # CoNSeP-like: immune, other, epithelial (class 4), no tumour.
    inst, cls, dark, _ = _squares((16, 40), [(2, 2, 2, 0), (2, 12, 3, 0), (2, 22, 4, 36)])
    with pytest.raises(LookupError, match="class 4"):   # the strict default is kept
        target_from_annotations(inst, cls, "scenario3")
    t_mask, t_lab = target_from_annotations(inst, cls, "scenario3", epithelial_not_target=True)
    assert not t_mask.any() and not t_lab.any()          # epithelial is never tumour
    pred_lab = np.where(dark, 1, 0).astype(np.int32)
    r = evaluate_masks(dark, pred_lab, t_mask, t_lab, instances=inst, classes=cls)
    assert r["objects"]["f1"] is None and r["objects"]["precision"] is None
    assert (r["objects"]["tp"], r["objects"]["fp"], r["objects"]["fn"]) == (0, 1, 0)
    assert r["pixel"]["accuracy"] == pytest.approx(1 - 36 / dark.size)
    assert list(r["classes"]) == ["immune", "other", "epithelial"]
    assert r["classes"]["epithelial"]["marked"] == 1 and r["classes"]["immune"]["marked"] == 0
    # An image with one tumour nucleus, found.
    inst2, cls2, dark2, _ = _squares((16, 20), [(2, 2, 1, 36)])
    t2, l2 = target_from_annotations(inst2, cls2, "scenario3")
    r2 = evaluate_masks(dark2, inst2, t2, l2, instances=inst2, classes=cls2)
    assert r2["objects"]["f1"] == 1.0
    pooled = pool_results([r, r2])
    # Detection pools the image with targets only: the CoNSeP-like false positive is left out.
    assert (pooled["objects"]["tp"], pooled["objects"]["fp"]) == (1, 0)
    assert pooled["objects"]["f1"] == 1.0 and pooled["n_images_detection"] == 1
    assert pooled["n_images"] == 2 and pooled["pixel"]["tp"] == 36
    assert pooled["classes"]["tumour"]["nuclei"] == 1
    assert pooled["classes"]["epithelial"]["marked_fraction"] == 1.0
    assert pool_results([r])["objects"]["f1"] is None


def _write_case(folder, name, squares, shape):
    import imageio.v3 as iio
    inst, cls, dark, rgb = _squares(shape, squares)
    folder.mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / f"{name}.png", rgb)
    np.savez_compressed(folder / f"{name}_labels.npz", instances=inst, classes=cls)
    return inst, cls, dark


def test_cli_marked_fractions_per_folder_all_background_and_figure(tmp_path, capsys, monkeypatch):
    import imageio.v3 as iio

    import vnumba.evaluate

    data = tmp_path / "data"
    # PUMA-like: tumour full + half (both marked), immune 17/36 (no) + full (yes), other none.
    pi, pc, pd = _write_case(data / "puma_like", "a",
                             [(2, 2, 1, 36), (2, 12, 1, 18), (2, 22, 2, 17), (2, 32, 2, 36),
                              (2, 42, 3, 0)], (16, 60))
    # CoNSeP-like: no tumour; the epithelial nucleus is dark (marked), the immune one not.
    ci, cc, cd = _write_case(data / "consep_like", "b",
                             [(2, 2, 2, 0), (2, 12, 4, 36), (2, 22, 3, 36)], (16, 40))
    # Without classes: skipped for the scenario-3 target with a one-line reason.
    (data / "plain").mkdir()
    iio.imwrite(data / "plain" / "c.png", np.full((8, 8, 3), 255, np.uint8))
    np.savez(data / "plain" / "c_labels.npz", instances=np.zeros((8, 8), np.int32))
    # Pixel-exact stand-in model: mask = 1 - grey value (black -> 1, white -> 0).
    monkeypatch.setattr(vnumba.evaluate, "load_model_arg",
                        lambda arg, scen: FakeLocalModel(r=0, passes=1))
    out = tmp_path / "rep"
    rc = evaluate.main(["--model", "fake.h5", str(data), "--out", str(out), "--no-overlays"])
    err = capsys.readouterr().err
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    by = {im["image"]: im for im in rep["images"]}
    assert "classes" in by["plain/c.png"]["skipped"]["all"]
    assert "\n" not in by["plain/c.png"]["skipped"]["all"]
    # PUMA-like image, the model: known marked fractions and pixel scores.
    a = by["puma_like/a.png"]
    assert a["folder"] == "puma_like"
    m = a["results"]["fake"]
    assert {k: (v["marked"], v["nuclei"]) for k, v in m["classes"].items()} == \
        {"tumour": (2, 2), "immune": (1, 2), "other": (0, 1)}
    assert m["classes"]["immune"]["pixel_fraction"] == pytest.approx(53 / 72)
    assert m["pixel"]["accuracy"] == pytest.approx(np.mean(pd == (pc == 1)))
    assert m["objects"]["f1"] is not None
    # All background on it: accuracy = 1 - tumour pixel fraction, nothing marked.
    bg = a["all_background"]
    assert bg["pixel"]["accuracy"] == pytest.approx(1 - 72 / pd.size)
    assert all(v["marked"] == 0 and v["marked_fraction"] == 0.0 for v in bg["classes"].values())
    assert bg["objects"]["f1"] == 0.0       # targets present, none found
    # CoNSeP-like image: evaluated, no tumour class, F1 not applicable, epithelial reported.
    b = by["consep_like/b.png"]
    assert "all" not in b["skipped"] and "class 4" in b["note"]
    mb = b["results"]["fake"]
    assert mb["objects"]["f1"] is None and mb["n_target"] == 0
    assert "tumour" not in mb["classes"]
    assert (mb["classes"]["epithelial"]["marked"], mb["classes"]["immune"]["marked"]) == (1, 0)
    assert mb["pixel"]["accuracy"] == pytest.approx(1 - 72 / cd.size)
    assert b["all_background"]["pixel"]["accuracy"] == 1.0
    assert b["all_background"]["objects"]["f1"] is None
    # Pooling per folder and overall: sums of the images' counts.
    assert list(rep["per_folder"]) == ["consep_like", "puma_like"]
    assert rep["per_folder"]["puma_like"]["fake"]["classes"] == m["classes"]
    ov = rep["overall"]["fake"]
    assert ov["classes"]["immune"]["nuclei"] == 3 and ov["classes"]["immune"]["marked"] == 1
    assert ov["classes"]["epithelial"]["nuclei"] == 1
    assert ov["pixel"]["tp"] == m["pixel"]["tp"] + mb["pixel"]["tp"]
    assert ov["objects"]["tp"] == m["objects"]["tp"] and ov["n_images_detection"] == 1
    obg = rep["all_background"]["overall"]
    assert obg["pixel"]["accuracy"] == pytest.approx(1 - 72 / (pd.size + cd.size))
    assert rep["all_background"]["per_folder"]["consep_like"]["pixel"]["accuracy"] == 1.0
    assert "classical baseline" in rep["per_folder"]["consep_like"]
    # Messages: per image, per folder and overall lines, with the all-background reference.
    assert "folder consep_like fake:" in err and "F1 –" in err
    assert "overall all background: pixel acc" in err
    assert "marked nuclei tumour 1.000 (2/2), immune 0.500 (1/2)" in err
    md = (out / "report.md").read_text()
    assert "## Per folder" in md and "## Marked nuclei per class" in md
    assert "at least half of its pixels" in md
    assert "| consep_like/b.png | fake |" in md and "| – | – | – |" in md
    # The figure: a PNG written into the report folder, without leftover temporary files.
    # (confusion.png: the classed nuclei of the model, counted tumour, and of the baseline)
    assert rep["figures"] == ["marked_fractions.png", "confusion.png"]
    png = (out / "marked_fractions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert iio.imread(out / "marked_fractions.png").shape[0] > 100
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_plot_marked_fractions_needs_classes(tmp_path):
    from vnumba.analysis.evaluation import pool_results
    from vnumba.analysis.plots import plot_marked_fractions
    inst, cls, dark, _ = _squares((10, 20), [(2, 2, 1, 36), (2, 10, 2, 0)])
    t, lab = target_from_annotations(inst, cls, "scenario3")
    r = evaluation.evaluate_masks(dark, inst * dark, t, lab, instances=inst, classes=cls)
    rep = {"methods": [{"name": "m"}], "overall": {"m": pool_results([r])},
           "per_folder": {"x": {"m": pool_results([r])}, "y": {"m": pool_results([r])}}}
    p = plot_marked_fractions(rep, tmp_path / "f.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
    r.pop("classes")
    with pytest.raises(ValueError, match="classes"):
        plot_marked_fractions({"methods": [{"name": "m"}], "overall": {"m": pool_results([r])}},
                              tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


def test_nominal_mpp_is_the_same_from_the_folder_and_from_its_parent(tmp_path):
    # Manifest two levels up: found whichever folder is evaluated.
    (tmp_path / "real" / "set").mkdir(parents=True)
    (tmp_path / "real" / "manifest.csv").write_text("file,magnification,mpp\nset/a.png,20x,\n")
    img = tmp_path / "real" / "set" / "a.png"
    assert nominal_mpp(tmp_path / "real", img) == pytest.approx(0.5)
    assert nominal_mpp(tmp_path / "real" / "set", img) == pytest.approx(0.5)
    # A nearer manifest that does not list the image is passed over; one that lists it wins.
    (tmp_path / "real" / "set" / "manifest.csv").write_text("file,magnification,mpp\nb.png,40x,\n")
    assert nominal_mpp(tmp_path / "real" / "set", img) == pytest.approx(0.5)
    (tmp_path / "real" / "set" / "manifest.csv").write_text(
        "file,magnification,mpp\nb.png,40x,\na.png,40x,\n")
    assert nominal_mpp(tmp_path / "real" / "set", img) == pytest.approx(0.25)


def test_evaluating_a_folder_or_its_parent_gives_the_same_figures(tmp_path):
    data = tmp_path / "real"
    _write_case(data / "puma_like", "a", [(2, 2, 1, 36), (2, 12, 2, 36)], (10, 20))
    (data / "manifest.csv").write_text("file,magnification,mpp\npuma_like/a.png,40x,\n")
    model = FakeLocalModel(r=0, passes=1)
    kw = dict(methods={"fake": model}, target="scenario3", overlays=False, say=lambda *a: None)
    r_parent = evaluation.run_evaluation(data_dir=data, out_dir=tmp_path / "o1", **kw)
    r_folder = evaluation.run_evaluation(data_dir=data / "puma_like", out_dir=tmp_path / "o2", **kw)
    (ip,), (if_,) = r_parent["images"], r_folder["images"]
    assert ip["mpp"] == if_["mpp"] == pytest.approx(0.25)
    assert ip["folder"] == if_["folder"] == "puma_like"
    assert list(r_parent["per_folder"]) == list(r_folder["per_folder"]) == ["puma_like"]
    for k in ("pixel", "objects", "classes"):
        assert ip["results"]["fake"][k] == if_["results"]["fake"][k]
