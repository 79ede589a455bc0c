"""Benchmark of the CPU coupled variational network at the article's sizes.

Prints, in one run:

* the practical peak: GFLOP/s of a large float32 matrix product (``np.dot``, 4096²);
* seconds per forward pass (each ``--batch``) and its GFLOP/s;
* seconds per training iteration (``loss_and_grad`` + Adam step + projection, batch
  ``--train-batch``) and its GFLOP/s;
* peak memory of one training iteration: NumPy allocations traced by ``tracemalloc``
  (a separate, untimed run) and the process high-water mark ``ru_maxrss``;
* where the time goes: every convolution / RBF / fused kernel called by
  :mod:`vnumba.vn.model` is wrapped by a timer and reported by family (``K^u`` 3→20,
  ``K^m`` 1→4, ``K`` 24→24); the rest of a pass (NumPy elementwise glue) is the
  difference to the wall time.

The FLOP count is analytic (``bench/README.md``): 2 FLOP per multiply-add of the
convolutions only; RBF, elementwise work and projections are not counted.

Usage::

    python bench/bench_model.py                 # 300x300, batch 1 and 8, 10 steps
    python bench/bench_model.py --quick         # 96x96, a fast look
"""
from __future__ import annotations

import argparse
import functools
import resource
import sys
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vnumba.ops.memory import keep_freed_memory  # noqa: E402
from vnumba.ops.optim import Adam  # noqa: E402
from vnumba.ops.projections import project_params  # noqa: E402
from vnumba.vn import model  # noqa: E402
from vnumba.vn.config import ModelConfig  # noqa: E402


# ----------------------------------------------------------------------------- FLOP count
def conv_macs_per_pixel(cfg: ModelConfig) -> dict:
    """Multiply-adds per pixel of one application of each operator family."""
    C = cfg.n_channels
    return {
        "Ku": cfg.nf_u * C * cfg.ks_u ** 2,      # K^u u  (and (K^u)^T, and its kernel gradient)
        "Km": cfg.nf_m * 1 * cfg.ks_m ** 2,      # K^m m
        "K": cfg.nf * cfg.nf * cfg.ks ** 2,      # K f    (and K^T r)
    }


def macs_per_image(cfg: ModelConfig, H: int, W: int, store: str = "convs") -> dict:
    """Analytic multiply-adds per image: forward pass and training iteration.

    One forward step applies each family twice (``K^u u``, ``(K^u)^T(.)``; ``K^m m``,
    ``(K^m)^T(.)``; ``K f``, ``K^T r``).  One backward step applies each family twice for
    the Hessian-vector product (``K^u v_u`` / ``(K^u)^T abar`` etc.) and computes two
    kernel-gradient correlations per family (same multiply-add count as one application).
    With ``store="states"`` (the article's scheme) it also recomputes the forward step's
    convolutions (2 per family); with ``store="convs"`` they were kept by the forward pass.
    ``train_states`` is the count with recomputation, the basis of the issue's targets.
    """
    c = conv_macs_per_pixel(cfg)
    per_app = sum(c.values()) * H * W
    fwd_step = 2 * per_app
    bwd_step = {"recompute": 2 * per_app if store == "states" else 0,
                "hessian-vector": 2 * per_app, "kernel-grad": 2 * per_app}
    T = cfg.n_steps
    return {
        "forward_step": fwd_step,
        "forward": T * fwd_step,
        "backward_pieces": {k: T * v for k, v in bwd_step.items()},
        "train": T * fwd_step + T * sum(bwd_step.values()),
        "train_states": T * fwd_step + 3 * T * fwd_step,
    }


# ----------------------------------------------------------------------------- profiling
FAMILY = {}


def _family(cfg, args):
    """Operator family of a call, from the first filter-bank-shaped argument."""
    for a in args:
        if isinstance(a, np.ndarray) and a.ndim == 4 and a.shape[2] == a.shape[3] and a.shape[2] <= 15 \
                and a.shape[2] % 2 == 1 and a.size < 100_000:
            O, C = a.shape[:2]
            if (O, C, a.shape[2]) == (cfg.nf_u, cfg.n_channels, cfg.ks_u):
                return "Ku"
            if (O, C, a.shape[2]) == (cfg.nf_m, 1, cfg.ks_m):
                return "Km"
            if (O, C, a.shape[2]) == (cfg.nf, cfg.nf, cfg.ks):
                return "K"
    return None


class Profiler:
    """Wraps the kernels that :mod:`vnumba.vn.model` calls and accumulates their wall time."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.t = defaultdict(float)
        self.n = defaultdict(int)
        self._orig = {}

    def _category(self, name, args):
        fam = _family(self.cfg, args)
        if name == "conv_kernel_grad":
            y = args[0]
            fam = {self.cfg.nf_u: "Ku", self.cfg.nf_m: "Km", self.cfg.nf: "K"}.get(y.shape[1], "?")
            return f"conv kgrad {fam}"
        if name.startswith("conv_") or name.startswith("corr_"):
            return f"{name} {fam}"
        if "rbf" in name:
            x = args[0]
            fam = {self.cfg.nf_u: "phi^u", self.cfg.nf_m: "phi^m", self.cfg.nf: "psi"}.get(x.shape[1], "?")
            return f"{name} {fam}"
        return f"{name}" + (f" {fam}" if fam else "")

    def install(self, modules):
        for mod in modules:
            for name in dir(mod):
                obj = getattr(mod, name)
                src = getattr(obj, "__module__", "") or ""
                if not callable(obj) or not src.startswith("vnumba."):
                    continue
                if src in ("vnumba.vn.model", "vnumba.vn.config", "vnumba.ops.projections"):
                    continue
                if isinstance(obj, type):
                    continue
                self._orig[(mod, name)] = obj
                setattr(mod, name, self._wrap(name, obj))

    def _wrap(self, name, fn):
        @functools.wraps(fn)
        def w(*args, **kw):
            cat = self._category(name, args)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.t[cat] += time.perf_counter() - t0
                self.n[cat] += 1
        return w

    def uninstall(self):
        for (mod, name), fn in self._orig.items():
            setattr(mod, name, fn)
        self._orig.clear()

    def reset(self):
        self.t.clear()
        self.n.clear()

    def report(self, total, extra=None, indent="    "):
        rows = dict(self.t)
        if extra:
            rows.update(extra)
        acc = sum(rows.values())
        rows["elementwise / glue (rest)"] = max(total - acc, 0.0)
        for k, v in sorted(rows.items(), key=lambda kv: -kv[1]):
            n = self.n.get(k)
            calls = f"{n:5d} calls" if n else "          "
            print(f"{indent}{k:34s} {v:8.3f} s  {100 * v / total:5.1f} %  {calls}")


# ----------------------------------------------------------------------------- helpers
_MM = {}


def matmul_gflops(n=4096, repeat=3):
    """GFLOP/s of ``np.dot`` on two float32 n×n matrices (best of ``repeat``)."""
    if n not in _MM:
        rng = np.random.default_rng(0)
        _MM[n] = (rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32))
        np.dot(*_MM[n])
    a, b = _MM[n]
    best = min(_timed(lambda: np.dot(a, b)) for _ in range(repeat))
    time.sleep(0.5)  # OpenBLAS worker threads spin for a while after a product: let them sleep
    return 2.0 * n ** 3 / best / 1e9


def _ratio_note(pairs):
    """Median over repetitions of (achieved GFLOP/s) / (np.dot GFLOP/s measured just before):
    this VM's clock drifts by ±20 % over minutes, so a peak measured once at the start is a
    poor yardstick for a pass timed minutes later."""
    if not pairs:
        return ""
    r = sorted(g / p for g, p in pairs)
    return (f"; adjacent-matmul ratio {100 * float(np.median(r)):.0f} % "
            f"(median of {len(r)}: {', '.join(f'{100 * x:.0f}' for x in r)} %)")


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_data(cfg, N, H, W, rng, dtype=np.float32):
    u0 = rng.random((N, cfg.n_channels, H, W), dtype=np.float32).astype(dtype)
    gu = np.clip(u0 + 0.1 * rng.standard_normal(u0.shape), 0, 1).astype(dtype)
    gm = (rng.random((N, H, W)) > 0.8).astype(dtype)
    return u0, gu, gm


def make_params(cfg, rng):
    p = model.init_params(cfg, rng, np.float32)
    # Non-trivial functions, as after some training (values spread over the whole grid).
    for k in ("wu", "wm"):
        p[k] += (0.2 * rng.standard_normal(p[k].shape)).astype(np.float32)
    return p


def train_iteration(params, cfg, opt, u0, gu, gm, store="convs"):
    loss, grads, _, _ = model.loss_and_grad(params, cfg, u0, gu, gm, store=store)
    opt.step(params, grads)
    return loss


def maxrss_mb():
    """Process high-water mark (VmHWM after a reset when Linux allows it, else ru_maxrss)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_hwm():
    """Reset the resident-set high-water mark (Linux: write 5 to /proc/self/clear_refs);
    a forked child otherwise inherits its parent's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_run(args):
    """One training iteration in this (fresh) process: tracemalloc peak and ru_maxrss."""
    cfg = ModelConfig(n_steps=args.steps)
    rng = np.random.default_rng(args.seed)
    params = make_params(cfg, rng)
    small = make_data(cfg, 2, 24, 24, rng)
    model.loss_and_grad(params, cfg, *small)  # load the compiled kernels first
    N, H = args.train_batch, args.size
    u0, gu, gm = make_data(cfg, N, H, H, rng)
    opt = Adam(1e-4, project=lambda p: project_params(p, cfg))
    reset = reset_hwm()
    rss0 = maxrss_mb()
    tracemalloc.start()
    train_iteration(params, cfg, opt, u0, gu, gm, args.store)
    _, pk = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    inputs = (u0.nbytes + gu.nbytes + gm.nbytes) / 2 ** 20
    print(f"peak memory, training iteration batch {N} (store={args.store}): NumPy allocations {pk / 2 ** 20:.0f} MiB "
          f"(tracemalloc; the {inputs:.0f} MiB of inputs were allocated before); process peak RSS "
          f"{maxrss_mb():.0f} MiB (interpreter + compiled kernels + inputs before the iteration: {rss0:.0f} MiB"
          f"{'' if reset else '; high-water mark could not be reset, may include the parent'})")
    return {}


# ----------------------------------------------------------------------------- main
def simd_summary() -> str:
    """The kernels' vector width (vnumba.ops.simd: the host's widest, or VNUMBA_SIMD_BITS)
    and the target CPU, so a figure says which kernels it measured (issue 15)."""
    from vnumba.ops import fused, simd

    return (f"{simd.describe()}; convolution tile 3 x {fused.CONV_VECS} vectors, kernel-gradient tile "
            f"3 x {fused.KG_TAPS} taps")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=300, help="image side in pixels (default 300)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="forward batch sizes (default 1 8)")
    ap.add_argument("--train-batch", type=int, default=8, help="training batch size (default 8; 0 skips training)")
    ap.add_argument("--steps", type=int, default=10, help="unrolled steps N_t (default 10)")
    ap.add_argument("--repeat", type=int, default=2, help="timed repetitions, best is reported (default 2)")
    ap.add_argument("--train-repeat", type=int, default=1, help="timed training iterations (default 1)")
    ap.add_argument("--store", choices=("convs", "states"), default="convs",
                    help="what the forward pass keeps for the backward pass (vnumba.vn.model.loss_and_grad; "
                         "default convs)")
    ap.add_argument("--quick", action="store_true", help="96x96 images, a fast look")
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc run")
    ap.add_argument("--no-matmul", action="store_true", help="skip the matrix-product peak")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's malloc thresholds alone (default: vnumba.ops.memory.keep_freed_memory, "
                         "as the command-line entry points do)")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    kept = False if args.system_malloc else keep_freed_memory()
    if args.memory_only:
        return memory_run(args)
    if args.quick:
        args.size = 96
    if args.size < 16 or args.steps < 1 or args.repeat < 1 or any(b < 1 for b in args.batch):
        ap.error("--size >= 16, --steps >= 1, --repeat >= 1 and batch sizes >= 1 are required")

    import numba
    cfg = ModelConfig(n_steps=args.steps)
    H = W = args.size
    macs = macs_per_image(cfg, H, W, args.store)
    print(f"vnumba CPU benchmark: {H}x{W}, {cfg.n_steps} steps, nf {cfg.nf_u}/{cfg.nf_m}/{cfg.nf}, "
          f"kernels {cfg.ks_u}/{cfg.ks_m}/{cfg.ks}, float32, numba threads {numba.get_num_threads()}, "
          f"malloc: {'freed memory kept (vnumba.ops.memory)' if kept else 'system defaults'}")
    print(f"  SIMD: {simd_summary()}")
    per_px = conv_macs_per_pixel(cfg)
    print(f"  multiply-adds per pixel per operator application: {per_px} -> "
          f"{2 * sum(per_px.values())} per pixel per forward step")
    print(f"  per image: forward step {macs['forward_step'] / 1e9:.3f} G MAC, forward pass "
          f"{macs['forward'] / 1e9:.2f} G MAC, training {macs['train'] / 1e9:.1f} G MAC")

    peak = None
    if not args.no_matmul:
        c0 = time.process_time()
        peak = matmul_gflops()
        mm_cpu = time.process_time() - c0
        print(f"  practical peak: np.dot float32 4096^2: {peak:.1f} GFLOP/s "
              f"({4 * 2 * 4096 ** 3 / mm_cpu / 1e9:.1f} GFLOP per CPU-second over 4 products)")

    rng = np.random.default_rng(args.seed)
    params = make_params(cfg, rng)

    # Compile (or load the cache) on a tiny problem so compilation is not timed.
    t0 = time.perf_counter()
    small = make_data(cfg, 2, 24, 24, rng)
    model.forward(params, cfg, small[0])
    model.loss_and_grad(params, cfg, *small)
    print(f"  warm-up (compile / cache load): {time.perf_counter() - t0:.1f} s")

    prof = Profiler(cfg)
    mods = [model]
    prof.install(mods)
    results = {}
    try:
        for N in args.batch:
            u0, _, _ = make_data(cfg, N, H, W, rng)
            times = []
            cpu = []
            pairs = []
            for _ in range(args.repeat):
                mm = None if args.no_matmul else matmul_gflops(repeat=1)
                prof.reset()
                c0 = time.process_time()
                times.append(_timed(lambda: model.forward(params, cfg, u0)))
                cpu.append(time.process_time() - c0)
                if mm:
                    pairs.append((2 * macs["forward"] * N / times[-1] / 1e9, mm))
            t = min(times)
            gf = 2 * macs["forward"] * N / t / 1e9
            rel = f" = {100 * gf / peak:.0f} % of matmul" if peak else ""
            print(f"\nforward, batch {N}: {t:.3f} s per pass ({t / N:.3f} s per image), "
                  f"{gf:.1f} GFLOP/s{rel}   [all: {', '.join(f'{x:.3f}' for x in times)}]"
                  f"{_ratio_note(pairs)}")
            print(f"  CPU time {min(cpu):.3f} s -> {2 * macs['forward'] * N / min(cpu) / 1e9:.1f} GFLOP per "
                  f"CPU-second (robust when other jobs share the cores)")
            print("  breakdown of the last pass:")
            prof.report(times[-1])
            results[f"forward_b{N}"] = t

        if args.train_batch > 0:
            N = args.train_batch
            u0, gu, gm = make_data(cfg, N, H, W, rng)
            opt = Adam(1e-4, project=lambda p: project_params(p, cfg))
            times = []
            pairs = []
            for _ in range(args.train_repeat):
                mm = None if args.no_matmul else matmul_gflops(repeat=1)
                prof.reset()
                c0 = time.process_time()
                t0 = time.perf_counter()
                loss, grads, _, _ = model.loss_and_grad(params, cfg, u0, gu, gm, store=args.store)
                t1 = time.perf_counter()
                opt.project = None
                opt.step(params, grads)
                t2 = time.perf_counter()
                project_params(params, cfg)
                t3 = time.perf_counter()
                times.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2, time.process_time() - c0))
                if mm:
                    pairs.append((2 * macs["train_states"] * N / times[-1][0] / 1e9, mm))
            tot = min(x[0] for x in times)
            last = times[-1]
            gf = 2 * macs["train"] * N / tot / 1e9
            rel = f" = {100 * gf / peak:.0f} % of matmul" if peak else ""
            print(f"\ntraining iteration, batch {N}: {tot:.2f} s ({gf:.1f} GFLOP/s{rel}); "
                  f"loss_and_grad {last[1]:.2f} s, Adam {last[2]:.3f} s, projection {last[3]:.3f} s")
            cpu = min(x[4] for x in times)
            print(f"  CPU time {cpu:.2f} s -> {2 * macs['train'] * N / cpu / 1e9:.1f} GFLOP per CPU-second")
            print(f"  (store={args.store}: {macs['train'] / 1e9:.1f} G MAC per image executed; with the "
                  f"article's recomputation {macs['train_states'] / 1e9:.1f} G MAC, i.e. an equivalent "
                  f"{2 * macs['train_states'] * N / tot / 1e9:.1f} GFLOP/s"
                  + (f" = {100 * 2 * macs['train_states'] * N / tot / 1e9 / peak:.0f} % of matmul" if peak else "")
                  + ")")
            if peak:
                print(f"  issue #2 target (40 % of matmul on the recompute count): "
                      f"<= {2 * macs['train_states'] * N / (0.4 * peak * 1e9):.1f} s per iteration"
                      f"{_ratio_note(pairs)}")
            print("  breakdown of the last iteration:")
            prof.report(last[0], extra={"Adam update": last[2], "projections": last[3]})
            results["train"] = tot
    finally:
        prof.uninstall()

    if args.train_batch > 0 and not args.no_memory:
        # A fresh process, so that ru_maxrss (a high-water mark) sees this iteration only.
        import subprocess
        cmd = [sys.executable, __file__, "--memory-only", "--size", str(H), "--steps", str(cfg.n_steps),
               "--train-batch", str(args.train_batch), "--seed", str(args.seed), "--store", args.store]
        if args.system_malloc:
            cmd.append("--system-malloc")
        out = subprocess.run(cmd, capture_output=True, text=True)
        print("\n" + (out.stdout.strip() or out.stderr.strip()))
    return results


if __name__ == "__main__":
    main()
