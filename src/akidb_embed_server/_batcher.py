"""``Batcher``: dynamic micro-batching of concurrent requests for one manager.

Modelled on text-embeddings-inference (``core/src/queue.rs``, ``core/src/infer.rs``):
one FIFO queue, one scheduler task that cuts a batch whenever the provider has a free
slot, filled in order while the padded token total stays within a budget. Unlike TEI,
each request keeps its own options and errors (``EmbeddingManager.embed_many``), and a
request has a deadline after which its queued texts are dropped.

Requests of token ids (``EmbeddingRequest(token_ids=...)``) queue and batch like texts,
each text's ids counting ``len(ids)`` tokens; a batch may hold both kinds, and the
manager embeds each kind in provider calls of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from akidb_embed import BatchEmbeddingResponse, EmbeddingManager, EmbeddingRequest
from akidb_embed.errors import (
    AkidbEmbedError,
    EmbeddingInputError,
    InvalidRequestError,
    TruncationError,
)

from .errors import BatcherClosedError, QueueFullError, RequestTimeoutError

__all__ = ["CHARS_PER_TOKEN", "BatchEvent", "Batcher", "BatcherStats", "RequestTiming"]

_log = logging.getLogger("akidb_embed.server")

#: Characters per token assumed when the provider does not count tokens: English text
#: under WordPiece/BPE tokenizers averages about four; two special tokens are added.
CHARS_PER_TOKEN = 4


@dataclass
class RequestTiming:
    """Where one request's time went, filled in by :meth:`Batcher.embed` (seconds).

    ``queue``: from acceptance until its first batch left; ``inference``: the summed
    time of the batches that computed its pieces; ``cut``: a batch holding one of its
    texts has been cut (from then on the request is tied to this batcher's provider);
    ``moved``: set by the caller before it cancels the request to run it elsewhere (its
    queued texts are then not counted as dropped).
    """

    queue: float = 0.0
    inference: float = 0.0
    cut: bool = False
    moved: bool = False


@dataclass(frozen=True)
class BatchEvent:
    """One batch the batcher ran (what a metrics layer turns into histograms).

    ``queue_wait`` holds, per piece in the batch, the seconds between its request being
    accepted and the batch leaving; ``padded_tokens`` is ``longest x texts``.
    """

    texts: int
    pieces: int
    padded_tokens: int
    longest: int
    queue_wait: tuple[float, ...]
    seconds: float
    failed_pieces: int


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot of :meth:`Batcher.stats`: gauges now, counters since start."""

    queued_texts: int
    queued_requests: int
    in_flight_batches: int
    batches: int
    batched_texts: int
    dropped_texts: int
    rejected_requests: int
    timed_out_requests: int
    closed: bool


@dataclass(eq=False)
class _Piece:
    owner: _Pending
    start: int  # position of its first row in the request's (sorted) order
    texts: list[Any]  # texts, or token id tuples for a token-id request
    longest: int
    rows: list[int] | None = None  # the request's indices of its texts, when sorted


@dataclass(eq=False)
class _Pending:
    request: EmbeddingRequest
    texts: int
    accepted: float
    future: asyncio.Future[BatchEmbeddingResponse]
    pieces: list[_Piece] = field(default_factory=list)
    results: dict[int, BatchEmbeddingResponse] = field(default_factory=dict)
    order: list[int] | None = None  # the request's indices in piece order, when sorted
    queued: int = 0  # its texts still counted in the queue
    timing: RequestTiming | None = None
    started: bool = False

    @property
    def done(self) -> bool:
        return self.future.done()


class Batcher:
    """Merge the texts of concurrent requests into batches for one manager.

    Parameters
    ----------
    manager:
        The manager to serve; the batcher runs each batch as one
        ``await manager.aembed_many(...)`` and never closes the manager.
    max_batch_tokens:
        Budget of a batch in padded tokens (longest text x texts). A single text over
        the budget still goes, alone.
    max_batch_size:
        Most texts in a batch; default ``manager.config.batch_size``.
    max_wait_ms:
        While another batch is in flight, how long a free slot waits for a thin queue
        to fill before it takes what is there. An idle provider never waits.
    max_queue_texts:
        Texts the queue holds at most; a request that would pass it raises
        :class:`~akidb_embed_server.QueueFullError` at once.
    observers:
        Callables given a :class:`BatchEvent` after each batch (see :meth:`add_observer`).

    Use it from one event loop; close it with :meth:`close` (or ``async with``).
    """

    def __init__(
        self,
        manager: EmbeddingManager,
        *,
        max_batch_tokens: int = 16384,
        max_batch_size: int | None = None,
        max_wait_ms: float = 2.0,
        max_queue_texts: int = 4096,
        observers: Iterable[Callable[[BatchEvent], None]] = (),
    ) -> None:
        size = manager.config.batch_size if max_batch_size is None else max_batch_size
        for name, value in (
            ("max_batch_tokens", max_batch_tokens),
            ("max_batch_size", size),
            ("max_queue_texts", max_queue_texts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequestError(f"{name} must be an int >= 1, got {value!r}")
        if not max_wait_ms >= 0:
            raise InvalidRequestError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.manager = manager
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = size
        self.max_wait_ms = float(max_wait_ms)
        self.max_queue_texts = max_queue_texts
        self.max_concurrency: int = manager.capabilities.max_concurrency
        self._observers: list[Callable[[BatchEvent], None]] = list(observers)
        self._queue: deque[_Piece] = deque()
        self._pending: set[_Pending] = set()
        self._queued_texts = 0
        self._in_flight = 0
        self._batches = self._batched_texts = self._dropped = 0
        self._rejected = self._timed_out = 0
        self._rate: float | None = None  # texts per second of one slot, smoothed
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Counting tokens is tokenizer work: it runs here, off the event loop, in order
        # (one thread keeps acceptance order = queue order).
        self._counter = ThreadPoolExecutor(1, thread_name_prefix="akidb-batcher-count")

    # -- public API -------------------------------------------------------------------

    async def embed(
        self,
        request: EmbeddingRequest,
        *,
        timeout: float | None = None,
        timing: RequestTiming | None = None,
    ) -> BatchEmbeddingResponse:
        """Embed *request* in shared batches; return what ``manager.embed_many`` would.

        Raises the request's own typed error (a ``TruncationError`` names the index in
        *request*), :class:`QueueFullError` at once when the queue is full,
        :class:`RequestTimeoutError` after *timeout* seconds (its queued texts are
        dropped, never computed), :class:`BatcherClosedError` once closing. Cancelling
        the awaiting task drops its queued texts too. A *timing* given is filled in with
        the request's queue and inference seconds.
        """
        pending = self._accept(request)
        pending.timing = timing
        try:
            if timeout is None:
                return await self._serve(pending)
            return await asyncio.wait_for(self._serve(pending), timeout)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            if isinstance(exc, AkidbEmbedError) or timeout is None:
                raise  # the request's own error (e.g. ProviderBusyError)
            self._timed_out += 1
            raise RequestTimeoutError(timeout) from None
        finally:
            self._forget(pending)

    def stats(self) -> BatcherStats:
        """Queue depth and in-flight batches now; batches, texts, drops since start."""
        return BatcherStats(
            queued_texts=self._queued_texts,
            queued_requests=sum(1 for p in self._pending if p.queued),
            in_flight_batches=self._in_flight,
            batches=self._batches,
            batched_texts=self._batched_texts,
            dropped_texts=self._dropped,
            rejected_requests=self._rejected,
            timed_out_requests=self._timed_out,
            closed=self._closed,
        )

    def add_observer(self, observer: Callable[[BatchEvent], None]) -> None:
        """Call *observer* with a :class:`BatchEvent` after every batch, on the event
        loop: keep it quick. One that raises is logged and ignored."""
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[BatchEvent], None]) -> None:
        """Stop calling *observer*; ``ValueError`` if it was not added."""
        self._observers.remove(observer)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting requests, let queued and in-flight ones finish within
        *drain_timeout* seconds, then fail what is left with :class:`BatcherClosedError`.
        The manager stays open."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        deadline = time.monotonic() + max(drain_timeout, 0.0)
        while (self._pending or self._in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(min(0.005, max(deadline - time.monotonic(), 0.0)))
        error = BatcherClosedError("the batcher closed before the request was answered")
        for pending in list(self._pending):
            self._drop(pending, count=False)
            if not pending.done:
                pending.future.set_exception(error)
        for task in [*self._tasks, *([self._scheduler] if self._scheduler else [])]:
            task.cancel()
        for task in [*self._tasks, *([self._scheduler] if self._scheduler else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._counter.shutdown(wait=False)

    async def __aenter__(self) -> Batcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- accepting --------------------------------------------------------------------

    def _accept(self, request: EmbeddingRequest) -> _Pending:
        if self._closed:
            raise BatcherClosedError("the batcher is closed and takes no more requests")
        if not isinstance(request, EmbeddingRequest):
            raise InvalidRequestError(
                f"request must be an EmbeddingRequest, got {type(request).__name__}"
            )
        loop = asyncio.get_running_loop()
        self._start(loop)
        inputs = request.texts if request.token_ids is None else request.token_ids
        n = len(inputs) if isinstance(inputs, Sequence) else 0
        if self._queued_texts + n > self.max_queue_texts:
            self._rejected += 1
            raise QueueFullError(n, self._queued_texts, self.max_queue_texts, self._retry_after())
        pending = _Pending(request, n, time.perf_counter(), loop.create_future(), queued=n)
        self._queued_texts += n
        self._pending.add(pending)
        return pending

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_concurrency)
            self._scheduler = loop.create_task(self._schedule(), name="akidb-batcher")
        elif self._loop is not loop:
            raise RuntimeError("a Batcher serves the event loop it was first used on")

    async def _serve(self, pending: _Pending) -> BatchEmbeddingResponse:
        assert self._loop is not None and self._wakeup is not None
        request = pending.request
        try:
            longest = await self._loop.run_in_executor(self._counter, self._count, request)
        except AkidbEmbedError:
            self._drop(pending, count=False)  # its input failed: nothing was dropped
            raise
        pending.pieces = self._split(pending, longest)
        self._queue.extend(pending.pieces)
        self._wakeup.set()
        return await pending.future

    def _count(self, request: EmbeddingRequest) -> list[int]:
        """Padded length of each text as the provider will see it (prompt included,
        capped at the model's limit)."""
        info = self.manager.info
        limit = info.max_tokens
        if request.token_ids is not None:  # checked by EmbeddingRequest: len() is exact
            return [n if limit is None else min(n, limit) for n in map(len, request.token_ids)]
        name = request.prompt_name if request.prompt_name is not None else info.default_prompt_name
        prompt = info.prompts.get(name, "") if name else ""
        texts = [prompt + t for t in request.texts] if prompt else list(request.texts)
        counts = self.manager.count_tokens(texts)  # also validates: not a str -> typed error
        if counts is None:  # the provider does not count: estimate from characters
            counts = [math.ceil(len(t) / CHARS_PER_TOKEN) + 2 for t in texts]
        return [max(1, n if limit is None else min(n, limit)) for n in counts]

    def _split(self, pending: _Pending, lengths: list[int]) -> list[_Piece]:
        """Cut a request into pieces that each fit one batch.

        A text request larger than one batch is cut in token-count order, so each piece
        pads to texts of its own length (as one ``embed`` call sorts its texts), and
        reassembled in the request's order; a token-id request is cut in order (errors
        name an index of its piece)."""
        request = pending.request
        texts = list(request.texts if request.token_ids is None else request.token_ids)
        order: list[int] | None = None
        if request.token_ids is None and not self._fits(lengths):
            order = sorted(range(len(texts)), key=lengths.__getitem__)
            texts = [texts[i] for i in order]
            lengths = [lengths[i] for i in order]
            pending.order = order
        pieces: list[_Piece] = []
        start = longest = 0
        for i, n in enumerate(lengths):
            count = i - start + 1
            top = max(longest, n)
            if count > 1 and (count > self.max_batch_size or top * count > self.max_batch_tokens):
                pieces.append(_Piece(pending, start, texts[start:i], longest))
                start, top = i, n
            longest = top
        pieces.append(_Piece(pending, start, texts[start:], longest))
        if order is not None:
            for piece in pieces:
                piece.rows = order[piece.start : piece.start + len(piece.texts)]
        return pieces

    def _fits(self, lengths: list[int]) -> bool:
        """Whether texts of these lengths fit one batch."""
        return len(lengths) <= self.max_batch_size and (
            len(lengths) <= 1 or max(lengths) * len(lengths) <= self.max_batch_tokens
        )

    # -- scheduling -------------------------------------------------------------------

    async def _schedule(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        while True:
            while not self._queue:
                if self._closed and not self._pending:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._slots.acquire()
            try:
                if self._in_flight and self.max_wait_ms > 0:
                    await self._let_fill()
                batch = self._cut()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _let_fill(self) -> None:
        """Wait at most ``max_wait_ms`` for the queue to hold a full batch."""
        assert self._wakeup is not None
        deadline = time.perf_counter() + self.max_wait_ms / 1000
        while not self._full() and not self._closed:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), left)

    def _full(self) -> bool:
        texts = longest = 0
        for piece in self._queue:
            texts += len(piece.texts)
            longest = max(longest, piece.longest)
            if texts >= self.max_batch_size or texts * longest >= self.max_batch_tokens:
                return True
        return False

    def _cut(self) -> list[_Piece]:
        """Take pieces in FIFO order while the batch stays within both limits."""
        batch: list[_Piece] = []
        texts = longest = 0
        while self._queue:
            piece = self._queue[0]
            n = texts + len(piece.texts)
            top = max(longest, piece.longest)
            if batch and (n > self.max_batch_size or n * top > self.max_batch_tokens):
                break
            self._queue.popleft()
            batch.append(piece)
            texts, longest = n, top
            piece.owner.queued -= len(piece.texts)
            self._queued_texts -= len(piece.texts)
            if piece.owner.timing is not None:
                piece.owner.timing.cut = True
        return batch

    async def _execute(self, batch: list[_Piece]) -> None:
        assert self._slots is not None
        left = time.perf_counter()
        outcomes: list[Any]
        try:
            requests = [self._piece_request(piece) for piece in batch]
            try:
                outcomes = await self.manager.aembed_many(requests)
            except Exception as exc:  # e.g. the manager closed: fail the pieces, never hang them
                outcomes = [exc] * len(batch)
        finally:
            self._in_flight -= 1
            self._slots.release()
        seconds = time.perf_counter() - left
        texts = sum(len(p.texts) for p in batch)
        if texts and seconds > 0:
            rate = texts / seconds
            self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
        self._batches += 1
        self._batched_texts += texts
        failed = 0
        for piece, outcome in zip(batch, outcomes, strict=True):
            failed += isinstance(outcome, BaseException)
            owner = piece.owner
            if owner.timing is not None:
                if not owner.started:
                    owner.timing.queue = left - owner.accepted
                owner.timing.inference += seconds
            owner.started = True
            self._deliver(piece, outcome)
        longest = max(p.longest for p in batch)
        event = BatchEvent(
            texts=texts,
            pieces=len(batch),
            padded_tokens=texts * longest,
            longest=longest,
            queue_wait=tuple(left - p.owner.accepted for p in batch),
            seconds=seconds,
            failed_pieces=failed,
        )
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # observing must never fail a batch
                _log.exception("batcher observer %r failed", observer)

    @staticmethod
    def _piece_request(piece: _Piece) -> EmbeddingRequest:
        r = piece.owner.request
        if r.token_ids is not None:
            return EmbeddingRequest(
                normalize=r.normalize, truncation=r.truncation, model=r.model, token_ids=piece.texts
            )
        return EmbeddingRequest(piece.texts, r.normalize, r.prompt_name, r.truncation, r.model)

    # -- reassembly -------------------------------------------------------------------

    def _deliver(self, piece: _Piece, outcome: BatchEmbeddingResponse | BaseException) -> None:
        pending = piece.owner
        if pending.done:
            return
        if isinstance(outcome, BaseException):
            if isinstance(outcome, TruncationError) and (piece.start or piece.rows):
                index = (
                    outcome.index + piece.start if piece.rows is None else piece.rows[outcome.index]
                )
                shifted = TruncationError(index, outcome.tokens, outcome.max_tokens)
                shifted.__cause__ = outcome
                outcome = shifted
            elif (
                isinstance(outcome, EmbeddingInputError)
                and piece.start
                and pending.request.token_ids is not None
            ):
                # A provider names a bad token id by its index in the piece it was given.
                shifted_input = EmbeddingInputError(
                    f"{outcome} (the index counts from input {piece.start} of the request)"
                )
                shifted_input.__cause__ = outcome
                outcome = shifted_input
            self._drop(pending, count=False)  # its other pieces would be computed for nothing
            pending.future.set_exception(outcome)
            return
        pending.results[piece.start] = outcome
        if len(pending.results) == len(pending.pieces):
            pending.future.set_result(self._assemble(pending))

    def _assemble(self, pending: _Pending) -> BatchEmbeddingResponse:
        parts = [pending.results[p.start] for p in pending.pieces]
        if len(parts) == 1:
            return parts[0]
        usage: dict[str, int] = {}
        for part in parts:
            for key, value in part.usage.items():
                usage[key] = usage.get(key, 0) + int(value)
        embeddings = np.concatenate([part.embeddings for part in parts], axis=0)
        if pending.order is not None:  # cut in token-count order: back to the request's
            restored = np.empty_like(embeddings)
            restored[pending.order] = embeddings
            embeddings = restored
        return BatchEmbeddingResponse(embeddings, parts[0].model, parts[0].dimension, usage)

    def _drop(self, pending: _Pending, *, count: bool = True) -> None:
        """Take the request's pieces still queued out of the queue; with *count*, they
        were dropped for a client gone away or a deadline passed."""
        if not pending.queued:
            return
        if pending.pieces:
            keep = [p for p in self._queue if p.owner is not pending]
            self._queue.clear()
            self._queue.extend(keep)
        if count:
            self._dropped += pending.queued
        self._queued_texts -= pending.queued
        pending.queued = 0

    def _forget(self, pending: _Pending) -> None:
        # Timed out, cancelled or failed: nothing of it is computed (a request moved to
        # another batcher is not a drop).
        self._drop(pending, count=pending.timing is None or not pending.timing.moved)
        self._pending.discard(pending)
        if self._closed and not self._pending and self._wakeup is not None:
            self._wakeup.set()

    def _retry_after(self) -> float:
        """Seconds until the queue has drained what it holds now, at the recent rate."""
        if not self._rate:
            return 1.0
        return max(0.001, self._queued_texts / (self._rate * self.max_concurrency))
