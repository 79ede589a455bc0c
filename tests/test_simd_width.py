"""The kernels' vector width follows the CPU (vnumba.ops.simd), can be forced with
VNUMBA_SIMD_BITS, never leaks between widths through Numba's on-disk cache, and does not
change a single bit of any result (issue 15)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vnumba.ops import simd

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("simd_width_probe.py")


@pytest.mark.parametrize("features,bits", [
    ({"avx512f", "avx2", "fma"}, 512), ({"avx2", "fma", "avx"}, 256), ({"avx2"}, 128),
    ({"sse4.2"}, 128), ({"neon"}, 128), (set(), 128)])
def test_width_is_the_widest_the_target_has(features, bits):
    assert simd.choose_vector_bits(environ={}, features=features) == bits


@pytest.mark.parametrize("value", ["128", "256", "512", " 256 "])
def test_environment_variable_forces_a_width(value):
    assert simd.choose_vector_bits(environ={simd.ENV_VAR: value}, features={"avx512f"}) == int(value)


@pytest.mark.parametrize("value", ["64", "1024", "avx2", "256bits", "-256"])
def test_bad_width_in_environment_is_one_clear_error(value):
    with pytest.raises(ValueError, match=rf"^{simd.ENV_VAR}=.*expected one of 128, 256, 512$"):
        simd.choose_vector_bits(environ={simd.ENV_VAR: value})


def test_bad_width_fails_at_import_with_one_line_naming_the_variable():
    env = {**os.environ, simd.ENV_VAR: "300"}
    r = subprocess.run([sys.executable, "-c", "import vnumba.ops.fused"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert f"{simd.ENV_VAR}='300': expected one of 128, 256, 512" in r.stderr


def test_numba_cpu_features_decide_the_target(monkeypatch):
    # NUMBA_CPU_FEATURES replaces the host's features for the generated code: so for the width
    monkeypatch.setattr(simd._numba_config, "CPU_FEATURES", "+avx,+avx2,+fma,-avx512f")
    assert simd.target_features() >= {"avx", "avx2", "fma"} and "avx512f" not in simd.target_features()
    assert simd.choose_vector_bits(environ={}) == 256


_CACHE_PROBE = ("import numpy as np\n"
                "from vnumba.ops import fused, simd\n"
                "fused.vector_lanes(np.zeros(1, np.float32))\n"
                "st = fused.vector_lanes.stats\n"
                "print(simd.VECTOR_BITS, sum(st.cache_hits.values()), sum(st.cache_misses.values()))\n")


def _cache_run(cache_dir, bits):
    """One fused kernel in a fresh process at ``bits``: (cache loads, compilations)."""
    env = {k: v for k, v in os.environ.items() if k != simd.ENV_VAR}
    env.update({"NUMBA_CACHE_DIR": str(cache_dir), simd.ENV_VAR: str(bits)})
    r = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got_bits, hits, misses = map(int, r.stdout.split())
    assert got_bits == bits
    return hits, misses


def test_a_second_process_loads_a_kernel_of_its_own_width_from_the_cache_and_none_of_another(tmp_path):
    cache = tmp_path / "numba-cache"
    assert _cache_run(cache, 128) == (0, 1)  # an empty cache: compiled
    assert _cache_run(cache, 128) == (1, 0)  # the same width: loaded, not compiled
    assert _cache_run(cache, 256) == (0, 1)  # another width: its own code, not the 128-bit one
    assert _cache_run(cache, 256) == (1, 0)
    assert _cache_run(cache, 128) == (1, 0)  # both widths stay in the cache side by side
    with pytest.raises(TypeError, match="always caches"):
        simd.jit(cache=False)


def _simd_use_and_numba_jits(tree):
    """Whether a module's syntax tree imports vnumba.ops.simd, and the places where it takes
    ``njit`` / ``jit`` from numba itself."""
    uses, jits = False, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if node.module == "vnumba.ops.simd" or (node.module == "vnumba.ops" and "simd" in names):
                uses = True
            if node.module and node.module.split(".")[0] == "numba" and names & {"njit", "jit"}:
                jits.append(f"line {node.lineno}: from {node.module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Import):
            uses |= any(a.name == "vnumba.ops.simd" for a in node.names)
        elif (isinstance(node, ast.Attribute) and node.attr in ("njit", "jit")
              and isinstance(node.value, ast.Name) and node.value.id == "numba"):
            jits.append(f"line {node.lineno}: numba.{node.attr}")
    return uses, jits


def test_kernels_on_explicit_vectors_are_compiled_only_by_the_width_keyed_jit():
    # a kernel on vectors compiled by numba.njit(cache=True) would be cached without the width
    users, bad = [], []
    for path in sorted((ROOT / "vnumba").rglob("*.py")):
        if path.name == "simd.py" and path.parent.name == "ops":
            continue  # simd.jit itself is built on numba.njit
        uses, jits = _simd_use_and_numba_jits(ast.parse(path.read_text(encoding="utf-8")))
        if uses:
            users.append(path.relative_to(ROOT).as_posix())
            bad += [f"{path.relative_to(ROOT).as_posix()} {j}" for j in jits]
    assert users, "no module of vnumba uses vnumba.ops.simd"
    assert not bad, "modules on explicit vectors must compile with simd.jit:\n" + "\n".join(bad)
    # the check itself sees a violation
    assert _simd_use_and_numba_jits(ast.parse("from vnumba.ops import simd\nfrom numba import njit\n")) == \
        (True, ["line 2: from numba import njit"])


def _probe(tmp_path, bits):
    # an empty cache of the test's own: the first run of each width compiles, later ones load
    env = {k: v for k, v in os.environ.items() if k != simd.ENV_VAR}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    if bits is not None:
        env[simd.ENV_VAR] = str(bits)
    out = tmp_path / f"probe-{bits}.npz"
    r = subprocess.run([sys.executable, str(PROBE), str(out)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


# slow (3 min: kernels compiled at every width in fresh processes); run with -m slow
@pytest.mark.slow
def test_results_are_bit_identical_at_every_vector_width(tmp_path):
    # native first (compiles, fills an empty cache), then each other forced width, then
    # native again (loads from the cache): the forced runs must compile their own kernels (lane
    # counts), the native rerun must not load theirs, and code loaded from the cache must compute
    # what freshly compiled code did (it did not while LLVM was free to contract multiply-adds);
    # every result, NaN positions included, equal bit for bit
    native = simd.choose_vector_bits()
    runs = {"native": _probe(tmp_path, None)}
    for bits in (256, 128):
        if bits != native:  # narrower ones; on a 128-bit host 256 (LLVM splits each vector)
            runs[bits] = _probe(tmp_path, bits)
    runs["native again"] = _probe(tmp_path, None)
    assert len(runs) >= 3  # at least one width other than the host's
    # every fused kernel: compiled in the first run (an empty cache) and at every forced width
    # (never loaded from another width's entries), loaded without compiling in the native rerun
    # (a kernel appears where it was loaded or compiled; one called only from loaded kernels
    # does not appear)
    for name, run in runs.items():
        counts = {k: run[k].tolist() for k in run if k.startswith("cache:")}
        assert len(counts) >= 5, (name, sorted(counts))
        for k, (hits, misses) in counts.items():
            if name == "native again":
                assert hits > 0 and misses == 0, (name, k, hits, misses)
            else:
                assert hits == 0 and misses > 0, (name, k, hits, misses)
    for name, run in runs.items():
        bits = native if isinstance(name, str) else name
        assert int(run["bits"]) == bits
        # kernel lanes float32, canonical float32, kernel float64, canonical float64
        assert run["lanes"].tolist() == [bits // 32, 8, bits // 64, 4], name
    ref = runs["native"]
    keys = [k for k in ref if "/" in k]
    assert len(keys) > 300 and any(k.startswith("net/grad/") for k in keys)
    for name, run in runs.items():
        assert sorted(k for k in run if "/" in k) == sorted(keys)
        for k in keys:
            assert ref[k].dtype == run[k].dtype and ref[k].shape == run[k].shape, (name, k)
            same = ref[k].tobytes() == run[k].tobytes()
            assert same, f"{k} differs between {native}-bit and {name} vectors"
    assert np.isnan(ref["float32/rbf0.0/9"]).sum() == 0  # a NaN input gives 0 (out of reach), not NaN
