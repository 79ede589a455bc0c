"""The watershed split depth against real nucleus layouts, with a perfect mask (issue 21).

How well does object extraction (:func:`vnumba.analysis.objects.split_touching`) recover the
nuclei of real melanoma tissue when the network's mask is *perfect*?  The foreground is the
union of the annotated nuclei of the 203 PUMA layouts (``../shared/data/layouts/puma``, instance
and class maps, no images), taken to the model's pixel size (nearest neighbour, default 0.48
µm/px as the shipped scenario-3 model); the split objects are matched to the true nuclei one to
one (IoU > 0.5) and scored per coarse class (tumour, immune, other).  What this isolates is the
splitting rule alone: touching and overlapping nuclei of each class, at their real sizes and
packing, without the network's errors.

Usage::

    python bench/split_oracle.py [--depths 0.15 0.25 0.35 0.5 0.75] [--mpp 0.48] [--rois N]

Prints a markdown table (recall, precision, F1 per class, over all ROIs pooled).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

COARSE = np.array([0, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3], np.int64)  # fine class -> 1 tumour 2 immune 3 other
NAMES = ("tumour", "immune", "other")
LAYOUT_MPP = 0.24


def layouts_dir() -> Path:
    real = os.environ.get("VNUMBA_REAL_DATA")
    base = Path(real).parent if real else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base / "layouts" / "puma"


def downsample(inst, mpp):
    """Nearest-neighbour resampling of an instance map from LAYOUT_MPP to ``mpp``."""
    h, w = inst.shape
    f = LAYOUT_MPP / mpp
    rr = np.minimum((np.arange(int(round(h * f))) + 0.5) / f, h - 1).astype(np.int64)
    cc = np.minimum((np.arange(int(round(w * f))) + 0.5) / f, w - 1).astype(np.int64)
    return inst[np.ix_(rr, cc)]


def score(inst, cls_of, labels):
    """Per-class (tp, n_true, n_pred) of ``labels`` against the instance map (IoU > 0.5)."""
    n_t, n_p = int(inst.max()), int(labels.max())
    out = np.zeros((3, 3), np.int64)
    present = np.bincount(inst.ravel(), minlength=n_t + 1) > 0
    tcls = COARSE[cls_of[: n_t + 1]]
    for c in range(3):
        out[c, 1] = int(np.sum(present[1:] & (tcls[1:] == c + 1)))
    if n_p == 0:
        return out
    m = (inst > 0) | (labels > 0)
    a, b = inst[m].astype(np.int64), labels[m].astype(np.int64)
    pair = np.bincount(a * (n_p + 1) + b, minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    at, ap = pair.sum(1), pair.sum(0)
    inter = pair[1:, 1:]
    union = at[1:, None] + ap[None, 1:] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    ti, pi = np.nonzero(iou > 0.5)  # IoU > 0.5 makes matches unique
    matched_t = np.zeros(n_t + 1, bool)
    matched_t[ti + 1] = True
    # a predicted object's class: the true class holding most of its pixels (0: background)
    pix_cls = np.zeros((4, n_p + 1), np.int64)
    np.add.at(pix_cls, (tcls[a], b), 1)
    pcls = np.argmax(pix_cls[1:, 1:], axis=0) + 1 if n_p else np.zeros(0, np.int64)
    pcls = np.where(pix_cls[1:, 1:].sum(0) > 0, pcls, 0)
    pcls[pi] = tcls[ti + 1]
    for c in range(3):
        out[c, 0] = int(np.sum(matched_t[1:] & (tcls[1:] == c + 1)))
        out[c, 2] = int(np.sum(pcls == c + 1))
    return out


def main(argv=None) -> int:
    from vnumba.analysis.objects import label_objects

    ap = argparse.ArgumentParser(prog="python bench/split_oracle.py",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.15, 0.25, 0.35, 0.5, 0.75])
    ap.add_argument("--mpp", type=float, default=0.48)
    ap.add_argument("--rois", type=int, default=0, help="first N ROIs only (0: all)")
    a = ap.parse_args(argv)
    files = sorted(layouts_dir().glob("*.npz"))
    if a.rois:
        files = files[: a.rois]
    if not files:
        print(f"no layouts in {layouts_dir()}", file=sys.stderr)
        return 1
    rules = [(f"{d:g} µm", d) for d in a.depths]
    tot = {name: np.zeros((3, 3), np.int64) for name, _ in rules}
    for f in files:
        with np.load(f) as z:
            inst, cls_of = downsample(z["instances"].astype(np.int32), a.mpp), z["fine_class"]
        prob = (inst > 0).astype(np.float32)
        for name, d in rules:
            tot[name] += score(inst, cls_of, label_objects(prob, 0.5, h=d / a.mpp))
    print(f"{len(files)} PUMA layouts at {a.mpp} µm/px, perfect mask; matched at IoU > 0.5\n")
    print("| split rule | " + " | ".join(f"{n}: recall / precision / F1" for n in NAMES) + " |")
    print("|---|" + "---|" * 3)
    for name, _ in rules:
        cells = []
        for c in range(3):
            tp, nt, npred = tot[name][c]
            r, p = tp / max(nt, 1), tp / max(npred, 1)
            cells.append(f"{r:.3f} / {p:.3f} / {2 * tp / max(nt + npred, 1):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    n = tot[rules[0][0]][:, 1]
    print(f"\ntrue nuclei: tumour {n[0]}, immune {n[1]}, other {n[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
