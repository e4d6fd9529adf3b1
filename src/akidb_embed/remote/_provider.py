"""``RemoteEmbeddingProvider``: the vectors of a running embedding server."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from .._config import EmbeddingConfig
from .._pipeline import validate_texts
from .._types import ModelInfo, ProviderCapabilities
from ..backend._checks import check_options, int_option, str_option
from ..errors import (
    ConfigTypeError,
    ConfigValueError,
    ProviderClosedError,
    TruncationError,
)
from ._errors import API_KEY_ENV, PROVIDER, RemoteResponseError

if TYPE_CHECKING:
    from ._apis import Api
    from ._http import Http

__all__ = ["API_KEY_ENV", "REMOTE_OPTIONS", "RemoteEmbeddingProvider"]

#: Every option the provider takes, with its default (``None``: unset).
REMOTE_OPTIONS: dict[str, Any] = {
    "url": None,
    "api": "akidb",
    "api_key": None,
    "model": None,
    "dimensions": None,
    "timeout": 60.0,
    "max_retries": 3,
    "max_retry_wait": 30.0,
    "batch_size": None,
    "max_concurrency": 8,
}

_APIS = ("akidb", "openai", "tei")
# Far beyond any real request; also keeps Event.wait and httpx's timers in range.
_MAX_SECONDS = 1_000_000.0


def _seconds(options: Mapping[str, Any], key: str) -> float:
    value = options.get(key, REMOTE_OPTIONS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(f"options.{key}", "a number of seconds", value, "options")
    if not math.isfinite(value) or not 0 < value <= _MAX_SECONDS:
        raise ConfigValueError(
            f"options.{key}", f"must be > 0 and <= {_MAX_SECONDS:g} seconds, got {value}", "options"
        )
    return float(value)


def _url(options: Mapping[str, Any]) -> str:
    url = options.get("url")
    if url is None:
        raise ConfigValueError(
            "options.url",
            "the remote provider needs the server's base URL (http://host:port)",
            "options",
        )
    if not isinstance(url, str):
        raise ConfigTypeError("options.url", "a URL string", url, "options")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigValueError(
            "options.url", f"must be an http:// or https:// URL, got {url!r}", "options"
        )
    return url.rstrip("/")


class RemoteEmbeddingProvider:
    """Embeddings from a running server, registered as ``remote``.

    Speaks akidb-embed's own API (``api = "akidb"``, the default), the
    text-embeddings-inference API (``"tei"``) or the OpenAI embeddings API
    (``"openai"``) over one keep-alive HTTP connection pool, with bounded retries on
    429/502/503 and connection failures (honouring ``Retry-After``), and typed errors that
    carry the server's message (see :mod:`akidb_embed.remote`).

    The server is asked what it serves when the provider is built, so a wrong URL, key,
    API or model fails at once.

    Parameters
    ----------
    config:
        The resolved config; ``options`` hold the keys of :data:`REMOTE_OPTIONS`
        (``url`` is required). ``model``, when set, names the model to ask for (as
        ``options.model`` does); ``truncation`` is sent to the server.
    **options:
        Options given directly (``RemoteEmbeddingProvider(url="http://...")``); they
        override ``config.options``.

    Raises
    ------
    ConfigError
        A missing or invalid option, or (:class:`~akidb_embed.remote.RemoteConfigError`)
        a server that does not speak *api* or refuses the key.
    ModelMismatchError
        The server does not serve ``options.model``.
    ProviderError
        The server cannot be reached or fails.
    """

    requires: tuple[str, ...] = ("httpx",)

    def __init__(self, config: EmbeddingConfig | None = None, **options: Any) -> None:
        config = config if config is not None else EmbeddingConfig(provider=PROVIDER)
        merged = check_options({**config.options, **options}, REMOTE_OPTIONS, PROVIDER)
        url = _url(merged)
        api = str_option(merged, "api", choices=_APIS) or REMOTE_OPTIONS["api"]
        api_key = merged.get("api_key")
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        elif not isinstance(api_key, str) or not api_key:
            # Say what is wrong without echoing what may be a secret.
            raise ConfigValueError("options.api_key", "must be a non-empty string", "options")
        model = str_option(merged, "model")
        if model is None and config.source("model") != "default":
            model = config.model
        dimensions = int_option(merged, "dimensions")
        if dimensions is not None and api == "akidb":
            raise ConfigValueError(
                "options.dimensions",
                "the akidb API returns the model's full vectors; dimensions needs "
                "api = 'openai' or 'tei'",
                "options",
            )
        if config.max_length is not None:
            raise ConfigValueError(
                "max_length",
                "the server's model sets the token limit; a remote provider cannot change it",
                config.source("max_length"),
            )
        if config.truncation == "error" and api == "openai":
            raise ConfigValueError(
                "truncation",
                "the OpenAI API has no truncation option (the server applies its own); use "
                "api = 'akidb' or 'tei' to have over-long texts refused",
                config.source("truncation"),
            )
        max_retries = int_option(merged, "max_retries", minimum=0)
        concurrency = int_option(merged, "max_concurrency") or REMOTE_OPTIONS["max_concurrency"]
        batch_size = int_option(merged, "batch_size")

        # httpx is imported only now, when a remote provider is really built.
        from ._apis import APIS, Settings
        from ._http import Http

        self.url = url
        self.api = api
        self._closed = False
        self._http: Http = Http(
            url,
            api_key=api_key,
            api=api,
            timeout=_seconds(merged, "timeout"),
            max_retries=REMOTE_OPTIONS["max_retries"] if max_retries is None else max_retries,
            max_retry_wait=_seconds(merged, "max_retry_wait"),
            max_connections=concurrency,
        )
        self._api: Api = APIS[api](self._http, Settings(model, dimensions, config.truncation))
        try:
            self._info: ModelInfo = self._api.discover()
        except BaseException:
            self._http.close()
            raise
        limits = [n for n in (batch_size, self._api.max_batch) if n is not None]
        self.capabilities = ProviderCapabilities(
            max_concurrency=concurrency,
            reports_usage=True,
            max_batch_size=min(limits) if limits else None,
        )

    @property
    def model(self) -> str | None:
        """The model name sent to the server (TEI takes none: only checked against its /info)."""
        return self._api.model_name

    @property
    def stats(self) -> dict[str, int]:
        """HTTP requests sent (retries included) and retries made since the start."""
        return self._http.stats

    def __repr__(self) -> str:
        # Never the key: only where it talks to and what it serves.
        return (
            f"<RemoteEmbeddingProvider api={self.api} url={self._http.display_url} "
            f"model={self._info.model!r} dimension={self._info.dimension}>"
        )

    # -- provider contract -----------------------------------------------------------------

    def info(self) -> ModelInfo:
        """The served model: for ``api = "akidb"`` the server's own ModelInfo (same
        fingerprint as in-process), otherwise what the server's ``/info`` and a probe
        text tell."""
        return self._info

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed *texts* on the server; float32 of shape ``(len(texts), dimension)``."""
        return self.embed_batch_with_usage(texts)[0]

    def embed_batch_with_usage(self, texts: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        """Vectors plus ``{"prompt_tokens", "truncated"}`` as the server reports them.

        More texts than the server takes in one request are sent in several, in order.
        """
        if self._closed:
            raise ProviderClosedError("the remote provider is closed")
        items = validate_texts(texts)
        dimension = self._info.dimension
        out = np.empty((len(items), dimension), dtype=np.float32)
        tokens = truncated = 0
        step = self.capabilities.max_batch_size or max(len(items), 1)
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            try:
                vectors, usage = self._api.embed(chunk)
            except TruncationError as exc:
                if not start:
                    raise
                # The server counted within this chunk: name the index in *texts*.
                raise TruncationError(exc.index + start, exc.tokens, exc.max_tokens) from exc
            if vectors.shape != (len(chunk), dimension):
                raise RemoteResponseError(
                    f"{self._http.display_url} answered vectors of shape {vectors.shape}, "
                    f"expected {(len(chunk), dimension)}"
                )
            out[start : start + len(chunk)] = vectors
            tokens += usage.get("prompt_tokens", 0)
            truncated += usage.get("truncated", 0)
        return out, {"prompt_tokens": tokens, "truncated": truncated}

    def close(self) -> None:
        """Close the connection pool. Calling it twice is harmless."""
        if not self._closed:
            self._closed = True
            self._http.close()
