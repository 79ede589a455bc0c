"""Bad inputs of issue 22 (first part) through the real command lines (``python -m ...``).

Every command, not only train, predict and generate, refuses an output that is one of its
inputs (each file found in a folder input included), bounds and validates its options, and
reports in one line naming the culprit.  Each case runs in one shared folder of tiny inputs and
checks: non-zero exit status, exactly one line on stderr naming the culprit, no traceback, and
every entry of the folder (files, folders, links) unchanged, with none added or removed.
"""
import os
import shutil

import numpy as np
import pytest
from cli_helpers import assert_refused_leaving_folder
from cli_helpers import folder_state as _state
from cli_helpers import run_module as _run
from predict_helpers import save_tiny_model
from test_layouts import layout_a, layout_b
from test_reference import cohort_image, write_labelled
from test_synth_stats import _write_annotated
from test_train import _toy_dataset


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny inputs of every command: an RGB image, annotated images for ``synth stats`` and
    ``synth reference``, a folder of layouts, a model, a dataset of 8 samples, a training
    log, an empty JPEG, a folder, a link to nothing."""
    import imageio.v3 as iio

    d = tmp_path_factory.mktemp("cli_more")
    iio.imwrite(d / "x.png", (np.random.default_rng(0).uniform(.3, .9, (40, 40, 3)) * 255)
                .astype(np.uint8))
    _write_annotated(d)                        # tile.png + tile_labels.npz
    rgb, inst, cls, _ = cohort_image()
    write_labelled(d, "coh", rgb, inst, cls)   # coh.png + coh_labels.npz
    (d / "lay").mkdir()
    layout_a().save(d / "lay" / "a.npz")
    layout_b().save(d / "lay" / "b.npz")
    save_tiny_model(d / "m.h5")
    _toy_dataset(d / "D.h5", n=8)
    (d / "log.csv").write_text("iter,loss,accuracy,psnr\n1,0.5,0.9,20\n2,0.4,0.92,21\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "adir").mkdir()
    os.symlink("nowhere", d / "dang")
    (d / "evf" / "t").mkdir(parents=True)   # annotations stored as float: refused
    shutil.copy(d / "x.png", d / "evf" / "t" / "a.png")
    np.savez(d / "evf" / "t" / "a_labels.npz", instances=np.zeros((40, 40), np.float32),
             classes=np.zeros((40, 40), np.float32))
    return d


REF = ["synth", "reference", "--patch-size", "4", "--max-patches-per-cell", "1"]
STATS = ["synth", "stats", "--script", "scenario2"]
PV = ["synth", "preview", "scenario2", "--n", "1"]
FIG = ["vnumba.figures", "panels", "--model", "m.h5"]
E = ["vnumba.evaluate", "adir", "--model", "m.h5", "--no-overlays"]
P = ["vnumba.predict", "x.png", "--model", "m.h5", "--mpp", "0.5", "-q"]
TR = ["vnumba.train", "D.h5", "--steps", "1", "--iters", "1", "--batch", "1", "--quiet"]

CASES = {
    # inputs destroyed: an output that is an input (or a file found in a folder input)
    "reference -o its image": (REF + ["coh.png", "--mpp", "0.25", "-o", "coh.png"],
                               ["--output", "coh.png"]),
    "reference -o its label file": (REF + ["coh.png", "--mpp", "0.25", "-o", "coh_labels.npz"],
                                    ["--output", "coh_labels.npz"]),
    "reference -o an image of its folder": (REF + [".", "-o", "tile.png"], ["tile.png"]),
    "reference --ref-image as output": (REF + ["coh.png", "--ref-image", "x.png", "-o", "x.png"],
                                        ["--ref-image", "x.png"]),
    "layout-stats -o one of the layouts": (["synth", "layout-stats", "lay", "-o", "lay/a.npz"],
                                           ["lay/a.npz"]),
    "layout-stats -o its folder": (["synth", "layout-stats", "lay", "-o", "lay"], ["lay", "directory"]),
    "stats -o its image": (STATS + ["tile.png", "--reference", "tile.png", "--image-mpp", "0.25",
                                    "-o", "tile.png"], ["--output", "tile.png"]),
    "stats -o its label file": (STATS + ["tile.png", "--image-mpp", "0.25", "-o",
                                         "tile_labels.npz"], ["tile_labels.npz"]),
    "stats -o its reference image": (STATS + ["tile.png", "--reference", "x.png", "--image-mpp",
                                              "0.5", "-o", "x.png"], ["--reference", "x.png"]),
    "preview -o its real image": (PV + ["--real", "x.png", "--real-mpp", "0.5", "-o", "x.png"],
                                  ["--real", "x.png"]),
    "figures panels -o its image": (FIG + ["x.png", "--mpp", "0.5", "-o", "x.png"], ["x.png"]),
    "figures panels -o its model": (FIG + ["x.png", "--mpp", "0.5", "-o", "m.h5"],
                                    ["--model", "m.h5"]),
    "figures panels -o its dataset": (FIG + ["--synthetic", "D.h5", "-o", "D.h5"],
                                      ["--synthetic", "D.h5"]),
    "figures curves -o its log": (["vnumba.figures", "curves", "log.csv", "-o", "log.csv"],
                                  ["log.csv"]),
    # hang: preview --n without a bound
    "preview --n 100000": (["synth", "preview", "scenario2", "--n", "100000", "-o", "p.png"],
                           ["--n", "100000"]),
    "preview --n 0": (["synth", "preview", "scenario2", "--n", "0", "-o", "p.png"], ["--n"]),
    # arguments
    "evaluate --radius inf": (E + ["--radius", "inf"], ["--radius", "inf"]),
    "evaluate --radius nan": (E + ["--radius", "nan"], ["--radius", "nan"]),
    "evaluate --radius -3": (E + ["--radius", "-3"], ["--radius"]),
    "evaluate --border-um inf": (E + ["--border-um", "inf"], ["--border-um"]),
    "figures --crop with a negative size": (FIG + ["x.png", "--crop", "0", "0", "-5", "-5", "-o",
                                                   "f.png"], ["--crop", "-5"]),
    "figures --crop with a zero size": (FIG + ["x.png", "--crop", "0", "0", "0", "5", "-o",
                                               "f.png"], ["--crop"]),
    "figures --crop beyond the image": (FIG + ["x.png", "--mpp", "0.5", "--crop", "0", "0", "50",
                                               "50", "-o", "f.png"], ["x.png", "crop"]),
    "figures --index beyond the dataset": (FIG + ["--synthetic", "D.h5", "--index", "99", "-o",
                                                  "f.png"], ["--index 99", "8 samples"]),
    "reference with an image given twice": (REF + ["coh.png", "coh.png", "-o", "r.h5"],
                                            ["coh.png", "twice"]),
    "reference with an image also in its folder": (REF + [".", "coh.png", "-o", "r.h5"],
                                                   ["coh.png", "twice"]),
    "stats with an image given twice": (STATS + ["tile.png", "./tile.png", "--image-mpp", "0.5",
                                                 "-o", "s.toml"], ["tile.png", "twice"]),
    "reference --mpp nan": (REF + ["coh.png", "--mpp", "nan", "-o", "r.h5"], ["--mpp", "nan"]),
    "stats --image-mpp nan": (STATS + ["tile.png", "--image-mpp", "nan", "-o", "s.toml"],
                              ["--image-mpp", "nan"]),
    "stats --image-mpp inf": (STATS + ["tile.png", "--image-mpp", "inf", "-o", "s.toml"],
                              ["--image-mpp"]),
    "layout-stats --mpp nan": (["synth", "layout-stats", "lay", "--mpp", "nan", "-o", "l.json"],
                               ["--mpp"]),
    "layout-stats --gap inf": (["synth", "layout-stats", "lay", "--gap", "inf", "-o", "l.json"],
                               ["--gap"]),
    "layout-stats --window nan": (["synth", "layout-stats", "lay", "--window", "nan", "-o",
                                   "l.json"], ["--window"]),
    "preview --real-mpp nan": (PV + ["--real", "x.png", "--real-mpp", "nan", "-o", "p.png"],
                               ["--real-mpp"]),
    "figures --mpp nan": (FIG + ["x.png", "--mpp", "nan", "-o", "f.png"], ["--mpp"]),
    "figures curves --smooth 0": (["vnumba.figures", "curves", "log.csv", "--smooth", "0", "-o",
                                   "c.png"], ["--smooth"]),
    # messages
    "predict an empty JPEG": (["vnumba.predict", "empty.jpg", "--model", "m.h5", "--mpp", "0.5",
                               "--out", "o", "-q"], ["empty.jpg", "empty"]),
    "preview --real an empty JPEG": (PV + ["--real", "empty.jpg", "-o", "p.png"],
                                     ["empty.jpg", "empty"]),
    "predict --model a directory": (["vnumba.predict", "x.png", "--model", "adir", "--mpp", "0.5",
                                     "--out", "o", "-q"], ["adir", "directory"]),
    "evaluate --model a directory": (["vnumba.evaluate", "adir", "--model", "adir", "--out", "eo"],
                                     ["adir", "directory"]),
    "train --init a directory": (TR + ["--init", "adir", "--out", "t.h5"], ["adir", "directory"]),
    "train a directory as the dataset": (["vnumba.train", "adir", "--out", "t.h5"],
                                         ["adir", "directory"]),
    "predict --out a link to nothing": (P + ["--out", "dang"], ["dang", "symbolic link"]),
    "predict --out inside a link to nothing": (P + ["--out", "dang/sub"], ["dang", "symbolic link"]),
    "evaluate refused on its annotations leaves no --out folder": (
        ["vnumba.evaluate", "evf", "--model", "m.h5", "--no-overlays", "--out", "new/eo"],
        ["a_labels.npz"]),
    "evaluate --out a link to nothing": (E + ["--out", "dang"], ["dang", "symbolic link"]),
    "train --out a link to nothing": (TR + ["--out", "dang"], ["dang", "symbolic link"]),
    "generate -o a link to nothing": (["synth", "generate", "scenario2", "-n", "1", "--seed", "0",
                                       "-q", "-o", "dang"], ["dang", "symbolic link"]),
    "figures -o a link to nothing": (FIG + ["x.png", "--mpp", "0.5", "-o", "dang"],
                                     ["dang", "symbolic link"]),
    "reference -o a link to nothing": (REF + ["coh.png", "-o", "dang"], ["dang", "symbolic link"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_line_and_leaves_the_folder_as_it_was(work, name):
    argv, expect = CASES[name]
    assert_refused_leaving_folder(name, argv, expect, work)


def test_preview_help_states_the_limit_of_n(work):
    from synth.preview import PREVIEW_MAX_ROWS
    r = _run(["synth", "preview", "--help"], work)
    assert r.returncode == 0
    assert f"1 to {PREVIEW_MAX_ROWS}" in " ".join(r.stdout.split())
    r = _run(["synth", "preview", "scenario2", "--n", str(PREVIEW_MAX_ROWS + 1), "-o", "p.png"], work)
    assert r.returncode == 2 and f"[1, {PREVIEW_MAX_ROWS}]" in r.stderr


def test_stats_appends_its_block_to_a_script_without_one(work, tmp_path):
    """``synth stats IMG --script scenario1 --reference IMG -o s.toml`` used to fail with
    "Cannot declare ('normalization',) twice": scenario1 has no generated block, and the
    appended one redeclared its ``[normalization]`` and ``[colors.*]`` tables."""
    from synth.script import load_script
    for f in ("tile.png", "tile_labels.npz"):
        shutil.copy(work / f, tmp_path / f)
    before = _state(tmp_path)
    r = _run(["synth", "stats", "tile.png", "--script", "scenario1", "--reference", "tile.png",
              "--image-mpp", "0.5", "-o", "s.toml"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip() == "", r.stderr
    after = _state(tmp_path)
    assert {k: v for k, v in after.items() if k != "s.toml"} == before
    s = load_script(tmp_path / "s.toml")
    old = load_script("scenario1")
    assert s.normalization.method == "reinhard" and old.normalization.method == "none"
    np.testing.assert_allclose(s["colors"]["immune"].mean, [0.20, 0.10, 0.45], atol=0.02)
    assert "tile.png" in s["colors"]["immune"].source
    # What the block does not declare stays as it was (scenario1's [colors.hidden], [domain]).
    assert s["colors"]["hidden"] == old["colors"]["hidden"]
    text = (tmp_path / "s.toml").read_text()
    assert text.count("[normalization]") == 1 and text.count("[colors.immune]") == 1
    # Run again on its own output: the block is replaced, not appended a second time.
    r = _run(["synth", "stats", "tile.png", "--script", "s.toml", "--reference", "tile.png",
              "--image-mpp", "0.5", "-o", "s.toml"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.toml").read_text() == text


def test_replace_block_takes_out_the_tables_it_declares_and_keeps_the_others():
    from synth.stats import BEGIN, END, replace_block
    text = ('[scenario]\nkind = "scenario2"\n\n[normalization]\nmethod = "none"\n\n'
            '# the colour of the background\n[colors.background]\nmean = [0.1, 0.1, 0.1]\n\n'
            '# comment about the next table\n[domain]\nmethod = "none"\n')
    block = (f"{BEGIN}\n[normalization]\nmethod = \"none\"\n\n[colors.background]\n"
             f"mean = [0.2, 0.2, 0.2]\n{END}\n")
    out = replace_block(text, block)
    assert out.count("[normalization]") == 1 and out.count("[colors.background]") == 1
    assert "# comment about the next table\n[domain]" in out
    assert "mean = [0.1, 0.1, 0.1]" not in out and "mean = [0.2, 0.2, 0.2]" in out
    import tomllib
    tomllib.loads(out)   # valid TOML
    assert replace_block(out, block) == out   # with markers: replaced in place


def test_outputs_are_written_and_a_rerun_of_a_correct_command_works(work, tmp_path):
    """The checks refuse only what they must: a correct figure, preview and layout run write
    their output and leave the inputs as they were."""
    for f in ("x.png", "m.h5", "log.csv"):
        shutil.copy(work / f, tmp_path / f)
    shutil.copytree(work / "lay", tmp_path / "lay")
    before = _state(tmp_path)
    for argv, out in ((["vnumba.figures", "curves", "log.csv", "-o", "c.png"], "c.png"),
                      (["synth", "layout-stats", "lay", "--mpp", "1", "--window", "48", "-q",
                        "-o", "l.json"], "l.json")):
        r = _run(argv, tmp_path)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / out).is_file()
    after = _state(tmp_path)
    assert {k: v for k, v in after.items() if k not in ("c.png", "l.json")} == before


def test_check_distinct_and_dangling_links_in_the_library(tmp_path):
    from vnumba.io.outputs import OutputConflict, check_distinct, check_outputs
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    os.symlink(a, tmp_path / "b.png")
    with pytest.raises(ValueError, match="given twice"):
        check_distinct([a, tmp_path / "b.png"])
    check_distinct([a, tmp_path / "c.png"])
    os.symlink(tmp_path / "missing", tmp_path / "link")
    with pytest.raises(OutputConflict, match="symbolic link"):
        check_outputs({}, {"-o": tmp_path / "link"})
    with pytest.raises(OutputConflict, match="symbolic link"):
        check_outputs({}, {}, folders={"--out": tmp_path / "link"})
    with pytest.raises(OutputConflict, match="not a directory"):
        check_outputs({}, {}, folders={"--out": a})
    check_outputs({"in": a}, {"-o": tmp_path / "new.png"}, folders={"--out": tmp_path / "new"})
