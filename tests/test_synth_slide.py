"""Synthetic whole slides (synth/slide.py, ``python -m synth slide``): the pyramidal TIFF
(OME and SVS-style), its pixel size, the truth beside it (classes, centroids on tissue and on
nuclei, the generator's own nuclei), the interaction figures, determinism per seed, atomic
writing and the command line's refusals.  Tiny slides with the hand-made test bundle."""
import csv
import json

import numpy as np
import pytest
import tifffile
from skimage.color import rgb2hed
from test_scenario3_lookalikes import bundle  # noqa: F401 (fixture)

from synth import slide as S
from synth.__main__ import main
from synth.generator import generate_sample
from synth.scenario3 import sample_layout
from synth.script import load_script

GLASS = np.asarray(S.GLASS) * 255.0
SEED = 5


def _levels(path):
    with tifffile.TiffFile(path) as f:
        return [lv.asarray() for lv in f.series[0].levels]


def _on_glass(img, tol=25.0):
    return np.linalg.norm(img.astype(np.float64) - GLASS, axis=-1) < tol


@pytest.fixture(scope="module")
def slide(tmp_path_factory, bundle):  # noqa: F811
    """640 x 768 px at the script's own 0.48 µm/px (one slide pixel per generator pixel)."""
    d = tmp_path_factory.mktemp("slide")
    out = d / "tiny.ome.tif"
    rc = main(["slide", "--scenario", "scenario3", "--size", "640", "768", "-o", str(out),
               "--seed", str(SEED), "--mpp", "0.48", "--reference", str(bundle), "--tile", "128",
               "-q"])
    assert rc == 0
    return out


# --------------------------------------------------------------------------- pieces


def test_pyramid_levels_halve_down_to_1024_and_at_least_two():
    assert S.pyramid_shapes((8192, 8192)) == [(8192, 8192), (4096, 4096), (2048, 2048), (1024, 1024)]
    assert S.pyramid_shapes((1024, 1024)) == [(1024, 1024), (512, 512)]
    assert S.pyramid_shapes((3001, 700)) == [(3001, 700), (1501, 350), (751, 175)]


@pytest.mark.parametrize("g", [1.0, 1.92, 0.75])
def test_generator_tiles_cover_the_slide_once_and_map_into_their_tile(g):
    T = 300
    e = S._edges(2000, T, g)
    assert e[0] == 0 and e[-1] == 2000 and np.all(np.diff(e) > 0)
    for i in range(len(e) - 1):
        y = (np.arange(e[i], e[i + 1]) + 0.5) / g - 0.5 - i * T    # local source coordinate
        assert y.min() >= -0.5 - 1e-9 and y.max() < T - 0.5 + 1e-9


def test_truth_paths_and_tile_seeds():
    assert S.truth_paths("/x/slide.ome.tif")[0].name == "slide_truth.csv"
    assert S.truth_paths("/x/slide.svs")[1].name == "slide_truth.json"
    a = S.tile_rng(7, 3).random(4)
    b = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(0, 3))).random(4)
    assert np.array_equal(a, b)


def test_region_variants_are_valid_scripts_with_one_stain_per_slide():
    v = S.region_scripts(load_script("scenario3"), sample_size=(128, 96))
    assert set(v) == set(S.REGION_KINDS)
    assert all(s.size == (128, 96) for s in v.values())
    assert v["immune"]["aggregates"].probability == 1.0
    assert v["stroma"]["stroma"].regions[0] >= 4
    assert v["tumour"]["tumour_nuclei"].count[0] > v["mixed"]["tumour_nuclei"].count[0]
    for s in v.values():
        d = s["degrade"]
        assert d.hed_scale == d.hed_shift == d.jpeg_probability == 0 and not any(d.lab_shift)


# --------------------------------------------------------------------------- the slide


def test_slide_is_a_pyramidal_ome_tiff_with_its_pixel_size(slide):
    with tifffile.TiffFile(slide) as f:
        assert f.is_ome
        lv = f.series[0].levels
        assert [x.shape for x in lv] == [(640, 768, 3), (320, 384, 3)]
        page = f.series[0].levels[0].keyframe
        assert page.is_tiled and page.tilewidth == 128 and page.compression == 8  # zlib
        assert 'PhysicalSizeX="0.48"' in f.ome_metadata
        assert 'PhysicalSizeXUnit="µm"' in f.ome_metadata
    a0, a1 = _levels(slide)
    # level 1 is the 2x2 mean of level 0
    m = a0.reshape(320, 2, 384, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(m - a1).max() <= 1.0


def test_truth_files_and_facts(slide):
    csv_path, json_path = S.truth_paths(slide)
    with open(csv_path, newline="") as fh:
        assert next(csv.reader(fh)) == ["id", "x", "y", "class", "area_um2"]
    t = S.read_truth(csv_path)
    facts = json.loads(json_path.read_text())
    assert set(t["class"]) == set(S.CLASSES)
    assert np.array_equal(t["id"], np.arange(1, t["id"].size + 1))
    assert facts["size"] == [640, 768] and facts["mpp"] == 0.48 and facts["seed"] == SEED
    assert facts["scenario"] == "scenario3" and "[scenario]" in facts["script"]
    assert facts["counts"] == {c: int(np.sum(t["class"] == c)) for c in S.CLASSES}
    assert facts["nuclei"] == t["id"].size
    assert np.all(t["area_um2"] >= S.MIN_AREA_UM2)
    assert np.all((t["x"] >= 0) & (t["x"] <= 767) & (t["y"] >= 0) & (t["y"] <= 639))
    # tissue: what is not glass, 50-70 % drawn
    a0 = _levels(slide)[0]
    tissue = ~_on_glass(a0)
    assert facts["tissue_area_mm2"] == pytest.approx(tissue.sum() * 0.48 ** 2 / 1e6, rel=0.05)
    assert 0.35 <= facts["tissue_fraction"] <= 0.85
    # the interaction figures by vnumba.analysis.interactions' definitions
    it = facts["interactions"]
    assert it["tumour_nuclei"] == facts["counts"]["tumour"]
    assert it["immune_cells"] == facts["counts"]["immune"]
    assert it["tissue_area_mm2"] == pytest.approx(facts["tissue_area_mm2"])
    assert it["radius_um"] == 20.0 and it["immune_call"] in ("immune-rich", "immune-poor")
    assert facts["immune_rich_areas"]["type"] in ("Polygon", "MultiPolygon")
    assert {t["kind"] for t in facts["regions"]["tiles"]} <= set(S.REGION_KINDS)


def test_truth_lies_on_tissue_and_on_nuclei(slide):
    a0 = _levels(slide)[0]
    t = S.read_truth(S.truth_paths(slide)[0])
    yi, xi = np.rint(t["y"]).astype(int), np.rint(t["x"]).astype(int)
    assert not _on_glass(a0[yi, xi]).any()                     # every centroid on tissue
    hema = rgb2hed(a0)[..., 0]
    tissue = np.flatnonzero(~_on_glass(a0).ravel())
    rand = np.random.default_rng(0).choice(tissue, 4000)
    at_nuclei, at_random = hema[yi, xi], hema.ravel()[rand]
    # centroids sit on haematoxylin: darker than most tissue
    assert np.median(at_nuclei) > np.quantile(at_random, 0.6)
    assert at_nuclei.mean() > at_random.mean() + 0.5 * at_random.std()


def test_tissue_is_the_generators_sample_and_truth_its_visible_nuclei(slide, bundle):  # noqa: F811
    """At 0.48 µm/px a tile is the scenario-3 sample of its own seed, stained once per slide."""
    facts = json.loads(S.truth_paths(slide)[1].read_text())
    a0 = _levels(slide)[0]
    tiles = facts["regions"]["tiles"]
    tile = max(tiles, key=lambda d: d["nuclei"])
    i, j, kind = tile["row"], tile["col"], tile["kind"]
    x0, y0, w, h = tile["bbox"]
    gw = facts["grid"][1]
    script = S.region_scripts(load_script("scenario3"))[kind]
    smp = generate_sample(script, S.tile_rng(SEED, i * gw + j), bundle)
    stain = S.stain_variation(S._rng(SEED, S._STAIN), load_script("scenario3")["degrade"])
    want = np.clip(stain(smp.noisy).transpose(1, 2, 0)[:h, :w] * 255 + 0.5, 0, 255)
    got = a0[y0:y0 + h, x0:x0 + w].astype(np.float64)
    inner = ~_on_glass(got, tol=40)           # where alpha ~ 1 the slide is the sample
    alpha_one = np.abs(got - want).max(axis=-1) <= 1
    assert alpha_one[inner].mean() > 0.9
    # each truth nucleus of this tile is a visible nucleus of the sample with its class
    lay = sample_layout(smp.layers)
    t = S.read_truth(S.truth_paths(slide)[0])
    sel = (t["x"] >= x0) & (t["x"] < x0 + w) & (t["y"] >= y0) & (t["y"] < y0 + h)
    cls_of = {1: "tumour", 2: "immune", 7: "other"}
    hits = 0
    for x, y, c in zip(t["x"][sel], t["y"][sel], t["class"][sel]):
        k = lay.instances[int(round(y)) - y0, int(round(x)) - x0]
        hits += k > 0 and cls_of[int(lay.fine_class[k])] == c
    assert hits >= 0.95 * sel.sum() and sel.sum() > 0


def test_same_seed_same_slide_other_seed_other_slide(slide, bundle, tmp_path):  # noqa: F811
    again = tmp_path / slide.name
    r = S.write_slide(again, "scenario3", size=(640, 768), seed=SEED, mpp=0.48, reference=bundle,
                      tile=128, progress=False)
    for a, b in zip(_levels(slide), _levels(again)):
        assert np.array_equal(a, b)
    assert S.truth_paths(slide)[0].read_bytes() == r.truth_csv.read_bytes()
    assert json.loads(S.truth_paths(slide)[1].read_text()) == json.loads(r.truth_json.read_text())
    other = S.write_slide(tmp_path / "other.ome.tif", "scenario3", size=(256, 256), seed=SEED + 1,
                          mpp=0.48, reference=bundle, tile=128, progress=False)
    assert other.facts["size"] == [256, 256]
    assert not any(p.name.endswith((".tmp", ".work")) for p in tmp_path.iterdir())


def test_svs_style_slide_opens_with_tifffile_and_openslide(tmp_path, bundle):  # noqa: F811
    out = tmp_path / "tiny.svs"
    rc = main(["slide", "--size", "400", "336", "-o", str(out), "--seed", "2", "--mpp", "0.4",
               "--reference", str(bundle), "--tile", "128", "-q"])
    assert rc == 0
    with tifffile.TiffFile(out) as f:
        assert f.is_svs
        assert "|MPP = 0.4" in f.pages[0].description
        assert f.pages[0].compression == 7 and f.pages[0].is_tiled     # JPEG tiles
        assert [x.shape for x in f.series[0].levels] == [(400, 336, 3), (200, 168, 3)]
        a0 = f.series[0].levels[0].asarray()
    facts = json.loads(S.truth_paths(out)[1].read_text())
    assert facts["slide_format"] == "svs" and facts["mpp"] == 0.4
    openslide = pytest.importorskip("openslide")
    s = openslide.OpenSlide(str(out))
    try:
        assert s.properties["openslide.vendor"] == "aperio"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.4)
        assert s.level_dimensions == ((336, 400), (168, 200))
        r = np.asarray(s.read_region((0, 0), 0, (336, 400)).convert("RGB"))
        assert np.array_equal(r, a0)
    finally:
        s.close()


# --------------------------------------------------------------------------- failures


def test_a_failed_write_leaves_nothing(tmp_path, bundle, monkeypatch):  # noqa: F811
    def boom(tmp, *a, **k):
        tmp.write_bytes(b"half a TIFF")
        raise OSError("disk full")

    monkeypatch.setattr(S, "_write_ome", boom)
    out = tmp_path / "x.ome.tif"
    (tmp_path / ".x.ome.tif.999999999.work").mkdir()     # left by a killed run: removed
    with pytest.raises(OSError, match="disk full"):
        S.write_slide(out, size=(96, 96), seed=0, mpp=0.48, reference=bundle, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_before_any_tile_and_leaves_nothing(tmp_path, bundle, capsys,  # noqa: F811
                                                                     monkeypatch):
    """The levels' blocks are reserved when they are made (pread/pwrite disk arrays, not a
    memory map that would die of SIGBUS on a full disk): one line naming the work file."""
    import errno
    import os

    made = []
    monkeypatch.setattr(S, "generate_sample", lambda *a, **k: made.append(1))

    def full(fd, off, n):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    rc = main(["slide", "--size", "96", "96", "-o", str(tmp_path / "x.ome.tif"), "--mpp", "0.48",
               "--reference", str(bundle), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1, err
    assert "level0.raw: cannot reserve" in err and "No space left" in err
    assert made == [] and list(tmp_path.iterdir()) == []


def test_command_line_refusals(tmp_path, bundle, capsys):  # noqa: F811
    assert main(["slide", "--scenario", "scenario2", "--size", "64", "64", "-o",
                 str(tmp_path / "s.ome.tif"), "-q"]) == 2
    assert "scenario-3" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="same file"):
        main(["slide", "--size", "64", "64", "-o", str(bundle), "--reference", str(bundle), "-q"])
    with pytest.raises(SystemExit):
        main(["slide", "--size", "64", "64", "-o", str(tmp_path / "s.svs"), "--tile", "100"])
    assert "multiple of 16" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_region_variants_form_areas_of_several_tiles():
    k = S._region_kinds(np.random.default_rng(0), (24, 24), 2.0)
    assert set(np.unique(k)) == set(range(len(S.REGION_KINDS)))
    same = np.mean(k[1:] == k[:-1])            # vertical neighbours share a variant
    assert same > 0.6                          # independent draws: ~0.25
