"""Upper bound of the architecture on real tissue: train on one half of an annotated tile, score
the other half (issue 12, "know which part limits").

Usage::

    python bench/upper_bound.py [--tile ../shared/data/real/he_melanoma_puma/puma_metastatic_roi094_top.png]
        [--tile-mpp 0.25] [--mpp 0.48] [--iters 300] [--crop 128] [--batch 8] [--steps 10]
        [--compare MODEL ...] [--consep ../shared/data/real/he_consep] [--work runs/upper_bound]

The tile is resampled to ``--mpp`` (the working resolution of the synthetic-trained model) and
split into a left and a right half.  The left half, in its eight dihedral orientations, is a
training set whose input and clean target are the real image itself and whose mask is the
annotated tumour nuclei (``classes == 1``).  A network with the article's layout is trained on
it with ``python -m vnumba.train``; the right half (at the tile's own resolution, annotations
kept) is then evaluated with ``python -m vnumba.evaluate`` for that network and every
``--compare`` model (e.g. the shipped synthetic-trained one), and the CoNSeP patches likewise.

If the network trained on the real annotations separates tumour from immune nuclei on the
unseen half, the synthetic data is what limits; if it does not, the architecture (receptive
field, features) or the working resolution does.  Everything is written below ``--work``
(git-ignored: it holds cut-outs of the real tile, which are never committed); the summary is
printed and written to ``--work/summary.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"


def _halves(img, inst, cls):
    W = img.shape[1]
    h = W // 2
    return (img[:, :h], inst[:, :h], cls[:, :h]), (img[:, h:], inst[:, h:], cls[:, h:])


def build_training_set(path, img, cls, tile_mpp, mpp):
    """The half tile at ``mpp`` in eight orientations: u0 = gu = image, gm = tumour mask."""
    from scipy import ndimage as ndi

    from vnumba.io.dataset import write_dataset_arrays

    s = tile_mpp / mpp
    rgb = ndi.zoom(img.astype(np.float32) / 255.0, (s, s, 1), order=1, grid_mode=True,
                   mode="nearest")
    m = ndi.zoom((cls == 1).astype(np.float32), (s, s), order=1, grid_mode=True, mode="nearest")
    n = min(rgb.shape[0], rgb.shape[1])
    rgb, m = np.clip(rgb[:n, :n], 0, 1), (m[:n, :n] >= 0.5).astype(np.float32)
    u, g = [], []
    for k in range(4):
        for flip in (False, True):
            a, b = np.rot90(rgb, k), np.rot90(m, k)
            if flip:
                a, b = a[:, ::-1], b[:, ::-1]
            u.append(np.ascontiguousarray(a.transpose(2, 0, 1)))
            g.append(np.ascontiguousarray(b))
    u = np.stack(u)
    write_dataset_arrays(path, u, u, np.stack(g), scenario="scenario3", seed=0, mpp=float(mpp),
                         source="upper bound: annotated half tile (not synthetic)")
    return u.shape


def write_test_half(folder, img, inst, cls, tile_mpp):
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / "test_half.png", img)
    np.savez_compressed(folder / "test_half_labels.npz", instances=inst, classes=cls)
    (folder / "manifest.csv").write_text(f"file,magnification,mpp\ntest_half.png,,{tile_mpp}\n")


def _overall(report_path):
    rep = json.loads(Path(report_path).read_text())
    return rep.get("overall", {})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tile", type=Path,
                   default=REAL / "he_melanoma_puma" / "puma_metastatic_roi094_top.png")
    p.add_argument("--tile-mpp", type=float, default=0.25)
    p.add_argument("--mpp", type=float, default=0.48)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--compare", nargs="*", default=[])
    p.add_argument("--consep", type=Path, default=REAL / "he_consep")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "upper_bound")
    a = p.parse_args(argv)

    import imageio.v3 as iio

    from vnumba import evaluate, train
    img = iio.imread(a.tile)[..., :3]
    lab = np.load(a.tile.with_name(a.tile.stem + "_labels.npz"))
    (tr_img, _, tr_cls), (te_img, te_inst, te_cls) = _halves(img, lab["instances"], lab["classes"])
    a.work.mkdir(parents=True, exist_ok=True)
    data = a.work / "train_half.h5"
    shape = build_training_set(data, tr_img, tr_cls, a.tile_mpp, a.mpp)
    print(f"training set {data}: {shape}")
    model = a.work / "upper_bound.h5"
    rc = train.main([str(data), "--steps", str(a.steps), "--iters", str(a.iters), "--batch",
                     str(a.batch), "--crop", str(a.crop), "--lr", str(a.lr), "--lr-schedule",
                     "cosine", "--out", str(model), "--resume", "--quiet"])
    if rc:
        return rc
    test = a.work / "test_half"
    write_test_half(test, te_img, te_inst, te_cls, a.tile_mpp)
    lines = ["| model | data | pixel acc. | F1 | tumour marked | immune marked | other marked | epithelial marked |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in [("upper bound (real half)", model)] + [(str(c), Path(c)) for c in a.compare]:
        for dname, d in (("PUMA right half", test), ("CoNSeP", a.consep)):
            if not d.is_dir():
                continue
            out = a.work / f"eval_{Path(m).stem}_{d.name}"
            evaluate.main(["--model", str(m), str(d), "--out", str(out), "--no-overlays", "-q"])
            for meth, r in _overall(out / "report.json").items():
                if "baseline" in meth.lower() and name != "upper bound (real half)":
                    continue
                cl = r.get("classes", {})
                fr = {k: (f"{v['marked_fraction']:.3f}" if v.get("marked_fraction") is not None
                          else "–") for k, v in cl.items()}
                f1 = r.get("objects", {}).get("f1")
                lines.append(f"| {name if 'baseline' not in meth.lower() else meth} | {dname} | "
                             f"{r['pixel']['accuracy']:.4f} | {f1 if f1 is None else round(f1, 3)} | "
                             f"{fr.get('tumour', '–')} | {fr.get('immune', '–')} | "
                             f"{fr.get('other', '–')} | {fr.get('epithelial', '–')} |")
    text = "\n".join(lines)
    print(text)
    (a.work / "summary.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
