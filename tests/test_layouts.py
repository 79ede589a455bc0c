"""Layout statistics (synth.layouts): hand-made layouts with known answers, errors, CLI."""
import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from synth import layouts as L
from synth.__main__ import main as synth_main

LAYOUTS = Path(os.environ.get("VNUMBA_LAYOUTS",
                              Path(__file__).resolve().parents[2] / "shared" / "data" / "layouts"))

# mpp = 1 so that the link gap (3 µm) is 3 px and distances read directly in pixels.
KW = dict(mpp=1.0, window=48, gap_um=3.0, max_hole_um2=300.0)


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class Builder:
    """Paint nuclei one by one into an instance image, remembering class and pixels."""

    def __init__(self, shape):
        self.inst = np.zeros(shape, np.uint16)
        self.cls = [0]
        self.masks = []

    def add(self, mask, fine):
        assert not (self.inst[mask] > 0).any()
        self.inst[mask] = len(self.cls)
        self.cls.append(fine)
        self.masks.append(mask)

    def hidden(self, fine):
        """An id whose polygon was wholly overwritten (no pixel)."""
        self.cls.append(fine)
        self.masks.append(np.zeros(self.inst.shape, bool))

    def save(self, path):
        np.savez(path, instances=self.inst, fine_class=np.array(self.cls, np.uint8))


def layout_a():
    """96 x 96: a row of 6 touching lymphocytes, a linked pair (gap 2 px), two unlinked
    histiocytes (gap 4 px), two far tumour nuclei, one stroma bar, one hidden neutrophil."""
    b = Builder((96, 96))
    s = b.inst.shape
    for x in (8, 15, 22, 29, 36, 43):
        b.add(disc(s, 10, x, 3), 2)
    b.add(disc(s, 30, 10, 3), 2)          # columns 7..13
    b.add(disc(s, 30, 19, 3), 2)          # columns 16..22: pixel distance 3, gap 2
    b.add(disc(s, 30, 32, 3), 4)          # columns 29..35
    b.add(disc(s, 30, 43, 3), 4)          # columns 40..46: pixel distance 5, gap 4
    b.add(disc(s, 75, 75, 5), 1)
    b.add(disc(s, 75, 20, 5), 1)
    bar = np.zeros(s, bool)
    bar[60:62, 5:15] = True               # 2 x 10 stroma nucleus
    b.add(bar, 7)
    b.hidden(6)
    return b


def layout_b():
    """64 x 64: a 5 x 5 grid of touching lymphocytes (spacing 7) whose centre is a tumour
    nucleus, two touching 5 x 5 plasma-cell squares, one far tumour nucleus."""
    b = Builder((64, 64))
    s = b.inst.shape
    for i in range(5):
        for j in range(5):
            cy, cx = 12 + 7 * i, 12 + 7 * j
            b.add(disc(s, cy, cx, 3), 1 if (i, j) == (2, 2) else 2)
    for c0 in (10, 15):
        sq = np.zeros(s, bool)
        sq[50:55, c0:c0 + 5] = True
        b.add(sq, 3)
    b.add(disc(s, 56, 56, 3), 1)
    return b


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "layouts"
    d.mkdir()
    a, b = layout_a(), layout_b()
    a.save(d / "a.npz")
    b.save(d / "b.npz")
    return d, a, b


@pytest.fixture
def stats(folder):
    return L.layout_statistics(folder[0], **KW)


def centroid(m):
    yy, xx = np.nonzero(m)
    return yy.mean(), xx.mean()


def q(block, qq=50):
    return block[f"q{qq:02d}"]


def test_counts_per_class(stats):
    fine, coarse = stats["nuclei"]["fine"], stats["nuclei"]["coarse"]
    assert fine["lymphocyte"]["count"] == 8 + 24
    assert fine["histiocyte"]["count"] == 2
    assert fine["plasma_cell"]["count"] == 2
    assert fine["tumour"]["count"] == 4
    assert fine["stroma"]["count"] == 1
    assert fine["neutrophil"]["count"] == 1 and fine["neutrophil"]["n_visible"] == 0
    assert fine["endothelium"]["count"] == 0 and fine["endothelium"]["area"]["n"] == 0
    assert coarse["immune"]["count"] == 37 and coarse["immune"]["n_visible"] == 36
    assert coarse["other"]["count"] == 1
    assert stats["source"]["n_rois"] == 2 and stats["source"]["n_nuclei"] == 14 + 28
    assert [r["roi"] for r in stats["rois"]] == ["a", "b"]


def test_shape_of_discs_and_bars(stats):
    lym = stats["nuclei"]["fine"]["lymphocyte"]
    d3 = disc((9, 9), 4, 4, 3)
    assert d3.sum() == 29
    assert lym["area"]["px2"]["q05"] == lym["area"]["px2"]["q95"] == 29
    assert lym["radius"]["px"]["q50"] == pytest.approx(math.sqrt(29 / math.pi), rel=1e-4)
    yy, _ = np.nonzero(d3)
    semi = 2 * math.sqrt(((yy - yy.mean()) ** 2).mean())
    assert lym["major_semi_axis"]["px"]["q50"] == pytest.approx(semi, rel=1e-4)
    assert lym["axis_ratio"]["q50"] == pytest.approx(1.0, abs=1e-6)
    assert lym["radius"]["um"]["q50"] == pytest.approx(lym["radius"]["px"]["q50"])
    # 2 x 10 bar: pixel-centre variances (10^2 - 1) / 12 and (2^2 - 1) / 12.
    st = stats["other_cells"]["stroma"]
    assert st["major_semi_axis"]["px"]["q50"] == pytest.approx(2 * math.sqrt(99 / 12), rel=1e-4)
    assert st["minor_semi_axis"]["px"]["q50"] == pytest.approx(1.0, rel=1e-4)
    assert st["elongation"]["q50"] == pytest.approx(2 * math.sqrt(99 / 12), rel=1e-4)
    assert st["frac_elongation_ge3"] == 1.0
    sq = stats["nuclei"]["fine"]["plasma_cell"]
    assert sq["solidity"]["q50"] == 1.0 and sq["area"]["px2"]["q50"] == 25
    assert stats["nuclei"]["fine"]["tumour"]["area"]["px2"]["q95"] == 81   # r = 5 discs


def test_mpp_scales_lengths_and_areas(folder):
    s = L.layout_statistics(folder[0], mpp=0.5, window=48, gap_um=1.5)
    lym = s["nuclei"]["fine"]["lymphocyte"]
    assert lym["radius"]["um"]["q50"] == pytest.approx(0.5 * lym["radius"]["px"]["q50"], rel=1e-4)
    assert lym["area"]["um2"]["q50"] == pytest.approx(0.25 * 29, rel=1e-4)
    # 1.5 µm at 0.5 µm/px is the same 3 px link gap: the same aggregates.
    assert s["aggregates"]["largest"] == 24 and s["parameters"]["gap_px"] == 3


def test_aggregate_sizes(stats):
    ag = stats["aggregates"]
    assert ag["n_immune_nuclei"] == 36
    assert ag["n_aggregates"] == 6                  # 6-row, pair, 2 singles | grid, square pair
    assert ag["largest"] == 24
    hist = {h["size"]: (h["n_aggregates"], h["n_nuclei"]) for h in ag["size_histogram"]}
    assert hist == {"1": (2, 2), "2-4": (2, 4), "5-19": (1, 6), "20-49": (1, 24),
                    "50-99": (0, 0), ">=100": (0, 0)}
    assert ag["frac_immune_isolated"] == pytest.approx(2 / 36, rel=1e-4)
    assert ag["frac_immune_in_ge5"] == pytest.approx(30 / 36, rel=1e-4)
    assert ag["frac_immune_in_ge20"] == pytest.approx(24 / 36, rel=1e-4)
    assert ag["frac_immune_in_ge50"] == 0
    assert ag["ge50"] == {"n_aggregates": 0}
    assert ag["ge5"]["n_aggregates"] == 2 and ag["ge5"]["n_nuclei"] == 30
    assert ag["ge5"]["size"]["q05"] == pytest.approx(6.9) and ag["ge5"]["size"]["q95"] == \
        pytest.approx(23.1)


def test_link_gap_threshold(folder):
    # At gap 1.9 px the pair with gap 2 splits; at 4 px the histiocytes (gap 4) join.
    s = L.layout_statistics(folder[0], **{**KW, "gap_um": 1.9})
    assert {h["size"]: h["n_aggregates"] for h in s["aggregates"]["size_histogram"]}["1"] == 4
    s = L.layout_statistics(folder[0], **{**KW, "gap_um": 4.0})
    assert {h["size"]: h["n_aggregates"] for h in s["aggregates"]["size_histogram"]}["1"] == 0


def aggregates_of(layout, name, **kw):
    roi = L.RoiLayout(name, layout.inst.astype(np.int32), np.array(layout.cls, np.int16))
    aggs = L.analyse_roi(roi, L.LayoutParams(**{**KW, **kw}))["aggregates"]
    return {a["size"]: a for a in aggs if a["size"] > 1}


def test_aggregate_areas(folder):
    _, a, b = folder
    ag = aggregates_of(b, "b")
    assert sorted(ag) == [2, 24]
    # Two touching 5 x 5 squares close to their 10 x 5 union: area 50, packing 1 exactly.
    assert ag[2]["area_px"] == 50 and ag[2]["packing"] == 1.0
    # The grid: 24 discs of 29 px (and the tumour disc) inside a 35 x 35 box, scalloped edges.
    assert 25 * 29 < ag[24]["area_px"] <= 35 * 35
    assert ag[24]["packing"] == pytest.approx(24 * 29 / ag[24]["area_px"])
    assert 0.55 < ag[24]["packing"] < 0.75
    assert ag[24]["n_tumour_inside"] == 1 and ag[24]["n_other_inside"] == 0
    ag = aggregates_of(a, "a")
    assert sorted(ag) == [2, 6]
    # The row: 6 discs of 29 px within its 42 x 7 bounding box; the pair: two discs and the
    # bridge that closes their 2 px gap (a disc of radius 1.5 px fills it), < 3 x 7 px.
    assert 6 * 29 < ag[6]["area_px"] < 42 * 7
    assert 2 * 29 < ag[2]["area_px"] < 2 * 29 + 3 * 7
    # Radius of gyration of 6 centres spaced 7 apart in a row.
    xs = 7 * np.arange(6)
    assert ag[6]["rg_px"] == pytest.approx(xs.std())


def test_aggregate_packing_and_neighbours(stats):
    ge20 = stats["aggregates"]["ge20"]
    assert ge20["n_aggregates"] == 1 and ge20["n_nuclei"] == 24
    area = ge20["area"]["px2"]["q50"]
    assert ge20["packing_fraction"]["q50"] == pytest.approx(24 * 29 / area, rel=1e-4)
    assert ge20["nn_centre_distance"]["px"]["q05"] == ge20["nn_centre_distance"]["px"]["q95"] == 7
    assert ge20["nn_member_gap"]["px"]["q95"] == 0
    assert ge20["frac_touching_member"] == 1.0
    # Linked neighbours (diagonal gaps are 3.24 px > 3): corners 2, edges 3, the 4 diagonal
    # neighbours of the centre 4, its 4 orthogonal neighbours 3 (the centre is tumour).
    assert ge20["degree"]["mean"] == pytest.approx((4 * 2 + 12 * 3 + 4 * 4 + 4 * 3) / 24)
    assert ge20["degree"]["q95"] == 4
    assert ge20["frac_lymphocyte"] == 1.0
    assert stats["aggregates"]["ge5"]["frac_touching_roi_border"] == 0


def test_tumour_inside_aggregate(stats, folder):
    ge20 = stats["aggregates"]["ge20"]
    assert ge20["frac_with_tumour_inside"] == 1.0 and ge20["n_tumour_inside"] == 1
    assert stats["aggregates"]["ge5"]["frac_with_tumour_inside"] == 0.5
    assert stats["tumour"]["frac_inside_immune_aggregate"] == 0.25
    # Without hole filling the tumour nucleus is a hole of the aggregate, not inside it.
    s = L.layout_statistics(folder[0], **{**KW, "max_hole_um2": 0.0})
    assert s["aggregates"]["ge20"]["n_tumour_inside"] == 0
    assert s["aggregates"]["ge20"]["area"]["px2"]["q50"] < ge20["area"]["px2"]["q50"] - 29


def test_tumour_and_tumour_immune_distances(stats, folder):
    _, a, b = folder
    t = stats["tumour"]
    nn = sorted([55.0, 55.0, math.hypot(30, 30), math.hypot(30, 30)])
    assert t["nn_centre_distance"]["px"]["q05"] == pytest.approx(np.percentile(nn, 5), rel=1e-4)
    assert t["nn_centre_distance"]["px"]["q95"] == pytest.approx(55.0, rel=1e-4)
    assert t["count"] == 4
    # Brute force: centroid distance and pixel gap from each immune nucleus to the nearest
    # tumour nucleus of the same layout.
    cen, gap = [], []
    for lay in (a, b):
        tm = [m for m, c in zip(lay.masks, lay.cls[1:]) if c == 1]
        tp = [np.argwhere(m) for m in tm]
        tc = [centroid(m) for m in tm]
        for m, c in zip(lay.masks, lay.cls[1:]):
            if 2 <= c <= 6 and m.any():
                cy, cx = centroid(m)
                cen.append(min(math.hypot(cy - y, cx - x) for y, x in tc))
                gap.append(min(cdist(np.argwhere(m), p).min() for p in tp) - 1)
    ti = stats["tumour_immune"]
    assert ti["n_immune_in_rois_with_tumour"] == len(cen) == 36
    for qq in (5, 25, 50, 75, 95):
        assert q(ti["centre_distance_to_nearest_tumour"]["px"], qq) == pytest.approx(
            np.percentile(cen, qq), rel=1e-4)
        assert q(ti["gap_to_nearest_tumour"]["px"], qq) == pytest.approx(
            np.percentile(gap, qq), rel=1e-4, abs=1e-9)
    assert ti["frac_within_20um_centre"] == pytest.approx(np.mean(np.array(cen) <= 20), rel=1e-4)
    assert ti["frac_touching_tumour"] == pytest.approx(4 / 36, rel=1e-4)


def test_local_tumour_density(folder, tmp_path):
    # Radius 20 px: tumour nuclei whose centre is at least 20 px from the border count:
    # (75, 20) and (75, 75) of layout A (96 px), (26, 26) of layout B but not (56, 56) (64 px);
    # none has another tumour centre within 20 px.
    s = L.layout_statistics(folder[0], **{**KW, "density_radius_um": 20.0})
    ld = s["tumour"]["local_density_per_1000um2"]
    assert ld["n"] == 3 and ld["q95"] == 0
    # Three centres 10, 10 and 14.1 px apart: each has 2 others within 20 px.
    d = tmp_path / "dens"
    d.mkdir()
    b = Builder((110, 110))
    for cy, cx in ((50, 50), (50, 60), (60, 50)):
        b.add(disc((110, 110), cy, cx, 3), 1)
    b.save(d / "t.npz")
    s = L.layout_statistics(d, **{**KW, "density_radius_um": 20.0})
    ld = s["tumour"]["local_density_per_1000um2"]
    assert ld["n"] == 3 and ld["q05"] == ld["q95"] == pytest.approx(2 / (math.pi * 400) * 1000,
                                                                    rel=1e-4)
    assert s["tumour"]["nn_centre_distance"]["px"]["q05"] == pytest.approx(10)


def test_windows(stats):
    w = stats["windows"]
    assert w["n_windows"] == 5                       # 2 x 2 in A, 1 x 1 in B (64 // 48)
    assert w["frac_no_tumour"] == pytest.approx(2 / 5)
    assert w["frac_with_aggregate_ge20_inside"] == pytest.approx(1 / 5)
    assert w["frac_with_aggregate_ge20_touching"] == pytest.approx(1 / 5)
    # Immune counts per window: A: 10, 0, 0, 0; B: 24.
    assert w["count_immune"]["mean"] == pytest.approx(34 / 5)
    assert w["count_immune"]["q95"] == pytest.approx(np.percentile([10, 0, 0, 0, 24], 95))
    assert w["count_tumour"]["mean"] == pytest.approx(3 / 5)
    assert w["count_other"]["mean"] == pytest.approx(1 / 5)
    cover = (24 * 29) / 48 ** 2
    assert w["coverage_immune"]["q95"] == pytest.approx(
        np.percentile([(6 * 29 + 4 * 29) / 48 ** 2, 0, 0, 0, cover], 95), rel=1e-4)


def test_json_has_provenance_and_parameters(stats):
    src = stats["source"]
    assert src["folder"] == "layouts" and len(src["files_sha256"]) == 64 and src["date"]
    p = stats["parameters"]
    assert p["mpp"] == 1.0 and p["window"] == 48 and p["gap_um"] == 3.0
    assert p["quantiles_percent"] == [5, 25, 50, 75, 95]
    json.dumps(stats, allow_nan=False)               # no NaN / inf in the output


# ---------------------------------------------------------------------------- errors


def one_line_error(match, func, *args, **kw):
    with pytest.raises(ValueError, match=match) as e:
        func(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_folder_and_no_files(tmp_path):
    one_line_error("no such folder", L.layout_statistics, tmp_path / "nope")
    (tmp_path / "x.txt").write_text("x")
    one_line_error("no .npz", L.layout_statistics, tmp_path)
    one_line_error("not a folder", L.layout_statistics, tmp_path / "x.txt")


def _bad(path, kind):
    inst = np.zeros((8, 8), np.uint16)
    inst[2:4, 2:4] = 1
    fc = np.array([0, 2], np.uint8)
    if kind == "garbage":
        path.write_bytes(b"not a zip file\n at all")
        return
    if kind == "missing":
        np.savez(path, instances=inst)
    elif kind == "short":
        inst[5, 5] = 2
        np.savez(path, instances=inst, fine_class=fc)
    elif kind == "class":
        np.savez(path, instances=inst, fine_class=np.array([0, 11], np.uint8))
    elif kind == "ndim":
        np.savez(path, instances=inst[None], fine_class=fc)
    elif kind == "float":
        np.savez(path, instances=inst.astype(float), fine_class=fc)


@pytest.mark.parametrize("kind, msg", [
    ("garbage", "not a readable npz"), ("missing", "missing fine_class"),
    ("short", "instance id 2 but fine_class has only 2"), ("class", "fine class 11"),
    ("ndim", "2-D integer"), ("float", "2-D integer")])
def test_malformed_file_is_a_one_line_error_naming_it(folder, kind, msg):
    bad = folder[0] / "zz_bad.npz"
    _bad(bad, kind)
    text = one_line_error(msg, L.layout_statistics, folder[0], **KW)
    assert str(bad) in text


def test_bad_parameters():
    with pytest.raises(ValueError, match="window"):
        L.LayoutParams(window=0)
    with pytest.raises(ValueError, match="mpp"):
        L.LayoutParams(mpp=-1.0)


# ---------------------------------------------------------------------------- CLI


def test_cli_writes_json_and_reports_errors(folder, tmp_path, capsys):
    out = tmp_path / "out" / "stats.json"
    rc = synth_main(["layout-stats", str(folder[0]), "-o", str(out), "--mpp", "1",
                     "--window", "48"])
    assert rc == 0
    cap = capsys.readouterr()
    assert "wrote" in cap.out and "[2/2] b" in cap.err
    s = json.loads(out.read_text(encoding="utf-8"))
    assert s["format"] == L.FORMAT and s["aggregates"]["largest"] == 24
    assert [p.name for p in out.parent.iterdir()] == ["stats.json"]   # no temporary left

    missing = tmp_path / "missing.json"
    rc = synth_main(["layout-stats", str(tmp_path / "none"), "-o", str(missing)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not missing.exists()
    assert err.startswith("synth layout-stats: error:") and "no such folder" in err
    assert len(err.splitlines()) == 1


# ---------------------------------------------------------------------------- real data


def test_real_layouts_match_their_index(tmp_path):
    puma = LAYOUTS / "puma"
    if not (puma / "index.csv").is_file():
        pytest.skip(f"PUMA layouts not found at {puma} (set VNUMBA_LAYOUTS)")
    with open(puma / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:2]
    d = tmp_path / "two"
    d.mkdir()
    for r in rows:                       # links, not copies: the files stay where they are
        (d / f"{r['roi']}.npz").symlink_to(puma / f"{r['roi']}.npz")
    s = L.layout_statistics(d)
    fine = s["nuclei"]["fine"]
    names = {"plasma_cell": "plasma_cell", "apoptotic": "apoptosis"}
    for name in L.FINE_CLASSES.values():
        assert fine[name]["count"] == sum(int(r[names.get(name, name)]) for r in rows), name
    assert s["source"]["n_rois"] == 2 and s["windows"]["n_windows"] == 2 * 9
    lym = fine["lymphocyte"]["radius"]["um"]["q50"]
    assert 1.5 < lym < 5.0               # a lymphocyte nucleus is a few µm across


def test_empty_and_tumour_free_rois(tmp_path):
    d = tmp_path / "sparse"
    d.mkdir()
    Builder((40, 40)).save(d / "empty.npz")
    b = Builder((40, 40))
    b.add(disc((40, 40), 20, 10, 3), 2)
    b.add(disc((40, 40), 20, 17, 3), 2)
    b.save(d / "immune_only.npz")
    s = L.layout_statistics(d, **{**KW, "window": 20})
    assert s["source"]["n_nuclei"] == 2 and s["windows"]["n_windows"] == 8
    assert s["aggregates"]["largest"] == 2 and s["aggregates"]["ge20"] == {"n_aggregates": 0}
    ti = s["tumour_immune"]
    assert ti["n_immune"] == 2 and ti["n_immune_in_rois_with_tumour"] == 0
    assert ti["centre_distance_to_nearest_tumour"]["px"]["q50"] is None
    assert s["tumour"]["count"] == 0 and s["windows"]["frac_no_tumour"] == 1.0
    json.dumps(s, allow_nan=False)
    # Only empty layouts: statistics of nothing, still valid JSON.
    (d / "immune_only.npz").unlink()
    s = L.layout_statistics(d, **KW)
    assert s["source"]["n_nuclei"] == 0 and s["aggregates"]["n_aggregates"] == 0
    json.dumps(s, allow_nan=False)
