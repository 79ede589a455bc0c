#!/usr/bin/env bash
# The main job on a small default: make a virtual environment, install vnumba, generate a
# small scenario-2 dataset and train a variational network on it (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
mkdir -p runs
.venv/bin/python -m synth generate scenario2 -n 32 -o runs/small.h5 --seed 0
.venv/bin/python -m vnumba.train runs/small.h5 --iters 60 --batch 4 --crop 64 \
    --out runs/small_model.h5 --log runs/small_train.csv --resume
.venv/bin/python -m vnumba.figures curves runs/small_train.csv -o runs/small_curves.png || true
echo "model: runs/small_model.h5, log: runs/small_train.csv"
