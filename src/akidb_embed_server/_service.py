"""The protocol-agnostic core of ``akidb-embed serve``: :class:`EmbeddingService`.

HTTP (``_app``) and gRPC (``_grpc``) are thin adapters: each turns its request into an
:class:`~akidb_embed.EmbeddingRequest`, calls :meth:`EmbeddingService.embed`, and turns the
:class:`Embedded` result or the :class:`Failure` into its own response and status. What
every protocol shares lives here, once: the manager and its batcher, readiness and
draining, the input limits, the deadline and timing of an embed call, the Matryoshka cut,
the served model name, the limits and the info.

Adapters reach the model only through the service (``service.manager``,
``service.batcher``, read at each request), never through a manager captured when they
were built, so the manager and batcher can be replaced while the server runs
(:meth:`EmbeddingService.swap`, used by ``_reload``). Each embed call pins the manager and
batcher it starts with, and moves to the new pair only while none of its texts is in a
batch: all its texts are computed by one provider, and its :class:`Embedded` result names
that provider's model, whatever a reload does meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from akidb_embed import BatchEmbeddingResponse, EmbeddingManager, EmbeddingRequest
from akidb_embed import __version__ as core_version
from akidb_embed.errors import (
    AkidbEmbedError,
    EmbeddingInputError,
    ModelMismatchError,
    ProviderBusyError,
    ProviderClosedError,
    ProviderError,
    TruncationError,
)

from ._batcher import Batcher, BatcherStats, RequestTiming
from ._limits import RequestLimitError, check_inputs
from ._logging import current_request
from ._metrics import ServerMetrics
from ._settings import ServerSettings
from ._version import __version__
from .errors import BatcherClosedError, QueueFullError, RequestTimeoutError

if TYPE_CHECKING:
    from ._reload import Reloader

__all__ = ["PROBE_TEXT", "Embedded", "EmbeddingService", "Failure", "FailureKind", "failure_of"]

_log = logging.getLogger("akidb_embed.server")

PROBE_TEXT = "readiness probe"

#: How a request failed, whatever the protocol; each adapter maps a kind to one status
#: (HTTP 400/413/404/429/503/504/499/500, gRPC INVALID_ARGUMENT/OUT_OF_RANGE/...).
FailureKind = Literal[
    "invalid",  # the request is wrong
    "too_large",  # over one of the server's or the model's limits
    "not_found",  # names a model this server does not serve
    "overloaded",  # the queue is full: retry after retry_after seconds
    "unavailable",  # loading, draining, or the provider is down
    "timeout",  # not answered by its deadline; its queued texts were dropped
    "cancelled",  # the client went away first
    "internal",  # a bug: logged with its traceback, never shown
]


@dataclass
class Failure(Exception):
    """Why a request failed, in terms every protocol can answer.

    ``code`` is the stable error code (``empty_input``, ``queue_full``, ...) that error
    bodies, access logs and ``akidb_embed_errors_total`` carry; ``param`` names the
    request field at fault; ``retry_after`` (seconds) comes with ``overloaded``.
    """

    kind: FailureKind
    message: str
    code: str
    param: str | None = None
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.message


def failure_of(exc: BaseException) -> Failure:
    """The :class:`Failure` of a core, limit or batcher error (an unexpected one is
    logged with its traceback and becomes an ``internal`` failure that says nothing)."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, TruncationError):
        return Failure("too_large", str(exc), "input_too_long", "input")
    if isinstance(exc, RequestLimitError):
        return Failure("too_large", str(exc), exc.code, exc.param)
    if isinstance(exc, ModelMismatchError):
        return Failure("not_found", str(exc), "model_not_found", "model")
    if isinstance(exc, EmbeddingInputError):  # InvalidRequestError included
        return Failure("invalid", str(exc), "invalid_input", "input")
    if isinstance(exc, QueueFullError):
        return Failure("overloaded", str(exc), "queue_full", retry_after=exc.retry_after)
    if isinstance(exc, RequestTimeoutError):
        return Failure("timeout", str(exc), "timeout")
    if isinstance(exc, (BatcherClosedError, ProviderClosedError, ProviderBusyError, ProviderError)):
        return Failure("unavailable", str(exc), "unavailable")
    if isinstance(exc, AkidbEmbedError):
        return Failure("invalid", str(exc), "invalid_request")
    _log.error("unexpected error serving a request", exc_info=exc)
    return Failure("internal", "internal server error", "internal_error")


@dataclass(frozen=True)
class Embedded:
    """One answered embed call: the manager's response and where its time went (seconds).

    ``model`` is the served name of the model that computed it and ``normalized`` that
    model's default normalisation (a reload may have changed both since).
    """

    response: BatchEmbeddingResponse
    texts: int
    queue_s: float
    inference_s: float
    total_s: float
    model: str = ""
    normalized: bool = True

    @property
    def tokens(self) -> int:
        return int(self.response.usage.get("prompt_tokens", 0))

    @property
    def truncated(self) -> int:
        return int(self.response.usage.get("truncated", 0))


class EmbeddingService:
    """What every protocol serves: one manager, its batcher, the settings, readiness.

    Parameters
    ----------
    manager:
        The open manager to serve; the service does not close it.
    settings:
        The server's settings (limits, batcher options, timeouts, served model name).

    :meth:`start` starts the batcher and embeds a probe text (ready afterwards);
    :meth:`close` drains it. Use it from one event loop.
    """

    def __init__(self, manager: EmbeddingManager, settings: ServerSettings) -> None:
        self.manager = manager
        self.settings = settings
        self.batcher: Batcher | None = None
        self.ready = False
        self.draining = False
        # One registry per service: several servers in one process never share counters.
        self.metrics: ServerMetrics | None = None
        if settings.metrics_enabled:
            self.metrics = ServerMetrics(manager, self.served_model)
        self._recovery: asyncio.Future[Any] | None = None
        #: Replaces the provider and settings while serving (set by ``akidb-embed serve``).
        self.reloader: Reloader | None = None
        # Batchers replaced by a reload, still finishing their requests; and the counters
        # of the ones closed since, so /info and /metrics count since start.
        self._retiring: set[Batcher] = set()
        self._retired = _ZERO_STATS
        # The embed calls in each batcher, with their timing (did a batch take them?),
        # and the ones swap() moved to the new batcher (cancelled in the old one).
        self._attempts: dict[Batcher, dict[asyncio.Future[Any], RequestTiming]] = {}
        self._moved: set[asyncio.Future[Any]] = set()
        # Validate the batcher options now, not at the first request.
        Batcher(manager, **settings.batcher_options())

    # -- what the model is ------------------------------------------------------------

    @property
    def served_model(self) -> str:
        """The name clients give as ``model``."""
        return self._served_name(self.manager)

    def _served_name(self, manager: EmbeddingManager) -> str:
        return self.settings.served_model_name or manager.info.model

    @property
    def dimension(self) -> int:
        return self.manager.dimension

    @property
    def request_timeout_s(self) -> float | None:
        return self.settings.request_timeout_s

    def limits(self) -> dict[str, Any]:
        """The limits a client must respect (``/info``, the ``Info`` RPC, the startup line)."""
        s = self.settings
        options = s.batcher_options()
        if options.get("max_batch_size") is None:
            options["max_batch_size"] = self.manager.config.batch_size
        return {
            **options,
            "max_concurrency": self.manager.capabilities.max_concurrency,
            "max_client_batch_size": s.max_client_batch_size,
            "max_input_chars": s.max_input_chars,
            "max_body_bytes": s.max_body_bytes,
            "request_timeout_s": s.request_timeout_s,
            "drain_timeout_s": s.drain_timeout_s,
            "max_input_tokens": self.manager.info.max_tokens,
        }

    def info(self) -> dict[str, Any]:
        """Model, fingerprint, limits, batcher counters and versions (``GET /info``)."""
        model_info = self.manager.info
        return {
            "model_id": self.served_model,
            "provider": model_info.provider,
            "model": model_info.to_dict(),
            "fingerprint": model_info.fingerprint(),
            "limits": self.limits(),
            # Counters since start (batches, batched/dropped texts, queue depth).
            "batcher": None if (stats := self.batcher_stats()) is None else asdict(stats),
            "reload": None if self.reloader is None else self.reloader.status(),
            "version": __version__,
            "core_version": core_version,
        }

    def batcher_stats(self) -> BatcherStats | None:
        """The batcher's stats, counting since start across reloads: the gauges sum the
        current batcher and the replaced ones still finishing, the counters add the
        replaced ones' (None before :meth:`start`)."""
        if self.batcher is None:
            return None
        live = [self.batcher.stats(), *(b.stats() for b in self._retiring)]
        total = asdict(_add([self._retired, *live]))
        return BatcherStats(**{**total, "closed": live[0].closed})

    def swap(self, manager: EmbeddingManager, batcher: Batcher) -> tuple[EmbeddingManager, Batcher]:
        """Serve *manager* through *batcher* from now on (both started and probed); the
        previous pair, which keeps answering the requests it holds, is returned for the
        caller to :meth:`retire`. Call it on the event loop."""
        old = self.manager, self.batcher
        assert old[1] is not None, "swap() before start()"
        self.manager, self.batcher = manager, batcher
        self._retiring.add(old[1])
        # Requests none of whose texts is in a batch yet move to the new pair; the old
        # provider finishes only the batches already cut.
        for work, timing in self._attempts.get(old[1], {}).items():
            if not work.done() and not timing.cut:
                self._moved.add(work)
                timing.moved = True
                work.cancel()
        if self.metrics is not None:
            self.metrics.switch(manager, batcher, self.served_model)
        return old[0], old[1]

    async def retire(self, batcher: Batcher, manager: EmbeddingManager | None) -> None:
        """Let *batcher* (replaced by :meth:`swap`) finish its requests, then close it
        and, if given, *manager* (in a thread: a python-bridge worker exits)."""
        try:
            await batcher.close(drain_timeout=self.settings.drain_timeout_s)
        finally:
            self._retiring.discard(batcher)
            self._retired = _add([self._retired, batcher.stats()])
            if self.metrics is not None:
                self.metrics.release(batcher, manager)
            if manager is not None:
                await asyncio.to_thread(_close_and_release, manager)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batcher, embed the probe text, then count clients' work; ready after."""
        self.batcher = Batcher(self.manager, **self.settings.batcher_options())
        await self.batcher.embed(EmbeddingRequest([PROBE_TEXT]), timeout=self.request_timeout_s)
        if self.metrics is not None:  # after the probe: the metrics count clients' work
            self.metrics.stats = self.batcher_stats
            self.metrics.attach(self.batcher)
        self.ready = True

    async def close(self) -> None:
        """Stop taking requests; let the queued ones finish within ``drain_timeout_s``."""
        self.ready = False
        self.draining = True
        if self.reloader is not None:  # a reload under way gives up; replaced ones close
            await self.reloader.aclose()
        if self.batcher is not None:
            await self.batcher.close(drain_timeout=self.settings.drain_timeout_s)
        if self.metrics is not None:
            self.metrics.detach()

    def readiness(self) -> str:
        """``"ready"``, or why not: ``"draining"``, ``"closed"``, ``"loading"`` or
        ``"unavailable"`` (the provider says it is down, e.g. a python-bridge worker that
        died). Call it on the event loop: while the provider is down it starts one health
        probe at a time, which restarts it, so readiness recovers even without traffic."""
        if self.draining:
            return "draining"
        manager = self.manager
        if manager.closed:
            return "closed"
        if not self.ready:
            return "loading"
        if not getattr(manager.provider, "available", True):
            if self._recovery is None or self._recovery.done():
                self._recovery = asyncio.ensure_future(asyncio.to_thread(manager.health))
            return "unavailable"
        return "ready"

    # -- checks -----------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        """Refuse a request that names another model than the served one."""
        if model is not None and model not in (self.served_model, self.manager.info.model):
            raise Failure(
                "not_found",
                f"model {model!r} is not served here; this server serves {self.served_model!r}",
                "model_not_found",
                "model",
            )

    def check_dimensions(self, dimensions: int | None) -> None:
        """Refuse a Matryoshka cut outside 1..the model's dimension."""
        full = self.dimension
        if dimensions is not None and not 1 <= dimensions <= full:
            raise Failure(
                "invalid",
                f"dimensions must be between 1 and the model's dimension {full}, got {dimensions}",
                "invalid_dimensions",
                "dimensions",
            )

    def _recheck(
        self, request: EmbeddingRequest, model: str | None, dimensions: int | None
    ) -> None:
        """A reload moved *request* to another model before any of it was computed: what
        the caller checked against the old one must hold for the new one."""
        if request.token_ids is not None:
            raise Failure(
                "unavailable",
                "the served model changed while this request was queued, and token ids "
                "belong to one tokenizer: send it again",
                "model_changed",
            )
        self.check_model(model)
        self.check_dimensions(dimensions)

    def cut(self, vectors: np.ndarray, dimensions: int | None, renormalize: bool) -> np.ndarray:
        """Keep the first *dimensions* components (Matryoshka), re-normalised if asked."""
        if dimensions is not None and dimensions > vectors.shape[1]:  # never a silent no-op
            raise Failure(
                "invalid",
                f"dimensions must be between 1 and the model's dimension {vectors.shape[1]}, "
                f"got {dimensions}",
                "invalid_dimensions",
                "dimensions",
            )
        if dimensions is None or dimensions == vectors.shape[1]:
            return vectors
        out: np.ndarray = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)
        if renormalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return out

    # -- the embed call ---------------------------------------------------------------

    async def embed(
        self,
        request: EmbeddingRequest,
        *,
        timeout: float | None = None,
        client_gone: Callable[[], Awaitable[object]] | None = None,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> Embedded:
        """Embed *request* through the batcher, within the server's limits.

        Parameters
        ----------
        request:
            The texts (or token ids) and their options.
        model, dimensions:
            The model the client named and the cut it asked for, as the caller checked
            them (:meth:`check_model`, :meth:`check_dimensions`): checked again if a
            reload moves the request to another model before any of it was computed.
        timeout:
            A deadline tighter than ``request_timeout_s`` (the client's own, in seconds
            from now); the earlier of the two applies.
        client_gone:
            Returns an awaitable that completes when the client leaves (an HTTP
            disconnect): its queued texts are then dropped, never computed. (A cancelled
            caller drops them too.)

        Raises :class:`Failure` for what the server refuses itself (empty input,
        shutting down, client gone), and the typed errors of the limits, core and
        batcher otherwise (see :func:`failure_of`).
        """
        inputs = request.texts if request.token_ids is None else request.token_ids
        if not inputs:
            message = "the input is empty: give at least one text"
            raise Failure("invalid", message, "empty_input", "input")
        limits = self.settings
        check_inputs(
            inputs,
            max_client_batch_size=limits.max_client_batch_size,
            max_input_chars=limits.max_input_chars,
        )
        record = current_request()
        if record is not None:
            record.texts = len(inputs)
        # Pinned: a reload from here on does not change who computes this request (the
        # served name is swapped in the same step as the pair).
        manager, batcher = self.manager, self.batcher
        served = self._served_name(manager)
        if self.draining or batcher is None:
            raise Failure("unavailable", "the server is shutting down", "unavailable")
        deadline = self.request_timeout_s
        if timeout is not None:
            if timeout <= 0:
                message = "the request's deadline passed before it was queued"
                raise Failure("timeout", message, "timeout")
            deadline = timeout if deadline is None else min(deadline, timeout)
        timing = RequestTiming()
        start = time.perf_counter()
        while True:
            left = None if deadline is None else deadline - (time.perf_counter() - start)
            work = asyncio.ensure_future(batcher.embed(request, timeout=left, timing=timing))
            attempts = self._attempts.setdefault(batcher, {})
            attempts[work] = timing
            try:
                if client_gone is None:
                    response = await work
                else:
                    response = await _unless_gone(work, client_gone)
                break
            except asyncio.CancelledError:
                cancelling = getattr(asyncio.current_task(), "cancelling", None)  # 3.11+
                if work not in self._moved or (cancelling is not None and cancelling()):
                    raise  # the caller itself was cancelled (a client gone, a deadline)
                # swap() took it out of the old batcher's queue before any of its texts
                # was cut into a batch: it runs on the new pair. (Cut between the cancel
                # and its delivery, those texts were computed for nothing: harmless.)
                self._moved.discard(work)
            except BatcherClosedError:
                if self.draining or self.batcher is batcher or self.batcher is None:
                    raise
                # A reload closed the batcher pinned above before the request reached
                # it (or before its drain answered it): none of its vectors was given
                # out, so the whole request runs again, on the new pair.
            finally:
                self._moved.discard(work)
                attempts.pop(work, None)
                if not attempts:
                    self._attempts.pop(batcher, None)
            if self.manager is not manager:
                self._recheck(request, model, dimensions)
            manager, batcher = self.manager, self.batcher
            served = self._served_name(manager)
            assert batcher is not None
            timing = RequestTiming()
        embedded = Embedded(
            response,
            len(inputs),
            timing.queue,
            timing.inference,
            time.perf_counter() - start,
            model=served,
            normalized=manager.config.normalize,
        )
        if record is not None:  # the same figures feed the access log and the metrics
            record.tokens = embedded.tokens
            record.truncated = embedded.truncated
            record.queue_s, record.inference_s = timing.queue, timing.inference
            record.embedded = True
        return embedded


async def _unless_gone(
    work: asyncio.Future[BatchEmbeddingResponse],
    client_gone: Callable[[], Awaitable[object]],
) -> BatchEmbeddingResponse:
    gone = asyncio.ensure_future(client_gone())
    waiting: list[asyncio.Future[Any]] = [work, gone]
    try:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():  # client gone, or this task cancelled: the batcher drops it
            work.cancel()
    if work not in done:
        with contextlib.suppress(asyncio.CancelledError):
            await work
        message = "the client closed the connection before the answer"
        raise Failure("cancelled", message, "client_closed")
    return work.result()


_ZERO_STATS = BatcherStats(0, 0, 0, 0, 0, 0, 0, 0, closed=False)


def _add(stats: list[BatcherStats]) -> BatcherStats:
    total = {f.name: sum(getattr(s, f.name) for s in stats) for f in fields(BatcherStats)}
    return BatcherStats(**{**total, "closed": False})


def _close_and_release(manager: EmbeddingManager) -> None:
    """Close a replaced manager and give the memory its provider used back to the OS:
    glibc keeps freed heap pages (a 90 MB ONNX session's) in its arenas otherwise, and
    the server's resident size would stay at the two providers' peak after a switch."""
    manager.close()
    gc.collect()  # a provider held in a reference cycle goes now, not at some later collection
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)
