"""Without a usable GPU the CUDA backend says why, and never crashes; importing it needs
nothing from a driver.  Each check runs in a fresh interpreter, without the simulator."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_importing_the_engine_imports_nothing_from_numba_cuda():
    out = _run("import sys\n"
               "import vnumba.vn.gpu, vnumba.vn.gpu.engine, vnumba.vn.gpu.tiling\n"
               "print([m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda'))])")
    assert out == "[]", out


def test_is_available_without_a_gpu_returns_false_with_the_reason():
    out = _run("from vnumba.vn.gpu.engine import is_available\n"
               "ok, reason = is_available()\n"
               "print(ok); print(reason)")
    ok, reason = out.split("\n", 1)
    if ok == "True":
        pytest.skip(f"a usable GPU is present: {reason}")
    assert ok == "False"
    # The reason names what is missing (numba-cuda, the driver, a device or the compiler).
    assert any(w in reason for w in ("driver", "numba-cuda", "device", "NVVM", "CUDA")), reason


def test_is_available_without_numba_cuda_tells_how_to_install_it():
    # numba.cuda made unimportable, as on an installation without the [cuda] extra.
    out = _run("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name == 'numba.cuda' or name.startswith('numba.cuda.'):\n"
               "            raise ImportError('blocked for the test')\n"
               "sys.meta_path.insert(0, Block())\n"
               "from vnumba.vn.gpu.engine import is_available\n"
               "print(is_available())")
    assert out.startswith("(False,") and "pip install -e .[cuda]" in out, out


def test_using_the_engine_without_a_gpu_raises_a_clear_error():
    out = _run("import numpy as np\n"
               "from vnumba.vn.config import ModelConfig\n"
               "from vnumba.vn.model import init_params\n"
               "from vnumba.vn.gpu.engine import CudaTrainer, CudaUnavailable, is_available\n"
               "cfg = ModelConfig(n_steps=1, nf_u=2, nf_m=1)\n"
               "p = init_params(cfg, np.random.default_rng(0))\n"
               "try:\n"
               "    CudaTrainer(cfg, p, 1e-4)\n"
               "    print('CREATED')\n"
               "except CudaUnavailable as e:\n"
               "    print('UNAVAILABLE', e)")
    if out.startswith("CREATED"):
        pytest.skip("a usable GPU is present")
    assert out.startswith("UNAVAILABLE no usable NVIDIA GPU"), out
