"""The fixtures as a user's test suite sees them (run through pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_fixtures_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        import numpy as np
        from akidb_embed import available_providers, register_provider, MockEmbeddingProvider

        def test_mock_provider(mock_provider):
            out = mock_provider.embed_batch(["a"])
            assert out.shape == (1, 384)
            assert mock_provider.texts == ["a"]

        def test_manager(embedding_manager, mock_provider):
            embedding_manager.embed(["x", "y"])
            assert sorted(mock_provider.texts) == ["x", "y"]

        def test_factory(make_embedding_manager):
            manager = make_embedding_manager(options={"dimension": 8}, batch_size=1)
            assert manager.embed(["a", "b"]).shape == (2, 8)
            assert manager.config.provider == "mock"

        def test_pollute():
            os.environ["AKIDB_EMBEDDING_PROVIDER"] = "polluted"
            register_provider("temp-provider", MockEmbeddingProvider)

        def test_isolated():
            assert "AKIDB_EMBEDDING_PROVIDER" not in os.environ
            assert "temp-provider" not in available_providers()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_factory_closes_managers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        made = []

        def test_make(make_embedding_manager):
            made.append(make_embedding_manager())

        def test_closed_after():
            assert made[0].closed
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


def test_conformance_suite_catches_a_bad_provider(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import numpy as np
        from akidb_embed import MockEmbeddingProvider
        from akidb_embed.testing import ProviderConformance

        class BatchDependent(MockEmbeddingProvider):
            def embed_batch(self, texts):
                out = super().embed_batch(texts)
                return out + 0.01 * len(texts)   # depends on batch mates

        class TestBad(ProviderConformance):
            def make_provider(self):
                return BatchDependent()
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1, passed=10)
    result.stdout.fnmatch_lines(["*test_batch_invariance*"])
