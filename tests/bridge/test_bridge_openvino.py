"""python-bridge with ``target = "openvino"``: the worker hosts the openvino provider on the
real all-MiniLM-L6-v2 export, and the bridge gives exactly its vectors, info and usage."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import BatchEmbeddingRequest, EmbeddingConfig, EmbeddingManager
from akidb_embed.errors import ExecutionProviderError, WorkerStartupError
from akidb_embed.testing import conformance_texts

pytestmark = pytest.mark.slow


def _config(model: Path, cache: Path, **options: object) -> EmbeddingConfig:
    return EmbeddingConfig(
        provider="openvino", model=str(model), cache_dir=str(cache), cache_size=0, options=options
    )


def test_bridge_hosts_the_openvino_provider(minilm_onnx_dir: Path, tmp_path: Path) -> None:
    long_text = " ".join(f"token{i}" for i in range(400))  # past the 256-token limit
    texts = [*conformance_texts(), long_text, "A man is eating food."]
    direct_config = _config(minilm_onnx_dir, tmp_path)
    bridged_config = direct_config.replace(
        provider="python-bridge",
        python_path=sys.executable,
        options={"target": "openvino", **direct_config.options},
    )
    with EmbeddingManager.from_config(bridged_config) as bridged:
        response = bridged.embed_batch(BatchEmbeddingRequest(None, texts))
        info = bridged.info
    with EmbeddingManager.from_config(direct_config) as direct:
        expected = direct.embed_batch(BatchEmbeddingRequest(None, texts))
        assert info == direct.info
    assert info.provider == "openvino" and info.dtype in ("bfloat16", "float32")
    np.testing.assert_allclose(response.embeddings, expected.embeddings, rtol=0, atol=1e-6)
    assert dict(response.usage) == dict(expected.usage)
    assert response.usage["truncated"] == 1


def test_a_missing_device_in_the_worker_is_a_clear_startup_error(
    minilm_onnx_dir: Path, tmp_path: Path
) -> None:
    config = _config(minilm_onnx_dir, tmp_path).replace(
        provider="python-bridge",
        python_path=sys.executable,
        options={"target": "openvino", "device": "NPU.9"},
    )
    with pytest.raises((WorkerStartupError, ExecutionProviderError), match=r"NPU\.9"):
        EmbeddingManager.from_config(config).embed(["never"])
