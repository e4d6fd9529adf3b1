"""The main use, for real: a host without onnxruntime embeds with the ONNX provider.

The host runs in ``.cache/bridge-host-venv`` (core and numpy only); its worker runs in
this test session's interpreter, which has akidb-embed-onnx, onnxruntime and tokenizers,
and serves the real all-MiniLM-L6-v2 exported to ONNX (fixture ``minilm_onnx_dir``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import BatchEmbeddingRequest, EmbeddingConfig, EmbeddingManager
from akidb_embed.bridge import PythonBridgeProvider
from akidb_embed.errors import EmbeddingInputError, TruncationError
from akidb_embed.testing import conformance_texts

pytestmark = pytest.mark.slow

HEAVY = ("onnxruntime", "tokenizers", "torch", "transformers", "akidb_embed_onnx")

HOST_SCRIPT = """
import importlib.util, json, sys
import numpy as np
from akidb_embed import BatchEmbeddingRequest, EmbeddingConfig, EmbeddingManager

request = json.loads(sys.argv[1])
importable = [m for m in request["heavy"] if importlib.util.find_spec(m) is not None]
assert not importable, f"the host venv can import {importable}"
with EmbeddingManager.from_config(EmbeddingConfig(**request["config"])) as manager:
    response = manager.embed_batch(BatchEmbeddingRequest(None, request["texts"]))
    info = manager.info.to_dict()
np.save(request["out"], response.embeddings)
leaked = sorted(m for m in request["heavy"] if m in sys.modules)
print(json.dumps({"info": info, "usage": dict(response.usage), "leaked": leaked}))
"""


def texts() -> list[str]:
    long_text = " ".join(f"token{i}" for i in range(400))  # past the 256-token limit
    return [*conformance_texts(), long_text, "A man is eating food.", "A man eats a meal."]


def onnx_config(model: Path) -> EmbeddingConfig:
    return EmbeddingConfig(provider="onnx", model=str(model), offline=True, cache_size=0)


def test_host_without_onnxruntime_embeds_through_the_bridge(
    host_python: str, minilm_onnx_dir: Path, tmp_path: Path
) -> None:
    bridge_config = onnx_config(minilm_onnx_dir).replace(
        provider="python-bridge", python_path=sys.executable, options={"target": "onnx"}
    )
    request = {
        "config": bridge_config.to_dict(),
        "texts": texts(),
        "out": str(tmp_path / "vectors.npy"),
        "heavy": list(HEAVY),
    }
    done = subprocess.run(
        [host_python, "-c", HOST_SCRIPT, json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    bridged = np.load(tmp_path / "vectors.npy")

    with EmbeddingManager.from_config(onnx_config(minilm_onnx_dir)) as manager:
        response = manager.embed_batch(BatchEmbeddingRequest(None, texts()))
        assert report["info"] == manager.info.to_dict()
    np.testing.assert_allclose(bridged, response.embeddings, rtol=0, atol=1e-6)
    assert report["usage"] == dict(response.usage)
    assert report["usage"]["truncated"] == 1


def test_onnx_through_the_bridge_in_this_interpreter(minilm_onnx_dir: Path) -> None:
    config = onnx_config(minilm_onnx_dir)
    bridge = PythonBridgeProvider(
        config.replace(provider="python-bridge", options={"target": "onnx"})
    )
    try:
        with EmbeddingManager.from_config(config) as in_process:
            sample = texts()
            np.testing.assert_allclose(
                bridge.embed_batch(sample),
                in_process.provider.embed_batch(sample),
                rtol=0,
                atol=1e-6,
            )
            assert bridge.text_lengths(sample) == in_process.provider.text_lengths(sample)
            assert bridge.info() == in_process.info
    finally:
        bridge.close()


def test_onnx_token_ids_through_the_bridge(minilm_onnx_dir: Path) -> None:
    """Token ids (OpenAI's token input) reach the worker's ONNX provider: the bridge
    declares ``token_input`` and gives the texts' own vectors; bad ids stay typed."""
    from tokenizers import Tokenizer

    config = onnx_config(minilm_onnx_dir)
    tokenizer = Tokenizer.from_file(str(minilm_onnx_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    sample = ["A man is eating food.", "The quick brown fox.", ""]
    ids = [tokenizer.encode(text).ids for text in sample]
    bridge = PythonBridgeProvider(
        config.replace(provider="python-bridge", options={"target": "onnx"})
    )
    try:
        with EmbeddingManager(bridge, config.replace(provider="python-bridge")) as manager:
            assert manager.capabilities.token_input
            got = manager.embed_token_ids(ids)
            with pytest.raises(EmbeddingInputError, match=r"vocabulary|range"):
                bridge.embed_token_ids([[101, 10**7, 102]])
            with pytest.raises(TruncationError):
                bridge.embed_token_ids([[101] * 600])
        with EmbeddingManager.from_config(config) as in_process:
            np.testing.assert_allclose(got, in_process.embed(sample), rtol=0, atol=1e-5)
    finally:
        bridge.close()
