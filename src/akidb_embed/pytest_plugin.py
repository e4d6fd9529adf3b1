"""pytest plugin (entry point ``pytest11``): fixtures for code that uses akidb-embed.

Fixtures
--------
``mock_provider``
    A fresh :class:`~akidb_embed.MockEmbeddingProvider` (384-d).
``embedding_manager``
    An :class:`~akidb_embed.EmbeddingManager` around ``mock_provider``.
``make_embedding_manager``
    ``make_embedding_manager(**config_overrides)`` builds managers (provider ``mock``
    unless overridden) and closes them after the test.

Every test also gets isolation: ``AKIDB_*`` environment variables and in-process
provider registrations are restored after it, whatever it changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import _registry
from ._config import EmbeddingConfig
from ._manager import EmbeddingManager
from .mock import MockEmbeddingProvider

_ENV_PREFIX = "AKIDB_"


@pytest.fixture(autouse=True)
def _akidb_isolation() -> Iterator[None]:
    saved_env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)}
    saved_registry = _registry._snapshot()
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith(_ENV_PREFIX)]:
            if key not in saved_env:
                del os.environ[key]
        os.environ.update(saved_env)
        _registry._restore(saved_registry)


@pytest.fixture
def mock_provider() -> MockEmbeddingProvider:
    """A deterministic 384-d mock provider that records what it was asked."""
    return MockEmbeddingProvider()


@pytest.fixture
def embedding_manager(mock_provider: MockEmbeddingProvider) -> Iterator[EmbeddingManager]:
    """An :class:`EmbeddingManager` backed by ``mock_provider``."""
    manager = EmbeddingManager(mock_provider, EmbeddingConfig(provider="mock", model="mock"))
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture
def make_embedding_manager() -> Iterator[Callable[..., EmbeddingManager]]:
    """Factory: ``make_embedding_manager(**overrides)`` -> a manager, closed after the test.

    The config starts from ``provider="mock", model="mock"`` (not from the environment
    or ``akidb.toml``), then applies *overrides*.
    """
    made: list[EmbeddingManager] = []

    def make(**overrides: Any) -> EmbeddingManager:
        base: dict[str, Any] = {"provider": "mock", "model": "mock"}
        base.update(overrides)
        manager = EmbeddingManager.from_config(EmbeddingConfig(**base))
        made.append(manager)
        return manager

    try:
        yield make
    finally:
        for manager in made:
            manager.close()
