"""akidb-embed-server: serving one :class:`~akidb_embed.EmbeddingManager` to many
concurrent clients.

:class:`Batcher` merges the texts of concurrent requests into token-budgeted batches
(the heart of ``akidb-embed serve``); the HTTP routes will build on it. Only the core's
public API is used, and no web framework is imported here.
"""

from __future__ import annotations

from ._batcher import Batcher, BatcherStats, BatchEvent
from ._version import __version__
from .errors import BatcherClosedError, QueueFullError, RequestTimeoutError

__all__ = [
    "BatchEvent",
    "Batcher",
    "BatcherClosedError",
    "BatcherStats",
    "QueueFullError",
    "RequestTimeoutError",
    "__version__",
]
