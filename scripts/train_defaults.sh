#!/usr/bin/env bash
# Rebuild the shipped default models under data/models/ from scratch, with the configuration
# that fits one working session on the 2-core CPU (documented in data/models/README.md).
# Long: run it in the background; it resumes where it stopped (--resume, checkpoints).
#   SCEN="scenario3 scenario2" ITERS=400 CROP=64 BATCH=4 bash scripts/train_defaults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
REAL=${VNUMBA_REAL_DATA:-../shared/data/real}
SCEN=${SCEN:-"scenario3 scenario2"}
ITERS=${ITERS:-400}
CROP=${CROP:-64}
BATCH=${BATCH:-4}
N=${N:-400}
mkdir -p runs data/models
for s in $SCEN; do
  extra=()
  if [ "$s" = scenario3 ]; then
    [ -f runs/reference.h5 ] || $PY -m synth reference "$REAL/he_melanoma_puma" -o runs/reference.h5 --mpp 0.24
    extra=(--reference runs/reference.h5)
  fi
  seed=$(( ${s#scenario} ))
  [ -f "runs/${s}_data.h5" ] || $PY -m synth generate "$s" "${extra[@]}" -n "$N" -o "runs/${s}_data.h5" --seed "$seed"
  lr=${LR:-5e-4}
  $PY -m vnumba.train "runs/${s}_data.h5" --iters "$ITERS" --batch "$BATCH" --crop "$CROP" --lr "$lr" \
      --seed "$seed" --out "data/models/$s.h5" --log "data/models/${s}_train.csv" \
      --checkpoint "runs/${s}.ckpt.h5" --checkpoint-every 10 --resume --quiet
  $PY -m vnumba.figures curves "data/models/${s}_train.csv" -o "data/models/${s}_curves.png"
done
