#!/usr/bin/env bash
# Trains the embedded default's checkpoints on CPU: IC-Former and ICAE on the same data (pre-training,
# then fine-tuning), plus IC-Former fine-tuned without pre-training (the paper's ablation). IC-Former
# follows docs/learning.md's recipe: a readout-only warm-up (configs/train/cpu-warmup.yaml: the LLM never
# runs), then the same run goes on with the LLM's loss switched on (continue_from keeps its weights,
# window readout, optimizer and sample order), keeping the locality prior and the readout. Every stage
# resumes from its latest checkpoint, so rerun this after an interruption; raise the step counts to
# train longer (a finished stage extends from where it stopped). Runs go to runs/default/;
# `python -m icformer publish` copies the finished ones into assets/checkpoints/ with a model card.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# The committed checkpoints' schedule (x batch 4 = samples; see configs/train/cpu-*.yaml): both methods
# see 20,000 pre-training and 400 fine-tuning samples; about 5 h of two CPU threads where bf16 is fast
# (AMX, docs/machine.md §5), roughly twice that elsewhere.
WARMUP_STEPS=${WARMUP_STEPS:-150}       # IC-Former: readout-only warm-up
PRETRAIN_STEPS=${PRETRAIN_STEPS:-4850}  # IC-Former: steps with the LLM's loss, after the warm-up
FINETUNE_STEPS=${FINETUNE_STEPS:-100}
ICAE_PRETRAIN_STEPS=${ICAE_PRETRAIN_STEPS:-$((WARMUP_STEPS + PRETRAIN_STEPS))}  # as many samples as IC-Former
ICAE_FINETUNE_STEPS=${ICAE_FINETUNE_STEPS:-$FINETUNE_STEPS}
NO_PRETRAIN_STEPS=${NO_PRETRAIN_STEPS:-$FINETUNE_STEPS}
RUNS=${RUNS:-runs/default}
RECIPE=(--local-window-layers 3 --readout-weight 1.0)  # IC-Former only; recorded in each run's config
[ -f data/pretrain_train.jsonl ] || "$PY" -m icformer prepare-data --out data

stage() {  # name, then train flags
  local name=$1; shift
  echo "== $name $(date -u +%FT%TZ)"
  "$PY" -m icformer train --out "$RUNS/$name" --resume "$@"
}
final() { echo "$RUNS/$1/checkpoint-$2/model"; }

stage icformer-warmup --preset cpu-warmup --method icformer --max-steps "$WARMUP_STEPS"
stage icformer-pretrain --preset cpu-pretrain --method icformer "${RECIPE[@]}" --lr 1e-3 --warmup-steps 30 \
  --max-steps $((WARMUP_STEPS + PRETRAIN_STEPS)) --continue-from "$RUNS/icformer-warmup/checkpoint-$WARMUP_STEPS"
stage icformer-finetune --preset cpu-finetune --method icformer "${RECIPE[@]}" --max-steps "$FINETUNE_STEPS" \
  --init-from "$(final icformer-pretrain $((WARMUP_STEPS + PRETRAIN_STEPS)))"
stage icae-pretrain --preset cpu-pretrain --method icae --max-steps "$ICAE_PRETRAIN_STEPS"
stage icae-finetune --preset cpu-finetune --method icae --max-steps "$ICAE_FINETUNE_STEPS" --init-from "$(final icae-pretrain "$ICAE_PRETRAIN_STEPS")"
stage icformer-no-pretrain --preset cpu-finetune --method icformer --max-steps "$NO_PRETRAIN_STEPS" --init-from "" --digest-init-std 0.02
echo "== done $(date -u +%FT%TZ)"
