"""langchain-tests' standard integration tests, with the mock provider and with the real
all-MiniLM-L6-v2 on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_akidb_embed import AkidbEmbeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests


class TestAkidbEmbeddingsMock(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[AkidbEmbeddings]:
        return AkidbEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"provider": "mock", "options": {"dimension": 32}}


class TestAkidbEmbeddingsOnnx(EmbeddingsIntegrationTests):
    model_dir: Path

    @pytest.fixture(autouse=True)
    def _real_model(self, minilm_onnx_dir: Path) -> None:
        self.model_dir = minilm_onnx_dir

    @property
    def embeddings_class(self) -> type[AkidbEmbeddings]:
        return AkidbEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"provider": "onnx", "model": str(self.model_dir)}
