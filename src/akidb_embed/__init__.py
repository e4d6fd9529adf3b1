"""akidb-embed: text to embedding vectors through pluggable providers.

>>> from akidb_embed import EmbeddingManager
>>> with EmbeddingManager.from_config(provider="mock") as manager:
...     manager.embed(["hello world"]).shape
(1, 384)
"""

from __future__ import annotations

from ._config import EmbeddingConfig
from ._manager import EmbeddingManager
from ._observers import EmbeddingObserver, ProviderCallEvent, RequestEvent, StatsObserver
from ._pipeline import EmbeddingRequest
from ._registry import (
    ENTRY_POINT_GROUP,
    ProviderStatus,
    available_providers,
    create_provider,
    get_provider_class,
    get_provider_factory,
    providers,
    refresh_providers,
    register_provider,
    unregister_provider,
)
from ._types import (
    BatchEmbeddingRequest,
    BatchEmbeddingResponse,
    EmbeddingProvider,
    ModelInfo,
    ProviderCapabilities,
    provider_capabilities,
)
from ._version import __version__
from .mock import MockEmbeddingProvider

__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchEmbeddingRequest",
    "BatchEmbeddingResponse",
    "EmbeddingConfig",
    "EmbeddingManager",
    "EmbeddingObserver",
    "EmbeddingProvider",
    "EmbeddingRequest",
    "MockEmbeddingProvider",
    "ModelInfo",
    "ProviderCallEvent",
    "ProviderCapabilities",
    "ProviderStatus",
    "RequestEvent",
    "StatsObserver",
    "__version__",
    "available_providers",
    "create_provider",
    "get_provider_class",
    "get_provider_factory",
    "provider_capabilities",
    "providers",
    "refresh_providers",
    "register_provider",
    "unregister_provider",
]
