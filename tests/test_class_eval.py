"""Per-class evaluation of classed nuclei (issue 20): hand-made centroid sets with known
answers, the classical baseline's shape classes, and the evaluation command end to end with a
fake multi-class model (confusion figure, report sections)."""
import json

import numpy as np
import pytest
from multiclass_helpers import FakeMultiClassModel, paint
from predict_helpers import FakeLocalModel

from vnumba.analysis.classeval import evaluate_classes, pool_class_results


def _annotation():
    """2x2 annotated nuclei; centroid = (row + 0.5, col + 0.5).  Returns instances, classes
    and the centroids by name."""
    nuclei = {  # name: (row, col, class)
        "T1": (10, 10, 1), "T2": (10, 100, 1),
        "I1": (10, 50, 2),    # 40 px = 10 µm at 0.25 µm/px from T1: at the border (inclusive)
        "I2": (10, 200, 2),   # 100 px from T2: not at the border
        "I3": (60, 100, 2),   # 50 px = 12.5 µm from T2: not at the border
        "O1": (100, 10, 3), "E1": (100, 200, 4),
    }
    inst = np.zeros((120, 220), np.int32)
    cls = np.zeros((120, 220), np.uint8)
    cent = {}
    for k, (name, (r, c, cl)) in enumerate(nuclei.items(), 1):
        inst[r:r + 2, c:c + 2] = k
        cls[r:r + 2, c:c + 2] = cl
        cent[name] = np.array([r + 0.5, c + 0.5])
    return inst, cls, cent


def _predictions(cent):
    preds = [  # centroid, class
        (cent["T1"] + [0, 3], "tumour"),     # tumour found as tumour
        (cent["I1"] + [4, 0], "tumour"),     # border immune nucleus classed tumour
        (cent["T2"] + [0, 20], "tumour"),    # 20 px = 5 µm off: no match; T2 missed
        (cent["I2"], "immune"),              # immune found as immune
        (cent["O1"] + [1, 1], "immune"),     # other classed immune
        (cent["E1"], "tumour"),              # epithelial classed tumour
        (np.array([110.0, 150.0]), "other"),  # nothing annotated there
    ]
    return np.array([p for p, _ in preds]), [c for _, c in preds]


def test_confusion_f1_and_border_on_hand_made_centroids():
    inst, cls, cent = _annotation()
    pc, pn = _predictions(cent)
    r = evaluate_classes(pc, pn, inst, cls, mpp=0.25)
    assert r["match_radius_px"] == 16.0 and r["border_radius_px"] == 40.0
    conf = r["confusion"]
    assert list(conf) == ["tumour", "immune", "other", "epithelial", "no nucleus"]
    assert list(conf["tumour"]) == ["tumour", "immune", "other", "missed"]
    assert conf["tumour"] == {"tumour": 1, "immune": 0, "other": 0, "missed": 1}
    assert conf["immune"] == {"tumour": 1, "immune": 1, "other": 0, "missed": 1}
    assert conf["other"] == {"tumour": 0, "immune": 1, "other": 0, "missed": 0}
    assert conf["epithelial"] == {"tumour": 1, "immune": 0, "other": 0, "missed": 0}
    assert conf["no nucleus"] == {"tumour": 1, "immune": 0, "other": 1, "missed": 0}
    # Per-class detection: tumour predictions {T1+3, I1+4, T2+20, E1} vs tumour nuclei {T1, T2}
    t = r["detection"]["tumour"]
    assert (t["tp"], t["fp"], t["fn"], t["nuclei"]) == (1, 3, 1, 2)
    assert t["f1"] == pytest.approx(2 / 6)
    i = r["detection"]["immune"]
    assert (i["tp"], i["fp"], i["fn"]) == (1, 1, 2) and i["f1"] == pytest.approx(2 / 5)
    assert r["immune_classed_tumour"] == {"count": 1, "nuclei": 3, "share": pytest.approx(1 / 3)}
    assert r["tumour_classed_immune"] == {"count": 0, "nuclei": 2, "share": 0.0}
    b = r["border_immune"]
    assert b["nuclei"] == 1 and b["classed"]["tumour"] == 1 and b["share_tumour"] == 1.0
    assert (r["n_pred"], r["n_annotated"]) == (7, 7)


def test_distances_are_micrometres():
    inst, cls, cent = _annotation()
    pc, pn = _predictions(cent)
    # At 0.5 µm/px: matches within 8 px (the 3 and 4 px offsets still match), border 20 px:
    # I1 (40 px from T1) is no longer at the border.
    r = evaluate_classes(pc, pn, inst, cls, mpp=0.5)
    assert r["confusion"]["immune"]["tumour"] == 1
    assert r["border_immune"]["nuclei"] == 0 and r["border_immune"]["share_tumour"] is None
    # A 2.5 µm matching distance at 0.25 µm/px (10 px): the I1 prediction (4 px) still matches
    r = evaluate_classes(pc, pn, inst, cls, mpp=0.25, match_um=0.5)   # 2 px: only exact ones
    assert r["confusion"]["tumour"]["missed"] == 2 and r["confusion"]["immune"]["immune"] == 1
    # the border immune nucleus is now missed, not classed tumour
    assert r["border_immune"]["classed"]["missed"] == 1 and r["border_immune"]["share_tumour"] == 0.0
    with pytest.raises(ValueError, match="pixel size"):
        evaluate_classes(pc, pn, inst, cls, mpp=None)
    with pytest.raises(ValueError, match="classes for"):
        evaluate_classes(pc, pn[:-1], inst, cls, mpp=0.25)


def test_pooling_sums_counts_and_skips_not_applicable_detection():
    inst, cls, cent = _annotation()
    pc, pn = _predictions(cent)
    r1 = evaluate_classes(pc, pn, inst, cls, mpp=0.25)
    # A second image with only an "other" nucleus and one tumour prediction on it:
    inst2 = np.zeros((20, 20), np.int32)
    inst2[5:7, 5:7] = 1
    cls2 = np.where(inst2 > 0, 3, 0).astype(np.uint8)
    r2 = evaluate_classes([[5.5, 5.5]], ["tumour"], inst2, cls2, mpp=0.25)
    assert r2["detection"]["tumour"]["f1"] is None      # no annotated tumour nucleus
    assert r2["detection"]["tumour"]["fp"] == 1
    p = pool_class_results([r1, r2])
    assert p["confusion"]["other"] == {"tumour": 1, "immune": 1, "other": 0, "missed": 0}
    assert p["confusion"]["tumour"] == r1["confusion"]["tumour"]
    # the second image does not enter the tumour detection counts
    assert (p["detection"]["tumour"]["tp"], p["detection"]["tumour"]["fp"]) == (1, 3)
    assert p["detection"]["tumour"]["n_images"] == 1
    assert p["border_immune"]["nuclei"] == 1 and p["n_images"] == 2
    assert p["immune_classed_tumour"]["share"] == pytest.approx(1 / 3)


def test_classical_baseline_classes_by_size_and_shape():
    from vnumba.analysis.baseline import classify_by_shape, object_shapes
    lab = np.zeros((80, 120), np.int32)
    rr, cc = np.indices(lab.shape)
    lab[(rr - 20) ** 2 + (cc - 20) ** 2 <= 12 ** 2] = 1   # disc, 24 px = 6 µm at 0.25: immune
    lab[(rr - 40) ** 2 + (cc - 70) ** 2 <= 24 ** 2] = 2   # disc, 48 px = 12 µm: tumour
    lab[70:74, 5:60] = 3                                  # 4 x 55 px spindle: other
    ids, area, ratio = object_shapes(lab)
    assert ids.tolist() == [1, 2, 3]
    assert ratio[0] == pytest.approx(1.0, abs=0.02) and ratio[2] < 0.1
    ids, names = classify_by_shape(lab, 0.25)
    assert names == ["immune", "tumour", "other"]
    # the size threshold is in micrometres: at 0.5 µm/px the small disc is 12 µm across
    assert classify_by_shape(lab, 0.5)[1] == ["tumour", "tumour", "other"]


# ----------------------------------------------------------------------------- end to end
def _write(folder, name, nuclei, annotated, shape=(30, 60)):
    """Painted image for the fake model + annotation with the given classes."""
    import imageio.v3 as iio
    img, inst = paint(shape, nuclei)
    cls = np.zeros(shape, np.uint8)
    for k, c in enumerate(annotated, 1):
        cls[inst == k] = c
    folder.mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / f"{name}.png", img)
    np.savez_compressed(folder / f"{name}_labels.npz", instances=inst, classes=cls)


def test_cli_per_class_scores_and_confusion_figure(tmp_path, capsys, monkeypatch):
    import imageio.v3 as iio

    import vnumba.evaluate
    from vnumba import evaluate

    data = tmp_path / "data"
    # painted (= predicted) tumour, immune, tumour, other; annotated tumour, immune, immune,
    # other: the third nucleus is an immune one classed tumour, 8 px (2 µm) from a tumour one.
    _write(data / "set", "a", [(2, 2, "tumour"), (2, 10, "immune"), (12, 2, "tumour"),
                               (20, 40, "other")], [1, 2, 2, 3])
    (data / "manifest.csv").write_text("file,magnification,mpp\nset/a.png,40x,\n")
    models = {"mc.h5": FakeMultiClassModel(), "one.h5": FakeLocalModel(r=0, passes=1)}
    monkeypatch.setattr(vnumba.evaluate, "load_model_arg", lambda arg, scen: models[arg])
    out = tmp_path / "rep"
    rc = evaluate.main(["--model", "mc.h5", "--baseline-model", "one.h5", str(data), "--out",
                        str(out), "--no-overlays", "--min-area", "4", "--threshold", "0.3"])
    err = capsys.readouterr().err
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    res = rep["images"][0]["results"]
    c = res["mc"]["classified"]
    assert c["confusion"]["tumour"] == {"tumour": 1, "immune": 0, "other": 0, "missed": 0}
    assert c["confusion"]["immune"] == {"tumour": 1, "immune": 1, "other": 0, "missed": 0}
    assert c["confusion"]["other"]["other"] == 1
    assert c["detection"]["tumour"]["f1"] == pytest.approx(2 / 3)   # TP 1, FP 1, FN 0
    assert c["detection"]["immune"]["f1"] == pytest.approx(2 / 3)   # TP 1, FP 0, FN 1
    assert c["border_immune"]["nuclei"] == 2 and c["border_immune"]["classed"]["tumour"] == 1
    assert c["match_radius_px"] == 16.0 and c["n_pred"] == 4
    # Against the scenario-3 target (tumour nuclei) the multi-class model's mask is its
    # nuclei classed tumour: nuclei 1 (annotated tumour) and 3 (annotated immune).
    assert res["mc"]["n_pred"] == 2 and res["mc"]["n_target"] == 1
    assert res["mc"]["objects"]["f1"] == pytest.approx(2 / 3)
    assert {k: (v["marked"], v["nuclei"]) for k, v in res["mc"]["classes"].items()} == \
        {"tumour": (1, 1), "immune": (1, 2), "other": (0, 1)}
    # The one-channel scenario-3 model (mask 1 - grey = 2/3 on every painted nucleus): its
    # four nuclei all count as tumour.
    one = res["one"]["classified"]
    assert res["one"]["n_pred"] == 4
    assert [one["confusion"][r]["tumour"] for r in ("tumour", "immune", "other")] == [1, 2, 1]
    assert all(cs["immune"] == 0 and cs["other"] == 0 for cs in one["confusion"].values())
    # The classical baseline has classes too (its shape rule).
    assert "classified" in res["classical baseline"]
    assert rep["overall"]["mc"]["classified"]["confusion"] == c["confusion"]
    assert rep["settings"]["class_match_um"] == 4.0 and rep["settings"]["border_um"] == 10.0
    # Report, terminal and figure.
    md = (out / "report.md").read_text()
    assert "## Nucleus classes" in md and "### Confusion matrices" in md
    assert "| all (1) | mc | 0.667 (1/1/0) | 0.667 (1/0/1) | 0.500 (1/2) |" in md
    assert "overall mc classes: F1 tumour 0.667, immune 0.667; immune classed tumour 0.500 (1/2)" in err
    assert "confusion.png" in rep["figures"]
    png = iio.imread(out / "confusion.png")
    assert png.shape[0] > 100 and png.shape[1] > 300 and png.std() > 10
    # --target nuclei: the multi-class model's mask is the union of its classes.
    rc = evaluate.main(["--model", "mc.h5", str(data), "--out", str(tmp_path / "r2"),
                        "--no-overlays", "--min-area", "4", "--target", "nuclei", "-q"])
    assert rc == 0
    r2 = json.loads((tmp_path / "r2" / "report.json").read_text())["images"][0]["results"]["mc"]
    assert r2["n_pred"] == 4 and r2["objects"]["f1"] == 1.0
    assert r2["classified"]["confusion"] == c["confusion"]


def test_a_multiclass_model_of_no_registered_scenario_is_scored_on_all_nuclei(
        tmp_path, capsys, monkeypatch):
    import vnumba.evaluate
    from vnumba import evaluate
    _write(tmp_path / "d", "a", [(2, 2, "tumour"), (2, 10, "immune")], [1, 2])
    model = FakeMultiClassModel(meta={"scenario": "all_nuclei_classes"})
    monkeypatch.setattr(vnumba.evaluate, "load_model_arg", lambda arg, scen: model)
    rc = evaluate.main(["--model", "m.h5", str(tmp_path / "d"), "--out", str(tmp_path / "r"),
                        "--no-overlays", "--min-area", "4", "--mpp", "0.25"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "not a registered scenario" in err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["target"] == "nuclei"
    m = rep["images"][0]["results"]["m"]
    assert m["n_target"] == 2 and m["objects"]["f1"] == 1.0
    assert m["classified"]["detection"]["immune"]["f1"] == 1.0


def test_plot_confusion_needs_classed_nuclei(tmp_path):
    from vnumba.analysis.plots import plot_confusion
    inst, cls, cent = _annotation()
    pc, pn = _predictions(cent)
    c = pool_class_results([evaluate_classes(pc, pn, inst, cls, mpp=0.25)])
    rep = {"methods": [{"name": "a"}, {"name": "b"}],
           "overall": {"a": {"classified": c}, "b": {"n_images": 1}}}
    p = plot_confusion(rep, tmp_path / "c.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="classed"):
        plot_confusion({"methods": [{"name": "b"}], "overall": {"b": {}}}, tmp_path / "d.png")
    assert not (tmp_path / "d.png").exists()
