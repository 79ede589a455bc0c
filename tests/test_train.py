"""Training end to end on tiny datasets: the loss falls, resume equals an uninterrupted run,
model files round-trip and bad files give clear errors."""
import csv

import h5py
import numpy as np
import pytest

from vnumba import train
from vnumba.io import models as modelio
from vnumba.io.dataset import DatasetError, SyntheticDataset, batch_plan, write_dataset_arrays
from vnumba.training import trainer
from vnumba.vn.config import ModelConfig
from vnumba.vn.model import init_params

TINY = ["--steps", "2", "--nf-u", "4", "--nf-m", "2", "--ks-u", "5", "--ks-m", "3", "--ks", "3"]


def _toy_dataset(path, n=6, size=20, seed=0):
    """Bright discs on a dark noisy background; the mask is the disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    gu = np.empty((n, 3, size, size), np.float32)
    gm = np.empty((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(5, size - 5, 2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(9, 20)).astype(np.float32)
        gm[i] = disc
        gu[i] = 0.2 + 0.6 * disc[None] * np.array([0.9, 0.5, 0.7], np.float32)[:, None, None]
    u0 = np.clip(gu + 0.08 * rng.standard_normal(gu.shape), 0, 1).astype(np.float32)
    write_dataset_arrays(path, u0, gu, gm, scenario="toy", seed=seed, mpp=0.5)
    return path


def _read_log(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_short_training_lowers_the_loss_and_writes_log_and_model(tmp_path):
    data = _toy_dataset(tmp_path / "toy.h5")
    out = tmp_path / "m.h5"
    rc = train.main([str(data), *TINY, "--iters", "80", "--batch", "4", "--lr", "5e-3",
                     "--crop", "16", "--out", str(out), "--quiet"])
    assert rc == 0
    rows = _read_log(out.with_suffix(".csv"))
    assert [int(r["iter"]) for r in rows] == list(range(1, 81))
    assert tuple(rows[0]) == trainer.LOG_COLUMNS
    # the figures read the log by the same column definition
    from vnumba.analysis.plots import read_training_log
    curves = read_training_log(out.with_suffix(".csv"))
    np.testing.assert_array_equal(curves["iter"], np.arange(1, 81))
    first = np.mean([float(r["loss"]) for r in rows[:3]])
    last = np.mean([float(r["loss"]) for r in rows[-3:]])
    assert last < 0.5 * first, (first, last)
    m = modelio.load_model(out)
    assert m.arch == "vn" and m.meta["scenario"] == "toy" and m.meta["mpp"] == 0.5
    u, mm = m.apply(np.full((1, 3, 12, 12), 0.5, np.float32))
    assert u.shape == (1, 3, 12, 12) and mm.shape == (1, 12, 12)


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    data = _toy_dataset(tmp_path / "toy.h5")
    common = [str(data), *TINY, "--batch", "2", "--crop", "12", "--lr", "1e-3", "--seed", "3", "--quiet"]
    assert train.main([*common, "--iters", "6", "--out", str(tmp_path / "a.h5")]) == 0
    # interrupted after 4 iterations (checkpoint every 2), then resumed to 6
    assert train.main([*common, "--iters", "4", "--checkpoint-every", "2",
                       "--out", str(tmp_path / "b.h5")]) == 0
    assert train.main([*common, "--iters", "6", "--checkpoint-every", "2", "--resume",
                       "--out", str(tmp_path / "b.h5")]) == 0
    a = modelio.load_model(tmp_path / "a.h5").params
    b = modelio.load_model(tmp_path / "b.h5").params
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    la, lb = _read_log(tmp_path / "a.csv"), _read_log(tmp_path / "b.csv")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    data = _toy_dataset(tmp_path / "toy.h5")
    common = [str(data), *TINY, "--batch", "2", "--crop", "12", "--quiet", "--out", str(tmp_path / "c.h5")]
    assert train.main([*common, "--iters", "2"]) == 0
    with pytest.raises(SystemExit, match="different run"):
        train.main([*common, "--iters", "4", "--resume", "--seed", "9"])


def test_batch_plan_depends_only_on_seed_and_iteration():
    a = batch_plan(5, 17, 100, 8, 300, 300, 96)
    b = batch_plan(5, 17, 100, 8, 300, 300, 96)
    c = batch_plan(5, 18, 100, 8, 300, 300, 96)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a[:3], c[:3]))
    assert a[1].max() <= 300 - 96 and a[3] == 96


def test_model_file_round_trips_exactly(tmp_path):
    cfg = ModelConfig(n_steps=2, nf_u=3, nf_m=2, ks_u=5, ks_m=3, ks=3)
    p = init_params(cfg, np.random.default_rng(0), np.float64)
    m = modelio.Model("vn", cfg, p, {"scenario": "scenario2", "mpp": 0.5, "reinhard_mean": [50.0, 10.0, -5.0]})
    modelio.save_model(tmp_path / "x.h5", m)
    back = modelio.load_model(tmp_path / "x.h5")
    assert back.config == cfg and back.meta == m.meta and back.arch == "vn"
    for k in p:
        np.testing.assert_array_equal(back.params[k], p[k])
        assert back.params[k].dtype == p[k].dtype


def test_foreign_truncated_and_wrong_version_model_files_are_rejected(tmp_path):
    cfg = ModelConfig(n_steps=1, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    good = tmp_path / "good.h5"
    modelio.save_model(good, modelio.Model("vn", cfg, init_params(cfg, np.random.default_rng(0)), {}))
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[:700])
    with pytest.raises(ValueError, match="trunc.h5"):
        modelio.load_model(trunc)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="not a vnumba model"):
        modelio.load_model(foreign)
    with h5py.File(good, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        modelio.load_model(good)
    with pytest.raises(FileNotFoundError):
        modelio.load_model(tmp_path / "missing.h5")


def test_dataset_reader_rejects_bad_files_naming_them(tmp_path):
    bad = tmp_path / "nomask.h5"
    with h5py.File(bad, "w") as f:
        f["u0"] = np.zeros((1, 3, 4, 4), np.float32)
        f.attrs["schema_version"] = 1
    with pytest.raises(DatasetError, match="nomask.h5.*missing"):
        SyntheticDataset(bad)
    p = tmp_path / "nan.h5"
    u = np.zeros((2, 3, 8, 8), np.float32)
    u[1, 0, 0, 0] = np.nan
    with pytest.raises(DatasetError, match="sample 1 of u0 contains NaN"):
        write_dataset_arrays(p, u, np.zeros_like(u), np.zeros((2, 8, 8)))  # refused
    write_dataset_arrays(p, u, np.zeros_like(u), np.zeros((2, 8, 8)), check_values=False)
    with SyntheticDataset(p) as ds:
        ds.read(0)
        with pytest.raises(DatasetError, match="sample 1 of u0 contains NaN"):
            ds.read(1)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match="junk.h5"):
        SyntheticDataset(junk)


def test_train_cli_reports_missing_dataset(tmp_path, capsys):
    assert train.main([str(tmp_path / "nope.h5"), "--iters", "1"]) == 2
    assert "nope.h5" in capsys.readouterr().err


def test_unet_trains_through_the_same_cli_and_model_container(tmp_path):
    data = _toy_dataset(tmp_path / "toy.h5")
    out = tmp_path / "u.h5"
    args = [str(data), "--arch", "unet", "--unet-width", "4", "--batch", "2", "--crop", "16",
            "--lr", "3e-3", "--seed", "1", "--quiet", "--out", str(out), "--checkpoint-every", "3"]
    assert train.main([*args, "--iters", "30"]) == 0
    rows = _read_log(out.with_suffix(".csv"))
    assert np.mean([float(r["loss"]) for r in rows[-3:]]) < np.mean([float(r["loss"]) for r in rows[:3]])
    m = modelio.load_model(out)
    assert m.arch == "unet" and m.config.width == 4
    u, mm = m.apply(np.full((1, 3, 16, 16), 0.5, np.float32))
    assert u.shape == (1, 3, 16, 16) and mm.shape == (1, 16, 16)
    # resume of a U-Net run equals an uninterrupted one
    b = tmp_path / "v.h5"
    assert train.main([*args[:-4], "--out", str(b), "--checkpoint-every", "3", "--iters", "6"]) == 0
    c = tmp_path / "w.h5"
    assert train.main([*args[:-4], "--out", str(c), "--checkpoint-every", "3", "--iters", "3"]) == 0
    assert train.main([*args[:-4], "--out", str(c), "--checkpoint-every", "3", "--iters", "6", "--resume"]) == 0
    pb, pc = modelio.load_model(b).params, modelio.load_model(c).params
    for k in pb:
        np.testing.assert_array_equal(pb[k], pc[k])


def test_cosine_schedule_runs_from_lr_to_a_twentieth_and_is_logged(tmp_path):
    assert trainer.lr_at(1e-3, 0, 100, "cosine") == pytest.approx(1e-3)
    assert trainer.lr_at(1e-3, 99, 100, "cosine") == pytest.approx(5e-5)
    assert trainer.lr_at(1e-3, 49, 99, "cosine") == pytest.approx(0.5 * (1e-3 + 5e-5))
    assert trainer.lr_at(1e-3, 70, 100, "constant") == 1e-3
    data = _toy_dataset(tmp_path / "toy.h5")
    out = tmp_path / "m.h5"
    assert train.main([str(data), *TINY, "--iters", "5", "--batch", "2", "--crop", "12",
                       "--lr", "1e-3", "--lr-schedule", "cosine", "--out", str(out),
                       "--quiet"]) == 0
    lrs = [float(r["lr"]) for r in _read_log(out.with_suffix(".csv"))]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(5e-5, rel=1e-3)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    m = modelio.load_model(out)
    assert m.meta["train"]["lr_schedule"] == "cosine"
    assert m.meta["train"]["adam_eps"] == trainer.ADAM_EPS


def test_adam_eps_reaches_the_optimizer_and_belongs_to_the_run(tmp_path, capsys):
    data = _toy_dataset(tmp_path / "toy.h5")
    common = [str(data), *TINY, "--batch", "2", "--crop", "12", "--checkpoint-every", "1",
              "--quiet", "--out", str(tmp_path / "a.h5")]
    assert train.main([*common, "--iters", "2", "--adam-eps", "1e-3"]) == 0
    # a huge eps damps the step: the parameters move less than with the default
    a = modelio.load_model(tmp_path / "a.h5").params
    assert train.main([*common[:-1], str(tmp_path / "b.h5"), "--iters", "2"]) == 0
    b = modelio.load_model(tmp_path / "b.h5").params
    init = init_params(ModelConfig(n_steps=2, n_channels=3, nf_u=4, nf_m=2, ks_u=5, ks_m=3, ks=3),
                       np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0,))))
    da = np.abs(a["Ku"] - init["Ku"]).max()
    db = np.abs(b["Ku"] - init["Ku"]).max()
    assert da < 0.1 * db
    # resuming run a with another eps is refused (the checkpoint belongs to another run)
    with pytest.raises(SystemExit, match="different run"):
        train.main([*common, "--iters", "3", "--resume"])
    with pytest.raises(SystemExit, match="--adam-eps"):
        train.main([*common, "--iters", "1", "--adam-eps", "0"])


def test_model_files_with_implausible_weights_or_meta_are_refused_naming_the_key(tmp_path):
    cfg = ModelConfig(n_steps=1, n_channels=3, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    params = init_params(cfg, np.random.default_rng(0))
    good = modelio.Model("vn", cfg, params, {"mpp": 0.48, "channels": 3,
                                             "reinhard_mean": [1.0, 2.0, 3.0],
                                             "reinhard_std": [1.0, 1.0, 1.0]})
    modelio.save_model(tmp_path / "ok.h5", good)
    assert modelio.load_model(tmp_path / "ok.h5").meta["mpp"] == 0.48
    cases = [
        ({"params": {**params, "lam": -np.abs(params["lam"]) - 1}}, "'lam' has negative"),
        ({"params": {**params, "Ku": np.full_like(params["Ku"], np.inf)}}, "'Ku' is not finite"),
        ({"meta": {"mpp": -1.0}}, "meta 'mpp'"), ({"meta": {"mpp": float("nan")}}, "meta 'mpp'"),
        ({"meta": {"reinhard_mean": [1.0, 2.0]}}, "meta 'reinhard_mean'"),
        ({"meta": {"reinhard_std": [1.0, 0.0, 1.0]}}, "meta 'reinhard_std'"),
        ({"meta": {"channels": "3"}}, "meta 'channels'"),
    ]
    for i, (change, msg) in enumerate(cases):
        m = modelio.Model("vn", cfg, change.get("params", params), change.get("meta", {}))
        path = tmp_path / f"bad{i}.h5"
        modelio.save_model(path, m)
        with pytest.raises(ValueError, match=msg):
            modelio.load_model(path)


def test_dataset_links_groups_and_non_string_attrs_are_refused(tmp_path):
    good = _toy_dataset(tmp_path / "good.h5", n=2, size=12)
    ext = tmp_path / "ext.h5"
    with h5py.File(ext, "w") as f:
        for k in ("u0", "gu", "gm"):
            f[k] = h5py.ExternalLink(str(good), k)
        f.attrs["schema_version"] = 1
    with pytest.raises(DatasetError, match="'u0' is a ExternalLink"):
        SyntheticDataset(ext)
    grp = tmp_path / "grp.h5"
    with h5py.File(grp, "w") as f:
        f.create_group("u0")
        f["gu"] = np.zeros((1, 3, 4, 4), np.float32)
        f["gm"] = np.zeros((1, 4, 4), np.float32)
        f.attrs["schema_version"] = 1
    with pytest.raises(DatasetError, match="'u0' is a Group"):
        SyntheticDataset(grp)
    with h5py.File(good, "a") as f:
        f.attrs["scenario"] = 3
    with pytest.raises(DatasetError, match="'scenario' must be a string"):
        SyntheticDataset(good)


def test_the_library_raises_typed_errors_and_the_command_line_names_the_options(tmp_path, capsys):
    data = _toy_dataset(tmp_path / "toy.h5", n=2, size=12)
    opts = trainer.TrainOptions(data=str(data), iters=-1, out=str(tmp_path / "m.h5"))
    with pytest.raises(trainer.TrainingConfigError) as e:
        trainer.train(opts)
    assert isinstance(e.value, ValueError) and (e.value.field, e.value.value) == ("iters", -1)
    assert str(e.value) == "iters must be >= 0, got -1" and "--" not in str(e.value)
    with pytest.raises(SystemExit, match="^error: --checkpoint-every must be >= 1, got 0$") as e:
        train.main([str(data), "--checkpoint-every", "0", "--out", str(tmp_path / "m.h5")])
    assert e.value.code == 2 and capsys.readouterr().err == "error: --checkpoint-every must be >= 1, got 0\n"
    with pytest.raises(SystemExit, match=r"^error: --init starts a variational network \(--arch vn\) only$"):
        train.main([str(data), "--arch", "unet", "--unet-width", "4", "--batch", "1", "--iters", "1",
                     "--init", "scenario2", "--out", str(tmp_path / "m.h5")])
    assert not (tmp_path / "m.h5").exists()


def test_a_run_too_large_for_the_machine_names_the_options_that_size_it(tmp_path, monkeypatch):
    data = _toy_dataset(tmp_path / "toy.h5", n=2, size=12)
    monkeypatch.setattr(trainer, "_physical_memory", lambda: 1)
    with pytest.raises(SystemExit, match=r"GiB \(--unet-width 4, --batch 2, 12x12 px\); the machine has"):
        train.main([str(data), "--arch", "unet", "--unet-width", "4", "--batch", "2", "--iters", "1",
                    "--out", str(tmp_path / "m.h5")])
    with pytest.raises(SystemExit, match=r"GiB \(--steps 2, --nf-u 4, --nf-m 2, --batch 1, 12x12 px\)"):
        train.main([str(data), *TINY, "--batch", "1", "--iters", "1", "--out", str(tmp_path / "m.h5")])


def test_the_command_line_defaults_are_the_train_options_defaults():
    defaults = trainer.option_defaults()
    parsed = vars(train.build_parser().parse_args(["D.h5"]))
    parsed.pop("scheduler")
    assert parsed == {"data": "D.h5", **defaults}


def _three_class_dataset(path, n=4, size=16, seed=0):
    """The toy discs, the mask split into three class channels (left, middle, right third)."""
    _toy_dataset(path.with_name("one.h5"), n=n, size=size, seed=seed)
    with h5py.File(path.with_name("one.h5"), "r") as f:
        u0, gu, gm1 = f["u0"][:], f["gu"][:], f["gm"][:]
    gm = np.zeros((n, 3, size, size), np.float32)
    for c in range(3):
        gm[:, c, :, c * size // 3:(c + 1) * size // 3] = gm1[:, :, c * size // 3:(c + 1) * size // 3]
    write_dataset_arrays(path, u0, gu, gm, scenario="toy", seed=seed, mpp=0.5,
                         mask_classes=["tumour", "immune", "other"])
    return path


def test_class_weights_train_are_recorded_and_belong_to_the_run(tmp_path, capsys):
    data = _three_class_dataset(tmp_path / "three.h5")
    common = [str(data), *TINY, "--batch", "2", "--crop", "12", "--checkpoint-every", "1",
              "--lr", "1e-3", "--quiet"]
    assert train.main([*common, "--iters", "2", "--out", str(tmp_path / "w.h5"),
                       "--class-weights", "1", "1", "5"]) == 0
    assert train.main([*common, "--iters", "2", "--out", str(tmp_path / "p.h5")]) == 0
    w, p = modelio.load_model(tmp_path / "w.h5"), modelio.load_model(tmp_path / "p.h5")
    assert w.meta["train"]["class_weights"] == [1.0, 1.0, 5.0]
    assert "class_weights" not in p.meta["train"]
    # the weights change the training (the same seed and batches otherwise)
    assert not np.array_equal(w.params["Km"], p.params["Km"])
    # all ones is the article's loss: the same model bit for bit
    assert train.main([*common, "--iters", "2", "--out", str(tmp_path / "o.h5"),
                       "--class-weights", "1", "1", "1"]) == 0
    o = modelio.load_model(tmp_path / "o.h5")
    for k in p.params:
        np.testing.assert_array_equal(o.params[k], p.params[k])
    # resuming with other weights is another run
    with pytest.raises(SystemExit, match="different run"):
        train.main([*common, "--iters", "3", "--resume", "--out", str(tmp_path / "w.h5"),
                    "--class-weights", "1", "1", "2"])


@pytest.mark.parametrize("weights, match", [(["1", "2"], "2 class weights for 3 mask channel"),
                                            (["1", "0", "1"], "positive and finite")])
def test_bad_class_weights_are_one_line_naming_the_option_and_the_classes(tmp_path, capsys,
                                                                          weights, match):
    data = _three_class_dataset(tmp_path / "three.h5")
    out = tmp_path / "x.h5"
    with pytest.raises(SystemExit) as e:
        train.main([str(data), *TINY, "--iters", "1", "--batch", "2", "--crop", "12",
                    "--out", str(out), "--class-weights", *weights])
    msg = str(e.value) + capsys.readouterr().err
    assert "--class-weights" in msg and match in msg and "other" in msg
    assert not out.exists()


def test_class_weights_on_the_gpu_backend_are_refused_before_anything_runs(tmp_path):
    data = _three_class_dataset(tmp_path / "three.h5")
    opts = trainer.TrainOptions(data=str(data), steps=2, nf_u=4, nf_m=2, ks_u=5, ks_m=3, ks=3,
                                iters=1, batch=2, crop=12, device="cuda",
                                class_weights=(1.0, 1.0, 5.0), out=str(tmp_path / "g.h5"))
    with pytest.raises(trainer.TrainingConfigError, match="cpu only") as e:
        trainer.train(opts)
    assert e.value.field == "class_weights"
    assert not (tmp_path / "g.h5").exists()
