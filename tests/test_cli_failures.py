"""Every bad input of issue 14 through the real command line (``python -m ...``).

Each case runs the command as a user would, in one shared folder of tiny inputs, and checks:
non-zero exit status, exactly one line on stderr, naming the culprit (file, option or key), no
traceback, and every file of the folder byte-identical afterwards with none added or removed.
"""
import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import assert_refused_leaving_folder, one_line_refusal
from cli_helpers import run_module as _run
from test_train import TINY, _toy_dataset

T = ["vnumba.train", "D.h5", *TINY, "--iters", "2", "--batch", "2", "--crop", "12", "--quiet"]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy_with(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny inputs of every command, made once: a dataset and broken variants of it, a model
    and its checkpoint with broken variants, images, annotations, scripts."""
    import imageio.v3 as iio

    from synth.script import load_script

    d = tmp_path_factory.mktemp("cli")
    _toy_dataset(d / "D.h5")
    r = _run(T + ["--out", "m.h5", "--checkpoint-every", "1"], d)
    assert r.returncode == 0, r.stderr
    iio.imwrite(d / "x.png", (np.random.default_rng(0).uniform(.3, .9, (40, 40, 3)) * 255)
                .astype(np.uint8))
    shutil.copy(d / "x.png", d / "x_mask.png")
    (d / "adir").mkdir()
    (d / "my.toml").write_text(load_script("scenario2").text)
    (d / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    # checkpoints: empty, truncated, foreign, without iteration / optimizer, moments of
    # another shape
    ck = (d / "m.ckpt.h5").read_bytes()
    (d / "zero.ckpt.h5").write_bytes(b"")
    (d / "trunc.ckpt.h5").write_bytes(ck[: len(ck) // 2])
    shutil.copy(d / "D.h5", d / "foreign.ckpt.h5")
    _copy_with(d / "m.ckpt.h5", d / "noiter.ckpt.h5", lambda f: f.attrs.__delitem__("iteration"))
    _copy_with(d / "m.ckpt.h5", d / "noopt.ckpt.h5", lambda f: f.__delitem__("optimizer"))

    def reshape_moment(f):
        names = []
        f["optimizer"].visititems(lambda k, o: names.append(k) if isinstance(o, h5py.Dataset)
                                  and o.ndim >= 1 and o.shape[0] > 1 else None)
        a = f["optimizer"][names[0]][...]
        del f["optimizer"][names[0]]
        f["optimizer"][names[0]] = a[:1]
    _copy_with(d / "m.ckpt.h5", d / "moment.ckpt.h5", reshape_moment)
    for name in ("zero", "trunc", "foreign", "noiter", "noopt", "moment"):
        shutil.copy(d / "m.h5", d / f"{name}.h5")  # a previous model next to each checkpoint

    # datasets: u0 a group, scenario not a string, a bad value outside every crop, a NaN,
    # an external link, a script attribute without target_std
    def group(f):
        del f["u0"]
        f.create_group("u0")
    _copy_with(d / "D.h5", d / "G.h5", group)
    _copy_with(d / "D.h5", d / "S.h5", lambda f: f.attrs.__setitem__("scenario", 5))

    def out_of_range(f):
        a = f["u0"][...]
        a[3, 0, 0, 0] = 7.0
        f["u0"][...] = a
    _copy_with(d / "D.h5", d / "R.h5", out_of_range)

    def nan(f):
        a = f["gm"][...]
        a[2, 0, 0] = np.nan
        f["gm"][...] = a
    _copy_with(d / "D.h5", d / "N.h5", nan)

    def link(f):
        del f["gu"]
        f["gu"] = h5py.ExternalLink("D.h5", "/gu")
    _copy_with(d / "D.h5", d / "L.h5", link)
    norm = '[scenario]\nkind = "scenario2"\n[normalization]\nmethod = "reinhard"\ntarget_mean = [50.0, 10.0, -5.0]\n'
    _copy_with(d / "D.h5", d / "Z.h5", lambda f: f.attrs.__setitem__("script", norm))

    # a model with a non-finite weight
    from vnumba.io.models import load_model, save_model
    m = load_model(d / "m.h5")
    m.params["lam"] = m.params["lam"].copy()
    m.params["lam"][0] = np.inf
    try:
        save_model(d / "inf.h5", m)
    except ValueError:
        pass  # the writer refuses it already; build it by hand
    if not (d / "inf.h5").exists():
        shutil.copy(d / "m.h5", d / "inf.h5")
        with h5py.File(d / "inf.h5", "a") as f:
            ds = next(f[k] for k in ("params/lam", "model/params/lam") if k in f)
            a = ds[...]
            a[0] = np.inf
            ds[...] = a

    # annotations: float labels; a manifest with an impossible magnification
    for sub, labels, manifest in (("evf", np.float32, None), ("evm", np.int32, "0.0001x")):
        (d / sub / "t").mkdir(parents=True)
        shutil.copy(d / "x.png", d / sub / "t" / "a.png")
        np.savez(d / sub / "t" / "a_labels.npz", instances=np.zeros((40, 40), labels),
                 classes=np.zeros((40, 40), labels))
        if manifest:
            (d / sub / "manifest.csv").write_text(f"file,magnification,mpp\nt/a.png,{manifest},\n")
    return d


E = ["vnumba.evaluate", "--model", "m.h5", "--target", "nuclei", "--no-overlays"]
P = ["vnumba.predict", "x.png", "--model", "m.h5", "-q"]
G = ["synth", "generate", "-n", "1", "--seed", "0", "-q"]

CASES = {
    # never destroy data: outputs that are inputs or each other, or not regular files
    "train --out onto its dataset": (T + ["--out", "D.h5"], ["--out", "D.h5"]),
    "train --log onto its dataset": (T + ["--out", "n.h5", "--log", "D.h5"], ["--log", "D.h5"]),
    "train --checkpoint onto its dataset": (T + ["--out", "n.h5", "--checkpoint", "D.h5"],
                                            ["--checkpoint"]),
    "train --out and --log on one file": (T + ["--out", "x.csv", "--log", "x.csv"],
                                          ["--out", "--log"]),
    "train --out a device": (T + ["--out", "/dev/full"], ["/dev/full"]),
    "train --out a directory": (T + ["--out", "adir"], ["adir", "directory"]),
    "generate onto its script": (["synth", "generate", "my.toml", "-n", "1", "--seed", "0",
                                  "-o", "my.toml"], ["my.toml"]),
    "generate -o a device": (G[:2] + ["scenario2"] + G[2:] + ["-o", "/dev/full"], ["/dev/full"]),
    "generate -o a directory": (G[:2] + ["scenario2"] + G[2:] + ["-o", "adir"], ["adir"]),
    "predict output replaces the next input": (["vnumba.predict", "x.png", "x_mask.png",
                                                "--model", "m.h5", "--out", ".", "-q"],
                                               ["x_mask.png"]),
    "predict --out a file": (P + ["--out", "x.png"], ["x.png"]),
    # checkpoints that do not belong or cannot be read
    "resume from an empty checkpoint": (T + ["--out", "zero.h5", "--resume"], ["zero.ckpt.h5"]),
    "resume from a truncated checkpoint": (T + ["--out", "trunc.h5", "--resume"],
                                           ["trunc.ckpt.h5"]),
    "resume from a foreign file": (T + ["--out", "foreign.h5", "--resume"], ["foreign.ckpt.h5"]),
    "resume without iteration": (T + ["--out", "noiter.h5", "--resume"], ["iteration"]),
    "resume without optimizer": (T + ["--out", "noopt.h5", "--resume"], ["optimizer"]),
    "resume with moments of another shape": (T + ["--out", "moment.h5", "--resume"],
                                             ["moment.ckpt.h5"]),
    # datasets
    "u0 is a group": (["vnumba.train", "G.h5", *TINY, "--iters", "1", "--batch", "1",
                       "--out", "g.h5"], ["G.h5", "u0"]),
    "scenario attr not a string": (["vnumba.train", "S.h5", *TINY, "--iters", "1", "--batch",
                                    "1", "--out", "s.h5"], ["S.h5", "scenario"]),
    "a value outside [0, 1] outside the crops": (["vnumba.train", "R.h5", *TINY, "--iters", "3",
                                                  "--batch", "2", "--crop", "8", "--out",
                                                  "r.h5"], ["R.h5", "sample 3"]),
    "a NaN in a mask": (["vnumba.train", "N.h5", *TINY, "--iters", "3", "--batch", "2",
                         "--crop", "8", "--out", "nn.h5"], ["N.h5", "sample 2"]),
    "an external link": (["vnumba.train", "L.h5", *TINY, "--iters", "1", "--batch", "1",
                          "--out", "l.h5"], ["L.h5", "gu"]),
    "script attrs without target_std": (["vnumba.train", "Z.h5", *TINY, "--iters", "1",
                                         "--batch", "1", "--out", "z.h5"], ["target_std"]),
    # options
    "--crop 0": (T[:-5] + ["--iters", "1", "--crop", "0", "--out", "c.h5"], ["--crop"]),
    "--crop -5": (T[:-5] + ["--iters", "1", "--crop", "-5", "--out", "c.h5"], ["--crop"]),
    "--seed -1": (T + ["--seed", "-1", "--out", "c.h5"], ["--seed"]),
    "--batch larger than the dataset": (T[:-5] + ["--iters", "1", "--batch", "100", "--out",
                                                  "c.h5"], ["--batch"]),
    "--steps too large to fit": (["vnumba.train", "D.h5", "--steps", "100000000", "--iters",
                                  "1", "--batch", "1", "--out", "c.h5"], ["--steps", "GiB"]),
    "predict --mpp inf": (P + ["--mpp", "inf", "--out", "o"], ["--mpp"]),
    "predict --mpp 200": (P + ["--mpp", "200", "--out", "o"], ["--mpp"]),
    "predict --mpp 1e-300": (P + ["--mpp", "1e-300", "--out", "o"], ["--mpp"]),
    "predict a model with an infinite weight": (["vnumba.predict", "x.png", "--model", "inf.h5",
                                                 "--out", "o", "-q"], ["inf.h5"]),
    "evaluate --threshold 5": (E + ["evm", "--threshold", "5"], ["--threshold"]),
    "evaluate labels stored as float": (E + ["evf", "--out", "eo"], ["a_labels.npz", "integer"]),
    "evaluate an impossible magnification": (E + ["evm", "--out", "eo"], ["manifest.csv"]),
    "generate a TOML nested 5000 deep": (["synth", "generate", "deep.toml", "-n", "1", "--seed",
                                          "0", "-o", "deep.h5"], ["deep.toml"]),
    "generate more samples than the disk holds": (["synth", "generate", "scenario2", "-n",
                                                   "100000000000", "--seed", "0", "-o", "big.h5"],
                                                  ["GiB"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_in_one_line_and_keeps_every_file(work, name):
    argv, expect = CASES[name]
    assert_refused_leaving_folder(name, argv, expect, work, state=_snapshot)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders; needs an ordinary user")
@pytest.mark.parametrize("argv", [T + ["--out", "ro/m.h5"], P + ["--mpp", "0.5", "--out", "ro/o"],
                                  G[:2] + ["scenario2"] + G[2:] + ["-o", "ro/x.h5"]])
def test_a_read_only_output_folder_is_named_in_one_line(work, argv):
    ro = work / "ro"
    ro.mkdir(exist_ok=True)
    os.chmod(ro, 0o555)
    try:
        r = _run(argv, work)
    finally:
        os.chmod(ro, 0o755)
    one_line_refusal("a read-only --out folder", r, ["ro"])


def test_library_entry_points_validate_their_arguments(tmp_path):
    from vnumba import ModelConfig, init_params
    from vnumba.io.dataset import batch_plan
    from vnumba.io.models import Model

    cfg = ModelConfig(n_steps=1, n_channels=3, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    m = Model("vn", cfg, init_params(cfg, np.random.default_rng(0)), {})
    for bad, what in ((np.zeros((3, 8, 8)), "shape"), (np.zeros((1, 2, 8, 8)), "channels"),
                      (np.full((1, 3, 8, 8), np.nan), "NaN")):
        with pytest.raises(ValueError, match=what):
            m.apply(bad)
    for kw, name in ((dict(batch=0), "batch"), (dict(seed=-1), "seed"), (dict(crop=0), "crop"),
                     (dict(n=0), "n")):
        args = dict(seed=0, iteration=0, n=4, batch=2, height=8, width=8, crop=None) | kw
        with pytest.raises(ValueError, match=name):
            batch_plan(**args)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("argv", [T + ["--out", "/proc/m.h5"], P + ["--mpp", "0.5", "--out", "/proc/o"],
                                  E + ["evm", "--out", "/proc/eo"],
                                  G[:2] + ["scenario2"] + G[2:] + ["-o", "/proc/x.h5"]])
def test_an_unwritable_output_location_is_named_in_one_line(work, argv):
    # /proc refuses new files even to root, so this runs where read-only folders cannot
    assert_refused_leaving_folder("an --out in /proc", argv, ["/proc/"], work, state=_snapshot)
