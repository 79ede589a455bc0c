"""The backend is chosen in one place; asking for CUDA without a GPU is a clear error."""
import subprocess
import sys

import pytest

from vnumba.vn.backend import get_backend


def test_cpu_backend_is_always_available():
    assert get_backend("cpu").name == "cpu"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tpu")


def _python(code):
    """Run ``code`` in a fresh interpreter; its stripped stdout (it must exit 0)."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_cuda_without_a_gpu_raises_a_clear_error_not_a_crash():
    code = (
        "import os; os.environ.pop('NUMBA_ENABLE_CUDASIM', None)\n"
        "from vnumba.vn.backend import get_backend, BackendUnavailable\n"
        "try:\n"
        "    b = get_backend('cuda')\n"
        "    print('AVAILABLE', b.name)\n"
        "except BackendUnavailable as e:\n"
        "    print('UNAVAILABLE', e)\n")
    out = _python(code)
    if out.startswith("AVAILABLE"):
        pytest.skip("a GPU is present on this machine")
    assert out.startswith("UNAVAILABLE") and ("GPU" in out or "cuda" in out), out


def test_cpu_training_path_does_not_import_cuda():
    code = ("import sys, numpy as np\n"
            "from vnumba.vn import model, backend\n"
            "from vnumba.io import models\n"
            "from vnumba.training import trainer\n"
            "backend.get_backend('cpu')\n"
            "print([m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda', 'vnumba.vn.gpu'))])")
    out = _python(code)
    assert out == "[]", out
