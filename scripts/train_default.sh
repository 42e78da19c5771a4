#!/usr/bin/env bash
# Trains the embedded default's checkpoints on CPU: IC-Former and ICAE on the same data (pre-training,
# then fine-tuning), plus IC-Former fine-tuned without pre-training (the paper's ablation). IC-Former
# follows docs/learning.md's recipe: a readout-only warm-up (configs/train/cpu-warmup.yaml: the LLM never
# runs), then the same run goes on with the LLM's loss switched on (continue_from keeps its weights,
# window readout, optimizer and sample order), keeping the locality prior and the readout. Both methods
# pre-train at a constant rate (*-stable), then a branch off its last checkpoint takes the rate linearly
# to zero (*-pretrain, `--decay-steps`): warm-up, stable, decay. Then both read whole training texts mixed
# with one-chunk windows (*-lengths: up to 4 chunks, so the LLM learns to read several chunks' digests;
# docs/learning.md "Whole texts"), again ending in a decay, and fine-tune from there. Every stage resumes from its latest
# checkpoint, so rerun this after an interruption; raise the step counts to train longer (a finished
# stable stage extends from where it stopped; a decay branch, a lengths stage or a fine-tuning that started
# from an earlier checkpoint can't, so it is moved aside to <name>.before-<time> and starts again from the new
# end). Runs go to runs/default/; `python -m icformer publish` copies the finished ones into
# assets/checkpoints/ with a model card.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# The committed checkpoints' recipe, less the fine-tunings their cards list between its stages (steps x
# batch 4 or 2 = samples; see configs/train/cpu-*.yaml): both methods see 24,000 pre-training samples of
# 128 tokens, 1,400 of mixed lengths and 532 fine-tuning samples; about 7 h of two CPU threads where bf16
# is fast (AMX, docs/machine.md §5), roughly twice that elsewhere.
WARMUP_STEPS=${WARMUP_STEPS:-150}       # IC-Former: readout-only warm-up
PRETRAIN_STEPS=${PRETRAIN_STEPS:-4850}  # IC-Former: constant-rate steps with the LLM's loss, after the warm-up
DECAY_STEPS=${DECAY_STEPS:-1000}        # both methods: the rate falls linearly to zero over these
LENGTHS_STEPS=${LENGTHS_STEPS:-700}     # both methods: batches of 2 whole texts or windows, the last half decaying
FINETUNE_STEPS=${FINETUNE_STEPS:-133}  # a quarter of them autoencode (--ae-ratio 0.25): about 400 questions
ICAE_PRETRAIN_STEPS=${ICAE_PRETRAIN_STEPS:-$((WARMUP_STEPS + PRETRAIN_STEPS))}  # as many samples as IC-Former
ICAE_FINETUNE_STEPS=${ICAE_FINETUNE_STEPS:-$FINETUNE_STEPS}
NO_PRETRAIN_STEPS=${NO_PRETRAIN_STEPS:-100}  # questions only: as many as the others' fine-tuning
RUNS=${RUNS:-runs/default}
RECIPE=(--local-window-layers 3 --readout-weight 1.0)  # IC-Former only; recorded in each run's config
[ -f data/pretrain_train.jsonl ] || "$PY" -m icformer prepare-data --out data

stage() {  # name, then train flags
  local name=$1; shift
  echo "== $name $(date -u +%FT%TZ)"
  "$PY" -m icformer train --out "$RUNS/$name" --resume "$@"
}
final() { echo "$RUNS/$1/checkpoint-$2/model"; }
aside() {  # run name, option, value: a run that started from another checkpoint can't be extended
  local dir="$RUNS/$1"
  if [ -f "$dir/config.yaml" ] && ! grep -qxF "$2: $3" "$dir/config.yaml"; then
    mv "$dir" "$dir.before-$(date -u +%Y%m%dT%H%M%SZ)" && echo "== moved $dir aside: it started from elsewhere"
  fi
}
decay() {  # method, stable steps, then train flags: the <method>-pretrain branch off <method>-stable's end
  local method=$1 stable=$2; shift 2
  local from="$RUNS/$method-stable/checkpoint-$stable"
  aside "$method-pretrain" continue_from "$from"
  stage "$method-pretrain" "$@" --continue-from "$from" --max-steps $((stable + DECAY_STEPS)) --decay-steps "$DECAY_STEPS"
}
lengths() {  # method, pre-training steps, then train flags: a fresh optimizer on the decayed weights
  local method=$1 from; from=$(final "$1-pretrain" "$2"); shift 2
  aside "$method-lengths" init_from "$from"
  stage "$method-lengths" --preset cpu-pretrain --method "$method" --init-from "$from" --context-tokens 512 \
    --short-window-ratio 0.5 --batch-size 2 --warmup-steps 30 --max-steps "$LENGTHS_STEPS" \
    --decay-steps $((LENGTHS_STEPS / 2)) --eval-samples 16 --seed 1 "$@"  # seed 1: other samples than pre-training's
}
finetune() {  # method, then train flags
  local method=$1 from; from=$(final "$1-lengths" "$LENGTHS_STEPS"); shift
  aside "$method-finetune" init_from "$from"
  stage "$method-finetune" --preset cpu-finetune --method "$method" --init-from "$from" --ae-ratio 0.25 \
    --context-tokens 512 --seed 1 "$@"  # windows of the questions' contexts keep the reconstruction
}
IC_STABLE=$((WARMUP_STEPS + PRETRAIN_STEPS))
IC_PRETRAIN=(--preset cpu-pretrain --method icformer "${RECIPE[@]}" --lr 1e-3 --warmup-steps 30)

stage icformer-warmup --preset cpu-warmup --method icformer --max-steps "$WARMUP_STEPS"
stage icformer-stable "${IC_PRETRAIN[@]}" --max-steps "$IC_STABLE" \
  --continue-from "$RUNS/icformer-warmup/checkpoint-$WARMUP_STEPS"
decay icformer "$IC_STABLE" "${IC_PRETRAIN[@]}"
lengths icformer $((IC_STABLE + DECAY_STEPS)) --lr 5e-4 --readout-weight 0  # no readout from here on
finetune icformer --readout-weight 0 --max-steps "$FINETUNE_STEPS"
stage icae-stable --preset cpu-pretrain --method icae --max-steps "$ICAE_PRETRAIN_STEPS"
decay icae "$ICAE_PRETRAIN_STEPS" --preset cpu-pretrain --method icae
lengths icae $((ICAE_PRETRAIN_STEPS + DECAY_STEPS)) --lr 1.5e-4
finetune icae --max-steps "$ICAE_FINETUNE_STEPS"
stage icformer-no-pretrain --preset cpu-finetune --method icformer --max-steps "$NO_PRETRAIN_STEPS" --init-from "" --digest-init-std 0.02
echo "== done $(date -u +%FT%TZ)"
