#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: print the card, run the GPU tests (pytest -m gpu: the
# one-channel model and a three-class one, n_mask = 3), then the GPU benchmark (batch 8,
# 300x300, 10 steps). Needs the [cuda] extra with the NVVM compiler
# (numba-cuda[cu12] or a CUDA toolkit). Exit status: non-zero if the tests or the benchmark fail.
# Environment: PYTHON (interpreter, default .venv/bin/python or python3), OUT (directory for
# bench_gpu.json, default the current directory), BENCH_ITERS (timed iterations, default 5).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT_DIR=${OUT:-.}
unset NUMBA_ENABLE_CUDASIM   # the real GPU, never the simulator

echo "== card"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null \
    || echo "(nvidia-smi not available)"
"$PY" -c "
from vnumba.vn.gpu.engine import is_available
ok, reason = is_available()
print(('GPU: ' if ok else 'NO USABLE GPU: ') + reason)
raise SystemExit(0 if ok else 1)" || exit 1

echo "== GPU tests (pytest -m gpu; one-channel and three-class models)"
"$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests/
tests_rc=$?

echo "== GPU benchmark"
"$PY" bench/bench_gpu.py --batch 8 --size 300 --steps 10 --iters "${BENCH_ITERS:-5}" --profile \
    --json "$OUT_DIR/bench_gpu.json"
bench_rc=$?

echo "== summary: tests exit $tests_rc, benchmark exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
