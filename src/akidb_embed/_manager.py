"""``EmbeddingManager``: the one object applications talk to."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from ._config import EmbeddingConfig
from ._registry import create_provider
from ._types import BatchEmbeddingRequest, BatchEmbeddingResponse, EmbeddingProvider, ModelInfo
from .errors import (
    AkidbEmbedError,
    EmbeddingInputError,
    ModelMismatchError,
    ProviderClosedError,
    ProviderError,
    ProviderOutputError,
    TruncationError,
)

__all__ = ["EmbeddingManager", "validate_texts"]

_LATENCY_WINDOW = 10_000
ProgressCallback = Callable[[int], None]


def validate_texts(texts: object) -> list[str]:
    """Return *texts* as a list, or raise :class:`EmbeddingInputError` saying what is wrong."""
    if texts is None:
        raise EmbeddingInputError("texts must be a sequence of str, got None")
    if isinstance(texts, (str, bytes)):
        raise EmbeddingInputError(
            f"texts must be a sequence of str, got a single {type(texts).__name__}; "
            "wrap it in a list, or use embed_query() for one text"
        )
    if not isinstance(texts, Sequence):
        raise EmbeddingInputError(
            f"texts must be a sequence of str (list or tuple), got {type(texts).__name__}"
        )
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise EmbeddingInputError(
                f"texts[{i}] must be str, got {type(text).__name__} ({text!r:.60})"
            )
    return out


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        if not self.size:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        if not self.size:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "texts",
                "errors",
                "provider_calls",
                "cache_hits",
                "cache_misses",
                "prompt_tokens",
                "truncated",
            ),
            0,
        )
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)

    def add(self, **counts: int) -> None:
        with self.lock:
            for key, value in counts.items():
                self.counts[key] += value

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            lat = np.array(self.latencies, dtype=np.float64)
            out: dict[str, Any] = dict(self.counts)
        out["uptime_s"] = round(time.monotonic() - self.started, 3)
        for q in (50, 95, 99):
            out[f"latency_ms_p{q}"] = float(np.percentile(lat, q)) if lat.size else None
        return out


class EmbeddingManager:
    """Validates input, batches, caches, normalises and measures around one provider.

    Build it with :meth:`from_config` (provider chosen by configuration) or directly
    from a provider object. Safe to call from several threads at once; use it as a
    context manager or call :meth:`close`.

    Examples
    --------
    >>> with EmbeddingManager.from_config(provider="mock") as manager:
    ...     manager.embed(["a text", "another"]).shape
    (2, 384)
    """

    def __init__(self, provider: EmbeddingProvider, config: EmbeddingConfig | None = None) -> None:
        self._provider = provider
        self._info = provider.info()
        self.config = config or EmbeddingConfig(
            provider=self._info.provider, model=self._info.model
        )
        self._cache = _LRU(self.config.cache_size)
        self._stats = _Stats()
        self._closed = False
        self._close_lock = threading.Lock()
        thread_safe = getattr(provider, "thread_safe", True)
        self._call_lock: threading.Lock | nullcontext[None] = (
            nullcontext() if thread_safe else threading.Lock()
        )
        self._embed_with_usage = getattr(provider, "embed_batch_with_usage", None)
        self._text_lengths = getattr(provider, "text_lengths", None)

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
    def dimension(self) -> int:
        """Length of every vector."""
        return self._info.dimension

    @property
    def closed(self) -> bool:
        return self._closed

    # -- embedding -----------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        prompt_name: str | None = None,
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
        progress:
            ``True`` shows a progress bar on long inputs; a callable receives the count of
            texts done after each batch.
        """
        return self._run(texts, normalize, prompt_name, progress)[0]

    def embed_documents(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        progress: bool | ProgressCallback = False,
    ) -> np.ndarray:
        """Embed *texts* as documents (the model's ``document`` prompt, if it has one)."""
        name = "document" if "document" in self._info.prompts else None
        return self.embed(texts, normalize=normalize, prompt_name=name, progress=progress)

    def embed_queries(self, texts: Sequence[str], *, normalize: bool | None = None) -> np.ndarray:
        """Embed several queries at once (the model's ``query`` prompt, if it has one)."""
        name = "query" if "query" in self._info.prompts else None
        return self.embed(texts, normalize=normalize, prompt_name=name)

    def embed_query(self, text: str, *, normalize: bool | None = None) -> np.ndarray:
        """Embed one query; return a 1-d float32 vector.

        The model's ``query`` prompt, if it has one, is prepended.
        """
        if not isinstance(text, str):
            raise EmbeddingInputError(f"query must be str, got {type(text).__name__}")
        return self.embed_queries([text], normalize=normalize)[0]

    def embed_batch(self, request: BatchEmbeddingRequest) -> BatchEmbeddingResponse:
        """Serve a :class:`BatchEmbeddingRequest` (what the HTTP API and the bridge speak)."""
        if request.model not in (None, "", self._info.model, self.config.model):
            raise ModelMismatchError(
                f"request asks for model {request.model!r}, but this manager serves "
                f"{self._info.model!r}"
            )
        vectors, usage = self._run(request.inputs, request.normalize, None, False)
        return BatchEmbeddingResponse(vectors, self._info.model, self.dimension, usage)

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        prompt_name: str | None = None,
    ) -> np.ndarray:
        """:meth:`embed` in a worker thread, so the event loop keeps running."""
        import asyncio  # only async callers pay for it

        return await asyncio.to_thread(
            self.embed, texts, normalize=normalize, prompt_name=prompt_name
        )

    async def aembed_query(self, text: str, *, normalize: bool | None = None) -> np.ndarray:
        """:meth:`embed_query` in a worker thread."""
        import asyncio

        return await asyncio.to_thread(self.embed_query, text, normalize=normalize)

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
            vector = self._call_provider(["health check"])[0][0]
            if not np.all(np.isfinite(vector)):
                raise ProviderOutputError(self._info.provider, "probe vector is not finite")
        except Exception as exc:  # health reports failures instead of raising them
            return {**report, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
        report["latency_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return {**report, "status": "ok"}

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests, texts, errors, cache hits/misses, tokens,
        truncated texts, and request latency p50/p95/p99 in milliseconds."""
        out = self._stats.snapshot()
        out["cache_size"] = len(self._cache)
        return out

    def clear_cache(self) -> None:
        """Drop every cached vector."""
        self._cache.clear()

    def close(self) -> None:
        """Close the provider. Later calls raise :class:`ProviderClosedError`; closing
        twice is harmless."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
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

    # -- internals -----------------------------------------------------------------------

    def _run(
        self,
        texts: Sequence[str],
        normalize: bool | None,
        prompt_name: str | None,
        progress: bool | ProgressCallback,
    ) -> tuple[np.ndarray, dict[str, int]]:
        if self._closed:
            raise ProviderClosedError("EmbeddingManager is closed")
        start = time.perf_counter()
        try:
            items = validate_texts(texts)
            prompt = self._prompt(prompt_name)
            if prompt:
                items = [prompt + t for t in items]
            out, usage = self._embed_items(items, progress)
        except Exception:
            self._stats.add(requests=1, errors=1)
            raise
        wanted = self.config.normalize if normalize is None else normalize
        if wanted and not self._info.normalized:
            _normalize_rows(out)
        elapsed = time.perf_counter() - start
        with self._stats.lock:
            self._stats.latencies.append(elapsed * 1000)
        self._stats.add(requests=1, texts=len(items))
        return out, usage

    def _prompt(self, prompt_name: str | None) -> str:
        name = prompt_name if prompt_name is not None else self._info.default_prompt_name
        if name is None:
            return ""
        try:
            return self._info.prompts[name]
        except KeyError:
            raise EmbeddingInputError(
                f"model {self._info.model!r} has no prompt named {name!r}; "
                f"it has: {', '.join(self._info.prompts) or '(none)'}"
            ) from None

    def _embed_items(
        self, items: list[str], progress: bool | ProgressCallback
    ) -> tuple[np.ndarray, dict[str, int]]:
        out = np.empty((len(items), self.dimension), dtype=np.float32)
        usage = {"texts": len(items), "prompt_tokens": 0, "truncated": 0, "cached": 0}
        positions: dict[str, list[int]] = {}
        for i, text in enumerate(items):
            cached = self._cache.get(text)
            if cached is not None:
                out[i] = cached
                usage["cached"] += 1
            else:
                positions.setdefault(text, []).append(i)
        todo = list(positions)
        self._stats.add(cache_hits=usage["cached"], cache_misses=len(items) - usage["cached"])
        if len(todo) > 1:
            # Sorting by length makes each batch pad to a similar length.
            lengths = self._text_lengths(todo) if self._text_lengths else [len(t) for t in todo]
            order = np.argsort(np.asarray(lengths), kind="stable")
            todo = [todo[i] for i in order]
        bar = _progress_bar(len(todo), progress)
        try:
            bs = self.config.batch_size
            for start in range(0, len(todo), bs):
                chunk = todo[start : start + bs]
                try:
                    vectors, chunk_usage = self._call_provider(chunk)
                except TruncationError as exc:
                    # The provider saw a de-duplicated, sorted chunk: name the caller's index.
                    if not 0 <= exc.index < len(chunk):
                        raise
                    caller_index = positions[chunk[exc.index]][0]
                    raise TruncationError(caller_index, exc.tokens, exc.max_tokens) from exc
                for text, vector in zip(chunk, vectors, strict=False):
                    vector.setflags(write=False)
                    self._cache.put(text, vector)
                    for i in positions[text]:
                        out[i] = vector
                for key in ("prompt_tokens", "truncated"):
                    usage[key] += int(chunk_usage.get(key, 0))
                bar(len(chunk))
        finally:
            bar(None)
        self._stats.add(prompt_tokens=usage["prompt_tokens"], truncated=usage["truncated"])
        return out, usage

    def _call_provider(self, chunk: list[str]) -> tuple[np.ndarray, Mapping[str, int]]:
        name = self._info.provider
        self._stats.add(provider_calls=1)
        try:
            with self._call_lock:
                if self._embed_with_usage is not None:
                    result, usage = self._embed_with_usage(chunk)
                else:
                    result, usage = self._provider.embed_batch(chunk), {}
        except AkidbEmbedError:
            raise
        except Exception as exc:  # any provider failure surfaces typed, naming the provider
            raise ProviderError(name, f"embed_batch failed: {type(exc).__name__}: {exc}") from exc
        return _check_output(name, result, len(chunk), self.dimension), usage


def _check_output(provider: str, result: object, n: int, dimension: int) -> np.ndarray:
    if not isinstance(result, np.ndarray):
        raise ProviderOutputError(
            provider, f"returned {type(result).__name__}, expected numpy.ndarray"
        )
    if result.shape != (n, dimension):
        raise ProviderOutputError(
            provider, f"returned shape {result.shape} for {n} texts, expected {(n, dimension)}"
        )
    if not np.issubdtype(result.dtype, np.floating):
        raise ProviderOutputError(provider, f"returned dtype {result.dtype}, expected float32")
    out = np.array(result, dtype=np.float32, copy=True)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ProviderOutputError(
            provider, f"returned a non-finite value (NaN or inf) for text {bad} of the batch"
        )
    return out


def _normalize_rows(out: np.ndarray) -> None:
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)


def _progress_bar(total: int, progress: bool | ProgressCallback) -> Callable[[int | None], None]:
    """A callable fed with the texts done per step, and ``None`` at the end."""
    if callable(progress):
        done = 0

        def report(step: int | None) -> None:
            nonlocal done
            if step is not None:
                done += step
                progress(done)

        return report
    if not progress or total == 0:
        return lambda step: None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: a plain counter on stderr instead
        import sys

        done = 0

        def plain(step: int | None) -> None:
            nonlocal done
            if step is None:
                sys.stderr.write("\n")
                return
            done += step
            sys.stderr.write(f"\rembedding: {done}/{total} texts")
            sys.stderr.flush()

        return plain
    bar = tqdm(total=total, unit="text", desc="embedding")

    def update(step: int | None) -> None:
        if step is None:
            bar.close()
        else:
            bar.update(step)

    return update
