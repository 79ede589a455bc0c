"""Benchmark of the synthetic data generator: images per second per scenario.

Usage::

    python bench/bench_synth.py [--n 40] [--workers 2] [--size 300 300] [--scenarios scenario1 scenario2]

For each scenario it reports (after a warm-up sample that loads/compiles the Numba kernels)
single-process generation speed (wall clock and CPU time per image) and the throughput of
``write_dataset`` with ``--workers`` processes including HDF5 writing, the projected time for
800 images from that throughput (the article's training-set size; target: under 2 minutes on
2 cores), and the time 800 images take from the measured CPU time alone (what an otherwise idle
machine achieves; the wall-clock figures include other load on the machine).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.generator import generate_sample, sample_rng  # noqa: E402
from synth.script import load_script  # noqa: E402
from synth.writer import write_dataset  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40, help="images per measurement")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=(300, 300), metavar=("H", "W"))
    p.add_argument("--scenarios", nargs="+", default=["scenario1", "scenario2"])
    args = p.parse_args(argv)
    print(f"{'scenario':10s} {'1 proc img/s':>12s} {'CPU s/img':>10s} "
          f"{f'{args.workers} workers+h5 img/s':>22s} {'800 imgs (s)':>12s} {'800 @CPU (s)':>12s}")
    for name in args.scenarios:
        s = load_script(name).with_size(*args.size)
        generate_sample(s, sample_rng(0, 0))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.n):
            generate_sample(s, sample_rng(1, i))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            write_dataset(Path(d) / "b.h5", s, args.n, seed=2, workers=args.workers, progress=False)
            wall_w = time.perf_counter() - t0
        rate_w = args.n / wall_w
        # what 800 images cost on `workers` otherwise idle cores, from the measured CPU time
        # (the wall-clock columns also measure whatever else runs on the machine)
        est = 800 * cpu / args.n / args.workers
        print(f"{name:10s} {args.n / wall:12.2f} {cpu / args.n:10.3f} {rate_w:22.2f} "
              f"{800 / rate_w:12.1f} {est:12.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
