"""langchain-tests' standard unit tests, subclassed as LangChain documents it."""

from __future__ import annotations

from typing import Any

from langchain_akidb_embed import AkidbEmbeddings
from langchain_tests.unit_tests import EmbeddingsUnitTests


class TestAkidbEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[AkidbEmbeddings]:
        return AkidbEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"provider": "mock"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # akidb-embed's own variables configure it, as they do EmbeddingManager.from_config.
        return (
            {
                "AKIDB_EMBEDDING_PROVIDER": "mock",
                "AKIDB_EMBEDDING_MODEL": "mock-from-env",
                "AKIDB_EMBEDDING_BATCH_SIZE": "7",
                "AKIDB_EMBEDDING_OPTIONS": '{"dimension": 64}',
            },
            {},
            {"provider": "mock", "model": "mock-from-env", "batch_size": 7, "dimension": 64},
        )
