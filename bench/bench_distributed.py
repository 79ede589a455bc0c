"""Benchmark of the three jobs on the executor seam: in-process against ``local:1`` and ``local:2``.

Prints, for each job, on this machine (``lscpu`` model, cores):

* **generation** — ``write_dataset`` of ``--gen-n`` scenario-2 samples (``--gen-size``²);
* **training** — ``--train-iters`` iterations of the default variational network, batch
  ``--batch`` on ``--crop``² crops of a dataset made first (not timed);
* **slide analysis** — ``analyse_slide`` of a synthetic scenario-3 slide (``--slide-size``²,
  made first with ``python -m synth slide``, not timed; needs ``--reference``).

For each: the wall time in-process (all Numba threads, then one), on ``local:1`` and on
``local:2`` (clusters started before
the clock; the first map on a cluster, which loads the kernels in the workers, is not timed),
the overhead of the Dask path at one worker (``local:1`` against in-process on one Numba thread,
the same compute as the one single-threaded worker: ``local:1`` / in-process(1 thread) − 1;
target ≤ 5 % for training and slide analysis, issue 23), and ``local:2`` against in-process
on all threads.

For training it also prints the communication volume per iteration (the parameters to each
worker once, one gradient per image back) and a projection to 8 and 64 workers under stated
assumptions: each worker computes ``batch / workers`` image gradients per iteration at the
single-image rate measured here; the driver receives the gradients at ``--bandwidth`` GB/s
and adds them at the measured NumPy rate; a task costs ``--task-latency`` ms of scheduling.

Timings mean something only on idle cores: the machine's 2 cores are shared by the driver and
the workers, so ``local:2`` cannot show more than the cores allow.

Usage::

    python bench/bench_distributed.py                      # all three jobs
    python bench/bench_distributed.py --jobs train --train-iters 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def host() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown host"
    kv = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{kv.get('Model name', '?').strip()}, {kv.get('CPU(s)', '?').strip()} CPUs"


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def job_generation(ex, out: Path, n: int, size: int):
    from synth.script import load_script
    from synth.writer import write_dataset
    script = load_script("scenario2").with_size(size, size)
    return timed(lambda: write_dataset(out, script, n, 0, progress=False, executor=ex))


def job_training(ex, data: Path, out: Path, iters: int, batch: int, crop: int):
    from vnumba.training.trainer import TrainOptions, train
    opts = TrainOptions(data=str(data), iters=iters, batch=batch, crop=crop, out=str(out),
                        checkpoint_every=10 ** 6, quiet=True)
    return timed(lambda: train(opts, executor=ex))


def job_slide(ex, slide: Path, out: Path, model):
    from vnumba.analysis.wsi import SlideOptions
    from vnumba.slide import analyse_slide
    out.mkdir(parents=True, exist_ok=True)
    return timed(lambda: analyse_slide(slide, model, out, SlideOptions(), quiet=True, executor=ex))


def training_volume(batch: int, workers: int, crop: int, iters_rate: float, args) -> dict:
    """Bytes per iteration and a projected iteration time for ``workers`` workers."""
    from vnumba.vn.config import ModelConfig, param_shapes
    n = sum(int(np.prod(s)) for s in param_shapes(ModelConfig()).values())
    pbytes = 4 * n
    vol = pbytes * workers + pbytes * batch
    t_img = 1.0 / iters_rate / batch                      # one image gradient, one worker
    add = batch * n / 1e9                                  # ~1 ns per float added (NumPy)
    proj = {}
    for w in (8, 64):
        per_worker = int(np.ceil(batch / w)) if w <= batch else 1
        comm = (pbytes * min(w, batch) + pbytes * batch) / (args.bandwidth * 1e9)
        proj[w] = per_worker * t_img + comm + add + batch * args.task_latency / 1e3
    return {"params": n, "bytes_per_iteration": vol, "t_image_s": t_img, "projected_s": proj}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", nargs="+", default=["generate", "train", "slide"],
                    choices=["generate", "train", "slide"])
    ap.add_argument("--gen-n", type=int, default=16)
    ap.add_argument("--gen-size", type=int, default=128)
    ap.add_argument("--train-iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--slide-size", type=int, default=2048)
    ap.add_argument("--reference", type=Path, default=ROOT / "runs" / "reference.h5")
    ap.add_argument("--bandwidth", type=float, default=1.0, help="GB/s driver link (projection)")
    ap.add_argument("--task-latency", type=float, default=2.0, help="ms per task (projection)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_distributed")
    args = ap.parse_args(argv)

    from vnumba.executor import get_executor
    from vnumba.ops.memory import keep_freed_memory
    keep_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"vnumba distributed benchmark\n  host: {host()}")
    results = {}
    # inputs, not timed
    data = args.out / "train_data.h5"
    if "train" in args.jobs and not data.exists():
        from synth.script import load_script
        from synth.writer import write_dataset
        write_dataset(data, load_script("scenario2").with_size(2 * args.crop, 2 * args.crop),
                      2 * args.batch, 1, progress=False)
    slide = args.out / f"slide_{args.slide_size}.ome.tif"
    model = None
    if "slide" in args.jobs:
        if not slide.exists():
            subprocess.run([sys.executable, "-m", "synth", "slide", "--scenario", "scenario3",
                            "--size", str(args.slide_size), str(args.slide_size), "--seed", "0",
                            "--reference", str(args.reference), "-q", "-o", str(slide)],
                           check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        from vnumba.io.models import load_model
        model = load_model("scenario3")

    runners = {
        "generate": lambda ex, tag: job_generation(ex, args.out / f"g_{tag}.h5", args.gen_n,
                                                   args.gen_size),
        "train": lambda ex, tag: job_training(ex, data, args.out / f"t_{tag}.h5",
                                              args.train_iters, args.batch, args.crop),
        "slide": lambda ex, tag: job_slide(ex, slide, args.out / f"s_{tag}", model),
    }
    import numba
    threads = numba.get_num_threads()
    for tag, spec in (("inprocess", None), ("inprocess1", None), ("local1", "local:1"),
                      ("local2", "local:2")):
        # in-process on 1 Numba thread: the same compute as one single-threaded worker, so
        # that local:1 / inprocess1 is the cost of the Dask path alone
        numba.set_num_threads(1 if tag == "inprocess1" else threads)
        with get_executor(spec) as ex:
            # load the kernels (here, or in every worker) before the clock
            list(ex.map(_warm, range(2 * ex.workers)))
            for job in args.jobs:
                t = runners[job](ex, tag)
                results.setdefault(job, {})[tag] = t
                print(f"  {job:9s} {tag:10s} {t:8.2f} s", flush=True)
    numba.set_num_threads(threads)
    print(f"\n| job | in-process ({threads} threads) s | in-process (1 thread) s | local:1 s | local:2 s "
          f"| overhead at 1 worker | local:2 against in-process |")
    print("|---|---|---|---|---|---|---|")
    for job, r in results.items():
        ov = r["local1"] / r["inprocess1"] - 1
        print(f"| {job} | {r['inprocess']:.2f} | {r['inprocess1']:.2f} | {r['local1']:.2f} | "
              f"{r['local2']:.2f} | {100 * ov:+.1f} % | {r['inprocess'] / r['local2']:.2f}x |")
    if "train" in results:
        # a worker's image rate: one Numba thread, as each worker runs
        rate = args.train_iters / results["train"]["inprocess1"]
        v = training_volume(args.batch, 2, args.crop, rate, args)
        print(f"\ntraining communication: {v['params']} parameters; per iteration "
              f"{v['bytes_per_iteration'] / 1e6:.2f} MB at 2 workers (parameters to each worker, "
              f"one float32 gradient per image back)")
        for w, t in v["projected_s"].items():
            print(f"  projected iteration at {w} workers: {t:.3f} s (one image gradient "
                  f"{v['t_image_s']:.3f} s here; {args.bandwidth:g} GB/s; "
                  f"{args.task_latency:g} ms per task; batch {args.batch}: beyond {args.batch} "
                  f"workers the batch, not the workers, bounds the speed-up)")
        results["train_volume"] = v
    (args.out / "bench_distributed.json").write_text(json.dumps(results, indent=1, default=str))


def _warm(shared, i):
    """Load (or compile) the network's kernels in a worker: one tiny training step."""
    from vnumba.vn.config import ModelConfig
    from vnumba.vn.model import init_params, loss_and_grad
    cfg = ModelConfig()
    # float32, as training runs (the kernels are compiled per dtype)
    p = {k: np.asarray(v, np.float32) for k, v in init_params(cfg, np.random.default_rng(0)).items()}
    x = np.full((1, 3, 24, 24), 0.5, np.float32)
    loss_and_grad(p, cfg, x, x, np.zeros((1, 24, 24), np.float32))
    return i


if __name__ == "__main__":
    main()
