from akidb_embed import MockEmbeddingProvider
from akidb_embed.testing import ProviderConformance


class TestMockConformance(ProviderConformance):
    def make_provider(self) -> MockEmbeddingProvider:
        return MockEmbeddingProvider()
