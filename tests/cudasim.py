"""Run the CUDA kernel tests under Numba's CUDA simulator, inside the normal test process.

Numba decides between the simulator and real hardware once, when ``numba.cuda`` is first
imported, from ``NUMBA_ENABLE_CUDASIM`` as last read into ``numba.core.config`` (which
numba-cuda shares).  :func:`use_simulator` sets that variable only
around that import and restores it at once, so it never reaches other tests or the
subprocesses they start.  It is called from module-scoped fixtures, i.e. only when a
simulator test is actually selected (``-m gpu`` runs never import the simulator).
"""
import os
import sys

import pytest

# The simulator runs every CUDA thread as a Python thread and polls them from the main
# thread; a shorter GIL switch interval hands the GIL over sooner (2-3x faster here).
_SWITCH_INTERVAL = 5e-4


def use_simulator():
    """Import ``numba.cuda`` as the simulator (or skip); return a function that undoes the
    per-module settings."""
    if "numba.cuda" not in sys.modules:
        from numba.core import config  # numba-cuda reads the simulator switch from here

        old = os.environ.get("NUMBA_ENABLE_CUDASIM")
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        config.reload_config()  # it may have been read already, when numba was imported
        try:
            import numba.cuda  # noqa: F401
        except ImportError as e:
            pytest.skip(f"numba.cuda is not importable ({e}); install the extra: pip install -e .[cuda]")
        finally:
            if old is None:
                del os.environ["NUMBA_ENABLE_CUDASIM"]
            else:
                os.environ["NUMBA_ENABLE_CUDASIM"] = old
            config.reload_config()
    from vnumba.vn.gpu.launch import is_simulator
    if not is_simulator():
        pytest.skip("numba.cuda was already imported for real hardware in this process; "
                    "run the simulator tests in a pytest process of their own")
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(_SWITCH_INTERVAL)
    return lambda: sys.setswitchinterval(old_interval)
