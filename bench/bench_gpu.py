"""GPU benchmark of the coupled variational network: forward pass and training iteration.

Defaults are the article's training setting: batch 8, 300x300 images, 10 steps, 20 + 4
feature channels (``vnumba.vn.config.ModelConfig()``).  Reports seconds, GFLOP/s from the
analytic multiply-add count of the CPU benchmark (``bench/README.md``; equal to
``bench_model.macs_per_image``): ``2 F`` multiply-adds per pixel and step for the forward
pass, ``F = C·nf_u·ks_u² + nf_m·ks_m² + nf²·ks²``, i.e. ≈3.9 G per 300x300 image and step;
``8 F`` for a training step: forward ``2F``, and backward = recomputed forward ``2F`` +
Hessian-vector product ``2F`` + kernel gradients ``2F``; one multiply-add = 2 FLOP.  Also
the fraction of the card's fp32 peak, and device memory.

Usage::

    python bench/bench_gpu.py [--batch 8] [--size 300] [--steps 10] [--iters 5] [--profile]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vnumba.vn.config import ModelConfig  # noqa: E402
from vnumba.vn.model import init_params  # noqa: E402

# FP32 lanes per multiprocessor by compute capability (NVIDIA's architecture tables).
_FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128,
               (8, 9): 128, (9, 0): 128, (10, 0): 128, (10, 3): 128, (12, 0): 128}


def macs_per_pixel_step(cfg: ModelConfig) -> int:
    """``F``: multiply-adds of ``K^u``, ``K^m`` and ``K`` for one pixel (one operator each)."""
    return (cfg.n_channels * cfg.nf_u * cfg.ks_u ** 2 + cfg.nf_m * cfg.ks_m ** 2
            + cfg.nf * cfg.nf * cfg.ks ** 2)


def peak_tflops(dev) -> tuple:
    """Estimated fp32 peak (FMA = 2 FLOP) from the multiprocessor count and the clock."""
    try:
        cc = tuple(dev.compute_capability)
        sms = int(dev.MULTIPROCESSOR_COUNT)
    except Exception:  # the CUDA simulator has no attribute table
        return None, "no device attributes"
    try:
        clock_ghz = int(dev.CLOCK_RATE) * 1e-6  # kHz
    except Exception:
        return None, f"{sms} SMs, clock unknown"
    lanes = _FP32_LANES.get(cc, 128)
    return sms * lanes * 2 * clock_ghz * 1e-3, f"{sms} SMs x {lanes} lanes x 2 x {clock_ghz:.2f} GHz"


def _profile_launcher():
    """Time every launcher method (synchronising around each call: no overlap, totals only)."""
    from vnumba.vn.gpu import launch
    totals, counts = {}, {}
    for name in ("conv", "fold", "kgrad", "wgrad", "reduce", "loss", "lam_grad", "proj", "adam",
                 "count_nonfinite", "clamp_nonneg", "fill"):
        f = getattr(launch.Launcher, name)

        def wrapped(self, *a, _f=f, _n=name, **k):
            self.stream.synchronize()
            t0 = time.perf_counter()
            r = _f(self, *a, **k)
            self.stream.synchronize()
            totals[_n] = totals.get(_n, 0.0) + time.perf_counter() - t0
            counts[_n] = counts.get(_n, 0) + 1
            return r

        setattr(launch.Launcher, name, wrapped)
    return totals, counts


def main(argv=None):
    ap = argparse.ArgumentParser(description="GPU benchmark: forward pass and training iteration.")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=300, help="image height = width")
    ap.add_argument("--steps", type=int, default=10, help="unrolled steps N_t")
    ap.add_argument("--iters", type=int, default=5, help="timed repetitions (after one warm-up)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="fp32 peak of the card in TFLOP/s (default: estimated from the device)")
    ap.add_argument("--profile", action="store_true",
                    help="also time each kernel family of one training iteration (synchronised)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = ap.parse_args(argv)
    for k in ("batch", "size", "steps", "iters"):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be >= 1")

    from vnumba.vn.gpu import engine
    ok, reason = engine.is_available()
    if not ok:
        print(f"no usable GPU: {reason}", file=sys.stderr)
        return 2
    from numba import cuda

    dev = cuda.get_current_device()

    def memory_info():
        try:
            free, total = cuda.current_context().get_memory_info()
            return int(free), int(total)
        except Exception:  # the CUDA simulator (smoke runs of this script) reports no memory
            return 0, 0
    peak, how = peak_tflops(dev)
    if args.peak_tflops is not None:
        peak, how = args.peak_tflops, "given"
    print(f"device: {reason}")
    print(f"fp32 peak: {peak:.1f} TFLOP/s ({how})" if peak else f"fp32 peak: unknown ({how})")

    cfg = ModelConfig(n_steps=args.steps)
    N, S, T = args.batch, args.size, args.steps
    rng = np.random.default_rng(0)
    params = init_params(cfg, rng)
    u0 = rng.random((N, cfg.n_channels, S, S), dtype=np.float32)
    gu = rng.random((N, cfg.n_channels, S, S), dtype=np.float32)
    gm = (rng.random((N, S, S)) > 0.7).astype(np.float32)
    F = macs_per_pixel_step(cfg)
    pix = N * S * S
    fwd_macs = 2 * F * pix * T
    train_macs = 8 * F * pix * T
    print(f"batch {N}, {S}x{S}, {T} steps: {2 * F * S * S / 1e9:.2f} G multiply-adds per image "
          f"and step (forward); forward {fwd_macs / 1e9:.1f} G, training iteration {train_macs / 1e9:.1f} G")
    free0, total = memory_info()

    # Forward pass with the parameters and buffers resident (prediction loop), ...
    stream = cuda.stream()
    net = engine._Net(cfg, None, stream, train=False)
    net.upload(engine._check_params(params, cfg))
    ws = net.workspace(N, S, S, train=False)
    ws.u0.copy_to_device(u0, stream=stream)

    def run_forward():
        net.L.fill(ws.sm[0], np.float32(0.0))
        net.forward(T)
        stream.synchronize()

    t0 = time.perf_counter()
    run_forward()
    warm_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.iters):
        run_forward()
    t_fwd = (time.perf_counter() - t0) / args.iters
    fwd_bytes = net.nbytes + ws.nbytes
    ws = net = None  # free the device buffers (run_forward is not called again)

    # ... and the public function end to end (upload, forward, download), once.
    t0 = time.perf_counter()
    engine.forward(params, cfg, u0)
    t_fwd_e2e = time.perf_counter() - t0

    # Training iterations (loss and gradient, Adam, projection, batch copies, u_T/m_T back).
    tr = engine.CudaTrainer(cfg, params, 1e-4)
    t0 = time.perf_counter()
    tr.step(u0, gu, gm)
    cuda.synchronize()
    warm_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.iters):
        tr.step(u0, gu, gm)
    cuda.synchronize()
    t_train = (time.perf_counter() - t0) / args.iters
    free1, _ = memory_info()

    fwd_gflops = 2 * fwd_macs / t_fwd / 1e9
    train_gflops = 2 * train_macs / t_train / 1e9
    res = {
        "device": reason, "batch": N, "size": S, "steps": T, "iters": args.iters,
        "forward_s": t_fwd, "forward_gflops": fwd_gflops, "forward_end_to_end_s": t_fwd_e2e,
        "train_iter_s": t_train, "train_gflops": train_gflops,
        "warmup_forward_s": warm_fwd, "warmup_train_s": warm_train,
        "peak_tflops": peak,
        "forward_fraction_of_peak": fwd_gflops / (1e3 * peak) if peak else None,
        "train_fraction_of_peak": train_gflops / (1e3 * peak) if peak else None,
        "trainer_device_bytes": tr.device_bytes(), "forward_device_bytes": fwd_bytes,
        "device_bytes_in_use": int(free0 - free1), "device_total_bytes": int(total),
        "minutes_for_1500_iterations": 1500 * t_train / 60,
    }
    print(f"forward:  {t_fwd:.4f} s  {fwd_gflops:8.0f} GFLOP/s"
          + (f"  ({100 * res['forward_fraction_of_peak']:.1f} % of peak)" if peak else "")
          + f"   end to end with transfers: {t_fwd_e2e:.3f} s")
    print(f"training: {t_train:.4f} s  {train_gflops:8.0f} GFLOP/s"
          + (f"  ({100 * res['train_fraction_of_peak']:.1f} % of peak)" if peak else "")
          + f"   1500 iterations: {res['minutes_for_1500_iterations']:.1f} min")
    print(f"first calls (kernel compilation): forward {warm_fwd:.1f} s, training {warm_train:.1f} s")
    print(f"device memory: trainer {tr.device_bytes() / 2**20:.0f} MiB, forward {fwd_bytes / 2**20:.0f} MiB, "
          f"in use after training {res['device_bytes_in_use'] / 2**20:.0f} MiB of {total / 2**30:.0f} GiB")

    if args.profile:
        totals, counts = _profile_launcher()
        t0 = time.perf_counter()
        tr.step(u0, gu, gm)
        cuda.synchronize()
        wall = time.perf_counter() - t0
        print(f"profile of one synchronised training iteration ({wall:.3f} s):")
        for k in sorted(totals, key=totals.get, reverse=True):
            print(f"  {k:16s} {counts[k]:5d} launches  {totals[k]:8.4f} s  {100 * totals[k] / wall:5.1f} %")
        res["profile"] = {k: {"launches": counts[k], "seconds": totals[k]} for k in totals}
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2))
    print("RESULT " + json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
