"""Fit a combined model's class gain on synthetic slides with known classes (issue 21, the
class *other*).

Usage::

    python -m synth slide --size 2048 2048 --seed 11 --reference runs/reference.h5 -o runs/fit/fit.ome.tif
    python bench/fit_class_gains.py MODEL runs/fit/fit.ome.tif [more slides] --out MODEL_WITH_GAIN \\
        [--class other] [--gains 1 1.5 2 3 4 6] [--match-um 4]

``MODEL`` is a combined model (:class:`vnumba.io.models.CombinedModel`; its own gains are
ignored).  For every candidate gain ``g`` of ``--class`` (the others 1) every slide is analysed
by ``python -m vnumba.slide`` and its nuclei are matched to the slide's truth
(``NAME_truth.csv``, written by ``synth slide``) one to one within ``--match-um``, per class, as
``bench/slide_truth.py`` does.  The score is the macro F1 (the mean of the classes' F1 over the
pooled counts of all slides).  The gain changes only which class a nucleus gets — never the
nucleus mask or the objects (the rebalancing keeps the maximum over the class maps) — so the
detections are the same for every candidate.  The best gain (the smallest among equal scores)
is written into a copy of the model (``--out``).  Only synthetic slides are used: nothing is
fitted to real annotations.  Prints a markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

CLASSES = ("tumour", "immune", "other")


def class_counts(truth_csv, cells_csv, match_um):
    """Per class ``(tp, n_predicted, n_true)`` of one slide."""
    import json

    from slide_truth import read_cells

    from vnumba.analysis.scores import match_points

    tj = json.loads(Path(str(truth_csv).replace("_truth.csv", "_truth.json")).read_text())
    radius = match_um / float(tj["mpp"])
    txy, tcls = read_cells(truth_csv)
    pxy, pcls = read_cells(cells_csv)
    out = {}
    for c in CLASSES:
        ps, ts = pxy[pcls == c], txy[tcls == c]
        out[c] = (len(match_points(ps, ts, radius)[0]), len(ps), len(ts))
    return out


def main(argv=None) -> int:
    from vnumba.io.models import CombinedModel, load_model, save_model
    from vnumba.slide import main as slide_main

    ap = argparse.ArgumentParser(prog="python bench/fit_class_gains.py",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--class", dest="cls", default="other")
    ap.add_argument("--gains", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    ap.add_argument("--match-um", type=float, default=4.0)
    a = ap.parse_args(argv)
    from vnumba.io.outputs import OutputConflict, check_outputs
    inputs = {"model": a.model if Path(a.model).exists() else None}
    for i, s in enumerate(a.slides):
        name = s.name.split(".")[0]
        inputs.update({f"slide {i + 1}": s, f"truth {i + 1}": s.with_name(f"{name}_truth.csv")})
    try:   # the fitted copy must not land on the model, a slide or a truth file
        check_outputs(inputs, {"--out": a.out})
    except OutputConflict as e:
        ap.exit(2, f"error: {e}\n")
    try:
        model = load_model(a.model)
    except (ValueError, OSError) as e:
        ap.exit(2, f"error: {e}\n")
    if not isinstance(model, CombinedModel):
        ap.error(f"{a.model}: not a combined model")
    base = model.base
    base.meta = {k: v for k, v in base.meta.items() if k != "class_gains"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for g in a.gains:
            mfile = save_model(tmp / f"g{g:g}.h5", CombinedModel(base, model.tumour, gains={a.cls: g}))
            tot = {c: np.zeros(3, np.int64) for c in CLASSES}
            for s in a.slides:
                out = tmp / f"g{g:g}_{s.stem}"
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = slide_main([str(s), "--out", str(out), "--model", str(mfile), "-q"])
                if rc:
                    raise SystemExit(f"vnumba.slide failed on {s} (exit {rc})")
                name = s.name.split(".")[0]
                for c, v in class_counts(s.with_name(f"{name}_truth.csv"),
                                         out / f"{name}_cells.csv", a.match_um).items():
                    tot[c] += v
            f1 = {c: (2 * tp / (np_ + nt) if np_ + nt else 0.0) for c, (tp, np_, nt) in tot.items()}
            rows.append((g, f1, float(np.mean(list(f1.values()))), {c: int(tot[c][1]) for c in CLASSES}))
            print(f"gain {g:g}: " + ", ".join(f"{c} F1 {f1[c]:.3f}" for c in CLASSES)
                  + f", macro {rows[-1][2]:.3f}", file=sys.stderr, flush=True)
    best = max(rows, key=lambda r: (round(r[2], 6), -r[0]))
    print(f"# Class gain of '{a.cls}' fitted on {len(a.slides)} synthetic slide(s)\n")
    print("| gain | " + " | ".join(f"F1 {c}" for c in CLASSES) + " | macro F1 | predicted "
          + " / ".join(CLASSES) + " |")
    print("|---|" + "---|" * (len(CLASSES) + 2))
    for g, f1, macro, n in rows:
        mark = " **(chosen)**" if g == best[0] else ""
        print(f"| {g:g}{mark} | " + " | ".join(f"{f1[c]:.3f}" for c in CLASSES)
              + f" | {macro:.3f} | " + " / ".join(str(n[c]) for c in CLASSES) + " |")
    save_model(a.out, CombinedModel(base, model.tumour, gains={a.cls: best[0]}))
    print(f"\nwrote {a.out} (class_gains {{'{a.cls}': {best[0]:g}}})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:   # the temporary runs are removed; --out is written only at the end
        sys.exit("interrupted: nothing written")
