#!/usr/bin/env bash
# Set up the virtualenv (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# shellcheck disable=SC1091
. "${AKIDB_VENV:-.venv}/bin/activate"
exec python -m pytest "$@"
