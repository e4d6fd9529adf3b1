"""The fixtures as a user's test suite sees them (run through pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_fixtures_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
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

        def test_not_isolated_unless_asked(request):
            assert "akidb_isolated" not in request.fixturenames
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_no_isolation_without_opt_in(pytester: pytest.Pytester) -> None:
    # The plugin is installed in every project that installs akidb-embed: unless a test
    # asks, it must leave the environment and the registry alone.
    pytester.makepyfile(
        """
        import os
        from akidb_embed import MockEmbeddingProvider, providers, register_provider

        def test_pollute():
            os.environ["AKIDB_EMBEDDING_PROVIDER"] = "polluted"
            register_provider("temp-provider", MockEmbeddingProvider)

        def test_still_polluted():
            assert os.environ["AKIDB_EMBEDDING_PROVIDER"] == "polluted"
            assert "temp-provider" in providers()
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


ISOLATED_SUITE = """
    import os
    import pytest
    from akidb_embed import MockEmbeddingProvider, providers, register_provider

    os.environ["AKIDB_KEEP"] = "from the session"

    def pollute():
        os.environ["AKIDB_EMBEDDING_PROVIDER"] = "polluted"
        os.environ["AKIDB_KEEP"] = "changed"
        register_provider("temp-provider", MockEmbeddingProvider)

    {first}

    def test_clean():
        assert "AKIDB_EMBEDDING_PROVIDER" not in os.environ
        assert os.environ["AKIDB_KEEP"] == "from the session"
        assert "temp-provider" not in providers()
"""


@pytest.mark.parametrize(
    "first",
    [
        "def test_pollute(akidb_isolated):\n        pollute()",
        "@pytest.mark.akidb_isolated\n    def test_pollute():\n        pollute()",
        "@pytest.mark.akidb_isolated\n    class TestMarked:\n"
        "        def test_pollute(self):\n            pollute()",
        "@pytest.mark.parametrize('n', [pytest.param(1, marks=pytest.mark.akidb_isolated)])\n"
        "    def test_pollute(n):\n        pollute()",
        "@pytest.fixture\n    def polluting():\n        pollute()\n\n"
        "    @pytest.mark.akidb_isolated\n    def test_pollute(polluting):\n        pass",
    ],
    ids=["fixture", "marker", "class-marker", "param-marker", "marked-with-a-fixture"],
)
def test_opt_in_restores_after_the_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    monkeypatch.delenv("AKIDB_EMBEDDING_PROVIDER", raising=False)
    pytester.makepyfile(ISOLATED_SUITE.format(first=first))
    result = pytester.runpytest_subprocess("--strict-markers")
    result.assert_outcomes(passed=2)


def test_module_marker_and_refresh(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys
        import pytest
        from akidb_embed import providers, refresh_providers

        pytestmark = pytest.mark.akidb_isolated

        def test_install_a_plugin_at_run_time(tmp_path):
            info = tmp_path / "late-1.0.dist-info"
            info.mkdir()
            (info / "METADATA").write_text("Metadata-Version: 2.1\\nName: late\\nVersion: 1.0\\n")
            (info / "entry_points.txt").write_text(
                "[akidb_embed.providers]\\nlate = late_mod:Late\\n"
            )
            sys.path.insert(0, str(tmp_path))
            refresh_providers()
            assert "late" in providers()
            sys.path.remove(str(tmp_path))

        def test_entry_points_restored():
            assert "late" not in providers()
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.akidb_isolated: restore AKIDB_* *"])


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
    result.assert_outcomes(failed=1, passed=13)
    result.stdout.fnmatch_lines(["*test_batch_invariance*"])
