"""Timing of the U-Net baseline on the CPU: forward pass and one training iteration
(forward + hand-written backward + Adam step) at given batch and image sizes.

Usage::

    python bench/bench_unet.py                       # batch 8 at 300x300 and 96x96, float32
    python bench/bench_unet.py --sizes 96 --repeats 5 --width 16

Printed per size: seconds per forward pass and per training iteration (median of
``--repeats`` after one warm-up), the achieved GFLOP/s against the analytic count below, and
the peak memory of one training iteration.

FLOP count (multiply-adds x 2; elementwise layers — ReLU, pooling, upsampling, head
nonlinearities, loss, Adam — are not counted)::

    forward   = sum over convolutions of  N * H_s * W_s * c_in * c_out * k^2
    backward  = forward (weight gradients) + forward minus the first convolution
                (input adjoints; the image needs no gradient)
    iteration = forward + backward

with ``H_s = H / 2^s`` at level ``s``.  Peak memory: ``tracemalloc`` peak of the NumPy
allocations made during one iteration (the kernels allocate only row-sized scratch), and
the process's maximum resident set size (``ru_maxrss``, includes Python, Numba and the
compiled code).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vnumba.unet import network as unet  # noqa: E402
from vnumba.unet.network import _conv_layers  # noqa: E402


def conv_macs(cfg: unet.UNetConfig, N: int, H: int, W: int) -> tuple[int, int]:
    """Multiply-adds of the forward pass and of the backward pass (see the module docstring)."""
    fwd = 0
    first = None
    for name, cin, cout, ks in _conv_layers(cfg):
        s = 0 if name == "head" else int(name[3])
        macs = N * (H >> s) * (W >> s) * cin * cout * ks * ks
        fwd += macs
        if first is None:
            first = macs
    return fwd, 2 * fwd - first


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 96],
                    help="square image sizes, multiples of 2**(scales-1) (default 300 96)")
    ap.add_argument("--width", type=int, default=32, help="feature channels (default 32)")
    ap.add_argument("--scales", type=int, default=3, help="resolution levels (default 3)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (median; default 3)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        ap.error("--batch and --repeats must be >= 1")

    import numba

    from vnumba.ops.optim import Adam

    cfg = unet.UNetConfig(width=args.width, scales=args.scales)
    bad = [s for s in args.sizes if s < 1 or s % cfg.size_multiple]
    if bad:
        ap.error(f"sizes {bad} are not positive multiples of {cfg.size_multiple}")
    dt = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    params = unet.init_params(cfg, rng, dt)
    print(f"U-Net {cfg.to_dict()}, {unet.param_count(params)} parameters, {args.dtype}, "
          f"batch {args.batch}, numba threads {numba.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    for S in args.sizes:
        N = args.batch
        u0 = rng.uniform(0.0, 1.0, (N, cfg.n_channels, S, S)).astype(dt)
        gu = np.clip(u0 + rng.normal(0.0, 0.05, u0.shape), 0.0, 1.0).astype(dt)
        gm = (u0.mean(axis=1) > 0.5).astype(dt)
        opt = Adam(lr=5e-5)

        def step():
            _, g, _, _ = unet.loss_and_grad(params, cfg, u0, gu, gm)
            opt.step(params, g)

        print(f"  {S}x{S}: compiling/warming up ...", flush=True)
        unet.forward(params, cfg, u0)
        step()
        t_fwd = _median_time(lambda: unet.forward(params, cfg, u0), args.repeats)
        t_it = _median_time(step, args.repeats)
        tracemalloc.start()
        step()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
        fwd, bwd = conv_macs(cfg, N, S, S)
        print(f"  {S}x{S}: forward {t_fwd:.3f} s ({2 * fwd / t_fwd / 1e9:.1f} GFLOP/s of "
              f"{2 * fwd / 1e9:.1f} GFLOP), training iteration {t_it:.3f} s "
              f"({2 * (fwd + bwd) / t_it / 1e9:.1f} GFLOP/s of {2 * (fwd + bwd) / 1e9:.1f} GFLOP), "
              f"peak NumPy memory {peak / 2**20:.0f} MiB, max RSS {rss:.0f} MiB "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
