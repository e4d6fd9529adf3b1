"""The server's settings: one frozen dataclass shared by the HTTP app, the CLI and (later) gRPC.

Loading them from the ``[server]`` TOML table, ``AKIDB_SERVER_*`` variables and command
line flags (with each value's source) lives in :meth:`ServerSettings.load`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ServerSettings"]

LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``akidb-embed serve`` can be told, with its defaults.

    Attributes
    ----------
    host, port:
        Where to listen.
    api_keys:
        Accepted ``Authorization: Bearer`` keys; empty means no authentication.
    api_key_file:
        A file with one key per line (blank lines and ``#`` comments ignored), added to
        *api_keys*.
    public_paths:
        Paths answered without a key even when keys are set.
    cors_origins:
        Allowed CORS origins; empty (the default) turns CORS off.
    max_batch_tokens, max_batch_size, max_wait_ms, max_queue_texts:
        The micro-batcher's limits (see :class:`~akidb_embed_server.Batcher`).
    max_client_batch_size:
        Most inputs one request may carry (HTTP 413 past it).
    max_input_chars:
        Longest text, in characters (HTTP 413 past it).
    max_body_bytes:
        Largest request body (HTTP 413, refused before it is read whole).
    request_timeout_s:
        Per-request deadline (HTTP 504 past it); ``None`` waits forever.
    drain_timeout_s:
        How long in-flight requests may take to finish on shutdown.
    log_format, log_level:
        ``text`` or ``json`` lines; a :mod:`logging` level name.
    metrics_enabled:
        Serve ``GET /metrics``.
    served_model_name:
        The name clients use in ``model``; defaults to the provider's model id.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: str | None = None
    public_paths: tuple[str, ...] = ("/health", "/metrics")
    cors_origins: tuple[str, ...] = ()
    max_batch_tokens: int = 16384
    max_batch_size: int | None = None
    max_wait_ms: float = 2.0
    max_queue_texts: int = 4096
    max_client_batch_size: int = 2048
    max_input_chars: int = 1_000_000
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout_s: float | None = 30.0
    drain_timeout_s: float = 30.0
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    metrics_enabled: bool = True
    served_model_name: str | None = None

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with *changes* applied."""
        return dataclasses.replace(self, **changes)

    def batcher_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~akidb_embed_server.Batcher`."""
        return {
            "max_batch_tokens": self.max_batch_tokens,
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "max_queue_texts": self.max_queue_texts,
        }
