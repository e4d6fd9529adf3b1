"""``remote``: embeddings from a running server (akidb-embed, text-embeddings-inference,
or any OpenAI-compatible endpoint), so a Collection, the CLI or a notebook can use it.

Configure it like any provider::

    [embedding]
    provider = "remote"

    [embedding.options]
    url = "http://127.0.0.1:8080"
    api = "akidb"            # or "tei", "openai"

The API key comes from ``options.api_key`` or ``$AKIDB_REMOTE_API_KEY``. Every failure is
a :class:`RemoteError` that is also the core error a caller would catch in-process
(:class:`RemoteInputError` is an :class:`~akidb_embed.errors.InvalidRequestError`, ...).
httpx (``pip install 'akidb-embed[remote]'``) is imported only when a provider is built.
"""

from __future__ import annotations

from ._errors import (
    API_KEY_ENV,
    RemoteAuthError,
    RemoteBusyError,
    RemoteConfigError,
    RemoteConnectionError,
    RemoteError,
    RemoteInputError,
    RemoteModelError,
    RemoteResponseError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)
from ._provider import REMOTE_OPTIONS, RemoteEmbeddingProvider

__all__ = [
    "API_KEY_ENV",
    "REMOTE_OPTIONS",
    "RemoteAuthError",
    "RemoteBusyError",
    "RemoteConfigError",
    "RemoteConnectionError",
    "RemoteEmbeddingProvider",
    "RemoteError",
    "RemoteInputError",
    "RemoteModelError",
    "RemoteResponseError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
]
