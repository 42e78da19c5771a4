#!/usr/bin/env bash
# The GPU benchmark, with random weights (speed depends on shapes only, and no weights need to travel):
#   embedded: SmolLM2-135M's architecture, k=32 per L=128 (the default setting);
#   paper:    Llama-2-7B's architecture, k=128 per L=512 (the setting of the paper's Table 1).
#
#   scripts/gpu_bench.sh prepare      # here, before each GPU call: .gpu/arch/{smollm2-135m,llama-2-7b}
#                                     # (config + tokenizer) and .gpu/source_commit
#   scripts/gpu_bench.sh run OUT [paper|embedded]   # on the GPU machine (default: both):
#                                     # OUT/{paper,embedded}/bench.{csv,json,html} + logs
#
# With the device tool, carry .gpu (and .whl, wheels of this project's pinned transformers, peft,
# tokenizers, regex and plotly, installed into /tmp/site when present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-}" in
prepare)
    for arch in smollm2-135m llama-2-7b; do
        $PY -c "from icformer.architecture import write_architecture as w; print(w('$arch', '.gpu/arch/$arch'))"
    done
    # The GPU machine's copy of .git may be stale: the results name the commit recorded here.
    echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- icformer scripts || echo -dirty)" > .gpu/source_commit ;;
run)
    out=${2:?usage: scripts/gpu_bench.sh run OUT [paper|embedded]}
    only=${3:-}
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    nvidia-smi -L || true
    [ -f .gpu/source_commit ] && export ICFORMER_SOURCE_COMMIT=$(cat .gpu/source_commit)
    export PYTHONUNBUFFERED=1
    # Each run goes on if the other fails; the paper's setting first (its rows are the bar).
    [ "$only" = embedded ] || $PY -m icformer bench --random-weights .gpu/arch/llama-2-7b --num-digest-tokens 128 --chunk-size 512 \
        --lengths 512 2048 --batch-sizes 1 8 32 --max-batch-tokens 16384 --repeats 10 --out "$out/paper" \
        2>&1 | tee "$out/paper.log" || echo "paper bench failed"
    [ "$only" = paper ] || $PY -m icformer bench --random-weights .gpu/arch/smollm2-135m --lengths 128 512 2048 --batch-sizes 1 8 32 \
        --max-batch-tokens 16384 --repeats 20 --out "$out/embedded" 2>&1 | tee "$out/embedded.log" \
        || echo "embedded bench failed" ;;
*)
    sed -n 2,12p "$0"; exit 2 ;;
esac
