"""Every CUDA kernel variant compiles for a real GPU architecture (sm_90), without a GPU.

The simulator executes kernels as Python and so does not catch what only Numba's CUDA
compiler rejects (types, non-literal shared-array sizes, unsupported calls);
bench/gpu_ptx_report.py compiles every variant of a training iteration, a forward pass and
the host-level wrappers with NVVM (and assembles them with ptxas when present).  Needs
NVVM and NVRTC (pip install "numba-cuda[cu12]"), no driver; about a minute on 2 cores,
hence ``slow``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _can_compile():
    # A trivial kernel through the whole toolchain (NVVM, and NVRTC, which numba-cuda also
    # needs): a partial CUDA toolkit can have one without the other.
    code = ("import sys\n"
            "try:\n"
            "    from numba import cuda\n"
            "    def k(a):\n"
            "        a[0] = 1.0\n"
            "    cuda.compile_ptx(k, '(float32[::1],)', cc=(9, 0))\n"
            "except Exception:\n"
            "    sys.exit(1)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=300,
                          capture_output=True).returncode == 0


def test_every_kernel_variant_compiles_for_sm90_without_local_memory():
    if not _can_compile():
        pytest.skip("no CUDA compiler toolchain (NVVM + NVRTC): pip install 'numba-cuda[cu12]'")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_ptx_report.py"), "--cc", "9.0"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("ok ", "FAIL"))]
    assert len(lines) >= 40 and all(ln.startswith("ok ") for ln in lines), r.stdout[-4000:]
    # Accumulators in registers: no local memory in any kernel, no spills where ptxas ran.
    assert all("local ld/st 0" in ln for ln in lines), r.stdout
    assert all("spills 0 B" in ln for ln in lines if "regs" in ln), r.stdout
