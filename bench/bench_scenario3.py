"""Benchmark of the scenario-3 generator: images per second at 300x300.

Target (issue 4): 800 images in under 5 minutes on the 2-core development machine.

The reference bundle is built in memory from the PUMA tile (``../shared/data/real`` or
``$VNUMBA_REAL_DATA``) unless ``--reference FILE`` names one.  Prints wall and CPU seconds
per image of :func:`synth.generator.generate_sample` in this process, where the time goes
(CPU time of the stages of :func:`synth.scenario3.generate`, then the functions with the most
own CPU time in a profiled pass over ``--profile`` more images, which names whatever the stage
list misses), and, with ``--write N``, the wall time of ``synth.writer.write_dataset`` for N
images with ``--workers`` processes.

Usage::

    python bench/bench_scenario3.py                       # 40 images, one process
    python bench/bench_scenario3.py --write 800 --workers 2
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import reference as R  # noqa: E402
from synth import scenario3 as S3  # noqa: E402
from synth.generator import generate_sample, sample_rng  # noqa: E402
from synth.script import load_script  # noqa: E402

STAGES = ("vessel_regions", "_ribbons", "_noise_layer", "place_nuclei", "grow_cells",
          "texture_cells", "place_immune_cells", "_aggregates", "_infiltrate", "visible_mask",
          "compose", "degrade_input")


def _real_dir() -> Path:
    return Path(os.environ.get("VNUMBA_REAL_DATA",
                               Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))


def _timed(name, fn, acc):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            acc[name] += time.process_time() - t
    return wrapper


def _profile(script, bundle, k: int, top: int = 12) -> None:
    """Own CPU time per image of the ``top`` most expensive functions over ``k`` images."""
    import cProfile
    import pstats

    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for i in range(10_000, 10_000 + k):
        generate_sample(script, sample_rng(0, i), bundle)
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = sorted(((tt, nc, f) for f, (_, nc, tt, _, _) in stats.items()), reverse=True)[:top]
    print(f"profiled pass ({k} images; profiling slows small calls): own CPU ms/image, calls/image")
    for tt, nc, (fname, line, func) in rows:
        where = f"{Path(fname).name}:{line}" if line else "built-in"
        print(f"  {tt / k * 1e3:7.1f}  {nc / k:8.1f}  {func} ({where})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=40, help="images timed in this process (default 40)")
    p.add_argument("--reference", type=Path, default=None, help="reference bundle (HDF5)")
    p.add_argument("--script", default="scenario3", help="script path or shipped name")
    p.add_argument("--write", type=int, default=0, metavar="N",
                   help="also time write_dataset for N images (e.g. 800)")
    p.add_argument("--workers", type=int, default=2, help="worker processes for --write")
    p.add_argument("--profile", type=int, default=10, metavar="K",
                   help="images in the profiled pass (0: none; default 10)")
    args = p.parse_args(argv)

    if args.reference is not None:
        bundle = R.load_reference(args.reference)
    else:
        puma = _real_dir() / "he_melanoma_puma"
        if not puma.is_dir():
            print(f"error: {puma} not found; pass --reference FILE", file=sys.stderr)
            return 2
        bundle = R.build_reference([puma], mpp=0.24)
    script = load_script(args.script)
    H, W = script.size
    n_t, n_i = len(bundle.textures["tumour"]), len(bundle.textures["immune"])
    print(f"scenario-3 generator, {H}x{W}, bundle: {len(bundle.nuclei)} nuclei, "
          f"{n_t}/{n_i} tumour/immune patches")

    generate_sample(script, sample_rng(0, 0), bundle)  # compile Numba kernels, prepare bundle
    acc = defaultdict(float)
    originals = {name: getattr(S3, name) for name in STAGES}
    for name, fn in originals.items():
        setattr(S3, name, _timed(name, fn, acc))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(1, args.n + 1):
            generate_sample(script, sample_rng(0, i), bundle)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        for name, fn in originals.items():
            setattr(S3, name, fn)
    print(f"one process: {wall / args.n * 1e3:.0f} ms/image wall, "
          f"{cpu / args.n * 1e3:.0f} ms/image CPU -> {args.n / wall:.2f} images/s; "
          f"800 images ~ {800 * wall / args.n:.0f} s ({800 * cpu / args.n:.0f} s of CPU)")
    # CPU time per stage: it does not count waiting for a core on a shared machine.
    print("stages (CPU ms/image):")
    for name in STAGES:
        print(f"  {name:20s} {acc[name] / args.n * 1e3:7.1f}")
    rest = cpu - sum(acc.values())
    print(f"  {'(rest)':20s} {rest / args.n * 1e3:7.1f}")
    if args.profile:
        _profile(script, bundle, args.profile)

    if args.write:
        from synth.writer import write_dataset
        with tempfile.TemporaryDirectory() as d:
            ref = R.save_reference(bundle, Path(d) / "reference.h5")
            t0 = time.perf_counter()
            write_dataset(Path(d) / "s3.h5", script, args.write, seed=1, workers=args.workers,
                          reference=R.load_reference(ref), progress=False)
            wall = time.perf_counter() - t0
        print(f"write_dataset: {args.write} images, {args.workers} workers: {wall:.1f} s "
              f"({args.write / wall:.2f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
