"""Observer hooks: what the manager reports about each request and each provider call.

The core computes no metrics of its own beyond :class:`StatsObserver` (what
``EmbeddingManager.stats()`` shows); a server registers its own observer to feed
Prometheus histograms, a benchmark one to record per-batch figures.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["EmbeddingObserver", "ProviderCallEvent", "RequestEvent", "StatsObserver"]

_LATENCY_WINDOW = 10_000


@dataclass(frozen=True)
class ProviderCallEvent:
    """One call of the provider's ``embed_batch`` (or ``embed_batch_with_usage``).

    Attributes
    ----------
    provider, model:
        Who was called.
    texts:
        Texts in the call (after de-duplication and cache hits).
    tokens:
        Tokens the model processed (after truncation), when known, else 0.
    max_tokens_in_batch:
        The longest text's tokens (what a padded backend pads to), when known, else 0.
    truncated:
        Texts cut at the model's limit.
    requests:
        Independent requests whose texts the call merged.
    seconds:
        Wall time of the call, waiting for a provider slot excluded.
    wait_seconds:
        Time spent waiting for a provider slot (``max_concurrency``) before it.
    error:
        The exception the call raised, ``None`` when it succeeded.
    """

    provider: str
    model: str
    texts: int
    tokens: int
    max_tokens_in_batch: int
    truncated: int
    requests: int
    seconds: float
    wait_seconds: float
    error: BaseException | None = None


@dataclass(frozen=True)
class RequestEvent:
    """One request served by the manager (``embed``, one item of ``embed_many``, ...).

    Attributes
    ----------
    texts, prompt_tokens, truncated:
        The request's usage.
    cache_hits:
        Texts served from the manager's cache; ``cache_misses`` were computed (or shared
        with another text of the same call).
    seconds:
        Wall time of the whole call the request was part of.
    error:
        Why the request failed, ``None`` when it succeeded.
    """

    provider: str
    model: str
    texts: int
    prompt_tokens: int
    truncated: int
    cache_hits: int
    cache_misses: int
    seconds: float
    error: BaseException | None = None


@runtime_checkable
class EmbeddingObserver(Protocol):
    """Receives events from an :class:`~akidb_embed.EmbeddingManager`.

    Both methods run on the thread that embeds, so they must be quick and thread-safe.
    An exception an observer raises is logged and otherwise ignored: observing never
    fails an embedding.
    """

    def on_provider_call(self, event: ProviderCallEvent) -> None:
        """Called after every provider call, successful or not."""
        ...

    def on_request(self, event: RequestEvent) -> None:
        """Called once per request, after it succeeded or failed."""
        ...


class StatsObserver:
    """Counters and a latency window: what ``EmbeddingManager.stats()`` reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "texts",
                "errors",
                "provider_calls",
                "provider_errors",
                "cache_hits",
                "cache_misses",
                "prompt_tokens",
                "truncated",
            ),
            0,
        )
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)

    def on_provider_call(self, event: ProviderCallEvent) -> None:
        with self._lock:
            self._counts["provider_calls"] += 1
            if event.error is not None:
                self._counts["provider_errors"] += 1

    def on_request(self, event: RequestEvent) -> None:
        with self._lock:
            counts = self._counts
            counts["requests"] += 1
            counts["cache_hits"] += event.cache_hits
            counts["cache_misses"] += event.cache_misses
            if event.error is not None:
                counts["errors"] += 1
                return
            counts["texts"] += event.texts
            counts["prompt_tokens"] += event.prompt_tokens
            counts["truncated"] += event.truncated
            self._latencies.append(event.seconds * 1000)

    def snapshot(self) -> dict[str, Any]:
        """The counters, ``uptime_s`` and latency p50/p95/p99 in milliseconds."""
        with self._lock:
            lat = np.array(self._latencies, dtype=np.float64)
            out: dict[str, Any] = dict(self._counts)
        out["uptime_s"] = round(time.monotonic() - self._started, 3)
        for q in (50, 95, 99):
            out[f"latency_ms_p{q}"] = float(np.percentile(lat, q)) if lat.size else None
        return out
