"""Prometheus metrics of one app (prefix ``akidb_embed_``), on a registry of its own.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so several apps in
one process (tests, several served models) never share or clash over counters. Three
sources feed it: the access middleware (one observation per HTTP request, with the
figures the embed routes put in their timing headers), the batcher's
:class:`~akidb_embed_server.BatchEvent` observer (one per batch), and the manager's
:class:`~akidb_embed.EmbeddingObserver` hook (one per provider call). Queue depth and
dropped texts are read from :meth:`Batcher.stats` when scraped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from akidb_embed import EmbeddingManager, ProviderCallEvent, RequestEvent

from ._batcher import Batcher, BatcherStats, BatchEvent
from ._version import __version__

if TYPE_CHECKING:
    from ._logging import RequestRecord

__all__ = ["ServerMetrics"]

PREFIX = "akidb_embed_"

#: Seconds, 100 us to 60 s: a short query on the mock or a small model takes well under
#: a millisecond of queueing and a few of inference; a 256-document request on a CPU,
#: seconds; past ``request_timeout_s`` (30 s by default) nothing is left to observe.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Texts per batch: powers of two up to well past the default batch size.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
#: Padded tokens per batch, up to past the default budget of 16384.
BATCH_TOKEN_BUCKETS = (
    16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
)  # fmt: skip


class _BatcherCollector(Collector):
    """Gauges and counters read from ``Batcher.stats()`` at scrape time."""

    def __init__(self, stats: Callable[[], BatcherStats | None]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._stats())

    @staticmethod
    def _families(stats: BatcherStats | None) -> Iterator[Metric]:
        depth = GaugeMetricFamily(PREFIX + "queue_depth", "Texts waiting in the batcher's queue.")
        requests = GaugeMetricFamily(
            PREFIX + "queue_requests", "Requests with texts waiting in the batcher's queue."
        )
        batches = GaugeMetricFamily(
            PREFIX + "batches_in_flight", "Batches running on the provider now."
        )
        dropped = CounterMetricFamily(
            PREFIX + "dropped_texts",
            "Queued texts dropped, never computed: their client went away or their "
            "request timed out.",
        )
        if stats is not None:
            depth.add_metric([], stats.queued_texts)
            requests.add_metric([], stats.queued_requests)
            batches.add_metric([], stats.in_flight_batches)
            dropped.add_metric([], stats.dropped_texts)
        yield from (depth, requests, batches, dropped)


class _ProviderObserver:
    """The manager's observer hook: provider-call latency and errors."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def on_provider_call(self, event: ProviderCallEvent) -> None:
        # Runs on the manager's threads: prometheus-client's metrics are thread-safe.
        m = self._metrics
        m.provider_call_seconds.observe(event.seconds)
        if event.error is not None:
            m.provider_errors.labels(type(event.error).__name__).inc()

    def on_request(self, event: RequestEvent) -> None:
        pass  # requests are counted per HTTP request, by the middleware


class ServerMetrics:
    """The metrics of one served manager and its batcher.

    Call :meth:`attach` with the batcher once it exists (the app's lifespan) and
    :meth:`detach` when it closes; :meth:`render` gives the text exposition.
    """

    def __init__(self, manager: EmbeddingManager, served_model: str) -> None:
        self.manager = manager
        self.registry = CollectorRegistry()
        r = self.registry
        self._batcher: Batcher | None = None
        self._provider_observer = _ProviderObserver(self)

        self.requests = Counter(
            PREFIX + "requests",
            "Requests answered, by route and status: HTTP (route template, status "
            "number) and gRPC (method path, status code name; one per stream message).",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from receiving a request to the end of its answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            PREFIX + "requests_in_flight",
            "Requests being served now (HTTP, and gRPC calls and stream messages).",
            registry=r,
        )
        self.errors = Counter(
            PREFIX + "errors",
            "Error answers, by the error code of the response body (http_<status> for "
            "an answer without one).",
            ["code"],
            registry=r,
        )
        self.queue_seconds = Histogram(
            PREFIX + "queue_wait_seconds",
            "Per embed request: from acceptance by the batcher until its first batch left.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            PREFIX + "inference_seconds",
            "Per embed request: the summed time of the batches that computed it.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter(PREFIX + "texts", "Texts embedded for clients.", registry=r)
        self.tokens = Counter(
            PREFIX + "tokens", "Prompt tokens of the texts embedded for clients.", registry=r
        )
        self.truncated = Counter(
            PREFIX + "truncated_texts",
            "Texts cut at the model's token limit.",
            registry=r,
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size",
            "Texts per batch sent to the provider.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            PREFIX + "batch_tokens",
            "Padded tokens (longest text x texts) per batch.",
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            PREFIX + "batch_duration_seconds",
            "Time one batch took on the provider.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_call_seconds = Histogram(
            PREFIX + "provider_call_duration_seconds",
            "Time of one call of the provider (waiting for a provider slot excluded).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            PREFIX + "provider_errors",
            "Provider calls that raised, by exception class.",
            ["type"],
            registry=r,
        )
        self.reloads = Counter(
            PREFIX + "reloads",
            "Configuration reloads (SIGHUP, POST /admin/reload), by result: success or "
            "failure (nothing changed).",
            ["result"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self._model = Info(PREFIX + "model", "The served model.", registry=r)
        self._describe(manager, served_model)
        #: What the batcher gauges and counters are read from at scrape time (the
        #: service sets its own, which counts across reloads).
        self.stats: Callable[[], BatcherStats | None] = lambda: (
            None if self._batcher is None else self._batcher.stats()
        )
        r.register(_BatcherCollector(lambda: self.stats()))

    def _describe(self, manager: EmbeddingManager, served_model: str) -> None:
        info = manager.info
        self._model.info(
            {
                "provider": info.provider,
                "model": info.model,
                "served_model": served_model,
                "dimension": str(manager.dimension),
                "dtype": info.dtype or "unknown",
                "version": __version__,
            }
        )

    def attach(self, batcher: Batcher) -> None:
        """Observe *batcher*'s batches and the manager's provider calls."""
        self._batcher = batcher
        batcher.add_observer(self.observe_batch)
        self.manager.add_observer(self._provider_observer)

    def switch(self, manager: EmbeddingManager, batcher: Batcher, served_model: str) -> None:
        """A reload replaced the manager or batcher: observe the new ones too and
        describe the new model. The old ones stay observed until :meth:`release`."""
        if batcher is not self._batcher:
            batcher.add_observer(self.observe_batch)
        if manager is not self.manager:
            manager.add_observer(self._provider_observer)
        self.manager, self._batcher = manager, batcher
        self._describe(manager, served_model)

    def release(self, batcher: Batcher, manager: EmbeddingManager | None) -> None:
        """Stop observing a batcher (and manager) replaced by :meth:`switch`."""
        if batcher is not self._batcher:
            with contextlib.suppress(ValueError):
                batcher.remove_observer(self.observe_batch)
        if manager is not None and manager is not self.manager:
            with contextlib.suppress(ValueError):
                manager.remove_observer(self._provider_observer)

    def detach(self) -> None:
        """Stop observing (the manager may outlive this app)."""
        if self._batcher is not None:
            self._batcher.remove_observer(self.observe_batch)
            self.manager.remove_observer(self._provider_observer)
            self._batcher = None

    def observe_batch(self, event: BatchEvent) -> None:
        """The batcher's observer: one batch."""
        self.batch_size.observe(event.texts)
        self.batch_tokens.observe(event.padded_tokens)
        self.batch_seconds.observe(event.seconds)

    def observe_request(
        self, record: RequestRecord, route: str, status: int | str, seconds: float
    ) -> None:
        """One answered request: HTTP (*route* is the route template, *status* the
        number) or gRPC (*route* the method path, *status* the status code's name)."""
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)
        if record.error is not None:
            self.errors.labels(record.error).inc()
        if record.embedded:
            if record.queue_s is not None:
                self.queue_seconds.observe(record.queue_s)
            if record.inference_s is not None:
                self.inference_seconds.observe(record.inference_s)
            self.texts.inc(record.texts or 0)
            self.tokens.inc(record.tokens or 0)
            self.truncated.inc(record.truncated or 0)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Every metric, and the content type, in the format the *accept* header asks
        for: Prometheus text 0.0.4 by default, OpenMetrics when asked."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
