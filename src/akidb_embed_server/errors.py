"""Errors of the embedding server layer; each subclasses a builtin and the core's
:class:`~akidb_embed.errors.AkidbEmbedError`, so callers can catch them either way."""

from __future__ import annotations

from akidb_embed.errors import AkidbEmbedError

__all__ = ["BatcherClosedError", "QueueFullError", "RequestTimeoutError"]


class QueueFullError(AkidbEmbedError, RuntimeError):
    """The batcher's queue cannot take the request's texts now (HTTP 429).

    ``retry_after`` estimates, in seconds, when the queue will have drained enough.
    """

    def __init__(self, texts: int, queued: int, limit: int, retry_after: float) -> None:
        self.texts = texts
        self.queued = queued
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"the queue holds {queued} texts; {texts} more would pass max_queue_texts={limit}; "
            f"retry in about {retry_after:.2g} s"
        )


class RequestTimeoutError(AkidbEmbedError, TimeoutError):
    """A request was not answered within its timeout; its queued texts were dropped
    (HTTP 504)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"the request was not answered within {timeout:g} s; it was dropped")


class BatcherClosedError(AkidbEmbedError, RuntimeError):
    """The batcher is closing or closed and takes no more requests (HTTP 503)."""
