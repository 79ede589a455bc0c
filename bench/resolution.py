"""Working resolution, everything else equal: scenario 3 at 20x (0.48 um/px) against 40x (0.24)
(issue 12, "know which part limits").

Usage::

    python bench/resolution.py [--reference runs/reference.h5] [-n 400] [--iters 200]
        [--crop-um 46] [--batch 8] [--steps 10] [--lr 5e-4] [--seed 5]
        [--real ../shared/data/real] [--work runs/resolution] [--factor 2]

The shipped ``scenario3.toml`` is the 20x script.  Its 40x twin is *derived* from it here, never
kept as a second copy: every length (pixels at the script's ``mpp``: radii, semi-axes, gaps,
correlation lengths, travel times, blur sigmas, grain, spacing) is multiplied by ``--factor``,
every per-area density divided by its square, ``mpp`` divided and ``size`` multiplied, so both
scripts draw the same tissue in micrometres (:data:`LENGTHS`, :data:`PER_AREA`).  Both are
generated with the same bundle, seed and count, trained with the same network, iterations, step
size and batch on crops of the same size *in micrometres* (``--crop-um``: 96 px at 20x, 192 px
at 40x, so each crop holds the same tissue), and scored by ``python -m vnumba.evaluate`` on every
class-annotated image under ``--real`` (each model at its own pixel size; images are resampled
to it).  Only the pixel grid differs: at 40x an 11x11 filter spans 2.6 um, at 20x 5.3 um.

A 40x iteration costs four times a 20x one.  Everything is written below ``--work``
(git-ignored); the summary is printed and written to ``--work/summary.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import summary_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"

#: (table, key) of every length in scenario3.toml, pixels at the script's ``mpp``.  Inline
#: tables are named "key.sub" (``speed.corr``); "*" in a table matches every ``colors.*`` table.
LENGTHS = [
    ("regions", "speed.corr"),
    ("connective", "start"), ("connective", "width"), ("connective", "speed.corr"),
    ("tumour_nuclei", "min_gap"),
    ("tumour_cells", "growth_time"), ("tumour_cells", "speed.corr"),
    ("tumour_cells", "patch_overlap"),
    ("immune_cells", "semi_axis"), ("immune_cells", "cluster_sigma"),
    ("immune_cells", "patch_overlap"),
    ("aggregates", "radius"), ("aggregates", "speed.corr"),
    ("stroma", "semi_axis"), ("stroma", "corr"),
    ("vessel_cells", "red_cell_radius"), ("vessel_cells", "endothelial_spacing"),
    ("vessel_cells", "endothelial_semi_axis"),
    ("pigment", "radius"), ("pigment", "grain"),
    ("debris", "radius"), ("debris", "grain"),
    ("degrade", "blur"),
    ("render", "blur"),
    ("colors.*", "corr"),
    ("filters", "*.sigma"),
]
#: Densities per 10 000 px.
PER_AREA = [("stroma", "density")]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(round(v, 6))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_fmt(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _scale(v, f):
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return int(round(v * f))
    if isinstance(v, float):
        return v * f
    if isinstance(v, list):
        return [_scale(x, f) for x in v]
    raise TypeError(type(v))


def _tables(doc, pattern):
    if pattern.endswith(".*"):
        head = pattern[:-2]
        return [(f"{head}.{k}", t) for k, t in doc.get(head, {}).items()]
    return [(pattern, doc[pattern])] if pattern in doc else []


def rescale_script(text: str, factor: float) -> str:
    """The scenario-3 script ``text`` at ``factor`` times finer pixels (same tissue in um).

    Parameters
    ----------
    text : str
        A scenario-3 script (TOML).
    factor : float
        Pixels per pixel of the original (2: 20x -> 40x).

    Returns
    -------
    str
        The script with ``mpp / factor``, ``size * factor``, every entry of :data:`LENGTHS`
        times ``factor`` and of :data:`PER_AREA` divided by ``factor**2``; comments and every
        other line unchanged.
    """
    from synth.script import _replace_in_table

    doc = tomllib.loads(text)
    edits = [("scenario", "mpp", doc["scenario"]["mpp"] / factor),
             ("scenario", "size", _scale(doc["scenario"]["size"], factor))]
    for pat, key in LENGTHS + PER_AREA:
        f = factor if (pat, key) in LENGTHS else 1.0 / factor ** 2
        for tname, table in _tables(doc, pat):
            top, _, sub = key.partition(".")
            if top == "*":  # list of inline tables under every key of the table
                for k, items in table.items():
                    new = [dict(d, **{sub: _scale(d[sub], f)}) if sub in d else d for d in items]
                    edits.append((tname, k, new))
            elif top in table:
                v = table[top]
                edits.append((tname, top, dict(v, **{sub: _scale(v[sub], f)}) if sub
                              else _scale(v, f)))
    for tname, key, value in edits:
        text, n = _replace_in_table(text, tname, key, f"{key} = {_fmt(value)}")
        if n != 1:
            raise KeyError(f"[{tname}] {key}: not a single line of the script")
    return text


def _run(cmd):
    import subprocess

    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, default=ROOT / "runs" / "reference.h5")
    p.add_argument("-n", type=int, default=400, help="images per resolution")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--crop-um", type=float, default=46.08,
                   help="training crop side in micrometres (96 px at 0.48 um/px)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--real", type=Path, default=REAL)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "resolution")
    a = p.parse_args(argv)

    from synth.script import load_script, shipped_path

    py = sys.executable
    a.work.mkdir(parents=True, exist_ok=True)
    base = shipped_path("scenario3")
    fine = a.work / "scenario3_fine.toml"
    fine.write_text(rescale_script(base.read_text(), a.factor))
    load_script(fine)  # validates the derived script before hours of work
    rows, times = [], {}
    for label, script in ((f"{load_script(base).mpp:g} um/px", str(base)),
                          (f"{load_script(fine).mpp:g} um/px", str(fine))):
        mpp = load_script(script).mpp
        tag = f"{mpp:g}".replace(".", "p")
        data = a.work / f"data_{tag}.h5"
        if not data.exists():
            _run([py, "-m", "synth", "generate", script, "--reference", str(a.reference),
                  "-n", str(a.n), "-o", str(data), "--seed", str(a.seed),
                  "--workers", str(a.workers)])
        crop = int(round(a.crop_um / mpp))
        model = a.work / f"model_{tag}.h5"
        times[label] = _run([py, "-m", "vnumba.train", str(data), "--steps", str(a.steps),
                             "--iters", str(a.iters), "--batch", str(a.batch), "--crop",
                             str(crop), "--lr", str(a.lr), "--lr-schedule", "cosine", "--seed",
                             str(a.seed), "--out", str(model), "--checkpoint-every", "25",
                             "--resume", "--quiet"])
        out = a.work / f"eval_{tag}"
        _run([py, "-m", "vnumba.evaluate", "--model", str(model), str(a.real), "--out", str(out),
              "--no-overlays", "-q"])
        rows.append((f"{label} (crop {crop} px)", out / "report.json"))
    text = summary_table(rows)
    text += "\n\ntraining wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
    print(text)
    (a.work / "summary.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
