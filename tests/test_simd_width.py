"""The kernels' vector width follows the CPU (vnumba.ops.simd), can be forced with
VNUMBA_SIMD_BITS, never leaks between widths through Numba's on-disk cache, and does not
change a single bit of any result (issue 15)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vnumba.ops import fused, simd

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


def test_every_kernel_caches_under_its_width():
    from numba.core.registry import CPUDispatcher
    kernels = [v for v in vars(fused).values() if isinstance(v, CPUDispatcher)]
    assert len(kernels) >= 20
    for disp in kernels:
        assert isinstance(disp._cache, simd._WidthKeyedCache), disp.py_func.__name__
    disp = fused._corr_valid_tiled
    key = disp._cache._index_key(disp.signatures[0] if disp.signatures else (), disp.targetctx.codegen())
    assert key[-1] == ("vnumba-simd-bits", simd.VECTOR_BITS)
    with pytest.raises(TypeError, match="always caches"):
        simd.jit(cache=False)


def test_only_the_fused_kernels_use_explicit_vectors():
    # a kernel elsewhere would be cached without the width (numba.njit(cache=True))
    import re
    imports = re.compile(r"^\s*(from vnumba\.ops\.simd import|from vnumba\.ops import .*\bsimd\b"
                         r"|import vnumba\.ops\.simd)", re.M)
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "vnumba").rglob("*.py") if imports.search(p.read_text())]
    assert users == ["vnumba/ops/fused.py"]


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
