"""Test helpers for akidb-embed users and provider authors.

:class:`ProviderConformance` is a pytest test class that a provider's own test suite
subclasses (implementing :meth:`ProviderConformance.make_provider`) to check that the
provider honours the :class:`~akidb_embed.EmbeddingProvider` contract. The fixtures
``mock_provider``, ``embedding_manager`` and ``make_embedding_manager`` come from the
pytest plugin this distribution registers (``akidb_embed.pytest_plugin``).
"""

from __future__ import annotations

from ._conformance import ProviderConformance, conformance_texts

__all__ = ["ProviderConformance", "conformance_texts"]
