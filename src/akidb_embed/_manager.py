"""``EmbeddingManager``: the one object applications talk to."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ._cache import CacheEntry, VectorCache
from ._config import EmbeddingConfig
from ._observers import EmbeddingObserver, ProviderCallEvent, RequestEvent, StatsObserver
from ._pipeline import EmbeddingRequest, Job, Key, check_output, progress_bar, validate_texts
from ._registry import create_provider
from ._types import (
    BatchEmbeddingRequest,
    BatchEmbeddingResponse,
    EmbeddingProvider,
    ModelInfo,
    provider_capabilities,
)
from .backend._pooling import normalize_rows
from .errors import (
    AkidbEmbedError,
    EmbeddingInputError,
    InvalidRequestError,
    ModelMismatchError,
    ProviderBusyError,
    ProviderClosedError,
    ProviderError,
    ProviderOutputError,
    TruncationError,
)

__all__ = ["DEFAULT_SLOT_TIMEOUT", "EmbeddingManager", "validate_texts"]

_log = logging.getLogger("akidb_embed")
_T = TypeVar("_T")
ProgressCallback = Callable[[int], None]
EmbedOutcome = BatchEmbeddingResponse | AkidbEmbedError

#: Seconds a call waits for one of the provider's ``max_concurrency`` slots before it
#: fails with :class:`~akidb_embed.errors.ProviderBusyError` (a provider call that
#: takes longer than this is stuck, not busy).
DEFAULT_SLOT_TIMEOUT = 300.0


class EmbeddingManager:
    """Validates input, batches, caches, normalises and measures around one provider.

    Build it with :meth:`from_config` (provider chosen by configuration) or directly
    from a provider object. Safe to call from several threads at once, and from
    asyncio (the ``a*`` methods); use it as a context manager or call :meth:`close`.

    At most the provider's ``max_concurrency`` (see
    :class:`~akidb_embed.ProviderCapabilities`) provider calls run at once, whatever
    the number of callers; the others wait their turn, for at most *slot_timeout*
    seconds.

    Parameters
    ----------
    provider:
        The provider to wrap; the manager closes it in :meth:`close`.
    config:
        Batch size, cache size, normalisation and truncation defaults; by default one
        naming the provider's model.
    observers:
        :class:`~akidb_embed.EmbeddingObserver` objects to notify (see
        :meth:`add_observer`).
    slot_timeout:
        Seconds to wait for a provider slot before :class:`ProviderBusyError`.

    Examples
    --------
    >>> with EmbeddingManager.from_config(provider="mock") as manager:
    ...     manager.embed(["a text", "another"]).shape
    (2, 384)
    """

    def __init__(
        self,
        provider: EmbeddingProvider,
        config: EmbeddingConfig | None = None,
        *,
        observers: Iterable[EmbeddingObserver] = (),
        slot_timeout: float = DEFAULT_SLOT_TIMEOUT,
    ) -> None:
        self._provider = provider
        self._info = provider.info()
        self.config = config or EmbeddingConfig(
            provider=self._info.provider, model=self._info.model
        )
        try:
            self._caps = provider_capabilities(provider)
        except (TypeError, ValueError) as exc:  # a plugin's declaration is wrong
            raise ProviderError(self._info.provider, str(exc)) from exc
        self._cache = VectorCache(self.config.cache_size)
        self._stats = StatsObserver()
        self._observers: tuple[EmbeddingObserver, ...] = (self._stats, *observers)
        self._slots = threading.BoundedSemaphore(self._caps.max_concurrency)
        self._slot_timeout = slot_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls, config: EmbeddingConfig | None = None, **overrides: Any
    ) -> EmbeddingManager:
        """Build the provider named by the configuration.

        With no *config*, :meth:`EmbeddingConfig.load` resolves one (file, environment,
        defaults); *overrides* take precedence either way.
        """
        if config is None:
            config = EmbeddingConfig.load(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        return cls(create_provider(config), config)

    # -- properties ----------------------------------------------------------------------

    @property
    def provider(self) -> EmbeddingProvider:
        """The provider object this manager wraps."""
        return self._provider

    @property
    def info(self) -> ModelInfo:
        """The provider's :class:`ModelInfo`."""
        return self._info

    @property
    def capabilities(self) -> Any:
        """The provider's :class:`~akidb_embed.ProviderCapabilities`, as read once."""
        return self._caps

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        return self._info.dimension

    @property
    def closed(self) -> bool:
        return self._closed

    # -- observers -----------------------------------------------------------------------

    def add_observer(self, observer: EmbeddingObserver) -> None:
        """Report every request and provider call to *observer* from now on."""
        with self._lock:
            self._observers = (*self._observers, observer)

    def remove_observer(self, observer: EmbeddingObserver) -> None:
        """Stop reporting to *observer*; ``ValueError`` if it was not added."""
        with self._lock:
            if observer not in self._observers or observer is self._stats:
                raise ValueError(f"{observer!r} is not an observer of this manager")
            self._observers = tuple(o for o in self._observers if o is not observer)

    # -- embedding -----------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        prompt_name: str | None = None,
        truncation: str | None = None,
        progress: bool | ProgressCallback = False,
    ) -> np.ndarray:
        """Embed *texts*; return float32 of shape ``(len(texts), dimension)``.

        Parameters
        ----------
        normalize:
            Unit-norm rows; defaults to the config's ``normalize``.
        prompt_name:
            Name of a model prompt (``"query"``, ``"document"``) to prepend; defaults to
            the model's ``default_prompt_name``.
        truncation:
            ``"truncate"`` or ``"error"``; defaults to the config's ``truncation``.
        progress:
            ``True`` shows a progress bar on long inputs; a callable receives the count of
            texts done after each batch.
        """
        request = EmbeddingRequest(texts, normalize, prompt_name, truncation)
        return self._one(request, progress).embeddings

    def embed_documents(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        progress: bool | ProgressCallback = False,
    ) -> np.ndarray:
        """Embed *texts* as documents (the model's ``document`` prompt, if it has one)."""
        return self.embed(
            texts, normalize=normalize, prompt_name=self._named("document"), progress=progress
        )

    def embed_queries(self, texts: Sequence[str], *, normalize: bool | None = None) -> np.ndarray:
        """Embed several queries at once (the model's ``query`` prompt, if it has one)."""
        return self.embed(texts, normalize=normalize, prompt_name=self._named("query"))

    def embed_query(self, text: str, *, normalize: bool | None = None) -> np.ndarray:
        """Embed one query; return a 1-d float32 vector.

        The model's ``query`` prompt, if it has one, is prepended.
        """
        _check_query(text)
        return self.embed_queries([text], normalize=normalize)[0]

    def embed_token_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        normalize: bool | None = None,
        truncation: str | None = None,
    ) -> np.ndarray:
        """Embed texts given as token ids; return float32 of shape ``(len(ids), dimension)``.

        Each row is one text's ids as the model's tokenizer gives them (special tokens
        included); it is embedded as given, with no prompt, and gives the text's own
        vector. ``EmbeddingRequest(token_ids=ids)`` does the same in :meth:`embed_many`.

        Parameters
        ----------
        normalize:
            Unit-norm rows; defaults to the config's ``normalize``.
        truncation:
            A row longer than the model's ``max_tokens``: ``"truncate"`` keeps its first
            ``max_tokens`` ids, ``"error"`` raises; defaults to the config's.

        Raises
        ------
        InvalidRequestError
            The provider takes text only (``capabilities.token_input`` is false).
        EmbeddingInputError
            Not lists of ints, an empty list, a negative id, or (from the provider) an id
            outside the vocabulary.
        TruncationError
            A row is over the limit and *truncation* is ``"error"``; it names the row.
        """
        request = EmbeddingRequest(normalize=normalize, truncation=truncation, token_ids=ids)
        return self._one(request, False).embeddings

    async def aembed_token_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        normalize: bool | None = None,
        truncation: str | None = None,
    ) -> np.ndarray:
        """:meth:`embed_token_ids` without blocking the event loop."""
        request = EmbeddingRequest(normalize=normalize, truncation=truncation, token_ids=ids)
        response = await self._submit(self._one, request, False)
        return response.embeddings

    def embed_batch(self, request: BatchEmbeddingRequest) -> BatchEmbeddingResponse:
        """Serve a :class:`BatchEmbeddingRequest` (what the HTTP API and the bridge speak)."""
        return self._one(self._from_batch(request), False)

    def embed_many(
        self,
        requests: Sequence[EmbeddingRequest],
        *,
        progress: bool | ProgressCallback = False,
    ) -> list[EmbedOutcome]:
        """Embed several independent requests, sharing provider calls between them.

        Each request keeps its own prompt, normalisation, truncation policy, usage and
        error: the result list holds, in order, a :class:`BatchEmbeddingResponse` for
        each request that succeeded and the :class:`~akidb_embed.errors.AkidbEmbedError`
        of each that failed (indexes in an error count within its own request). A
        failing request never changes the vectors of the others.

        Texts of different requests are merged into the same provider calls when the
        provider counts tokens (``counts_tokens``), so usage and the truncation policy
        stay exact per request; otherwise each request gets calls of its own. Requests
        of token ids (``EmbeddingRequest(token_ids=...)``) count their tokens exactly
        and are always merged with each other, in calls of their own: a provider takes
        either texts or ids in one call.

        Raises
        ------
        ProviderClosedError
            The manager is closed.
        """
        if self._closed:
            raise ProviderClosedError("EmbeddingManager is closed")
        start = time.perf_counter()
        jobs = [self._prepare(i, request) for i, request in enumerate(requests)]
        live = [job for job in jobs if job.error is None]
        self._lookup(live)
        texts = [job for job in live if not job.token_input]
        groups = [texts] if self._caps.counts_tokens else [[job] for job in texts]
        groups.append([job for job in live if job.token_input])
        todo = sum(len(job.pending) for job in live)
        bar = progress_bar(todo, progress)
        try:
            for group in groups:
                self._run_group(group, bar)
        finally:
            bar(None)
        return [self._finish(job, time.perf_counter() - start) for job in jobs]

    async def aembed_many(self, requests: Sequence[EmbeddingRequest]) -> list[EmbedOutcome]:
        """:meth:`embed_many` on the manager's own worker threads (at most
        ``max_concurrency``), so the event loop keeps running.

        A call cancelled before its turn comes is removed from the queue and never
        reaches the provider; one cancelled while running finishes, and its result is
        dropped.
        """
        return await self._submit(self.embed_many, requests)

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        prompt_name: str | None = None,
        truncation: str | None = None,
    ) -> np.ndarray:
        """:meth:`embed` without blocking the event loop (see :meth:`aembed_many`)."""
        request = EmbeddingRequest(texts, normalize, prompt_name, truncation)
        response = await self._submit(self._one, request, False)
        return response.embeddings

    async def aembed_documents(
        self, texts: Sequence[str], *, normalize: bool | None = None
    ) -> np.ndarray:
        """:meth:`embed_documents` without blocking the event loop."""
        return await self.aembed(texts, normalize=normalize, prompt_name=self._named("document"))

    async def aembed_queries(
        self, texts: Sequence[str], *, normalize: bool | None = None
    ) -> np.ndarray:
        """:meth:`embed_queries` without blocking the event loop."""
        return await self.aembed(texts, normalize=normalize, prompt_name=self._named("query"))

    async def aembed_query(self, text: str, *, normalize: bool | None = None) -> np.ndarray:
        """:meth:`embed_query` without blocking the event loop."""
        _check_query(text)
        return (await self.aembed_queries([text], normalize=normalize))[0]

    async def aembed_batch(self, request: BatchEmbeddingRequest) -> BatchEmbeddingResponse:
        """:meth:`embed_batch` without blocking the event loop."""
        return await self._submit(self._one, self._from_batch(request), False)

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """Tokens of each text before truncation (special tokens included), or ``None``
        when the provider does not count tokens (``capabilities.counts_tokens``).

        Prompts are not prepended: pass the texts as the provider will see them. A
        batcher uses this to cut batches by a token budget.
        """
        items = validate_texts(texts)
        if not self._caps.counts_tokens:
            return None
        if self._closed:
            raise ProviderClosedError("EmbeddingManager is closed")
        return self._count_tokens(items) if items else []

    # -- operations ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Embed a probe text and report ``{"status": "ok" | "error", ...}``; never raises."""
        report: dict[str, Any] = {
            "provider": self._info.provider,
            "model": self._info.model,
            "dimension": self.dimension,
        }
        if self._closed:
            return {**report, "status": "error", "error": "manager is closed"}
        start = time.perf_counter()
        try:
            vector = self._call_provider(["health check"], 1)[0][0]
            if not np.all(np.isfinite(vector)):
                raise ProviderOutputError(self._info.provider, "probe vector is not finite")
        except Exception as exc:  # health reports failures instead of raising them
            return {**report, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
        report["latency_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return {**report, "status": "ok"}

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests, texts, errors, provider calls, cache hits and
        misses, tokens, truncated texts, and request latency p50/p95/p99 in milliseconds
        (what the built-in :class:`~akidb_embed.StatsObserver` collects)."""
        out = self._stats.snapshot()
        out["cache_size"] = len(self._cache)
        return out

    def clear_cache(self) -> None:
        """Drop every cached vector."""
        self._cache.clear()

    def close(self) -> None:
        """Close the provider. Later calls raise :class:`ProviderClosedError`; closing
        twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            # Queued async calls still run, and fail at once with ProviderClosedError.
            executor.shutdown(wait=False)
        self._cache.clear()
        self._provider.close()

    def __enter__(self) -> EmbeddingManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        name = f"{self._info.provider}:{self._info.model}"
        return f"<EmbeddingManager {name} dim={self.dimension} {state}>"

    # -- request level -------------------------------------------------------------------

    def _named(self, prompt: str) -> str | None:
        # A model without this prompt gets its default prompt, as for embed().
        return prompt if prompt in self._info.prompts else None

    def _from_batch(self, request: BatchEmbeddingRequest) -> EmbeddingRequest:
        return EmbeddingRequest(request.inputs, request.normalize, model=request.model)

    def _one(self, request: EmbeddingRequest, progress: bool | ProgressCallback) -> Any:
        outcome = self.embed_many([request], progress=progress)[0]
        if isinstance(outcome, AkidbEmbedError):
            raise outcome
        return outcome

    async def _submit(self, fn: Callable[..., _T], *args: Any) -> _T:
        import asyncio  # only async callers pay for it

        with self._lock:
            if self._closed:
                raise ProviderClosedError("EmbeddingManager is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._caps.max_concurrency, thread_name_prefix="akidb-embed"
                )
            future: Future[_T] = self._executor.submit(fn, *args)
        # Cancelling the awaiting task cancels *future* too, which drops it from the
        # executor's queue if it has not started.
        wrapped: Awaitable[_T] = asyncio.wrap_future(future)
        return await wrapped

    def _prepare(self, index: int, request: EmbeddingRequest) -> Job:
        job = Job(index)
        try:
            if not isinstance(request, EmbeddingRequest):
                raise InvalidRequestError(
                    f"requests[{index}] must be an EmbeddingRequest, got {type(request).__name__}"
                )
            if request.model not in (None, "", self._info.model, self.config.model):
                raise ModelMismatchError(
                    f"request asks for model {request.model!r}, but this manager serves "
                    f"{self._info.model!r}"
                )
            job.normalize = (
                self.config.normalize if request.normalize is None else request.normalize
            )
            job.truncation = request.truncation or self.config.truncation
            if request.token_ids is not None:
                self._prepare_ids(job, request.token_ids)
                return job
            texts = validate_texts(request.texts)
            prompt = self._prompt(request.prompt_name)
            job.items = [prompt + t for t in texts] if prompt else list(texts)
            if job.truncation == "truncate" and self.config.truncation == "error":
                raise InvalidRequestError(
                    f"provider {self._info.provider!r} is configured with truncation = 'error' "
                    "and refuses over-long texts itself; a request cannot ask it to truncate"
                )
            if (
                job.truncation == "error"
                and self.config.truncation != "error"
                and not self._caps.counts_tokens
                and self._info.max_tokens is not None
            ):
                raise InvalidRequestError(
                    f"provider {self._info.provider!r} does not count tokens, so it cannot "
                    "refuse over-long texts per request; configure it with truncation = 'error'"
                )
        except AkidbEmbedError as exc:
            job.fail(exc)
        return job

    def _prepare_ids(self, job: Job, ids: Sequence[Sequence[int]]) -> None:
        if not self._caps.token_input:
            raise InvalidRequestError(
                f"this provider ({self._info.provider}) takes text only: send the texts, "
                "not token ids"
            )
        job.token_input = True
        job.lengths = [len(row) for row in ids]
        limit = self._info.max_tokens
        # The manager cuts ids itself (providers refuse over-long ids), so "truncate"
        # works whatever the provider's own truncation setting; _lookup applies "error".
        cut = limit is not None and job.truncation == "truncate"
        job.items = [tuple(row[:limit]) if cut else tuple(row) for row in ids]

    def _prompt(self, prompt_name: str | None) -> str:
        name = prompt_name if prompt_name is not None else self._info.default_prompt_name
        if not name:
            return ""
        try:
            return self._info.prompts[name]
        except KeyError:
            raise EmbeddingInputError(
                f"model {self._info.model!r} has no prompt named {name!r}; "
                f"it has: {', '.join(self._info.prompts) or '(none)'}"
            ) from None

    def _lookup(self, jobs: list[Job]) -> None:
        """Fill cached rows, count tokens, and apply each request's truncation policy."""
        counting = self._caps.counts_tokens
        uncounted: dict[str, None] = {}
        for job in jobs:
            job.out = np.empty((len(job.items), self.dimension), dtype=np.float32)
            # Token ids count themselves: their lengths, never a cached count.
            job.tokens = list(job.lengths) if job.token_input else [None] * len(job.items)
            for row, key in enumerate(job.items):
                entry = self._cache.get(key)
                if entry is not None:
                    job.out[row] = entry.vector
                    if not job.token_input:
                        job.tokens[row] = entry.tokens
                    job.cache_hits += 1
                else:
                    job.pending.setdefault(key, []).append(row)
                if counting and isinstance(key, str) and job.tokens[row] is None:
                    uncounted[key] = None
        counts: dict[str, int] = {}
        if uncounted:
            try:
                counts = dict(zip(uncounted, self._count_tokens(list(uncounted)), strict=True))
            except ProviderClosedError:
                raise
            except AkidbEmbedError as exc:
                # Which request's texts cannot be counted? Count each on its own.
                for job in jobs if len(jobs) > 1 else []:
                    mine = [t for t in dict.fromkeys(job.items) if t in uncounted]
                    if not mine:
                        continue
                    try:
                        counts.update(zip(mine, self._count_tokens(mine), strict=True))
                    except AkidbEmbedError as own:
                        job.fail(own)
                if len(jobs) == 1:
                    jobs[0].fail(exc)
        limit = self._info.max_tokens
        for job in jobs:
            if job.error is not None:
                continue
            if counting and not job.token_input:
                job.tokens = [
                    counts[t] if n is None else n  # type: ignore[index]
                    for t, n in zip(job.items, job.tokens, strict=True)
                ]
            if not (counting or job.token_input) or limit is None:
                continue
            for row, n in enumerate(job.tokens):
                assert n is not None
                if n > limit:
                    if job.truncation == "error":
                        job.fail(TruncationError(row, n, limit))
                        break
                    job.truncated += 1
                job.prompt_tokens += min(n, limit)
        if limit is None:
            for job in jobs:
                if counting or job.token_input:
                    job.prompt_tokens = sum(n or 0 for n in job.tokens)

    def _count_tokens(self, texts: list[str]) -> list[int]:
        provider: Any = self._provider  # declares counts_tokens: count_tokens() exists
        try:
            counts = [int(n) for n in provider.count_tokens(texts)]
        except AkidbEmbedError:
            raise
        except Exception as exc:  # any provider failure surfaces typed, naming the provider
            raise ProviderError(
                self._info.provider, f"count_tokens failed: {type(exc).__name__}: {exc}"
            ) from exc
        if len(counts) != len(texts):
            raise ProviderOutputError(
                self._info.provider,
                f"count_tokens returned {len(counts)} counts for {len(texts)} texts",
            )
        return counts

    def _finish(self, job: Job, seconds: float) -> EmbedOutcome:
        misses = len(job.items) - job.cache_hits
        event = RequestEvent(
            self._info.provider,
            self._info.model,
            len(job.items),
            job.prompt_tokens,
            job.truncated,
            job.cache_hits,
            misses,
            seconds,
            job.error,
        )
        self._notify("on_request", event)
        if job.error is not None:
            return job.error
        out = job.out if job.out is not None else np.empty((0, self.dimension), np.float32)
        if job.normalize and not self._info.normalized:
            normalize_rows(out)
        usage = {
            "texts": len(job.items),
            "prompt_tokens": job.prompt_tokens,
            "truncated": job.truncated,
            "cached": job.cache_hits,
        }
        return BatchEmbeddingResponse(out, self._info.model, self.dimension, usage)

    # -- call level ----------------------------------------------------------------------

    def _run_group(self, jobs: list[Job], bar: Callable[[int | None], None]) -> None:
        """Embed the pending texts (or token ids: all *jobs* are of one kind) of *jobs* in
        shared, length-sorted provider calls."""
        owners: dict[Key, list[Job]] = {}
        for job in jobs:
            if job.error is None:
                for key in job.pending:
                    owners.setdefault(key, []).append(job)
        todo = list(owners)
        ids = bool(jobs) and jobs[0].token_input
        if len(todo) > 1:
            # Sorting by length makes each batch pad to a similar length.
            order = np.argsort(np.asarray(self._sort_keys(todo, owners, ids)), kind="stable")
            todo = [todo[i] for i in order]
        size = self.config.batch_size
        if self._caps.max_batch_size is not None:
            size = min(size, self._caps.max_batch_size)
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            self._embed_chunk(chunk, owners, ids=ids)
            bar(len(chunk))

    def _sort_keys(self, texts: list[Key], owners: dict[Key, list[Job]], ids: bool) -> list[int]:
        if ids:
            return [len(key) for key in texts]
        if self._caps.counts_tokens:
            limit = self._info.max_tokens
            keys = []
            for text in texts:
                job = owners[text][0]
                n = job.tokens[job.pending[text][0]] or 0
                keys.append(n if limit is None else min(n, limit))
            return keys
        if self._caps.text_lengths:
            provider: Any = self._provider  # declares text_lengths: the method exists
            return [int(n) for n in provider.text_lengths(texts)]
        return [len(t) for t in texts]

    def _embed_chunk(
        self,
        chunk: list[Key],
        owners: dict[Key, list[Job]],
        only: Job | None = None,
        *,
        ids: bool = False,
    ) -> None:
        """One provider call for *chunk* (texts, or token id tuples with *ids*); on
        failure, fail only the requests to blame.

        With *only*, the call embeds that request's share of *chunk*, and a failure is
        its own.
        """
        if only is not None:
            chunk = [t for t in chunk if only.error is None and t in only.pending]
            jobs = [only] if chunk else []
        else:
            chunk = [t for t in chunk if any(job.error is None for job in owners[t])]
            jobs = list({id(j): j for t in chunk for j in owners[t] if j.error is None}.values())
        if not chunk:
            return
        try:
            vectors, usage = self._call_provider(chunk, len(jobs), owners, ids=ids)
        except TruncationError as exc:
            if not 0 <= exc.index < len(chunk):
                raise
            # The provider saw a de-duplicated, sorted chunk: name each caller's index.
            text = chunk[exc.index]
            for job in owners[text]:
                error = TruncationError(job.pending[text][0], exc.tokens, exc.max_tokens)
                error.__cause__ = exc
                job.fail(error)
            self._embed_chunk([t for t in chunk if t != text], owners, only, ids=ids)
            return
        except (ProviderClosedError, ProviderBusyError) as exc:
            for job in jobs:
                job.fail(exc)
            return
        except AkidbEmbedError as exc:
            if len(jobs) == 1:
                jobs[0].fail(self._own_ids_error(jobs[0], exc) if ids else exc)
                return
            # Which request's texts broke the call? Run each request's share on its own,
            # so only that one fails.
            for job in jobs:
                self._embed_chunk(chunk, owners, job, ids=ids)
            return
        self._store(chunk, vectors, owners)
        if not self._caps.counts_tokens and not ids:
            # Without counts each request has calls of its own: the usage is all its.
            jobs[0].prompt_tokens += int(usage.get("prompt_tokens", 0))
            jobs[0].truncated += int(usage.get("truncated", 0))

    def _own_ids_error(self, job: Job, error: AkidbEmbedError) -> AkidbEmbedError:
        """The input error of a token-id request with indexes that count in the request.

        The failed call saw the request's ids de-duplicated and sorted, so the index a
        provider names (an id outside the vocabulary "at index 3") means nothing to the
        caller. Asking again with every row in the request's order names the right one;
        providers check ids before they compute, so this costs little.
        """
        if not isinstance(error, EmbeddingInputError):
            return error
        try:
            self._call_provider(list(job.items), 1, ids=True)
        except EmbeddingInputError as own:
            return own
        except AkidbEmbedError:
            pass  # the provider failed otherwise this time: report the first failure
        return error

    def _store(self, chunk: list[Key], vectors: np.ndarray, owners: dict[Key, list[Job]]) -> None:
        for text, vector in zip(chunk, vectors, strict=True):
            vector.setflags(write=False)
            first = owners[text][0]
            # A token id tuple's count is its request's own (see _lookup): none is cached.
            tokens = None if first.token_input else first.tokens[first.pending[text][0]]
            self._cache.put(text, CacheEntry(vector, tokens))
            for job in owners[text]:
                rows = job.pending.pop(text, None)
                if rows is not None and job.out is not None:
                    job.out[rows] = vector

    def _call_provider(
        self,
        chunk: Sequence[Key],
        requests: int,
        owners: Mapping[Key, list[Job]] | None = None,
        *,
        ids: bool = False,
    ) -> tuple[np.ndarray, Mapping[str, int]]:
        name = self._info.provider
        tokens = longest = truncated = 0
        if owners is not None and (self._caps.counts_tokens or ids):
            limit = self._info.max_tokens
            for text in chunk:
                job = owners[text][0]
                n = job.tokens[job.pending[text][0]] or 0
                truncated += limit is not None and n > limit
                n = n if limit is None else min(n, limit)
                tokens += n
                longest = max(longest, n)
        waited = time.perf_counter()
        if not self._slots.acquire(timeout=self._slot_timeout):
            raise ProviderBusyError(
                f"no provider slot came free within {self._slot_timeout:g} s "
                f"({self._caps.max_concurrency} calls of {name!r} at once are all busy)"
            )
        start = time.perf_counter()
        error: BaseException | None = None
        usage: Mapping[str, int] = {}
        provider: Any = self._provider  # optional methods, as the capabilities declare
        try:
            if ids:
                rows = [list(key) for key in chunk]
                result, usage = provider.embed_token_ids(rows), {}
            elif self._caps.reports_usage:
                result, usage = provider.embed_batch_with_usage(chunk)
            else:
                result, usage = provider.embed_batch(chunk), {}
            out = check_output(name, result, len(chunk), self.dimension)
        except AkidbEmbedError as exc:
            error = exc
            raise
        except Exception as exc:  # any provider failure surfaces typed, naming the provider
            method = "embed_token_ids" if ids else "embed_batch"
            error = ProviderError(name, f"{method} failed: {type(exc).__name__}: {exc}")
            raise error from exc
        finally:
            self._slots.release()
            if not self._caps.counts_tokens and not ids and error is None:
                tokens = int(usage.get("prompt_tokens", 0))
                truncated = int(usage.get("truncated", 0))
            event = ProviderCallEvent(
                name,
                self._info.model,
                len(chunk),
                tokens,
                longest,
                truncated,
                requests,
                time.perf_counter() - start,
                start - waited,
                error,
            )
            self._notify("on_provider_call", event)
        return out, usage

    def _notify(self, method: str, event: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(event)
            except Exception:  # observing must never fail an embedding
                _log.exception("observer %r failed in %s", observer, method)


def _check_query(text: object) -> None:
    if not isinstance(text, str):
        raise EmbeddingInputError(f"query must be str, got {type(text).__name__}")
