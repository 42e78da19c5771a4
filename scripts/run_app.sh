#!/usr/bin/env bash
# Serve the demo on http://127.0.0.1:7860 with the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"
