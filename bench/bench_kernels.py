"""Kernel-level benchmark of the CPU network's building blocks at the article's sizes.

Times, for one 300×300 image (``--size``), the valid correlation
(``vnumba.ops.fused.corr_valid_fast``) on the three shapes the network uses, the kernel
gradients, and the RBF evaluations (orders 0, 1, 2) and weight gradient; and, in the same
rounds, a float32 matrix product as the practical peak to compare the GFLOP/s with.

This machine's speed drifts over minutes (``bench/README.md``), so the variants are timed in
interleaved rounds and the best time of each is reported: a slow minute then costs every
variant alike instead of the one that happened to run in it.

Usage::

    .venv/bin/python bench/bench_kernels.py            # 300x300, 6 rounds
    .venv/bin/python bench/bench_kernels.py --size 128 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vnumba.ops import fused  # noqa: E402
from vnumba.ops.conv import conv_kernel_grad  # noqa: E402
from vnumba.ops.rbf import RBFGrid, rbf_apply, rbf_weight_grad  # noqa: E402
from vnumba.vn.config import ModelConfig  # noqa: E402


def cases(size: int, rng: np.random.Generator):
    """(label, function, GFLOP or None, values or None) of every timed call."""
    cfg = ModelConfig()
    grid = RBFGrid(cfg)
    out = []
    shapes = [  # (label, C in, O out, ks, valid output side)
        ("K      24->24 5x5", cfg.nf, cfg.nf, cfg.ks, size),
        ("K^u^T  20->3 11x11", cfg.nf_u, cfg.n_channels, cfg.ks_u, size + cfg.ks_u - 1),
        ("K^u    3->20 11x11", cfg.n_channels, cfg.nf_u, cfg.ks_u, size),
    ]
    for label, C, O, ks, S in shapes:
        xp = rng.standard_normal((1, C, S + ks - 1, S + ks - 1)).astype(np.float32)
        k = (0.05 * rng.standard_normal((O, C, ks, ks))).astype(np.float32)
        gflop = 2.0 * S * S * C * O * ks * ks / 1e9
        out.append((f"corr {label}", lambda xp=xp, k=k: fused.corr_valid_fast(xp, k), gflop, None))
    for label, C, O, ks in (("K", cfg.nf, cfg.nf, cfg.ks), ("K^u", cfg.n_channels, cfg.nf_u, cfg.ks_u)):
        y = rng.standard_normal((1, O, size, size)).astype(np.float32)
        x = rng.standard_normal((1, C, size, size)).astype(np.float32)
        out.append((f"kernel gradient {label}", lambda y=y, x=x, ks=ks: conv_kernel_grad(y, x, ks),
                    2.0 * size * size * C * O * ks * ks / 1e9, None))
    z = (0.4 * rng.standard_normal((1, cfg.nf, size, size))).astype(np.float32)
    w = rng.standard_normal((cfg.nf, cfg.n_w)).astype(np.float32)
    c0 = rng.standard_normal(z.shape).astype(np.float32)
    c1 = rng.standard_normal(z.shape).astype(np.float32)
    for order in (0, 1, 2):
        out.append((f"RBF order {order} (24 channels)",
                    lambda order=order: rbf_apply(z, w, grid, order=order), None, z.size))
    out.append(("RBF weight gradient (24 channels)", lambda: rbf_weight_grad(z, c0, c1, grid), None, z.size))
    # the practical peak, timed in the same rounds (bench/README.md: this machine drifts)
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    out.append((MATMUL, lambda: np.dot(a, a), 2.0 * 2048 ** 3 / 1e9, None))
    return out


MATMUL = "np.dot 2048^2 float32 (practical peak)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=300, help="image side (default 300)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.size < 16 or args.rounds < 1:
        ap.error("--size >= 16 and --rounds >= 1 are required")
    import numba
    rng = np.random.default_rng(args.seed)
    todo = cases(args.size, rng)
    t0 = time.perf_counter()
    for _, fn, _, _ in todo:
        fn()  # compile or load the cache
    print(f"vnumba kernel benchmark: {args.size}x{args.size}, one image, float32, "
          f"numba threads {numba.get_num_threads()}, warm-up {time.perf_counter() - t0:.1f} s, "
          f"{args.rounds} interleaved rounds (best of {2 * args.rounds})")
    best = [np.inf] * len(todo)
    for _ in range(args.rounds):
        for i, (_, fn, _, _) in enumerate(todo):
            for _ in range(2):
                t = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t)
                if todo[i][0] == MATMUL:
                    time.sleep(0.5)  # OpenBLAS's threads spin after a product: let them idle
    for (label, _, gflop, values), t in zip(todo, best):
        rate = f"{gflop / t:7.1f} GFLOP/s" if gflop else f"{t / values * 1e9:7.2f} ns/value"
        print(f"  {label:44s} {t * 1e3:8.2f} ms  {rate}")


if __name__ == "__main__":
    main()
