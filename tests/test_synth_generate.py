"""Sample generation, HDF5 writer and CLI (synth.generator, synth.layered, synth.writer)."""
import h5py
import numpy as np
import pytest

from synth import GENERATOR_VERSION
from synth import writer as writer_mod
from synth.__main__ import main
from synth.generator import generate_sample, sample_rng
from synth.layered import BuildContext, MaskSpec, build_mask
from synth.layers import Layer
from synth.script import load_script
from synth.writer import DatasetError, dataset_info, read_sample, write_dataset


@pytest.fixture(scope="module")
def small():
    return {n: load_script(n).with_size(72, 80) for n in ("scenario1", "scenario2")}


def test_sample_rng_equals_seedsequence_spawn():
    kids = np.random.SeedSequence(123).spawn(5)
    for i in (0, 4):
        a = np.random.default_rng(kids[i]).random(4)
        np.testing.assert_array_equal(sample_rng(123, i).random(4), a)


@pytest.mark.parametrize("name", ["scenario1", "scenario2"])
def test_samples_are_valid_and_deterministic_per_seed(small, name):
    s = small[name]
    a = generate_sample(s, sample_rng(7, 0))
    b = generate_sample(s, sample_rng(7, 0))
    c = generate_sample(s, sample_rng(7, 1))
    for x in ("noisy", "clean", "mask"):
        np.testing.assert_array_equal(getattr(a, x), getattr(b, x))
    assert not np.array_equal(a.noisy, c.noisy)
    assert a.noisy.shape == (3, 72, 80) and a.clean.dtype == np.float32
    assert set(np.unique(a.mask)) <= {0.0, 1.0}
    assert len(a.layers) == len(s["layers"])


def test_full_size_scenario_layers_obey_the_placement_rules():
    s = load_script("scenario1")
    smp = generate_sample(s, sample_rng(0, 3))
    L = {l.name: l for l in smp.layers}
    tum, imm, imn, strm = L["tumour_cells"], L["immune_cells"], L["immune_nuclei"], L["stroma_cells"]
    assert tum.centers.shape[0] == 25
    # immune cells do not overlap each other: every immune pixel carries one id and each
    # cell's painted area equals its full ellipse (clipped to the image)
    ids, counts = np.unique(imm.labels[imm.labels > 0], return_counts=True)
    assert len(ids) == imm.centers.shape[0] > 0
    # centres of stroma cells are not inside tumour cells
    c = np.floor(strm.centers + 0.5).astype(int)
    assert len(c) > 0 and not tum.footprint[c[:, 0], c[:, 1]].any()
    # nuclei lie inside their own cell
    nz = imn.labels > 0
    np.testing.assert_array_equal(imn.labels[nz], imm.labels[nz])
    # stroma cells avoid immune cells
    assert not (strm.footprint & imm.footprint).any()
    # mask is a union of whole immune cells
    m = smp.mask > 0
    assert np.all(imm.labels[m] > 0)
    for i in np.unique(imm.labels[m]):
        assert m[imm.labels == i].all()


def test_build_mask_follows_the_script_rule_on_hand_made_layers(small):
    s = small["scenario2"]
    ctx = BuildContext(s, np.random.default_rng(0))
    H, W = ctx.shape
    lab = np.zeros((H, W), np.int32)
    lab[10:14, 10:14] = 1          # isolated immune cell
    lab[40:70, 40:75] = 2          # big immune cell: its own disc is well covered
    rgba = np.zeros((H, W, 4), np.float32)
    rgba[..., 3] = lab > 0
    ctx.add(Layer("imm", "immune", rgba, labels=lab, centers=np.array([[11.5, 11.5], [55.0, 57.0]])))
    mask, info = build_mask(MaskSpec("concentration", "imm", ("imm",), radius=10.0, threshold=0.2), ctx)
    assert info["concentration"][0] < 0.2 < info["concentration"][1]
    np.testing.assert_array_equal(mask == 1, lab == 2)
    mask2, _ = build_mask(MaskSpec("footprint", "imm"), ctx)
    np.testing.assert_array_equal(mask2 == 1, lab > 0)


def test_colour_noise_in_a_generated_layer_has_the_script_covariance():
    s = load_script("scenario2")
    smp = generate_sample(s, sample_rng(1, 0))
    bg = smp.layers[0]
    spec = s["colors"]["background"]
    n = bg.noise.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(np.cov(n.T), spec.cov, atol=0.25 * np.abs(spec.cov).max())
    np.testing.assert_allclose(n.mean(0), 0, atol=0.1 * np.sqrt(np.max(spec.cov)))


def test_dataset_round_trip_attrs_and_chunks(small, tmp_path):
    s = small["scenario2"]
    out = write_dataset(tmp_path / "d.h5", s, 3, seed=5, progress=False)
    with h5py.File(out) as f:
        assert f["u0"].shape == (3, 3, 72, 80) and f["gm"].shape == (3, 72, 80)
        assert f["u0"].chunks == (1, 3, 72, 80) and f["gm"].chunks == (1, 72, 80)
        assert all(f[k].dtype == np.float32 for k in ("u0", "gu", "gm"))
        a = dict(f.attrs)
    assert a["schema_version"] == 1 and a["scenario"] == "scenario2" and a["seed"] == 5
    assert a["script"] == s.text and a["generator_version"] == GENERATOR_VERSION
    assert a["mpp"] == 0.5 and a["n"] == 3
    ref = generate_sample(s, sample_rng(5, 2))
    u0, gu, gm = read_sample(out, 2)
    np.testing.assert_array_equal(u0, ref.noisy)
    np.testing.assert_array_equal(gu, ref.clean)
    np.testing.assert_array_equal(gm, ref.mask)
    assert dataset_info(out)["n_samples"] == 3


def test_output_is_independent_of_worker_count(small, tmp_path):
    s = small["scenario1"]
    a = write_dataset(tmp_path / "a.h5", s, 4, seed=9, workers=1, progress=False)
    b = write_dataset(tmp_path / "b.h5", s, 4, seed=9, workers=2, progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for k in ("u0", "gu", "gm"):
            np.testing.assert_array_equal(fa[k][:], fb[k][:])


def test_failure_mid_write_leaves_no_file_and_keeps_an_old_one(small, tmp_path, monkeypatch):
    s = small["scenario2"]
    target = tmp_path / "out.h5"
    target.write_bytes(b"old contents")
    real = writer_mod._make

    def boom(shared, i):
        if i == 2:
            raise RuntimeError("killed")
        return real(shared, i)

    monkeypatch.setattr(writer_mod, "_make", boom)
    with pytest.raises(RuntimeError, match="killed"):
        write_dataset(target, s, 4, seed=1, progress=False)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    target.unlink()
    with pytest.raises(RuntimeError):
        write_dataset(target, s, 4, seed=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_reading_a_foreign_file_gives_a_clear_error(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(DatasetError, match="'u0' missing"):
        dataset_info(p)
    (tmp_path / "t.h5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        dataset_info(tmp_path / "t.h5")


def test_cli_generate_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    rc = main(["generate", "scenario1", "-n", "2", "-o", str(out), "--seed", "3", "--size", "48", "56", "-q"])
    assert rc == 0
    info = dataset_info(out)
    assert info["n_samples"] == 2 and (info["height"], info["width"]) == (48, 56)
    assert "size = [48, 56]" in info["script"]
    s = load_script("scenario1").with_size(48, 56)
    np.testing.assert_array_equal(read_sample(out, 1)[0], generate_sample(s, sample_rng(3, 1)).noisy)


def test_cli_show_scenario_and_errors(tmp_path, capsys):
    assert main(["show-scenario", "scenario2"]) == 0
    assert capsys.readouterr().out == load_script("scenario2").text
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nkind = "scenario2"\nmpp = -1\n')
    assert main(["generate", str(bad), "-n", "1", "-o", str(tmp_path / "o.h5"), "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "scenario.mpp" in err and "must be > 0" in err
    assert not (tmp_path / "o.h5").exists()
