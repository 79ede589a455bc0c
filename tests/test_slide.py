"""Whole-slide analysis (``python -m vnumba.slide``, issue 21): outputs and their contracts,
independence of ``--tile`` (against whole-image prediction), ``--resume``, ``--region``, a
blank slide, the one-line refusals, detections off the tissue, and the OpenSlide path.

Fixtures: a tiny synthetic scenario-3 slide (512 x 640 px at 0.25 µm/px, two levels: the
model's 0.48 µm/px picks level 1 at 0.5 µm/px, resampled by 0.96), the same slide written
SVS-style (JPEG tiles, read through OpenSlide), and a tiny three-class network whose
parameters are set by hand (:func:`nucleus_model`): an untrained network's masks stay near
1e-5 and mark nothing, while this one runs the real variational-network code and marks dark
nuclei, tumour / immune / other by their colour, so that the tests see tens of nuclei of
every class.
"""
import csv
import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_scenario3_lookalikes import bundle  # noqa: F401 (fixture)

from synth.__main__ import main as synth_main
from vnumba.slide import main

SEED = 5
H0, W0, MPP0, MODEL_MPP = 512, 640, 0.25, 0.48
CLASSES = ("tumour", "immune", "other")
CSV_COLUMNS = ["id", "uuid", "x", "y", "class", "area_um2", "p_tumour", "p_immune", "p_other",
               "dist_tumour_um"]
REPORT_KEYS = ("tumour_nuclei", "immune_cells", "immune_near_tumour",
               "tumour_with_immune_neighbour_fraction", "radius_um", "tissue_area_mm2",
               "immune_rich_area_mm2", "immune_call", "mpp", "level", "tiles_processed",
               "tiles_skipped", "seconds")
OUTPUT_KINDS = ("cells.geojson", "cells.csv", "probability.ome.tif", "report.json",
                "report.md", "density.png", "thumbnail.png")


# --------------------------------------------------------------------------- the model
def _rbf_weights(cfg, fn):
    """RBF weights whose expansion is ``fn`` on the grid's interval (least squares)."""
    from vnumba.ops.rbf import RBFGrid
    g = RBFGrid(cfg)
    x = np.linspace(cfg.rbf_min, cfg.rbf_max, 801)
    G = np.exp(-(x[:, None] - g.centres[None]) ** 2 / (2 * g.sigma ** 2))
    return np.linalg.lstsq(G, fn(x), rcond=None)[0]


def nucleus_model(B0=0.28, k=4.0, colour=0.25, rb0=0.21, t_tumour=0.05, t_other=0.05):
    """A real two-step variational network (three mask classes, Reinhard target of
    scenario 3) with hand-set parameters.  Step 1, from ``m = 0``:

    * features ``a0`` = 5x5 mean brightness ``B``, ``a1`` = 5x5 mean of ``2.5 (R - B)``,
      ``f0 = (0.5 + k (B0 - B)) / 4``, ``f1 = colour / 4 tanh((R - B + rb0) / 0.04)``, ``f2 = 1/4``;
    * coupling: mask feature ``c`` reads ``f0`` (3x3 mean) plus a class term (tumour
      ``+t_tumour``, immune ``-f1`` (bluer), other ``+f1 - t_other``), ``psi(z) = -4 z``;

    so ``m_c = clip(0.5 + k (B0 - B) + class term)``: above 0.5 on dark nuclei.  Step 2 is
    the identity (all parameters zero).  Receptive radius declared 12 px (2 steps)."""
    from vnumba.io.models import Model
    from vnumba.vn.config import ModelConfig, param_shapes

    cfg = ModelConfig(n_steps=2, n_mask=3, nf_u=4, nf_m=3, ks_u=5, ks_m=3, ks=3, n_w=61,
                      zero_mean_u=False, zero_mean_m=False)
    p = {n: np.zeros(s) for n, s in param_shapes(cfg).items()}
    Fu = cfg.nf_u
    p["Ku"][0, 0] = 1.0 / 75.0
    p["Ku"][0, 1, 0] = 2.5 / 25.0
    p["Ku"][0, 1, 2] = -2.5 / 25.0
    p["wu"][0, 0] = _rbf_weights(cfg, lambda x: (0.5 / k + B0 - x) * k / 4)
    p["wu"][0, 1] = _rbf_weights(cfg, lambda x: colour / 4 * np.tanh((x + 2.5 * rb0) / 0.1))
    p["wu"][0, 2] = _rbf_weights(cfg, lambda x: np.full_like(x, 0.25))
    for c in range(3):
        o = Fu + c
        p["Km"][0, c, c, 1, 1] = 1.0
        p["wm"][0, c] = _rbf_weights(cfg, lambda x: x)
        p["K"][0, o, 0] = 1.0 / 9.0
        p["K"][0, o, o, 1, 1] = 1.0
        p["w"][0, o] = _rbf_weights(cfg, lambda z: -4.0 * z)
    p["K"][0, Fu + 0, 2, 1, 1] = t_tumour      # f2 = 1/4, m = 4 z
    p["K"][0, Fu + 1, 1, 1, 1] = -1.0
    p["K"][0, Fu + 2, 1, 1, 1] = 1.0
    p["K"][0, Fu + 2, 2, 1, 1] = -t_other
    params = {n: np.ascontiguousarray(v, np.float32) for n, v in p.items()}
    meta = {"scenario": "scenario3", "mpp": MODEL_MPP, "channels": 3,
            "mask_classes": list(CLASSES),
            # synth/scenarios/scenario3.toml [normalization]
            "reinhard_mean": [36.052, 47.302, -41.362], "reinhard_std": [10.423, 6.281, 5.702]}
    return Model(arch="vn", config=cfg, params=params, meta=meta)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory, bundle):  # noqa: F811
    """The slides (OME ``s.ome.tif`` and SVS-style ``t.svs`` of the same seed) and the model."""
    from vnumba.io.models import save_model

    d = tmp_path_factory.mktemp("slide_cli")
    out = {}
    for name in ("s.ome.tif", "t.svs"):
        rc = synth_main(["slide", "--scenario", "scenario3", "--size", str(H0), str(W0), "-o",
                         str(d / name), "--seed", str(SEED), "--mpp", str(MPP0), "--reference",
                         str(bundle), "--tile", "128", "-q"])
        assert rc == 0
        out[name.split(".")[0]] = d / name
    out["model"] = d / "nuclei3.h5"
    save_model(out["model"], nucleus_model())
    out["dir"] = d
    return out


def run(args, capsys):
    """``main(args + -q)`` -> (exit status, stderr lines)."""
    capsys.readouterr()
    rc = main([str(a) for a in args] + ["-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def _analyse(data, out, *extra):
    rc = main([str(data["s"]), "--out", str(out), "--model", str(data["model"]), "-q",
               *[str(a) for a in extra]])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def ref(data):
    """The reference run: ``--tile 128`` (3 x 3 blocks on the 267 x 333 model grid)."""
    return _analyse(data, data["dir"] / "ref", "--tile", "128")


@pytest.fixture(scope="module")
def pair(data):
    """The OME and the SVS slide in one call, ``--tile 512`` (one block: the whole image)."""
    out = data["dir"] / "pair"
    rc = main([str(data["s"]), str(data["t"]), "--out", str(out), "--model", str(data["model"]),
               "--tile", "512", "-q"])
    assert rc == 0
    return out


def cells(out, name="s"):
    with open(Path(out) / f"{name}_cells.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def geojson(out, name="s"):
    return json.loads((Path(out) / f"{name}_cells.geojson").read_text())


def report(out, name="s"):
    return json.loads((Path(out) / f"{name}_report.json").read_text())


def probability(out, name="s"):
    return tifffile.imread(Path(out) / f"{name}_probability.ome.tif")


def nucleus_table(out, name="s"):
    """The cell table as a set-like sorted list (block order, and so ids, depend on --tile)."""
    return sorted((r["x"], r["y"], r["class"], r["area_um2"], r["p_tumour"], r["p_immune"],
                   r["p_other"], r["dist_tumour_um"]) for r in cells(out, name))


def whole_image_prediction(data):
    """The model on the whole model grid in one window (no blocks), as uint8 probabilities."""
    from vnumba.analysis.tissue import tissue_mask
    from vnumba.analysis.wsi import ModelGridReader, SlideOptions, apply_window, plan_slide
    from vnumba.io.models import load_model
    from vnumba.io.slides import open_slide
    from vnumba.slide import _norm_stats

    model = load_model(str(data["model"]))
    with open_slide(data["s"]) as reader:
        plan = plan_slide(reader, model, SlideOptions(tile=1024))
        assert len(plan.blocks) == 1
        norm = _norm_stats(reader, plan, tissue_mask(reader), model)
        img = ModelGridReader(reader, plan, norm).read(0, plan.grid[0], 0, plan.grid[1])
    _, m = apply_window(model, img, plan.multiple)
    return np.clip(np.rint(np.asarray(m, np.float32) * 255.0), 0, 255).astype(np.uint8), plan


# --------------------------------------------------------------------------- 1. outputs
def test_every_output_is_written_and_the_work_folder_removed(data, ref):
    for k in OUTPUT_KINDS:
        assert (ref / f"s_{k}").is_file() and (ref / f"s_{k}").stat().st_size > 0, k
    assert (ref / "summary.csv").is_file()
    assert not (ref / ".s.work").exists()
    assert sorted(p.name for p in ref.iterdir()) == sorted([f"s_{k}" for k in OUTPUT_KINDS]
                                                            + ["summary.csv"])


def test_the_slide_holds_tens_of_nuclei_of_every_class(ref):
    rows = cells(ref)
    n = Counter(r["class"] for r in rows)
    assert 30 <= len(rows) <= 300, n
    assert set(n) == set(CLASSES) and min(n.values()) >= 5, n


def test_cell_csv_columns_and_values(ref):
    with open(ref / "s_cells.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == CSV_COLUMNS
    rows = cells(ref)
    assert [int(r["id"]) for r in rows] == list(range(len(rows)))
    assert len({r["uuid"] for r in rows}) == len(rows)
    for r in rows:
        x, y = float(r["x"]), float(r["y"])
        assert -0.5 <= x <= W0 - 0.5 and -0.5 <= y <= H0 - 0.5
        assert r["class"] in CLASSES
        p = np.array([float(r[f"p_{c}"]) for c in CLASSES])
        assert np.all(p >= 0) and abs(p.sum() - 1) < 1e-4
        assert r["class"] == CLASSES[int(np.argmax(p))]
        # SlideOptions.min_area_um2 (1.25 um2) in whole model pixels: 5 px of 0.48 um
        assert float(r["area_um2"]) >= 5 * 0.48 ** 2 - 1e-3


def test_geojson_features_match_the_csv_rows(ref):
    import shapely.geometry as sg

    from vnumba.scenarios import MASK_CLASSES

    fc = geojson(ref)
    assert fc["type"] == "FeatureCollection"
    det = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    assert all(f["properties"]["objectType"] in ("detection", "annotation") for f in fc["features"])
    rows = cells(ref)
    assert len(det) == len(rows) > 0
    for f, r in zip(det, rows):
        assert f["type"] == "Feature" and f["id"] == r["uuid"]
        cl = f["properties"]["classification"]
        mc = MASK_CLASSES[r["class"]]
        assert cl["name"] == mc.qupath_class and tuple(cl["color"]) == tuple(mc.color)
        g = f["geometry"]
        assert g["type"] in ("Polygon", "MultiPolygon")
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        for poly in polys:
            for ring in poly:
                a = np.asarray(ring)
                assert len(a) >= 4 and np.array_equal(a[0], a[-1])      # closed
                assert a[:, 0].min() >= 0 and a[:, 0].max() <= W0       # level-0 pixels
                assert a[:, 1].min() >= 0 and a[:, 1].max() <= H0
        # the polygon is this row's nucleus: pixel squares with the CSV's centroid and area
        # (QuPath's origin is the first pixel's corner, the CSV's its centre)
        shp = sg.shape(g)
        assert abs(shp.centroid.x - (float(r["x"]) + 0.5)) < 0.01
        assert abs(shp.centroid.y - (float(r["y"]) + 0.5)) < 0.01
        assert shp.area * MPP0 ** 2 == pytest.approx(float(r["area_um2"]), abs=2e-3)
        meas = f["properties"]["measurements"]
        assert meas["area_um2"] == pytest.approx(float(r["area_um2"]), abs=1e-3)
        for c in CLASSES:
            assert meas[f"p_{c}"] == pytest.approx(float(r[f"p_{c}"]), abs=1e-5)


def test_report_keys_agree_with_the_cell_table(ref):
    from scipy.spatial import cKDTree

    rep = report(ref)
    for k in REPORT_KEYS:
        assert k in rep, k
    rows = cells(ref)
    n = Counter(r["class"] for r in rows)
    assert (rep["tumour_nuclei"], rep["immune_cells"], rep["other_nuclei"]) == \
        (n["tumour"], n["immune"], n["other"])
    assert rep["mpp"] == MPP0 and rep["level"] == 1 and rep["model_mpp"] == MODEL_MPP
    assert rep["tiles_processed"] + rep["tiles_skipped"] == 9 and rep["seconds"] > 0
    assert rep["radius_um"] == 20.0
    assert rep["immune_call"] in ("immune-rich", "immune-poor")
    assert rep["tissue_area_mm2"] > 0 and 0 <= rep["immune_rich_area_mm2"] <= rep["tissue_area_mm2"]
    # interactions recomputed from the CSV (µm)
    xy = {c: np.array([[float(r["x"]), float(r["y"])] for r in rows if r["class"] == c]) * MPP0
          for c in CLASSES}
    tree = cKDTree(xy["tumour"])
    d_imm, _ = tree.query(xy["immune"])
    R = rep["radius_um"]
    assert rep["immune_near_tumour"] == int((d_imm <= R).sum()) > 0
    near = cKDTree(xy["immune"]).query(xy["tumour"])[0] <= R
    assert rep["tumour_with_immune_neighbour_fraction"] == pytest.approx(near.mean(), abs=1e-9)
    imm = [r for r in rows if r["class"] == "immune"]
    assert np.allclose([float(r["dist_tumour_um"]) for r in imm], d_imm, atol=2e-3)


def test_probability_tiff_is_a_tiled_three_channel_ome_tiff_of_the_block_probabilities(data, ref):
    from vnumba.analysis.tissue import tissue_mask
    from vnumba.analysis.wsi import ModelGridReader, SlideOptions, plan_slide, process_block
    from vnumba.io.models import load_model
    from vnumba.io.slides import open_slide
    from vnumba.slide import _norm_stats

    with tifffile.TiffFile(ref / "s_probability.ome.tif") as tif:
        assert tif.is_ome
        s = tif.series[0]
        assert s.axes == "CYX" and s.dtype == np.uint8
        assert s.shape == (3, 267, 333)           # 512 x 640 at 0.25 -> 0.48 µm/px
        assert tif.pages[0].is_tiled
        pixels = [e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels")]
        assert float(pixels[0].get("PhysicalSizeX")) == pytest.approx(MODEL_MPP)
        assert float(pixels[0].get("PhysicalSizeY")) == pytest.approx(MODEL_MPP)
        names = [e.get("Name") for e in ET.fromstring(tif.ome_metadata).iter()
                 if e.tag.endswith("Channel")]
        assert names == list(CLASSES)
        prob = s.asarray()
    assert prob.max() > 128                        # nuclei are marked
    model = load_model(str(data["model"]))
    opts = SlideOptions(tile=128)
    with open_slide(data["s"]) as reader:
        plan = plan_slide(reader, model, opts)
        grid = ModelGridReader(reader, plan, _norm_stats(reader, plan, tissue_mask(reader), model))
        for k in (0, 4, len(plan.blocks) - 1):
            res = process_block(k, plan, grid, model, opts)
            r0, r1, c0, c1 = plan.blocks[k][0]
            assert np.array_equal(prob[:, r0:r1, c0:c1], res.probs), k


def test_summary_and_markdown_report(data, ref, pair):
    with open(ref / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["name"] == "s"
    assert int(rows[0]["tumour_nuclei"]) == report(ref)["tumour_nuclei"]
    with open(pair / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["s", "t"]
    md = (ref / "s_report.md").read_text()
    assert "level 0 0.25 µm/px" in md and "level 1 (0.5 µm/px)" in md
    assert "0.48 µm/px" in md
    rep = report(ref)
    assert re.search(rf"\| tumour_nuclei \| {rep['tumour_nuclei']} \|", md)


# --------------------------------------------------------------------------- 2. --tile
@pytest.fixture(scope="module")
def t64(data):
    """``--tile 64``: 5 x 6 blocks."""
    return _analyse(data, data["dir"] / "t64", "--tile", "64")


def test_probabilities_do_not_depend_on_tile_and_equal_whole_image_prediction(data, ref, pair, t64):
    """Bit for bit: the network's window around every block covers its receptive field, and
    one block (``--tile 512``) is the whole image."""
    assert report(t64)["tiles_processed"] == 30 and report(pair)["tiles_processed"] == 1
    whole, plan = whole_image_prediction(data)
    assert whole.shape == (3, *plan.grid)
    for out in (ref, t64, pair):
        assert np.array_equal(probability(out), whole)


def test_nucleus_tables_agree_across_tiles_within_the_stated_tolerance(ref, pair, t64):
    """Tolerance: at most max(2, 5 %) nuclei differ (a nucleus counts as equal when its x, y,
    class, area, probabilities and distance are equal to the last printed digit), class
    counts within 2.  Exact equality is not reached, see the xfail test below."""
    tables = {k: set(nucleus_table(o)) for k, o in (("128", ref), ("64", t64), ("whole", pair))}
    n = len(tables["whole"])
    for k in ("128", "64"):
        diff = tables[k] ^ tables["whole"]
        assert len(diff) <= 2 * max(2, 0.05 * n), (k, sorted(diff))  # a changed nucleus: 2 entries
        assert abs(len(tables[k]) - n) <= 2
    for key in ("tumour_nuclei", "immune_cells", "other_nuclei"):
        assert abs(report(t64)[key] - report(pair)[key]) <= 2
        assert abs(report(ref)[key] - report(pair)[key]) <= 2


@pytest.mark.xfail(strict=False, reason=(
    "objects differ at a few places between tilings although the probabilities are bit-equal: "
    "h-maxima and the watershed of vnumba.analysis.objects.split_touching are non-local within "
    "an 8-connected foreground cluster, so clusters larger than the 12 um halo are split "
    "differently when cut at the extended block's edge (the tie-breaking of seeds, the other "
    "cause, is now crop-independent)"))
def test_nucleus_tables_do_not_depend_on_tile_exactly(ref, pair, t64):
    assert nucleus_table(t64) == nucleus_table(ref) == nucleus_table(pair)


# --------------------------------------------------------------------------- 3. --resume
def _counting(monkeypatch, fail_at=None):
    """Count process_block calls (block indices); raise KeyboardInterrupt at call ``fail_at``."""
    import vnumba.analysis.wsi as W

    real = W.process_block
    calls = []

    def counted(k, *a, **kw):
        calls.append(k)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(k, *a, **kw)

    monkeypatch.setattr(W, "process_block", counted)
    return calls


def _same_as_reference(out, ref, name="s"):
    for kind in ("cells.csv", "cells.geojson"):
        assert (out / f"{name}_{kind}").read_bytes() == (ref / f"{name}_{kind}").read_bytes()
    assert np.array_equal(probability(out, name), probability(ref, name))
    a, b = report(out, name), report(ref, name)
    for r in (a, b):
        r.pop("seconds")
        r.pop("tiles_resumed")
    assert a == b


def test_resume_continues_an_interrupted_run_with_identical_outputs(data, ref, monkeypatch, capsys):
    out = data["dir"] / "resume"
    args = [data["s"], "--out", out, "--model", data["model"], "--tile", "128"]
    calls = _counting(monkeypatch, fail_at=3)
    rc, err = run(args, capsys)
    assert rc == 130 and len(err) == 1 and "interrupted" in err[0]
    work = out / ".s.work"
    assert sorted(p.name for p in work.glob("block_*.npz")) == ["block_0.npz", "block_1.npz"]
    assert not (out / "s_cells.csv").exists() and not (out / "s_report.json").exists()
    calls = _counting(monkeypatch)
    rc, err = run(args + ["--resume"], capsys)
    assert rc == 0, err
    assert calls == list(range(2, 9))             # only the unfinished blocks
    assert report(out)["tiles_resumed"] == 2 and report(out)["tiles_processed"] == 9
    assert not work.exists()
    _same_as_reference(out, ref)


def test_without_resume_a_stale_work_folder_is_discarded(data, ref, monkeypatch, capsys):
    out = data["dir"] / "stale"
    args = [data["s"], "--out", out, "--model", data["model"], "--tile", "128"]
    _counting(monkeypatch, fail_at=3)
    assert run(args, capsys)[0] == 130
    assert len(list((out / ".s.work").glob("block_*.npz"))) == 2
    calls = _counting(monkeypatch)
    rc, err = run(args, capsys)
    assert rc == 0, err
    assert calls == list(range(9))                # everything computed again
    assert report(out)["tiles_resumed"] == 0
    _same_as_reference(out, ref)


def test_resume_discards_the_work_of_a_different_run(data, monkeypatch, capsys):
    out = data["dir"] / "other_run"
    base = [data["s"], "--out", out, "--model", data["model"]]
    _counting(monkeypatch, fail_at=3)
    assert run(base + ["--tile", "128"], capsys)[0] == 130
    calls = _counting(monkeypatch)
    rc, err = run(base + ["--tile", "256", "--resume"], capsys)   # other blocks: not reused
    assert rc == 0, err
    assert calls == list(range(4)) and report(out)["tiles_resumed"] == 0


# --------------------------------------------------------------------------- 4. --region
def test_region_analyses_only_that_box(data, ref):
    X, Y, W, H = 100, 80, 300, 260
    out = _analyse(data, data["dir"] / "region", "--tile", "128", "--region", X, Y, W, H)
    rows = cells(out)
    assert len(rows) >= 5
    x = np.array([float(r["x"]) for r in rows])
    y = np.array([float(r["y"]) for r in rows])
    assert np.all((x >= X - 0.5) & (x < X + W - 0.5) & (y >= Y - 0.5) & (y < Y + H - 0.5))
    rep = report(out)
    assert rep["region"] == [X, Y, W, H]
    assert rep["tiles_processed"] + rep["tiles_skipped"] == 4 < 9
    assert len(rows) < len(cells(ref))
    with tifffile.TiffFile(out / "s_probability.ome.tif") as tif:
        assert tif.series[0].shape == (3, round(H / (MODEL_MPP / MPP0)), round(W / (MODEL_MPP / MPP0)))
    for f in geojson(out)["features"]:
        for ring in (f["geometry"]["coordinates"] if f["geometry"]["type"] == "Polygon"
                     else [r for p in f["geometry"]["coordinates"] for r in p]):
            a = np.asarray(ring)
            assert a[:, 0].min() >= X and a[:, 0].max() <= X + W
            assert a[:, 1].min() >= Y and a[:, 1].max() <= Y + H


def test_region_outside_the_slide_is_one_line(data, capsys):
    out = data["dir"] / "region_out"
    rc, err = run([data["s"], "--out", out, "--model", data["model"], "--region", W0, 0, 10, 10],
                  capsys)
    assert rc == 1 and len(err) == 1 and "outside the slide" in err[0] and "s.ome.tif" in err[0]


# --------------------------------------------------------------------------- 5. blank slide
def test_blank_slide_skips_every_tile_and_writes_an_empty_report(data, capsys):
    # 640 x 768 px at 0.25 µm/px = 0.031 mm²: more than tissue_mask's largest filled hole (see
    # the xfail test below for a smaller one)
    p = data["dir"] / "blank.ome.tif"
    tifffile.imwrite(p, np.full((640, 768, 3), 255, np.uint8), tile=(64, 64), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": MPP0, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": MPP0, "PhysicalSizeYUnit": "µm"})
    out = data["dir"] / "blank_out"
    rc, err = run([p, "--out", out, "--model", data["model"], "--tile", "64"], capsys)
    assert rc == 0, err
    rep = report(out, "blank")
    assert rep["tiles_processed"] == 0 and rep["tiles_skipped"] >= 4
    assert rep["tumour_nuclei"] == rep["immune_cells"] == rep["other_nuclei"] == 0
    assert rep["immune_near_tumour"] == 0 and rep["tissue_area_mm2"] == 0
    assert cells(out, "blank") == []
    assert geojson(out, "blank")["features"] == []
    assert not probability(out, "blank").any()
    for k in OUTPUT_KINDS:
        assert (out / f"blank_{k}").is_file(), k


def test_small_blank_slide_has_no_tissue(tmp_path):
    from vnumba.analysis.tissue import tissue_mask
    from vnumba.io.slides import open_slide

    p = tmp_path / "small_blank.ome.tif"
    tifffile.imwrite(p, np.full((256, 320, 3), 255, np.uint8), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": MPP0, "PhysicalSizeY": MPP0})
    with open_slide(p) as r:
        assert not tissue_mask(r).mask.any()


# --------------------------------------------------------------------------- 6. safety
@pytest.fixture(scope="module")
def png(data):
    """A 192 x 256 crop of level 0 from the slide's centre (tissue) as a PNG (no pixel size)."""
    import imageio.v3 as iio
    p = data["dir"] / "crop.png"
    a = tifffile.imread(data["s"])
    r0, c0 = a.shape[0] // 2 - 96, a.shape[1] // 2 - 128
    iio.imwrite(p, a[r0:r0 + 192, c0:c0 + 256])
    return p


def test_unknown_format_is_one_line_naming_the_file(data, capsys):
    p = data["dir"] / "x.svs"
    p.write_text("not a slide\n")
    rc, err = run([p, "--out", data["dir"] / "x_out", "--model", data["model"]], capsys)
    assert rc == 1 and len(err) == 1 and str(p) in err[0]
    assert p.read_text() == "not a slide\n"


def test_png_needs_mpp_and_works_with_it(data, png, capsys):
    out = data["dir"] / "png_out"
    rc, err = run([png, "--out", out, "--model", data["model"]], capsys)
    assert rc == 1 and len(err) == 1 and "--mpp" in err[0] and "crop.png" in err[0]
    assert not (out / "crop_cells.csv").exists()
    rc, err = run([png, "--out", out, "--model", data["model"], "--mpp", MPP0], capsys)
    assert rc == 0 and err == []
    rep = report(out, "crop")
    assert rep["mpp"] == MPP0 and rep["level"] == 0
    assert len(cells(out, "crop")) >= 5


def test_an_output_that_is_an_input_is_refused_and_nothing_is_touched(data, png, capsys):
    d = data["dir"] / "collide"
    d.mkdir()
    a, b = d / "x.png", d / "x_thumbnail.png"     # x's thumbnail output is the slide b
    a.write_bytes(png.read_bytes())
    b.write_bytes(png.read_bytes())
    rc, err = run([a, b, "--out", d, "--model", data["model"], "--mpp", MPP0], capsys)
    assert rc == 2 and len(err) == 1 and "x_thumbnail.png" in err[0]
    assert b.read_bytes() == png.read_bytes()
    assert sorted(p.name for p in d.iterdir()) == ["x.png", "x_thumbnail.png"]


def test_truncated_tiff_is_one_line(data, capsys):
    p = data["dir"] / "cut.ome.tif"
    raw = data["s"].read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    out = data["dir"] / "cut_out"
    rc, err = run([p, "--out", out, "--model", data["model"]], capsys)
    assert rc == 1 and len(err) == 1 and "cut.ome.tif" in err[0]
    assert p.stat().st_size == len(raw) // 2
    assert not (out / "cut_cells.csv").exists() and not (out / ".cut.work").exists()


# --------------------------------------------------------------------------- 7. off tissue
def test_detections_off_the_tissue_are_dropped(data, monkeypatch):
    """The tissue mask cut to the slide's left half (x < 320): the blocks right of it are
    skipped, the nuclei that the middle blocks find right of it are dropped (counted in
    ``detections_off_tissue``), every nucleus written lies on the tissue, and the GeoJSON stays
    aligned with the CSV.  (The colour statistics come from the tissue, so the nuclei differ
    slightly from the reference run's: compare with the engine's own table instead.)"""
    import shapely.geometry as sg

    import vnumba.analysis.tissue as T
    import vnumba.analysis.wsi as W

    real_mask, real_on = T.tissue_mask, W.on_tissue
    seen = {}

    def left_half(reader, *a, **kw):
        t = real_mask(reader, *a, **kw)
        m = t.mask.copy()
        m[:, int(320 / t.downsample):] = False
        seen["tissue"] = dataclasses.replace(t, mask=m)
        return seen["tissue"]

    def on(tissue, x, y):
        seen["x"], seen["y"] = np.asarray(x), np.asarray(y)
        seen["keep"] = real_on(tissue, x, y)
        return seen["keep"]

    monkeypatch.setattr(T, "tissue_mask", left_half)
    monkeypatch.setattr(W, "on_tissue", on)
    out = _analyse(data, data["dir"] / "half", "--tile", "128")
    rep, rows = report(out), cells(out)
    assert rep["tiles_skipped"] == 3 and rep["tiles_processed"] == 6
    keep = seen["keep"]
    assert rep["detections_off_tissue"] == int((~keep).sum()) > 0
    assert len(rows) == int(keep.sum()) >= 5
    x = np.array([float(r["x"]) for r in rows])
    y = np.array([float(r["y"]) for r in rows])
    assert np.allclose(x, seen["x"][keep], atol=5e-4) and np.allclose(y, seen["y"][keep], atol=5e-4)
    assert real_on(seen["tissue"], x, y).all() and np.all(x < 320)
    assert np.all(seen["x"][~keep] >= 319)
    n = Counter(r["class"] for r in rows)
    assert (rep["tumour_nuclei"], rep["immune_cells"], rep["other_nuclei"]) == \
        (n["tumour"], n["immune"], n["other"])
    # the GeoJSON stays aligned with the CSV after the drop (polygon = this row's nucleus)
    det = [f for f in geojson(out)["features"] if f["properties"]["objectType"] == "detection"]
    assert [f["id"] for f in det] == [r["uuid"] for r in rows]
    for f, r in zip(det, rows):
        shp = sg.shape(f["geometry"])
        assert abs(shp.centroid.x - float(r["x"]) - 0.5) < 0.01
        assert abs(shp.centroid.y - float(r["y"]) - 0.5) < 0.01
        assert shp.area * MPP0 ** 2 == pytest.approx(float(r["area_um2"]), abs=2e-3)
        assert f["properties"]["classification"]["name"] == \
            {"tumour": "Tumor", "immune": "Immune cells", "other": "Other"}[r["class"]]


# --------------------------------------------------------------------------- 8. OpenSlide
def test_svs_slide_is_read_through_openslide_and_finds_the_same_nuclei(data, pair):
    from vnumba.io.slides import open_slide

    with open_slide(data["t"]) as r:
        assert type(r).__name__ == "OpenSlideReader"
        assert r.mpp == pytest.approx(MPP0) and r.level_count == 2
    with open_slide(data["s"]) as r:
        assert type(r).__name__ == "TiffSlide"
    rs, rt = report(pair, "s"), report(pair, "t")
    assert rt["level"] == rs["level"] == 1 and rt["mpp"] == pytest.approx(MPP0)
    # JPEG tiles (quality 90) change the pixels and the slide's colour statistics a little:
    # the nucleus count within 10 % (+2) and 80 % of the nuclei within 1 µm of one found on
    # the OME slide.  Class counts are not compared: this model classes by colour alone
    # (measured: 40/17/12 tumour/immune/other on the OME slide, 32/12/23 on the SVS one).
    ns, nt = len(cells(pair, "s")), len(cells(pair, "t"))
    assert ns == rs["tumour_nuclei"] + rs["immune_cells"] + rs["other_nuclei"]
    assert abs(nt - ns) <= 0.1 * ns + 2, (ns, nt)
    a = np.array([[float(r["x"]), float(r["y"])] for r in cells(pair, "s")])
    b = np.array([[float(r["x"]), float(r["y"])] for r in cells(pair, "t")])
    from scipy.spatial import cKDTree
    d, _ = cKDTree(b).query(a)
    assert (d * MPP0 < 1.0).mean() >= 0.8


def test_blocks_on_a_local_dask_cluster_give_the_same_outputs(data, ref):
    """--scheduler local:2: the blocks are tasks that read the slide from its path in 2 worker
    processes; the outputs are those of the in-process run."""
    pytest.importorskip("distributed")
    out = _analyse(data, data["dir"] / "dask", "--tile", "128", "--scheduler", "local:2")
    _same_as_reference(out, ref)


def _record_finishing_threads(monkeypatch, fail=None):
    """Wrap vnumba.slide._finish_slide: the names of the threads it ran in; with ``fail``,
    writing that slide's outputs raises OSError (a full disk)."""
    import threading

    import vnumba.slide as S

    seen, real = [], S._finish_slide

    def finish(pending):
        seen.append(threading.current_thread().name)
        if pending["name"] == fail:
            pending["lock"].close()
            raise OSError(28, "No space left on device")
        return real(pending)
    monkeypatch.setattr(S, "_finish_slide", finish)
    return seen


def test_several_slides_on_a_cluster_write_outputs_while_the_next_computes(data, pair, monkeypatch):
    """Two slides on local:2: each slide's outputs are written by a thread of the driver (the
    workers go on with the next slide's blocks); the outputs are those of the in-process run."""
    pytest.importorskip("distributed")
    threads = _record_finishing_threads(monkeypatch)
    out = data["dir"] / "dask_pair"
    rc = main([str(data["s"]), str(data["t"]), "--out", str(out), "--model", str(data["model"]),
               "--tile", "512", "--scheduler", "local:2", "-q"])
    assert rc == 0
    assert len(threads) == 2 and all(t.startswith("slide-outputs") for t in threads)
    for name in ("s", "t"):
        _same_as_reference(out, pair, name)
    with open(out / "summary.csv", newline="") as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["s", "t"]


def test_a_slide_whose_outputs_fail_on_a_cluster_is_one_line_and_the_others_are_written(
        data, pair, monkeypatch, capsys):
    pytest.importorskip("distributed")
    _record_finishing_threads(monkeypatch, fail="s")
    out = data["dir"] / "dask_pair_fail"
    rc, err = run([data["s"], data["t"], "--out", out, "--model", data["model"], "--tile", "512",
                   "--scheduler", "local:2"], capsys)
    assert rc == 1
    assert len(err) == 1 and "s.ome.tif" in err[0] and "No space left" in err[0]
    _same_as_reference(out, pair, "t")
    assert not (out / "s_report.json").exists() and not (out / "s_report.json.lock").exists()
    with open(out / "summary.csv", newline="") as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["t"]


def test_ctrl_c_on_a_cluster_finishes_the_slide_being_written_and_releases_the_queued_one(
        data, monkeypatch, capsys):
    """Three slides on local:2: the first slide's outputs are being written, the second waits
    for the writer thread, Ctrl-C lands while the third computes.  The first slide is complete,
    the second is not started (no outputs, no lock left, its blocks kept for --resume)."""
    pytest.importorskip("distributed")
    import shutil
    import threading

    import vnumba.slide as S

    u = data["dir"] / "u.ome.tif"
    shutil.copyfile(data["s"], u)
    release = threading.Event()
    real_compute, real_finish = S._compute_slide, S._finish_slide

    def compute(path, *a, **k):
        if path.name == "u.ome.tif":
            threading.Timer(1.0, release.set).start()   # the writer goes on after the stop
            raise KeyboardInterrupt
        return real_compute(path, *a, **k)

    def finish(pending):
        if pending["name"] == "s":
            release.wait(60)                              # still writing when Ctrl-C lands
        return real_finish(pending)
    monkeypatch.setattr(S, "_compute_slide", compute)
    monkeypatch.setattr(S, "_finish_slide", finish)
    out = data["dir"] / "dask_interrupted"
    rc, err = run([data["s"], data["t"], u, "--out", out, "--model", data["model"], "--tile", "512",
                   "--scheduler", "local:2"], capsys)
    assert rc == 130 and len(err) == 1 and "interrupted" in err[0]
    assert (out / "s_report.json").is_file() and (out / "s_cells.geojson").is_file()
    assert not (out / "t_report.json").exists() and not (out / "t_cells.csv").exists()
    assert sorted(p.name for p in out.glob("*.lock")) == []
    assert (out / ".t.work").is_dir()                     # for --resume


def test_a_worker_lost_during_slide_analysis_changes_nothing(data, ref):
    """The first block each worker runs kills its process once (a lost worker): Dask reruns
    those blocks elsewhere; every block arrives once and the outputs equal the reference."""
    pytest.importorskip("distributed")
    import cloudpickle
    import dask_helpers

    from vnumba.analysis.wsi import SlideOptions
    from vnumba.executor import get_executor
    from vnumba.io.models import load_model
    from vnumba.slide import analyse_slide

    cloudpickle.register_pickle_by_value(dask_helpers)
    out = data["dir"] / "dask_dies"
    out.mkdir()
    marker = data["dir"] / "a_worker_died"
    model = dask_helpers.DiesOnce(load_model(data["model"]), marker)
    with get_executor("local:2") as ex:
        analyse_slide(data["s"], model, out, SlideOptions(tile=128), quiet=True, executor=ex)
    assert marker.exists()
    _same_as_reference(out, ref)


def _cpu_and_cuda_runs_agree(data, tmp_path, region, simulator):
    """``vnumba.slide`` with ``--device cpu`` and ``--device cuda`` (each in its own process):
    probabilities within 2/255, the same nuclei (±1)."""
    import os
    import subprocess
    import sys

    outs = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / dev
        env = dict(os.environ)
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        if dev == "cuda" and simulator:
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        r = subprocess.run([sys.executable, "-m", "vnumba.slide", str(data["s"]), "--out", str(out),
                            "--model", str(data["model"]), *map(str, region),
                            "--tile", "64", "--device", dev, "-q"],
                           env=env, capture_output=True, text=True, timeout=3000)
        assert r.returncode == 0, r.stderr
        outs[dev] = out
    a, b = probability(outs["cpu"]).astype(int), probability(outs["cuda"]).astype(int)
    assert a.shape == b.shape and a.max() > 128           # nuclei in the region
    assert np.abs(a - b).max() <= 2                        # float32 sums in another order
    ca, cb = nucleus_table(outs["cpu"]), nucleus_table(outs["cuda"])
    assert len(ca) > 0 and abs(len(ca) - len(cb)) <= 1


@pytest.mark.slow
def test_device_cuda_runs_a_slide_through_the_cuda_kernels_like_the_cpu(data, tmp_path):
    """``--device cuda`` end to end on a small region, on the CUDA simulator (15 min on 2
    cores): the same blocks, the network through vnumba.vn.gpu."""
    _cpu_and_cuda_runs_agree(data, tmp_path, ("--region", 128, 128, 192, 160), simulator=True)


@pytest.mark.gpu
def test_device_cuda_on_a_gpu_analyses_the_whole_slide_like_the_cpu(data, tmp_path):
    """The same on a real GPU (bench/run_gpu_checks.sh runs ``pytest -m gpu``), whole slide."""
    import os
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", "from vnumba.vn.gpu.engine import is_available; "
                            "ok, why = is_available(); print(why); raise SystemExit(0 if ok else 1)"],
                           capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"})
    if probe.returncode:
        pytest.skip(f"no usable GPU: {probe.stdout.strip() or probe.stderr.strip()[-200:]}")
    _cpu_and_cuda_runs_agree(data, tmp_path, (), simulator=False)


# --------------------------------------------------------------------------- known answers
def _truth_match(data, out, name="s", match_um=4.0):
    """The run's nuclei against the slide's truth (``synth slide``'s ``NAME_truth.csv``),
    matched one to one within ``match_um`` (vnumba.evaluate's rule): (matched, predicted,
    true, offsets of the matched centroids in µm)."""
    from vnumba.analysis.scores import match_points

    with open(data["dir"] / f"{name}_truth.csv", newline="") as fh:
        txy = np.array([[float(r["x"]), float(r["y"])] for r in csv.DictReader(fh)])
    pxy = np.array([[float(r["x"]), float(r["y"])] for r in cells(out, name)])
    pi, ti, d = match_points(pxy, txy, match_um / MPP0)
    return len(pi), len(pxy), len(txy), np.asarray(d, float) * MPP0


@pytest.mark.parametrize("run_name, name", [("ref", "s"), ("t64", "s"), ("pair", "t")])
def test_every_nucleus_found_lies_on_a_true_nucleus_of_the_synthetic_slide(data, ref, t64, pair,
                                                                          run_name, name):
    """Known answers for reading, level choice and resampling (0.25 -> 0.48 µm/px), tiling,
    seams and the level-0 coordinates: the hand-set model marks dark nuclei only, so every
    nucleus it reports must lie on a nucleus of ``synth slide``'s truth.  Stated tolerance:
    precision >= 0.9 within 4 µm, recall >= 0.4 (measured: 51 of 51 found and 51 of 100 true
    nuclei for the OME slide with --tile 128; 52 of 55 for the JPEG-compressed SVS copy read
    through OpenSlide), median centroid offset <= 0.5 µm (measured 0.29 µm) — for the OME
    slide with two tilings and the SVS copy.  Classes are this model's colour rule, not the
    truth's, and are not scored here (the shipped model's: bench/slide_truth.py, README)."""
    out = {"ref": ref, "t64": t64, "pair": pair}[run_name]
    matched, predicted, true, offsets = _truth_match(data, out, name)
    assert predicted >= 20 and true >= 50
    assert matched >= 0.9 * predicted, (matched, predicted)
    assert matched >= 0.4 * true, (matched, true)
    assert np.median(offsets) <= 0.5, np.median(offsets)
