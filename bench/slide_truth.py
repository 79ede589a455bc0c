"""``vnumba.slide`` against the truth of a synthetic slide (issue 21, "Ground truth at slide
scale"): per-class nucleus detection and the interaction figures.

Usage::

    python -m synth slide --size 4096 4096 --seed 0 --reference runs/reference.h5 -o runs/st/s.ome.tif
    python -m vnumba.slide runs/st/s.ome.tif --out runs/st/out
    python bench/slide_truth.py runs/st/s_truth.csv runs/st/out/s_cells.csv [--match-um 4]

Detection: predicted and true centroids (level-0 pixels) are matched one to one within
``--match-um`` (4 µm, the rule of ``vnumba.evaluate``'s per-class scores) by
:func:`vnumba.analysis.scores.match_points`, once over all nuclei (detection F1) and once per
class among the nuclei of that class (F1 per class); the confusion of matched pairs is
printed.  Interactions: every figure of the truth JSON's ``interactions`` (computed from the
truth nuclei by :mod:`vnumba.analysis.interactions`) next to the same figure of the slide's
report, with their ratio.  Prints markdown; ``--json`` also writes the figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

CLASSES = ("tumour", "immune", "other")
FIGURES = ("tumour_nuclei", "immune_cells", "other_nuclei", "tumour_density_per_mm2",
           "immune_density_per_mm2", "immune_near_tumour", "immune_near_tumour_fraction",
           "tumour_with_immune_neighbour_fraction", "immune_rich_area_mm2", "immune_call",
           "tissue_area_mm2")


def read_cells(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows]).reshape(-1, 2)
    cls = np.array([r["class"] for r in rows], dtype=object)
    return xy, cls


def f1(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return p, r, f


def main(argv=None) -> int:
    from vnumba.analysis.scores import match_points

    ap = argparse.ArgumentParser(prog="python bench/slide_truth.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("truth_csv", type=Path)
    ap.add_argument("cells_csv", type=Path)
    ap.add_argument("--match-um", type=float, default=4.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    tj = json.loads(a.truth_csv.with_name(a.truth_csv.name.replace("_truth.csv", "_truth.json")).read_text())
    rep_path = a.cells_csv.with_name(a.cells_csv.name.replace("_cells.csv", "_report.json"))
    rep = json.loads(rep_path.read_text())
    mpp = float(tj["mpp"])
    radius = a.match_um / mpp
    txy, tcls = read_cells(a.truth_csv)
    pxy, pcls = read_cells(a.cells_csv)
    out = {"match_um": a.match_um, "mpp": mpp, "truth": len(tcls), "predicted": len(pcls)}
    pi, ti, _ = match_points(pxy, txy, radius)
    tp = len(pi)
    out["all"] = dict(zip(("precision", "recall", "f1"), f1(tp, len(pcls) - tp, len(tcls) - tp)))
    conf = {t: {p: 0 for p in CLASSES + ("missed",)} for t in CLASSES}
    for p, t in zip(pi, ti):
        conf[tcls[t]][pcls[p]] += 1
    for c in CLASSES:
        conf[c]["missed"] = int((tcls == c).sum()) - sum(conf[c][p] for p in CLASSES)
    out["confusion"] = conf
    out["per_class"] = {}
    for c in CLASSES:
        ps, ts = pxy[pcls == c], txy[tcls == c]
        k = len(match_points(ps, ts, radius)[0])
        out["per_class"][c] = {"truth": len(ts), "predicted": len(ps),
                               **dict(zip(("precision", "recall", "f1"), f1(k, len(ps) - k, len(ts) - k)))}
    ti_ = tj.get("interactions", {})
    out["interactions"] = {k: {"truth": ti_.get(k), "slide": rep.get(k)} for k in FIGURES}

    def g(v):
        return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    print(f"# vnumba.slide against the synthetic truth ({a.truth_csv.name}, match {a.match_um:g} µm)\n")
    print(f"detection (any class): {g(out['all']['f1'])} F1 (P {g(out['all']['precision'])}, "
          f"R {g(out['all']['recall'])}); {len(pcls)} predicted, {len(tcls)} true\n")
    print("| class | true | predicted | precision | recall | F1 |\n|---|---|---|---|---|---|")
    for c, d in out["per_class"].items():
        print(f"| {c} | {d['truth']} | {d['predicted']} | {g(d['precision'])} | {g(d['recall'])} | {g(d['f1'])} |")
    print("\nconfusion of matched nuclei (rows: true class)\n")
    print("| true \\ predicted | " + " | ".join(CLASSES) + " | missed |\n|---|---|---|---|---|")
    for c in CLASSES:
        print(f"| {c} | " + " | ".join(str(conf[c][p]) for p in CLASSES + ("missed",)) + " |")
    print("\n| figure | truth | slide | slide / truth |\n|---|---|---|---|")
    for k, d in out["interactions"].items():
        t, s = d["truth"], d["slide"]
        r = (s / t) if isinstance(t, (int, float)) and isinstance(s, (int, float)) and t else None
        print(f"| {k} | {g(t)} | {g(s)} | {g(r)} |")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
