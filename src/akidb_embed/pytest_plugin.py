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
``akidb_isolated``
    Opt-in isolation: ``AKIDB_*`` environment variables, in-process provider
    registrations and the discovered provider entry points are restored after the
    test, whatever it changed. Request the fixture, or mark tests (a function, a
    class, a module's ``pytestmark``) with ``@pytest.mark.akidb_isolated``.

Nothing is isolated unless asked for: the plugin leaves the environment of other
projects' tests alone.
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


_MARKER = "akidb_isolated"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}: restore AKIDB_* environment variables and akidb-embed provider "
        "registrations after the test (the akidb_isolated fixture)",
    )


@pytest.fixture
def akidb_isolated() -> Iterator[None]:
    """Restore ``AKIDB_*`` environment variables and provider registrations afterwards.

    Covers :func:`~akidb_embed.register_provider` / ``unregister_provider`` and the
    entry points read by :func:`~akidb_embed.refresh_providers`.
    """
    saved_env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)}
    saved_registry = _registry._save_state()
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith(_ENV_PREFIX)]:
            if key not in saved_env:
                del os.environ[key]
        os.environ.update(saved_env)
        _registry._restore_state(saved_registry)


@pytest.fixture(autouse=True)
def _akidb_isolated_marker(request: pytest.FixtureRequest) -> None:
    # A no-op unless the test is marked. Checked at set-up, not at collection, because
    # the marker may come from a class, a module, pytest.param(marks=...) or a hook.
    if request.node.get_closest_marker(_MARKER) is not None:
        request.getfixturevalue("akidb_isolated")


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
