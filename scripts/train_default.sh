#!/usr/bin/env bash
# Trains the embedded default's checkpoints on CPU: IC-Former and ICAE with the same data and
# the same number of samples (pre-training, then fine-tuning), plus IC-Former fine-tuned without
# pre-training (the paper's ablation). Every stage resumes from its latest checkpoint, so rerun
# this after an interruption; raise the step counts to train longer (a finished stage extends
# from where it stopped). Runs go to runs/default/; `python -m icformer publish` copies the
# finished ones into assets/checkpoints/ with a model card.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-300}   # x batch 4 = samples; see configs/train/cpu-*.yaml
FINETUNE_STEPS=${FINETUNE_STEPS:-150}
RUNS=${RUNS:-runs/default}
[ -f data/pretrain_train.jsonl ] || "$PY" -m icformer prepare-data --out data

stage() {  # name, then train flags
  local name=$1; shift
  echo "== $name $(date -u +%FT%TZ)"
  "$PY" -m icformer train --out "$RUNS/$name" --resume "$@"
}
final() { echo "$RUNS/$1/checkpoint-$2/model"; }

stage icformer-pretrain --preset cpu-pretrain --method icformer --max-steps "$PRETRAIN_STEPS"
stage icformer-finetune --preset cpu-finetune --method icformer --max-steps "$FINETUNE_STEPS" \
  --init-from "$(final icformer-pretrain "$PRETRAIN_STEPS")"
stage icae-pretrain --preset cpu-pretrain --method icae --max-steps "$PRETRAIN_STEPS"
stage icae-finetune --preset cpu-finetune --method icae --max-steps "$FINETUNE_STEPS" \
  --init-from "$(final icae-pretrain "$PRETRAIN_STEPS")"
stage icformer-no-pretrain --preset cpu-finetune --method icformer --max-steps "$FINETUNE_STEPS" --init-from "" --digest-init-std 0.02
echo "== done $(date -u +%FT%TZ)"
