"""The third-party plugin in examples/plugin, installed as its own distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from akidb_embed import EmbeddingManager, available_providers, get_provider_factory
from akidb_embed.testing import ProviderConformance


def test_discovered_by_name() -> None:
    row = available_providers()["ngram"]
    assert row.loadable, row.reason
    assert row.distribution == "akidb-embed-ngram" and row.version == "0.1.0"
    assert get_provider_factory("ngram").__name__ == "NgramProvider"


def test_selected_through_environment(monkeypatch) -> None:
    monkeypatch.setenv("AKIDB_EMBEDDING_PROVIDER", "ngram")
    monkeypatch.setenv("AKIDB_EMBEDDING_OPTIONS", '{"dimension": 64}')
    with EmbeddingManager.from_config() as manager:
        assert manager.info.provider == "ngram"
        assert manager.embed(["hello", "help"]).shape == (2, 64)


def test_selected_through_environment_in_the_cli() -> None:
    env = {**os.environ, "AKIDB_EMBEDDING_PROVIDER": "ngram"}
    out = subprocess.run(
        [sys.executable, "-m", "akidb_embed.cli", "embed", "hello"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = json.loads(out)
    assert doc["model"] == "char-3gram-256"
    assert np.isclose(np.linalg.norm(doc["data"][0]["embedding"]), 1.0)


class TestExamplePluginConformance(ProviderConformance):
    def make_provider(self):
        from akidb_embed import EmbeddingConfig, create_provider

        return create_provider(EmbeddingConfig(provider="ngram"))
