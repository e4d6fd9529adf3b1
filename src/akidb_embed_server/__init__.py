"""akidb-embed-server: serving one :class:`~akidb_embed.EmbeddingManager` to many
concurrent clients.

:class:`Batcher` merges the texts of concurrent requests into token-budgeted batches
(the heart of ``akidb-embed serve``); :func:`create_app` builds the FastAPI app of
routes on it, imported on first use (``import akidb_embed_server`` loads no web
framework, so ``akidb-embed --help`` stays quick). Only the core's public API is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._batcher import Batcher, BatcherStats, BatchEvent, RequestTiming
from ._settings import ServerSettings
from ._version import __version__
from .errors import BatcherClosedError, QueueFullError, RequestTimeoutError

if TYPE_CHECKING:
    from ._app import create_app

__all__ = [
    "BatchEvent",
    "Batcher",
    "BatcherClosedError",
    "BatcherStats",
    "QueueFullError",
    "RequestTimeoutError",
    "RequestTiming",
    "ServerSettings",
    "__version__",
    "create_app",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # FastAPI is imported only when the app is asked for
        from ._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
