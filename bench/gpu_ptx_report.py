"""Compile every CUDA kernel variant of a training iteration for a GPU architecture, without
a GPU, and report registers, shared memory and spills (``ptxas -v``).

Step 1 (a subprocess under the CUDA simulator) runs one training iteration and one forward
pass of the engine, and every wrapper of :mod:`vnumba.vn.gpu.ops`, with the hardware tiles,
recording each launch's kernel and argument types instead of running it.  Step 2 compiles
each recorded kernel to PTX with NVVM and, if ``ptxas`` is found, assembles it.  Needs
libNVVM (``pip install numba-cuda[cu12]``), no driver.  A kernel that fails to compile on
the device target fails here, before any GPU time is spent.

Usage::

    python bench/gpu_ptx_report.py [--cc 9.0] [--ptxas PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RECORD = r'''
import json, sys, numpy as np
from numba.core import config
from vnumba.vn.gpu import kernels as K, engine
from vnumba.vn.gpu.tiling import Tiling
from vnumba.vn.config import ModelConfig
from vnumba.vn.model import init_params

seen = {}

def describe(a):
    if hasattr(a, "dtype") and hasattr(a, "shape") and getattr(a, "ndim", 0) > 0:
        c = a.flags["C_CONTIGUOUS"] if hasattr(a, "flags") else True
        return ["array", str(a.dtype), int(a.ndim), "C" if c else "A"]
    if isinstance(a, (bool, np.bool_)):
        return ["bool"]
    if isinstance(a, np.floating):
        return [str(a.dtype)]
    if isinstance(a, float):
        return ["float64"]
    if isinstance(a, (int, np.integer)):
        return ["int64"]
    raise TypeError(type(a))

class Rec:
    def __init__(self, key):
        self.key = key
    def __getitem__(self, conf):
        return self
    def __call__(self, *args):
        sig = [describe(a) for a in args]
        seen[json.dumps([self.key, sig])] = None

orig = K.get
K.get = lambda kind, *key: Rec([kind, list(key)])
cfg = ModelConfig()
p = init_params(cfg, np.random.default_rng(0))
rng = np.random.default_rng(1)
N, H, W = 2, 24, 28
u0, gu = (rng.random((N, 3, H, W)).astype(np.float32) for _ in range(2))
gm = rng.random((N, H, W)).astype(np.float32)
tl = Tiling.hardware()
tr = engine.CudaTrainer(cfg, p, 1e-4, tiling=tl)
# The launch sequence of CudaTrainer.step, without its host-side checks of the results
# (nothing runs while recording).
net = tr._net
ws = net.workspace(N, H, W, train=True)
tr._stage(u0, gu, gm)
net.L.fill(ws.sm[0], np.float32(0.0))
net.loss_and_grad()
net.L.fill(tr._flag, 0)
net.L.count_nonfinite(net.grad, tr._flag)
net.L.adam(net.theta, net.grad, tr._m, tr._v, 1e-4, 0.9, 0.999, 0.1, 0.001, 1e-8)
net.project()
engine.forward(p, cfg, u0, tiling=tl)
# The host-level wrappers (tests, experiments) add a few variants of their own.
from vnumba.vn.gpu import ops
from vnumba.ops.rbf import RBFGrid
x = rng.random((1, 3, 16, 16), dtype=np.float32)
k = rng.random((2, 3, 5, 5), dtype=np.float32)
y = rng.random((1, 2, 16, 16), dtype=np.float32)
ops.conv_forward(x, k, tiling=tl)
ops.corr_full(y, k, tiling=tl)
ops.pad_symmetric_adjoint(x, 2, tiling=tl)
ops.conv_adjoint(y, k, tiling=tl)
ops.conv_kernel_grad(y, x, 5, tiling=tl)
ops.conv_kernel_grad(y, x, 5, y, x, tiling=tl)
w = rng.random((3, cfg.n_w), dtype=np.float32)
ops.rbf_apply(x, w, RBFGrid(cfg), tiling=tl)
ops.rbf_weight_grad(x, x, None, RBFGrid(cfg), tiling=tl)
ops.rbf_weight_grad(x, x, x, RBFGrid(cfg), tiling=tl)
ops.project_l1_ball(k, tiling=tl)
ops.project_zero_mean_l1_ball(k, tiling=tl)
ops.adam_update(k.ravel(), k.ravel(), np.zeros(k.size), np.zeros(k.size), 1, 1e-3, tiling=tl)
ops.training_loss(x, x, x[:, 0], x[:, 0], tiling=tl)
json.dump([json.loads(k) for k in seen], sys.stdout)
'''


def _record():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _RECORD], capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        sys.exit(f"recording the launches failed:\n{r.stderr}")
    return json.loads(r.stdout)


def _numba_type(d):
    import numpy as np
    from numba import types
    from numba.np.numpy_support import from_dtype
    if d[0] == "array":
        return types.Array(from_dtype(np.dtype(d[1])), d[2], d[3])
    return {"bool": types.boolean, "int64": types.int64, "float64": types.float64,
            "float32": types.float32}[d[0]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 (H100/H200)")
    ap.add_argument("--ptxas", default=None, help="path of ptxas (default: next to libNVVM or on PATH)")
    args = ap.parse_args(argv)
    cc = tuple(int(v) for v in args.cc.split("."))
    launches = _record()
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    from types import SimpleNamespace

    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    from vnumba.vn.gpu import kernels as K

    # Device functions are compiled for "the current device"; without a driver, name the
    # target architecture instead (an offline check only).
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    ptxas = args.ptxas or shutil.which("ptxas")
    if ptxas is None:
        try:
            import nvidia.cuda_nvcc as nv  # the numba-cuda[cu12] wheel ships ptxas
            cand = Path(list(nv.__path__)[0]) / "bin" / "ptxas"
            ptxas = str(cand) if cand.exists() else None
        except ImportError:
            ptxas = None
    print(f"{len(launches)} kernel variants; target sm_{cc[0]}{cc[1]}; ptxas: {ptxas or 'not found'}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (key, sig) in enumerate(launches):
            kind, consts = key[0], tuple(tuple(c) if isinstance(c, list) else c for c in key[1])
            kern = K.get(kind, *consts)
            argtys = tuple(_numba_type(d) for d in sig)
            label = f"{kind}{consts}"
            try:
                ptx, _ = cuda.compile_ptx(kern.py_func, argtys, cc=cc)
            except Exception as e:
                failures += 1
                print(f"FAIL {label}: {type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            # Static instruction counts: float64 arithmetic and local memory in a float32
            # kernel are the usual performance bugs.
            f64 = len(re.findall(r"^\s*(?:fma|mul|add|sub|div)\.rn\.f64", ptx, re.M))
            local = len(re.findall(r"^\s*(?:ld|st)\.local", ptx, re.M))
            ffma = len(re.findall(r"^\s*fma\.rn\.f32", ptx, re.M))
            info = f"f32 fma {ffma}, f64 ops {f64}, local ld/st {local}"
            if ptxas:
                f = Path(tmp) / f"k{i}.ptx"
                f.write_text(ptx)
                r = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", "-o", os.devnull, str(f)],
                                   capture_output=True, text=True)
                text = r.stderr + r.stdout
                regs = re.search(r"Used (\d+) registers", text)
                smem = re.search(r"(\d+) bytes smem", text)
                spill = re.search(r"(\d+) bytes spill stores", text)
                stack = re.search(r"(\d+) bytes stack frame", text)
                info += (f"; regs {regs.group(1) if regs else '?'}, smem {smem.group(1) if smem else 0} B, "
                         f"stack {stack.group(1) if stack else 0} B, spills {spill.group(1) if spill else 0} B")
                if r.returncode:
                    failures += 1
                    info = "ptxas FAILED: " + text.strip().splitlines()[-1]
            print(f"ok   {label}: {info}")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
