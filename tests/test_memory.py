"""vnumba.ops.memory: freed arrays' pages stay in the process (glibc), with the opt-outs.

Each case runs in a fresh interpreter: the malloc thresholds are process-wide and
keep_freed_memory remembers its first outcome."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

# Six 9 MB arrays allocated and freed four times: with glibc's defaults the freed heap top is
# handed back each time and the next round starts on fresh pages.
_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from vnumba.ops.memory import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    def rounds(n):
        for _ in range(n):
            arrs = [np.ones(9 * 2**20 // 8) for _ in range(6)]
            del arrs
    rounds(1)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(4)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
""")


def _run(mode, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VNUMBA_KEEP_MEMORY"}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True,
                         env=e, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_kept_memory_reuses_pages_that_the_default_hands_back():
    applied, kept = _run("keep")
    if not applied:
        pytest.skip("not glibc")
    _, default = _run("default")
    # 6 x 9 MB = 13 800 pages per round by default; kept: the first round's pages are reused
    assert kept < 200 < 5000 < default


@pytest.mark.parametrize("env", [{"VNUMBA_KEEP_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"MALLOC_MMAP_THRESHOLD_": "1000000"}])
def test_user_choice_of_malloc_settings_is_left_alone(env):
    applied, _ = _run("keep", **env)
    assert not applied
