import os
from pathlib import Path

import pytest

REAL_DATA = Path(os.environ.get("VNUMBA_REAL_DATA",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))


@pytest.fixture
def real_data_dir():
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (set VNUMBA_REAL_DATA)")
    return REAL_DATA


@pytest.fixture(scope="module")
def cuda_simulator():
    """``numba.cuda`` as the CUDA simulator for the tests of one module (tests/cudasim.py);
    a module asks for it with ``pytestmark = pytest.mark.usefixtures("cuda_simulator")``."""
    import cudasim
    undo = cudasim.use_simulator()
    yield
    undo()


@pytest.fixture(scope="module")
def engine(cuda_simulator):
    """``vnumba.vn.gpu.engine`` under the CUDA simulator."""
    from vnumba.vn.gpu import engine
    return engine
