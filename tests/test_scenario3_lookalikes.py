"""Scenario 3's look-alike layers (synth.tme), degradation (synth.degrade) and their script
sections: geometry, determinism per seed, the mask never covering a look-alike."""
import numpy as np
import pytest
from synth_helpers import assert_deterministic_per_seed
from synth_helpers import scenario3_script as script
from test_reference import COHORT_CFG, cohort_image, write_labelled

from synth import degrade as D
from synth import reference as R
from synth import scenario3 as S3
from synth import tme
from synth.generator import generate_sample, sample_rng

LOOKALIKES = ("vessel_cells", "stroma", "infiltrate", "aggregates", "immune_cells", "pigment",
              "debris")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Hand-made bundle: 9 tumour nuclei, 9 immune nuclei, plus 3 elongated 'other' nuclei."""
    d = tmp_path_factory.mktemp("lookalike_bundle")
    rgb, inst, cls, _ = cohort_image()
    yy, xx = np.mgrid[:rgb.shape[0], :rgb.shape[1]]
    for k in range(3):                       # spindle nuclei in the gap row 40
        m = ((yy - 41) / 2.5) ** 2 + ((xx - 40 - 90 * k) / 9.0) ** 2 <= 1
        rgb[m] = (70, 30, 110)
        inst[m] = 30 + k
        cls[m] = R.OTHER_CLASS
    path = write_labelled(d, "lookalikes", rgb, inst, cls)
    b = R.build_reference([path], config=COHORT_CFG, mpp=0.48)
    return R.save_reference(b, d / "bundle.h5")




ALL_ON = {"probability = 0.5\ncount = [1, 2]": "probability = 1.0\ncount = [1, 2]",          # aggregates
          "probability = 0.35\ncount = [1, 4]": "probability = 1.0\ncount = [1, 4]",   # pigment
          "probability = 0.35\ncount = [1, 8]": "probability = 1.0\ncount = [1, 8]",   # debris
          "regions = [0, 2]": "regions = [1, 2]",
          "fill = [0.0, 0.7]": "fill = [0.3, 0.7]"}
NO_SCALE = {"scale = [0.85, 1.15]\nhed_scale": "scale = [1.0, 1.0]\nhed_scale"}


# --------------------------------------------------------------------------- reference sets


def test_bundle_holds_immune_and_other_nuclei_with_provenance(bundle):
    b = R.load_reference(bundle)
    imm, oth = b.nucleus_sets["immune"], b.nucleus_sets["other"]
    assert len(imm) == 9 and len(oth) == 3
    assert set(b.nuclei_instance.tolist()) == set(range(1, 10))
    assert set(imm.instance.tolist()) == set(range(10, 19))
    assert set(oth.instance.tolist()) == {30, 31, 32}
    for p, (r0, c0, r1, c1) in zip(oth.patches, oth.bbox):
        assert p.shape[:2] == (r1 - r0, c1 - c0) and p.shape[1] > 2 * p.shape[0]  # elongated
        assert set(np.unique(p[..., 3])) == {0, 255}


def test_version_1_bundle_loads_with_empty_lookalike_sets_and_keeps_its_fingerprint(bundle, tmp_path):
    import shutil

    import h5py

    b2 = R.load_reference(bundle)
    old = tmp_path / "v1.h5"
    shutil.copy(bundle, old)
    with h5py.File(old, "a") as f:
        f.attrs["version"] = 1
        del f["nuclei_immune"], f["nuclei_other"]
    b1 = R.load_reference(old)
    assert all(len(s) == 0 for s in b1.nucleus_sets.values())
    assert len(b1.nuclei) == len(b2.nuclei)
    empty = R.ReferenceBundle(**{**b2.__dict__, "nucleus_sets": b1.nucleus_sets})
    assert b1.fingerprint() == empty.fingerprint() != b2.fingerprint()
    # a script that needs immune nuclei says how to fix a version-1 bundle
    with pytest.raises(ValueError, match="no immune-nucleus patches.*rebuild"):
        for i in range(20):
            generate_sample(script(64, **ALL_ON), sample_rng(0, i), old)


def test_folder_input_recurses_and_skips_images_without_classes(tmp_path):
    rgb, inst, cls, _ = cohort_image()
    write_labelled(tmp_path / "a" / "b", "with_classes", rgb, inst, cls)
    (tmp_path / "c").mkdir()
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "c" / "no_classes.png", rgb)
    np.savez(tmp_path / "c" / "no_classes_labels.npz", instances=inst)
    msgs = []
    b = R.build_reference([tmp_path], config=COHORT_CFG, progress=msgs.append)
    assert [R.Path(s).name for s in b.sources] == ["with_classes.png"]
    assert any("skipped 1 image" in m and "no_classes.png" in m for m in msgs)


# --------------------------------------------------------------------------- tme geometry


def _patch_disc(r, colour=(40, 20, 90)):
    d = 2 * r + 3
    yy, xx = np.mgrid[:d, :d]
    m = (yy - d // 2) ** 2 + (xx - d // 2) ** 2 <= r * r
    p = np.zeros((d, d, 4), np.uint8)
    p[m, :3] = colour
    p[m, 3] = 255
    return p


def test_patch_warp_kernel_equals_scipy_affine_transform_bit_for_bit():
    import naive

    rng = np.random.default_rng(11)
    cases = 0
    for t in range(300):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        src = rng.integers(0, 256, (h, w, 4)).astype(np.uint8)
        if t % 3 == 0:
            src = src[:, ::-1]                      # a mirrored view, as _rotated passes it
        angle = float(rng.choice([0.0, 90.0, 180.0, rng.uniform(0, 360)]))
        rot = tme._rotation(h, w, angle, float(rng.uniform(0.4, 2.5)))
        H2, W2 = rot[2]
        o = (int(rng.integers(0, H2)), int(rng.integers(0, W2)))
        shape = (int(rng.integers(1, H2 - o[0] + 1)), int(rng.integers(1, W2 - o[1] + 1)))
        for ch, org, shp in (((3, 4), (0, 0), (H2, W2)), ((0, 3), o, shape)):
            got = tme._warp(src, ch, rot, org, shp)
            ref = naive.warp_channels(src, ch, rot[0], rot[1], org, shp)
            assert got.dtype == np.float32 and got.shape == ref.shape
            np.testing.assert_array_equal(got, ref)
            cases += 1
    assert cases == 600


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("s", [0.8731, 1.0, 1.137])
def test_rescale_channel_by_channel_equals_one_zoom_over_all_axes(s, order):
    import naive

    rng = np.random.default_rng(3)
    img = rng.random((2, 3, 41, 37)).astype(np.float32)
    if order == 0:
        img = np.floor(img * 5).astype(np.float32)
    size = (int(41 * s) - 1, int(37 * s) - 1)
    got = D.rescale(img, s, size, order=order)
    ref = naive.rescale_stacked(img, s, order)[..., :size[0], :size[1]] if s != 1.0 \
        else img[..., :size[0], :size[1]]
    assert got.shape == (2, 3) + size
    np.testing.assert_array_equal(got, ref)


def test_paste_patches_bounds_the_overlap_and_respects_region_and_count():
    region = np.zeros((80, 80), bool)
    region[10:70, 10:70] = True
    cand = np.random.default_rng(0).uniform(0, 80, (400, 2))
    for max_ov in (0.0, 0.3):
        rng = np.random.default_rng(1)
        lab = np.zeros((80, 80), np.int32)
        rgb = np.zeros((80, 80, 3), np.float32)
        n = 0
        for c in cand:                 # one candidate per call: check each acceptance exactly
            before = lab > 0
            lab, rgb, acc = tme.paste_patches(rng, (80, 80), [_patch_disc(4)], c[None],
                                              max_overlap=max_ov, region=region, labels=lab,
                                              rgb=rgb, id_offset=n)
            if acc.shape[0]:
                n += 1
                new = lab == n
                assert region[int(c[0]), int(c[1])]
                assert np.count_nonzero(new & before) <= max_ov * new.sum()
                assert np.all(rgb[new] > 0)
        assert n > 10
        if max_ov == 0.0:
            assert np.count_nonzero(lab) == sum(np.count_nonzero(lab == i) for i in range(1, n + 1))
    _, _, few = tme.paste_patches(np.random.default_rng(1), (80, 80), [_patch_disc(4)], cand,
                                  max_overlap=0.3, max_count=5)
    assert few.shape[0] == 5


def test_paste_patches_keeps_the_hard_core_distance_between_accepted_centres():
    from scipy.spatial.distance import pdist

    cand = np.random.default_rng(0).uniform(0, 80, (600, 2))
    for d in (0.0, 9.0):
        _, _, acc = tme.paste_patches(np.random.default_rng(1), (80, 80), [_patch_disc(3)],
                                      cand, max_overlap=1.0, min_distance=d)
        gaps = pdist(acc)
        if d:
            assert acc.shape[0] > 30 and gaps.min() >= d
        else:                          # without it, random placement puts centres closer
            assert gaps.min() < 3.0
    # the existing nuclei passed in (labels) do not count: only this call's centres
    lab = np.zeros((80, 80), np.int32)
    lab[30:50, 30:50] = 1
    _, _, acc = tme.paste_patches(np.random.default_rng(1), (80, 80), [_patch_disc(3)],
                                  np.array([[40.0, 40.0], [44.0, 40.0]]), max_overlap=1.0,
                                  labels=lab, id_offset=1, min_distance=5.0)
    np.testing.assert_array_equal(acc, [[40.0, 40.0]])


def test_density_jitter_keeps_white_and_scales_optical_density():
    c = np.array([[1.0, 0.5, 0.25]], np.float32)
    np.testing.assert_allclose(tme.density_jitter(c, 1.0), c, rtol=1e-6)
    d = tme.density_jitter(c, 2.0)
    np.testing.assert_allclose(d, c ** 2, rtol=1e-5)       # twice the stain: I^2 (Beer–Lambert)
    assert d[0, 0] == pytest.approx(1.0)


def test_grow_region_with_unit_speed_is_a_disc():
    m = tme.grow_region(None, (101, 101), (50, 50), 30.0, np.ones((101, 101)))
    area = m.sum()
    assert abs(area / (np.pi * 30 ** 2) - 1) < 0.12        # first-order FMM overestimates a bit
    assert m[50, 50] and m[50, 79] and not m[50, 85]


def test_oriented_ellipses_follow_the_direction_field():
    rng = np.random.default_rng(3)
    cen = np.array([[30.0, 30.0], [30.0, 90.0], [90.0, 30.0], [90.0, 90.0]])
    for angle in (0.0, np.pi / 2, np.pi / 4):
        lab, par = tme.oriented_ellipses(rng, (120, 120), cen, (12, 12), (0.3, 0.3),
                                         angle=np.full((120, 120), angle), angle_jitter=0.0)
        assert par.shape == (4, 5)
        for i in range(1, 5):
            yy, xx = np.nonzero(lab == i)
            cov = np.cov(np.stack([xx, yy]))
            w, v = np.linalg.eigh(cov)
            main = np.arctan2(v[1, 1], v[0, 1]) % np.pi
            assert min(abs(main - angle % np.pi), np.pi - abs(main - angle % np.pi)) < 0.1
            assert np.sqrt(w[1] / w[0]) == pytest.approx(1 / 0.3, rel=0.2)


def test_discs_fill_about_the_asked_fraction_inside_the_region():
    region = np.zeros((100, 100), bool)
    region[20:80, 10:90] = True
    lab = tme.discs(np.random.default_rng(4), region, 0.5, (5.0, 6.0))
    assert not np.any((lab > 0) & ~region)
    assert 0.45 <= np.count_nonzero(lab) / region.sum() <= 0.65


def test_granules_lie_in_their_blobs_with_the_asked_density():
    g = tme.granules(np.random.default_rng(5), (60, 60), [[30.0, 30.0]], (10.0, 10.0),
                     density=(0.5, 0.5), grain=1.0)
    yy, xx = np.nonzero(g)
    assert np.all((yy - 30) ** 2 + (xx - 30) ** 2 <= 10.5 ** 2)
    area = np.pi * 10 * 10 * 0.8                            # minor axis 0.6..1.0 of the radius
    assert 0.3 * area < g.sum() < 0.75 * np.pi * 100


# --------------------------------------------------------------------------- degradation


def test_degrade_defaults_change_nothing_and_stain_variation_is_shared():
    assert not D.DegradeSpec().active
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.9, (3, 20, 30)).astype(np.float32)
    same = D.stain_variation(np.random.default_rng(1), D.DegradeSpec())
    np.testing.assert_array_equal(same(img), img)
    np.testing.assert_array_equal(D.degrade_input(np.random.default_rng(1), img, D.DegradeSpec()), img)
    spec = D.DegradeSpec(hed_scale=0.3, hed_shift=0.1, lab_shift=(3.0, 3.0, 3.0))
    f = D.stain_variation(np.random.default_rng(2), spec)
    a, b = f(img), f(img.copy())
    np.testing.assert_array_equal(a, b)                     # one draw for clean and noisy
    assert a.dtype == np.float32 and a.shape == img.shape and 0 <= a.min() and a.max() <= 1
    assert np.abs(a - img).mean() > 0.005


def test_degrade_input_blurs_adds_noise_and_jpeg():
    rng = np.random.default_rng(0)
    img = np.zeros((3, 32, 32), np.float32)
    img[:, :, 16:] = 1.0
    blur = D.degrade_input(rng, img, D.DegradeSpec(blur=(1.5, 1.5)))
    assert 0.05 < blur[0, 10, 15] < 0.5 and blur.shape == img.shape
    noisy = D.degrade_input(rng, img + 0.5 - img, D.DegradeSpec(noise_std=(0.05, 0.05)))
    assert noisy.std() == pytest.approx(0.05, rel=0.1)
    tex = rng.uniform(0, 1, (3, 32, 32)).astype(np.float32)
    jp = D.degrade_input(rng, tex, D.DegradeSpec(jpeg_probability=1.0, jpeg_quality=(20, 20)))
    assert jp.dtype == np.float32 and 0.02 < np.abs(jp - tex).mean() < 0.3


def test_rescale_and_canvas_cover_the_output():
    for s in (0.85, 1.0, 1.15):
        h, w = D.canvas_size((300, 200), s)
        out = D.rescale(np.ones((3, h, w), np.float32), s, (300, 200))
        assert out.shape == (3, 300, 200)
    lab = np.arange(100, dtype=np.int32).reshape(10, 10)
    assert set(np.unique(D.rescale(lab, 1.5, (15, 15), order=0))) <= set(range(100))


# --------------------------------------------------------------------------- generation


def tumour_channel(s, smp):
    """The tumour channel of the per-class target (the shipped script draws three)."""
    return smp.mask[S3.mask_classes(s).index("tumour")].astype(bool)


def test_mask_never_covers_a_lookalike(bundle):
    s = script(96, **ALL_ON, **NO_SCALE)
    assert S3.mask_classes(s) == ("tumour", "immune", "other")
    seen = set()
    for i in range(6):
        smp = generate_sample(s, sample_rng(2, i), bundle)
        names = [l.name for l in smp.layers]
        assert names == [n for n in S3.LAYER_NAMES if n in names]      # article order kept
        m = tumour_channel(s, smp)
        assert m.any()
        for l in smp.layers:
            if l.name in LOOKALIKES:
                seen.add(l.name)
                assert not np.any(m & l.footprint), (i, l.name)
        # the other channels hold only nuclei of their own layers
        for c, cls in enumerate(S3.mask_classes(s)):
            own = np.zeros(m.shape, bool)
            for l in smp.layers:
                if l.name in S3.CLASS_LAYERS[cls]:
                    own |= S3.nucleus_pixels(l)
            assert not np.any(smp.mask[c].astype(bool) & ~own), (i, cls)
    assert seen == set(LOOKALIKES)


def test_aggregates_are_packed_and_hold_no_tumour_nucleus_centre(bundle):
    s = script(128, **ALL_ON, **NO_SCALE)
    found = 0
    for i in range(4):
        smp = generate_sample(s, sample_rng(7, i), bundle)
        names = [l.name for l in smp.layers]
        if "aggregates" not in names:
            continue
        agg = smp.layers[names.index("aggregates")]
        nuc = smp.layers[names.index("tumour_nuclei")]
        region = agg.footprint & (agg.labels == 0)
        cover = np.count_nonzero(agg.labels) / max(np.count_nonzero(agg.footprint), 1)
        assert cover > 0.3 and smp.info["aggregate_nuclei"] >= 5
        c = nuc.centers.astype(int)
        assert not region[c[:, 0], c[:, 1]].any()
        found += 1
    assert found >= 3


def test_generation_with_every_layer_is_deterministic_per_seed(bundle):
    s = script(80, **ALL_ON)
    a, _ = assert_deterministic_per_seed(s, bundle, 9, 1)
    assert a.noisy.shape == (3, 80, 80) and a.mask.shape == (3, 80, 80)
    # the input is a degraded version of the target, not a copy of it
    assert np.abs(a.noisy - a.clean).mean() > 0.005


def test_scale_jitter_resamples_images_mask_and_layers_together(bundle):
    s = script(80, **{"scale = [0.85, 1.15]\nhed_scale": "scale = [1.3, 1.3]\nhed_scale"})
    smp = generate_sample(s, sample_rng(3, 0), bundle)
    assert smp.info["scale_jitter"] == pytest.approx(1.3)
    nuc = smp.layers[[l.name for l in smp.layers].index("tumour_nuclei")]
    assert nuc.rgba.shape[:2] == (80, 80)
    above = np.zeros((80, 80), bool)
    names = [l.name for l in smp.layers]
    for l in smp.layers[names.index("tumour_nuclei") + 1:]:
        above |= l.footprint
    vis = nuc.footprint & ~above
    m = tumour_channel(s, smp)
    assert np.count_nonzero(m ^ vis) <= 0.1 * max(np.count_nonzero(m), 1)


def test_resampled_layers_are_made_on_first_access_and_behave_as_a_list(bundle):
    s = script(80, **{"scale = [0.85, 1.15]\nhed_scale": "scale = [1.3, 1.3]\nhed_scale"})
    smp = generate_sample(s, sample_rng(3, 0), bundle)
    lazy = smp.layers
    assert isinstance(lazy, S3._RescaledLayers) and not lazy._done   # nothing resampled yet
    eager = [S3._rescale_layer(l, 1.3, (80, 80)) for l in lazy._src]
    assert len(lazy) == len(eager) and [l.name for l in lazy] == [l.name for l in eager]
    for a, b in zip(lazy, eager):
        np.testing.assert_array_equal(a.rgba, b.rgba)
        assert (a.labels is None) == (b.labels is None)
        if a.labels is not None:
            np.testing.assert_array_equal(a.labels, b.labels)
    assert lazy[-1] is lazy[len(lazy) - 1]                                # made once, cached
    assert [l.name for l in lazy[1:3]] == [l.name for l in eager[1:3]]
    with pytest.raises(IndexError):
        lazy[len(lazy)]


