"""Pixel size estimated from nuclei (``vnumba.analysis.pixelsize``) against the known
magnification of every real development image (issue 20, "Pixel size without metadata").

Usage::

    python bench/pixel_size.py [DATA_DIR] [--folders he_cpm15 he_consep ...] [--every N]
        [--tolerance 0.15] [--csv out.csv] [-q]

``DATA_DIR`` defaults to ``$VNUMBA_REAL_DATA`` or ``../shared/data/real``.  Every image under it
that a ``manifest.csv`` lists with a magnification (``40x`` -> 0.25 µm/px, ``20x`` -> 0.5 µm/px;
:func:`vnumba.analysis.evaluation.nominal_mpp`) is estimated; images of unknown pixel size (the
fluorescence ones) are skipped and counted.  One row per image — file, true µm/px, estimate,
ratio, confident, the nominal scan pixel size inside the estimate's interval
(:attr:`~vnumba.analysis.pixelsize.PixelSizeEstimate.nominal`, what ``vnumba.predict`` uses),
nuclei, measured width — then a summary per folder and overall: how many estimates are
confident, and how many lie within ``--tolerance`` of the truth (raw estimate, and the pixel
size ``vnumba.predict`` would use: the nominal one where there is one), over all images and
over the confident ones.  Nothing is written unless ``--csv`` is given (the data set is never
copied).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def _images(data: Path, folders):
    from vnumba.io.images import INPUT_SUFFIXES
    for p in sorted(data.rglob("*")):
        if p.suffix.lower() not in INPUT_SUFFIXES or p.name.endswith("_labels.png"):
            continue
        rel = p.relative_to(data)
        if folders and rel.parts[0] not in folders:
            continue
        yield p, rel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/pixel_size.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", type=Path,
                    default=Path(os.environ.get("VNUMBA_REAL_DATA") or ROOT.parent / "shared" / "data" / "real"))
    ap.add_argument("--folders", nargs="*", help="only these top-level folders of DATA_DIR")
    ap.add_argument("--every", type=int, default=1, help="every N-th image of each folder (default 1: all)")
    ap.add_argument("--tolerance", type=float, default=0.15, help="relative error counted as right (0.15)")
    ap.add_argument("--csv", type=Path, help="also write the rows as CSV here")
    ap.add_argument("-q", "--quiet", action="store_true", help="summary only")
    args = ap.parse_args(argv)

    import numpy as np

    from vnumba.analysis.evaluation import nominal_mpp
    from vnumba.analysis.pixelsize import estimate_mpp
    from vnumba.io.images import image_to_float, read_image

    if not args.data.is_dir():
        print(f"error: {args.data}: no such folder (give DATA_DIR or set VNUMBA_REAL_DATA)", file=sys.stderr)
        return 2
    rows, skipped, seen = [], [], {}
    t_all = time.perf_counter()
    header = (f"{'file':52s} {'true':>6s} {'est':>6s} {'ratio':>6s} {'conf':>5s} {'used':>6s} {'nuclei':>6s} "
              f"{'width px':>8s}  s")
    if not args.quiet:
        print(header)
    for path, rel in _images(args.data, args.folders):
        folder = rel.parts[0] if len(rel.parts) > 1 else args.data.name
        k = seen.get(folder, 0)
        seen[folder] = k + 1
        if k % max(1, args.every):
            continue
        true = nominal_mpp(args.data, path)
        if true is None:
            skipped.append(str(rel))
            continue
        img = read_image(path)
        arr = img.array
        if arr.shape[2] != 3:
            skipped.append(str(rel))
            continue
        t0 = time.perf_counter()
        est = estimate_mpp(image_to_float(arr, "dtype", path))
        dt = time.perf_counter() - t0
        ratio = est.mpp / true if np.isfinite(est.mpp) else float("nan")
        used = est.nominal if est.nominal is not None else est.mpp
        rows.append(dict(file=str(rel), folder=folder, true=true, est=est.mpp, ratio=ratio,
                         confident=est.confident, used=used, used_ratio=used / true, n=est.n_nuclei,
                         width=est.width_px, reason=est.reason, seconds=dt))
        if not args.quiet:
            print(f"{str(rel):52s} {true:6.3f} {est.mpp:6.3f} {ratio:6.2f} {'yes' if est.confident else 'no':>5s} "
                  f"{used:6.3f} {est.n_nuclei:6d} {est.width_px:8.1f} {dt:4.1f}"
                  + ("" if est.confident else f"  ({est.reason})"), flush=True)
    if not rows:
        print("no image with a known magnification found", file=sys.stderr)
        return 1
    tol = args.tolerance

    def pct(k, n):
        return f"{k} ({100 * k / n:.0f} %)" if n else "0"

    def summary(name, rs):
        n = len(rs)
        ok = [r for r in rs if abs(r["ratio"] - 1) <= tol]
        conf = [r for r in rs if r["confident"]]
        conf_ok = [r for r in conf if abs(r["ratio"] - 1) <= tol]
        used_ok = [r for r in conf if abs(r["used_ratio"] - 1) <= tol]
        ratios = np.array([r["ratio"] for r in conf]) if conf else np.array([np.nan])
        with np.errstate(all="ignore"):
            q = np.nanpercentile(ratios, [10, 50, 90]) if conf else [np.nan] * 3
        return (f"| {name} | {n} | {pct(len(ok), n)} | {pct(len(conf), n)} | {pct(len(conf_ok), len(conf))} | "
                f"{pct(len(used_ok), len(conf))} | {q[1]:.2f} | {q[0]:.2f}-{q[2]:.2f} |")

    print()
    print(f"| folder | images | raw within ±{100 * tol:g} % | confident | confident: raw within | "
          "confident: used (nominal) within | median ratio | 10th-90th pct |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in sorted({r["folder"] for r in rows}):
        print(summary(folder, [r for r in rows if r["folder"] == folder]))
    print(summary("all", rows))
    print(f"\n{len(rows)} images estimated in {time.perf_counter() - t_all:.0f} s; "
          f"{len(skipped)} skipped (magnification unknown or not RGB)")
    if args.csv:
        import csv
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
