"""A real ``akidb-embed serve --provider openvino`` subprocess answering /api/v1/embed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager

if TYPE_CHECKING:
    from conftest import Served

pytestmark = pytest.mark.slow

TEXTS = ["hello world", "a somewhat longer sentence about vector databases", "word " * 300]


def test_serve_openvino_answers_embed(
    serve: Callable[..., Served], minilm_onnx_dir: Path, tmp_path: Path
) -> None:
    env = {"AKIDB_EMBEDDING_CACHE_DIR": str(tmp_path)}
    served = serve("--provider", "openvino", "--model", str(minilm_onnx_dir), env=env)
    r = httpx.post(f"{served.url}/api/v1/embed", json={"inputs": TEXTS}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimension"] == 384 and body["usage"]["texts"] == 3
    got = np.array(body["embeddings"], dtype=np.float32)
    config = EmbeddingConfig(
        provider="openvino", model=str(minilm_onnx_dir), cache_dir=str(tmp_path)
    )
    with EmbeddingManager.from_config(config) as manager:
        want = manager.embed(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Bad input is the route's JSON error, not a 5xx.
    r = httpx.post(
        f"{served.url}/api/v1/embed",
        json={"inputs": ["ok", "word " * 300], "truncation": "error"},
        timeout=30,
    )
    assert 400 <= r.status_code < 500 and "error" in r.json(), r.text
    assert any((tmp_path / "akidb-embed-openvino").iterdir())  # the server compiled into the cache
