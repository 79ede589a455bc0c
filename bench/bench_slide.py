"""Benchmark of whole-slide analysis: ``python -m vnumba.slide`` against the bare network.

Prints, in one run (issue 21):

* the host (``lscpu``: model name, CPUs and cores, whether it has AVX2 / AVX-512F), the
  kernels' vector width, and the practical peak: GFLOP/s of ``np.dot`` on two float32
  4096² matrices (at the start and at the end of the run, as ``bench_model.py`` does);
* the **bare forward throughput** of the same model: ``model.apply`` on one window of the size
  the slide engine feeds the network for an interior block, ``T + 2 (o + R)`` model pixels a
  side (``T`` = ``--tile``, object halo ``o`` = ceil(12 µm / model µm/px), receptive radius
  ``R``; :func:`vnumba.analysis.wsi.plan_slide`), cut from the middle of a slide.  Only the
  block's own ``T²`` pixels count as output (the halo and the receptive margin are overhead
  of tiling that the slide engine pays too): MP/s = ``T² / t``, tiles/s = ``1 / t``.  It is
  timed ``--repeat`` times right before and right after every slide run; the ratio below uses
  the mean of the two medians ("bracketing": this VM's speed drifts over minutes);
* per synthetic slide (``--sizes``, default 4096² and 16384² at 0.25 µm/px, scenario 3):
  ``python -m vnumba.slide SLIDE --out DIR -q --model M --tile T`` in its own process,
  started by a small wrapper process (plain Python, no NumPy) that reports the wall time, the
  CPU time and the peak RSS of that process (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in the
  fresh wrapper, so nothing of this benchmark's own memory is counted);
* **slide throughput**: megapixels *at the model's resolution* processed per second, and
  tiles per second.  The processed area counts the own pixels (``T²``, less at the grid's
  right and bottom edges) of the tissue blocks the engine processed, not the skipped
  background ones: this benchmark re-plans the slide with the engine's functions
  (``plan_slide``, ``tissue_mask``, the tissue rule of ``run_blocks``) and checks that it
  finds the number of processed tiles of ``NAME_report.json``; its ``tiles_processed``,
  ``tiles_skipped``, ``level``, ``model_mpp``, ``region`` and ``seconds`` are reported too;
* the **ratio** slide MP/s ÷ bare MP/s (target ≥ 0.85: reading, tiling, objects, outputs and
  start-up cost at most 15 %), on the wall time of the process (primary), on the run time the
  report records (``seconds``: from opening the slide to the last output, without the
  interpreter's start-up and imports), and on CPU seconds (robust when other jobs share the
  cores);
* **peak RSS** per slide (target: within 20 % of each other and ≤ 1.5 GB = 1.5·10⁹ B).

A markdown table goes to stdout and the figures to ``OUT/bench_slide.json``
(``bench_slide_quick.json`` with ``--quick``).  Slides are generated with
``python -m synth slide --scenario scenario3 --size S S --seed 0 --reference REF`` into
``runs/bench_slides/`` once and reused (generation is not timed).

Usage::

    python bench/bench_slide.py                       # 4096² and 16384², shipped scenario3 model
    python bench/bench_slide.py --quick               # 1024² and 2048²: a smoke run, not figures
    python bench/bench_slide.py --sizes 4096 --model runs/s3_model.h5 --tile 1024
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import matmul_gflops  # noqa: E402

from vnumba.ops.memory import keep_freed_memory  # noqa: E402

#: Target ratio of slide to bare forward throughput, and the peak-RSS targets (issue 21).
TARGET_RATIO = 0.85
TARGET_RSS_SPREAD = 0.20
TARGET_RSS_BYTES = 1.5e9

#: The wrapper run once per slide: it starts the slide process and reports, as one JSON
#: line, its exit status, wall time, CPU time and peak RSS.  A fresh, small interpreter
#: (no NumPy), so ``RUSAGE_CHILDREN`` holds the slide process alone and the high-water mark
#: inherited at fork time is the wrapper's few MiB, not this benchmark's.
WRAPPER = r"""
import json, resource, subprocess, sys, time
cmd, log = json.loads(sys.argv[1]), sys.argv[2]
with open(log, "w") as fh:
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "maxrss_kib": ru.ru_maxrss}))
"""


# ----------------------------------------------------------------------------- host
def host_info() -> dict:
    """``lscpu``'s model name, CPU and core counts, and the AVX2 / AVX-512F flags."""
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = info.get("Flags", "").split()
    if not flags:
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
                if line.startswith("model name") and "Model name" not in info:
                    info["Model name"] = line.split(":", 1)[1].strip()
        except OSError:
            pass

    def num(key):
        try:
            return int(info[key])
        except (KeyError, ValueError):
            return None

    cps, sockets = num("Core(s) per socket"), num("Socket(s)")
    return {"model_name": info.get("Model name", "unknown"),
            "cpus": num("CPU(s)") or os.cpu_count(),
            "cores": cps * sockets if cps and sockets else None,
            "threads_per_core": num("Thread(s) per core"),
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags}


def host_line(h: dict) -> str:
    cores = f", {h['cores']} cores" if h["cores"] else ""
    return (f"{h['model_name']}, {h['cpus']} CPUs{cores}; avx2 {'yes' if h['avx2'] else 'no'}, "
            f"avx512f {'yes' if h['avx512f'] else 'no'}")


# ----------------------------------------------------------------------------- slides
def slide_path(slides_dir: Path, size: int, seed: int = 0) -> Path:
    return slides_dir / f"scenario3_{size}_seed{seed}.ome.tif"


def ensure_slide(path: Path, size: int, reference: Path, seed: int = 0) -> bool:
    """Generate the synthetic slide unless it is already there (not timed); True if made."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "synth", "slide", "--scenario", "scenario3", "--size",
           str(size), str(size), "-o", str(path), "--seed", str(seed), "--reference",
           str(reference), "-q"]
    print(f"  generating {path} ({size}x{size}, not timed) ...", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: synth slide failed for {path}:\n{r.stderr.strip() or r.stdout.strip()}")
    print(f"  ... {time.perf_counter() - t0:.0f} s", flush=True)
    return True


def replan(path: Path, model, tile: int):
    """The engine's plan of ``path`` and the blocks it processes (the tissue rule of
    :func:`vnumba.analysis.wsi.run_blocks`), plus a centre window for the bare forward."""
    from vnumba.analysis.tissue import tile_tissue_fraction, tissue_mask
    from vnumba.analysis.wsi import SlideOptions, plan_slide
    from vnumba.io.slides import open_slide

    opts = SlideOptions(tile=tile)
    with open_slide(path) as reader:
        plan = plan_slide(reader, model, opts)
        tissue = tissue_mask(reader)
        own = []
        for block, _ in plan.blocks:
            er0, er1, ec0, ec1 = plan.extended(block)
            f = plan.level0_per_model
            frac = tile_tissue_fraction(tissue, plan.region[0] + int(ec0 * f),
                                        plan.region[1] + int(er0 * f),
                                        max(1, int(round((ec1 - ec0) * f))),
                                        max(1, int(round((er1 - er0) * f))))
            if frac >= opts.min_tissue and frac > 0:
                r0, r1, c0, c1 = block
                own.append((r1 - r0) * (c1 - c0))
    return plan, own


def forward_window(path: Path, plan, model, side: int) -> np.ndarray:
    """A ``side x side`` model-grid window from the middle of the slide, as (1, C, side, side)
    float32 (mirrored up to ``side`` when the grid is smaller)."""
    from vnumba.analysis.wsi import ModelGridReader
    from vnumba.io.slides import open_slide

    Hm, Wm = plan.grid
    h, w = min(side, Hm), min(side, Wm)
    r0, c0 = (Hm - h) // 2, (Wm - w) // 2
    with open_slide(path) as reader:
        img = ModelGridReader(reader, plan, None).read(r0, r0 + h, c0, c0 + w)
    if (h, w) != (side, side):
        img = np.pad(img, ((0, side - h), (0, side - w), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(np.moveaxis(img, 2, 0)[None], dtype=model.dtype)


def time_forward(model, u0, repeat: int) -> dict:
    """Wall and CPU seconds of ``model.apply(u0)``, ``repeat`` times."""
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        model.apply(u0)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu, "median": statistics.median(wall), "best": min(wall),
            "cpu_median": statistics.median(cpu)}


def run_slide(path: Path, out_dir: Path, log: Path, model_arg: str, tile: int) -> dict:
    """``python -m vnumba.slide`` on one slide in a fresh process, through the wrapper."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cmd = [sys.executable, "-m", "vnumba.slide", str(path), "--out", str(out_dir), "-q",
           "--model", str(model_arg), "--tile", str(tile)]
    r = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(cmd), str(log)], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"wrapper failed: {r.stderr.strip()}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["command"] = " ".join(cmd)
    return res


# ----------------------------------------------------------------------------- output
def fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def print_table(rows, bare_T):
    print("\n| slide (level 0) | model grid | level | tiles processed / skipped | processed "
          "MP (model px) | wall s | run s (report) | slide MP/s | tiles/s | bare MP/s (bracketing) "
          "| ratio wall | ratio run | ratio CPU | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['size']}² | – | – | – | – | – | – | – | – | – | – | – | – | failed: "
                  f"{r['error']} |")
            continue
        g = r["grid"]
        print(f"| {r['size']}² | {g[1]}×{g[0]} | {r['level']} | {r['tiles_processed']} / "
              f"{r['tiles_skipped']} | {r['processed_mp']:.2f} | {r['wall_s']:.1f} | "
              f"{fmt(r['report_seconds'], '.1f')} | {r['mp_per_s']:.3f} | {r['tiles_per_s']:.3f} | "
              f"{r['bare_mp_per_s']:.3f} | {r['ratio_wall']:.3f} | {fmt(r['ratio_run'], '.3f')} | "
              f"{r['ratio_cpu']:.3f} | {r['peak_rss_mib']:.0f} |")
    print(f"\n(MP = 10⁶ pixels at the model's resolution, counting only the own {bare_T}² pixels "
          f"of each processed tissue block — the same accounting for the slide and the bare "
          f"forward.)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="level-0 sides of the synthetic slides (default 4096 16384; --quick: 1024 2048)")
    ap.add_argument("--model", default="scenario3",
                    help="shipped model name or model file (.h5), as vnumba.slide --model "
                         "(default scenario3)")
    ap.add_argument("--reference", type=Path, default=ROOT / "runs" / "reference.h5",
                    help="scenario-3 reference bundle for generating the slides "
                         "(default runs/reference.h5)")
    ap.add_argument("--tile", type=int, default=None,
                    help="block edge at the model's resolution (default: vnumba.slide's, 512)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_slide",
                    help="folder for the figures (JSON), logs and slide outputs "
                         "(default runs/bench_slide)")
    ap.add_argument("--slides-dir", type=Path, default=ROOT / "runs" / "bench_slides",
                    help="cache of generated slides (default runs/bench_slides)")
    ap.add_argument("--keep", action="store_true",
                    help="keep vnumba.slide's outputs (default: only its report JSON is kept)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="bare forward passes timed before and after each slide (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="1024² and 2048² slides, a 2048² matmul: a smoke run, not figures")
    args = ap.parse_args(argv)
    # the slide and generator processes run in the repository root: absolute paths for them
    args.out, args.slides_dir, args.reference = (p.resolve() for p in (args.out, args.slides_dir,
                                                                        args.reference))
    if Path(args.model).exists():
        args.model = str(Path(args.model).resolve())

    from vnumba.analysis.wsi import DEFAULT_TILE
    from vnumba.io.models import load_model
    from vnumba.ops import simd

    sizes = args.sizes or ([1024, 2048] if args.quick else [4096, 16384])
    tile = args.tile or DEFAULT_TILE
    mm_n = 2048 if args.quick else 4096
    if args.repeat < 1 or any(s < 256 for s in sizes):
        ap.error("--repeat >= 1 and slide sizes >= 256 are required")
    if not args.reference.exists() and not all(slide_path(args.slides_dir, s).exists() for s in sizes):
        ap.error(f"the scenario-3 reference bundle {args.reference} is missing (README: "
                 "python -m synth reference ...); it is needed to generate the slides")
    kept = keep_freed_memory()       # as the command-line entry points (vnumba.slide) do

    import numba
    host = host_info()
    print(f"vnumba slide benchmark{' (--quick: a smoke run, the figures are no timings)' if args.quick else ''}")
    print(f"  host: {host_line(host)}")
    print(f"  SIMD: {simd.describe()}; numba threads {numba.get_num_threads()}; malloc: "
          f"{'freed memory kept (vnumba.ops.memory)' if kept else 'system defaults'}")
    mm_start = matmul_gflops(mm_n)
    print(f"  practical peak at start: np.dot float32 {mm_n}^2: {mm_start:.1f} GFLOP/s")

    print("  slides (generated once, reused):", flush=True)
    paths = {s: slide_path(args.slides_dir, s) for s in sizes}
    for s in sizes:
        ensure_slide(paths[s], s, args.reference)

    model = load_model(args.model)
    big = max(sizes)
    plan_big, _ = replan(paths[big], model, tile)
    side = tile + 2 * (plan_big.halo + plan_big.margin)
    side = -(-side // plan_big.multiple) * plan_big.multiple
    u0 = forward_window(paths[big], plan_big, model, side)
    cfg = model.config
    print(f"  model {args.model}: {model.arch}, {getattr(cfg, 'n_steps', '?')} steps, "
          f"{getattr(cfg, 'n_mask', 1)} mask channel(s), receptive radius R {plan_big.margin} px, "
          f"model {plan_big.model_mpp:g} µm/px; halo o {plan_big.halo} px; tile T {tile} -> "
          f"window {side}² px, {100 * tile * tile / side ** 2:.0f} % of it the block's own output")
    t0 = time.perf_counter()
    model.apply(u0)                  # compile / load the kernel cache, not timed
    print(f"  warm-up forward (compile / cache load): {time.perf_counter() - t0:.1f} s", flush=True)

    def bare(label):
        f = time_forward(model, u0, args.repeat)
        print(f"  bare forward {label}: median {f['median']:.3f} s, best {f['best']:.3f} s per "
              f"{side}² window -> {tile * tile / f['median'] / 1e6:.3f} MP/s, "
              f"{1 / f['median']:.3f} tiles/s [all: {', '.join(f'{x:.3f}' for x in f['wall'])}]",
              flush=True)
        return f

    args.out.mkdir(parents=True, exist_ok=True)
    before = bare(f"before the {sizes[0]}² slide")
    rows = []
    for i, s in enumerate(sizes):
        path = paths[s]
        out_dir = args.out / f"slide_{s}"
        log = args.out / f"slide_{s}.log"
        print(f"  vnumba.slide on {path.name} ...", flush=True)
        res = run_slide(path, out_dir, log, args.model, tile)
        after = bare(f"after the {s}² slide")
        row = {"size": s, "slide": str(path), "command": res["command"], "rc": res["rc"],
               "wall_s": res["wall_s"], "cpu_s": res["cpu_s"],
               "peak_rss_mib": res["maxrss_kib"] / 1024.0,
               "bare_before": before, "bare_after": after}
        before = after
        name = path.name[:-len(".ome.tif")]
        rep_path = out_dir / f"{name}_report.json"
        if res["rc"] != 0 or not rep_path.exists():
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            row["error"] = f"exit {res['rc']}: {tail[0] if tail else 'no report'} (log {log})"
            print(f"  FAILED: {row['error']}", flush=True)
            rows.append(row)
            continue
        rep = json.loads(rep_path.read_text())
        shutil.copyfile(rep_path, args.out / f"report_{s}.json")
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
        plan, own = replan(path, model, tile)
        n_proc, n_skip = int(rep["tiles_processed"]), int(rep["tiles_skipped"])
        if len(own) == n_proc:
            processed_px, basis = float(sum(own)), "own pixels of the processed tissue blocks"
        else:            # the re-planned tissue rule disagrees: estimate, and say so
            total = sum((b[1] - b[0]) * (b[3] - b[2]) for b, _ in plan.blocks)
            processed_px = total * n_proc / max(1, len(plan.blocks))
            basis = (f"ESTIMATE (re-plan found {len(own)} tissue blocks, the report "
                     f"{n_proc}): grid area x processed / all blocks")
            print(f"  warning: {basis}", flush=True)
        X, Y, W, H = rep["region"]
        grid_mp_report = W * H * (rep["mpp"] / rep["model_mpp"]) ** 2 / 1e6
        bare_med = 0.5 * (row["bare_before"]["median"] + after["median"])
        bare_cpu = 0.5 * (row["bare_before"]["cpu_median"] + after["cpu_median"])
        bare_mps = tile * tile / bare_med / 1e6
        mp = processed_px / 1e6
        run_s = rep.get("seconds")
        row.update({
            "level": rep["level"], "model_mpp": rep["model_mpp"], "mpp": rep["mpp"],
            "region": rep["region"], "grid": list(plan.grid),
            "grid_mp_from_region": grid_mp_report,
            "tiles_processed": n_proc, "tiles_skipped": n_skip, "tiles_total": len(plan.blocks),
            "processed_mp": mp, "processed_basis": basis, "report_seconds": run_s,
            "mp_per_s": mp / res["wall_s"], "tiles_per_s": n_proc / res["wall_s"],
            "mp_per_s_run": mp / run_s if run_s else None,
            "bare_mp_per_s": bare_mps, "bare_tiles_per_s": 1.0 / bare_med,
            "ratio_wall": (mp / res["wall_s"]) / bare_mps,
            "ratio_run": (mp / run_s) / bare_mps if run_s else None,
            "ratio_cpu": (mp / res["cpu_s"]) / (tile * tile / bare_cpu / 1e6),
        })
        rows.append(row)
        print(f"  {s}²: {n_proc} tiles processed, {n_skip} skipped, {mp:.2f} MP in "
              f"{res['wall_s']:.1f} s wall ({fmt(run_s, '.1f')} s in the report), "
              f"peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)

    mm_end = matmul_gflops(mm_n)
    print(f"  practical peak at end: np.dot float32 {mm_n}^2: {mm_end:.1f} GFLOP/s")
    print_table(rows, tile)

    ok = [r for r in rows if not r.get("error")]
    verdict = {}
    if ok:
        worst = min(r["ratio_wall"] for r in ok)
        verdict["ratio_wall_min"] = worst
        verdict["ratio_met"] = worst >= TARGET_RATIO
        print(f"\ntarget ratio >= {TARGET_RATIO} (wall time of the process): lowest {worst:.3f} -> "
              f"{'met' if worst >= TARGET_RATIO else 'NOT met'}")
        rss = [r["peak_rss_mib"] for r in ok]
        hi, lo = max(rss), min(rss)
        spread = hi / lo - 1.0
        cap = TARGET_RSS_BYTES / 2 ** 20
        verdict.update({"rss_spread": spread, "rss_max_mib": hi,
                        "rss_met": spread <= TARGET_RSS_SPREAD and hi <= cap})
        print(f"target peak RSS within {100 * TARGET_RSS_SPREAD:.0f} % and <= 1.5 GB ({cap:.0f} MiB): "
              f"{lo:.0f}-{hi:.0f} MiB, spread {100 * spread:.1f} % -> "
              f"{'met' if verdict['rss_met'] else 'NOT met'}")
    if args.quick:
        print("(--quick: tiny slides; these figures are a smoke run, not timings)")

    doc = {"benchmark": "bench_slide", "quick": args.quick,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": host,
           "simd": simd.describe(), "numba_threads": numba.get_num_threads(),
           "malloc_kept": kept, "matmul_n": mm_n, "matmul_gflops_start": mm_start,
           "matmul_gflops_end": mm_end, "model": str(args.model), "tile": tile,
           "halo_px": plan_big.halo, "receptive_radius_px": plan_big.margin, "window_px": side,
           "repeat": args.repeat, "slides": rows, "targets": {
               "ratio": TARGET_RATIO, "rss_spread": TARGET_RSS_SPREAD, "rss_bytes": TARGET_RSS_BYTES},
           "verdict": verdict}
    out_json = args.out / ("bench_slide_quick.json" if args.quick else "bench_slide.json")
    out_json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"figures: {out_json}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
