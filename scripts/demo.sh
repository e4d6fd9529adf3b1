#!/usr/bin/env bash
# The main job, offline: set up, export all-MiniLM-L6-v2 to ONNX from the packaged weights,
# index the sample corpus and run a few semantic searches. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
# shellcheck disable=SC1091
. "${AKIDB_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1
exec python examples/search_demo.py "$@"
