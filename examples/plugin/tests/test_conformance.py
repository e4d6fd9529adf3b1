import numpy as np
from akidb_embed_ngram import NgramProvider

from akidb_embed import EmbeddingConfig
from akidb_embed.testing import ProviderConformance


class TestNgramConformance(ProviderConformance):
    def make_provider(self) -> NgramProvider:
        return NgramProvider(EmbeddingConfig(provider="ngram", options={"dimension": 128}))


def test_similar_spellings_are_close() -> None:
    provider = NgramProvider(EmbeddingConfig(provider="ngram"))
    a, b, c = provider.embed_batch(["embedding", "embeddings", "tomato"])
    assert float(a @ b) > float(a @ c) + 0.3
    assert np.isclose(np.linalg.norm(a), 1.0)
