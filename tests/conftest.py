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
