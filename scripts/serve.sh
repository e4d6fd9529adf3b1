#!/usr/bin/env bash
# The server, offline: set up, export all-MiniLM-L6-v2 to ONNX from the packaged weights
# (once), then `akidb-embed serve` on it at http://127.0.0.1:8080. Extra arguments go to
# `akidb-embed serve` (`bash scripts/serve.sh --port 9000 --log-format json`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
# shellcheck disable=SC1091
. "${AKIDB_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 AKIDB_EMBEDDING_OFFLINE=true
model=$(python -c 'import sys; sys.path.insert(0, "examples"); from search_demo import onnx_model_dir; print(onnx_model_dir())' | tail -n 1)
exec akidb-embed serve --provider onnx --model "$model" \
    --served-model-name all-MiniLM-L6-v2 "$@"
