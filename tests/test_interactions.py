"""Tumour–immune interaction figures (vnumba.analysis.interactions) against hand-placed nuclei."""
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from vnumba.analysis.interactions import (
    ARTICLE_MPP,
    CALL_FRACTION,
    IMMUNE_NUCLEUS_AREA_UM2,
    IMMUNE_RICH_RADIUS_UM,
    IMMUNE_RICH_THRESHOLD,
    NEIGHBOURHOOD_UM,
    InteractionConfig,
    compute_interactions,
    interaction_stats,
)

ROOT = Path(__file__).resolve().parents[1]
MPP = 0.5          # 40 px = 20 µm


def _script(name):
    return tomllib.loads((ROOT / "synth" / "scenarios" / f"{name}.toml").read_text())


def _no_nan(obj):
    """json.dumps refuses NaN/inf with allow_nan=False; also every value is a plain type."""
    json.dumps(obj, allow_nan=False)


# ----------------------------------------------------------------------------- the facts
def test_default_radii_are_the_scenario_scripts_rules_in_micrometres():
    s1, s2 = _script("scenario1"), _script("scenario2")
    assert s1["scenario"]["mpp"] == ARTICLE_MPP == s2["scenario"]["mpp"]
    assert NEIGHBOURHOOD_UM == s1["mask"]["radius"] * s1["scenario"]["mpp"] == 20.0
    assert IMMUNE_RICH_RADIUS_UM == s2["mask"]["radius"] * s2["scenario"]["mpp"] == 20.0
    assert IMMUNE_RICH_THRESHOLD == s2["mask"]["threshold"] == 0.2
    # The default immune nucleus area: pi a b at the midpoints of scenario 2's immune cells.
    layer = next(la for la in s2["layers"] if la["name"] == "immune_cells")
    (a0, a1), (b0, b1) = layer["semi_axes"]
    area = math.pi * (a0 + a1) / 2 * (b0 + b1) / 2 * ARTICLE_MPP ** 2
    assert IMMUNE_NUCLEUS_AREA_UM2 == pytest.approx(area) == pytest.approx(19.4386, abs=1e-4)
    cfg = InteractionConfig()
    assert (cfg.radius_um, cfg.grid_um, cfg.rich_radius_um, cfg.rich_threshold, cfg.call_fraction) == \
        (20.0, 250.0, 20.0, 0.2, CALL_FRACTION)


def test_config_rejects_unknown_keys_by_name_and_bad_values():
    with pytest.raises(ValueError, match="'radius_mu'"):
        InteractionConfig.from_dict({"radius_mu": 30})
    assert InteractionConfig.from_dict({"radius_um": 30}).radius_um == 30
    with pytest.raises(ValueError, match="grid_um"):
        InteractionConfig(grid_um=0)
    with pytest.raises(ValueError, match="call_fraction"):
        InteractionConfig(call_fraction=1.5)
    with pytest.raises(ValueError, match="unknown interaction setting"):
        compute_interactions(np.zeros((0, 2)), [], MPP, 1.0, config={"nope": 1})


# ----------------------------------------------------------------------------- known answers
def _scene():
    #            x    y
    pts = [(100, 100),      # T0
           (300, 100),      # T1   (200 px = 100 µm from T0)
           (130, 100),      # I0   15 µm from T0
           (140, 100),      # I1   exactly 20 µm from T0 (inclusive)
           (100, 160),      # I2   30 µm from T0: not near
           (300, 136),      # I3   18 µm from T1
           (200, 100)]      # O0   50 µm from both
    cls = ["tumour", "tumour", "immune", "immune", "immune", "immune", "other"]
    return np.array(pts, np.float64), np.array(cls)


def test_counts_fractions_and_distances_of_hand_placed_nuclei():
    pts, cls = _scene()
    r = compute_interactions(pts, cls, MPP, 1.0)
    s = r.stats
    _no_nan(s)
    assert (s["nuclei"], s["tumour_nuclei"], s["immune_cells"], s["other_nuclei"]) == (7, 2, 4, 1)
    assert s["tissue_area_mm2"] == 1.0 and s["radius_um"] == 20.0
    assert (s["tumour_density_per_mm2"], s["immune_density_per_mm2"], s["other_density_per_mm2"]) == (2.0, 4.0, 1.0)
    assert s["immune_near_tumour"] == 3 and s["immune_near_tumour_fraction"] == 0.75
    assert s["tumour_with_immune_neighbour"] == 2 and s["tumour_with_immune_neighbour_fraction"] == 1.0
    np.testing.assert_allclose(r.dist_tumour_um, [100, 100, 15, 20, 30, 18, 50])
    assert r.near_tumour.tolist() == [False, False, True, True, False, True, False]
    assert r.immune_neighbour.tolist() == [True, True, False, False, False, False, False]
    d = s["immune_to_nearest_tumour_um"]
    assert d["n"] == 4 and d["mean"] == pytest.approx(20.75) and d["q50"] == pytest.approx(19.0)
    assert (d["min"], d["max"]) == (15.0, 30.0)
    assert d["q05"] == pytest.approx(np.quantile([15, 18, 20, 30], 0.05))
    h = d["histogram"]
    assert h["edges_um"][:4] == [0.0, 10.0, 20.0, 30.0] and h["edges_um"][-1] == 200.0
    assert h["counts"][:4] == [0, 2, 1, 1] and sum(h["counts"]) == 4 and h["above_max"] == 0
    # A smaller neighbourhood: I1 (20 µm) and I3 (18 µm) drop out at R = 17 µm.
    s17 = interaction_stats(pts, cls, MPP, 1.0, config={"radius_um": 17.0})
    assert s17["immune_near_tumour"] == 1 and s17["tumour_with_immune_neighbour"] == 1
    assert s17["tumour_with_immune_neighbour_fraction"] == 0.5 and "17" in s17["radius_source"]


def test_figures_are_in_micrometres_so_they_do_not_depend_on_the_magnification():
    pts, cls = _scene()
    a = interaction_stats(pts, cls, 0.5, 1.0)
    b = interaction_stats(pts * 2, cls, 0.25, 1.0)            # the same tissue scanned at 40x
    for k in ("immune_near_tumour", "tumour_with_immune_neighbour_fraction", "immune_rich_cells"):
        assert a[k] == b[k]
    assert a["immune_to_nearest_tumour_um"]["q50"] == pytest.approx(b["immune_to_nearest_tumour_um"]["q50"])


def test_empty_and_degenerate_inputs_give_none_not_nan():
    s = interaction_stats(np.zeros((0, 2)), [], MPP, 1.0)
    _no_nan(s)
    assert (s["tumour_nuclei"], s["immune_cells"], s["immune_near_tumour"]) == (0, 0, 0)
    assert s["tumour_density_per_mm2"] == 0.0 and s["immune_density_per_mm2"] == 0.0
    assert s["tumour_with_immune_neighbour_fraction"] is None and s["immune_near_tumour_fraction"] is None
    assert s["immune_to_nearest_tumour_um"] is None and s["immune_rich_area_mm2"] == 0.0
    assert s["immune_call"] == "immune-poor"
    # No tumour nuclei: immune cells have no nearest tumour.
    r = compute_interactions([[0, 0], [10, 0]], ["immune", "other"], MPP, 1.0)
    _no_nan(r.stats)
    assert r.stats["immune_to_nearest_tumour_um"] is None and r.stats["immune_near_tumour"] == 0
    assert r.stats["immune_near_tumour_fraction"] == 0.0
    assert r.stats["tumour_with_immune_neighbour_fraction"] is None
    assert np.isnan(r.dist_tumour_um).all()
    # No immune cells; a single tumour nucleus has no other tumour nucleus.
    r = compute_interactions([[0, 0], [10, 0]], ["tumour", "other"], MPP, 1.0)
    _no_nan(r.stats)
    assert r.stats["tumour_with_immune_neighbour_fraction"] == 0.0
    assert r.stats["immune_near_tumour_fraction"] is None and r.stats["immune_to_nearest_tumour_um"] is None
    assert np.isnan(r.dist_tumour_um[0]) and r.dist_tumour_um[1] == pytest.approx(5.0)
    # Tissue area 0: no densities and no call.
    s = interaction_stats(*_scene(), MPP, 0.0)
    _no_nan(s)
    assert s["tumour_density_per_mm2"] is None and s["immune_call"] is None
    assert s["immune_rich_area_fraction"] is None and s["tumour_nuclei"] == 2
    # Bad input is refused.
    with pytest.raises(ValueError, match="unknown nucleus class"):
        interaction_stats([[0, 0]], ["epithelial"], MPP, 1.0)
    with pytest.raises(ValueError, match="tissue_area_mm2 or a tissue_mask"):
        interaction_stats([[0, 0]], ["tumour"], MPP)
    with pytest.raises(ValueError, match="mpp"):
        interaction_stats([[0, 0]], ["tumour"], 0.0, 1.0)


# ----------------------------------------------------------------------------- immune-rich
def _cluster(k, at=(400.0, 400.0)):
    return np.tile(np.asarray(at, np.float64), (k, 1)), np.array(["immune"] * k)


def test_immune_rich_rule_is_scenario_2s_nuclear_area_fraction():
    # 13 immune nuclei of 19.44 µm² in a disc of pi 20² µm²: 0.2011 > 0.2; 12: 0.1856.
    pts, cls = _cluster(13)
    r = compute_interactions(pts, cls, MPP, 0.01)
    assert r.immune_rich.all() and r.stats["immune_rich_cells"] == 13
    np.testing.assert_allclose(r.immune_fraction, 13 * IMMUNE_NUCLEUS_AREA_UM2 / (math.pi * 400))
    pts12, cls12 = _cluster(12)
    assert not compute_interactions(pts12, cls12, MPP, 0.01).immune_rich.any()
    # Measured areas replace the default: two 130 µm² nuclei 19 µm apart: 260 / 1256.6 > 0.2 ...
    two = np.array([[0.0, 0.0], [38.0, 0.0]])
    r = compute_interactions(two, ["immune", "immune"], MPP, 1.0, areas_um2=[130.0, 130.0])
    assert r.immune_rich.all() and r.stats["immune_rich_rule"]["immune_nucleus_area_um2"] is None
    # ... 21 µm apart each disc holds only itself.
    r = compute_interactions(two * 21 / 19, ["immune", "immune"], MPP, 1.0, areas_um2=[130.0, 130.0])
    assert not r.immune_rich.any()
    # Other classes never count.
    pts = np.vstack([_cluster(12)[0], [[400.0, 400.0]]])
    r = compute_interactions(pts, ["immune"] * 12 + ["tumour"], MPP, 1.0)
    assert not r.immune_rich.any() and np.isnan(r.immune_fraction[-1])


def test_immune_rich_area_call_and_clipping_to_the_tissue():
    pts, cls = _cluster(13)
    disc_mm2 = math.pi * 40 ** 2 * (MPP * 1e-3) ** 2      # 40 px radius
    r = compute_interactions(pts, cls, MPP, 0.01)
    assert r.stats["immune_rich_area_mm2"] == pytest.approx(disc_mm2, rel=2e-3)   # 64-gon
    # Centred at the centroid in QuPath's corner coordinates (+0.5).
    c = r.immune_rich_areas.centroid
    assert (c.x, c.y) == pytest.approx((400.5, 400.5), abs=1e-6)
    assert r.stats["immune_rich_area_fraction"] == pytest.approx(disc_mm2 / 0.01, rel=2e-3)
    assert r.stats["immune_call"] == "immune-rich" and r.stats["immune_call_threshold"] == 0.1
    assert compute_interactions(pts, cls, MPP, 0.02).stats["immune_call"] == "immune-poor"
    # A tissue mask covering the left half of the disc (x < 400.5 is not a pixel edge: use
    # 1-px mask pixels and cut at x = 400) clips the area.
    mask = np.zeros((800, 800), bool)
    mask[:, :400] = True
    r = compute_interactions(pts, cls, MPP, tissue_mask=mask)
    half = r.immune_rich_areas
    assert half.bounds[2] == pytest.approx(400.0)
    assert r.stats["immune_rich_area_mm2"] == pytest.approx(disc_mm2 / 2 * (1 - 0.5 / 40 * 4 / math.pi), rel=5e-3)
    assert r.stats["tissue_area_mm2"] == pytest.approx(800 * 400 * (MPP * 1e-3) ** 2)


# ----------------------------------------------------------------------------- grid
def test_grid_counts_and_densities_per_mm2_of_tissue():
    # 250 µm cells at 0.5 µm/px = 500 px; region 1000 x 1000 px -> 2 x 2 cells of 0.0625 mm².
    pts = np.array([[10, 10], [20, 20], [499, 10], [600, 10], [700, 800], [999, 999]], np.float64)
    cls = np.array(["tumour", "immune", "immune", "other", "immune", "tumour"])
    r = compute_interactions(pts, cls, MPP, 0.25, region=(0, 0, 1000, 1000))
    g = r.grid
    assert g.shape == (2, 2) and g.cell_px == 500.0
    # (499, 10) is at 499.5 in corner coordinates: still cell (0, 0).
    assert g.counts[:, 0, 0].tolist() == [1, 2, 0]
    assert g.counts[:, 0, 1].tolist() == [0, 0, 1]
    assert g.counts[:, 1, 1].tolist() == [1, 1, 0]
    np.testing.assert_allclose(g.tissue_mm2, 0.0625)
    np.testing.assert_allclose(g.density[1], [[32.0, 0.0], [0.0, 16.0]])
    d = g.to_dict()
    _no_nan(d)
    assert d["counts"]["immune"] == [[2, 0], [0, 1]] and d["density_per_mm2"]["tumour"][1][1] == 16.0
    assert r.stats["grid_shape"] == [2, 2] and r.stats["grid_um"] == 250.0

    # A tissue mask (250 px per mask pixel): cell (0, 1) without tissue, cell (1, 0) with a
    # quarter, cell (1, 1) with one pixel (1/4 of the cell, >= 10 %).
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    m[2:, 0] = True
    m[3, 3] = True
    r = compute_interactions(pts, cls, MPP, tissue_mask=m, tissue_downsample=250.0)
    g = r.grid
    np.testing.assert_allclose(g.tissue_mm2, [[0.0625, 0.0], [0.03125, 0.015625]])
    assert np.isnan(g.density[2, 0, 1]) and g.to_dict()["density_per_mm2"]["other"][0][1] is None
    assert g.density[0, 1, 1] == pytest.approx(64.0) and g.density[1, 1, 0] == 0.0
    assert r.stats["tissue_area_mm2"] == pytest.approx(0.0625 * 7 / 4)
    # Below grid_min_tissue a cell has no density.
    r = compute_interactions(pts, cls, MPP, tissue_mask=m, tissue_downsample=250.0,
                             config={"grid_min_tissue": 0.3})
    assert np.isnan(r.grid.density[0, 1, 1]) and not np.isnan(r.grid.density[0, 1, 0])


def test_tumour_region_cells_and_immune_density_inside_them():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 500, (20, 2))                       # 20 tumour nuclei in cell (0, 0)
    i = np.vstack([rng.uniform(0, 500, (4, 2)), rng.uniform(500, 1000, (30, 2))])
    pts = np.vstack([t, i])
    cls = ["tumour"] * 20 + ["immune"] * 34
    r = compute_interactions(pts, cls, MPP, 0.25, region=(0, 0, 1000, 1000))
    assert r.grid.tumour_region.tolist() == [[True, False], [False, False]]
    assert r.stats["tumour_region_area_mm2"] == pytest.approx(0.0625)
    assert r.stats["immune_density_in_tumour_region_per_mm2"] == pytest.approx(4 / 0.0625)


def test_density_figure_is_written_atomically(tmp_path):
    from vnumba.analysis.plots import density_figure

    rng = np.random.default_rng(1)
    pts = np.vstack([rng.normal(1000, 200, (400, 2)), rng.normal([1600, 600], 30, (60, 2)),
                     rng.uniform(0, 2000, (100, 2))]).clip(0, 1999)
    cls = ["tumour"] * 400 + ["immune"] * 160
    m = np.ones((64, 64), bool)
    m[:8, :8] = False
    r = compute_interactions(pts, cls, MPP, tissue_mask=m, tissue_downsample=2000 / 64)
    assert r.stats["immune_rich_cells"] > 0 and r.grid.tumour_region.any()
    out = density_figure(r.grid, r.stats, tmp_path / "s_density.png", r.immune_rich_areas, title="s")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_density.png"]
    # Nothing to show is still a figure.
    r0 = compute_interactions(np.zeros((0, 2)), [], MPP, 0.0)
    density_figure(r0.grid, r0.stats, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0
