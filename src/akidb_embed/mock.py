"""``MockEmbeddingProvider``: deterministic, dependency-free vectors for tests.

Each word (lower-cased ``\\w+`` run) maps to a pseudo-random direction derived from
its BLAKE2b digest, so vectors are identical across processes, machines and Python
versions (no built-in ``hash()``). A text's vector is the normalised sum of its word
directions plus a small share of word bigrams, so texts that share words are closer
than texts that do not, which makes search pipelines testable.

It takes token ids too (``capabilities.token_input``): token id ``n`` is the word
``str(n)``, so ``embed_token_ids([[101, 7592, 102]])`` equals
``embed_batch(["101 7592 102"])``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ._types import ModelInfo, ProviderCapabilities

if TYPE_CHECKING:
    from ._config import EmbeddingConfig

__all__ = ["MockEmbeddingProvider", "MockProviderFailure"]

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_BIGRAM_WEIGHT = 0.35


class MockProviderFailure(RuntimeError):
    """The failure a :class:`MockEmbeddingProvider` injects by default."""


@lru_cache(maxsize=65536)
def _direction(token: str, dimension: int, seed: int) -> np.ndarray:
    """A fixed pseudo-random vector in [-1, 1)^dimension for *token*."""
    out = bytearray()
    counter = 0
    key = seed.to_bytes(8, "little")
    while len(out) < 4 * dimension:
        h = hashlib.blake2b(
            token.encode("utf-8"), digest_size=64, key=key, salt=counter.to_bytes(16, "little")
        )
        out += h.digest()
        counter += 1
    ints = np.frombuffer(bytes(out[: 4 * dimension]), dtype="<u4").astype(np.float64)
    vec = ints / 2.0**31 - 1.0
    vec.setflags(write=False)
    return vec


class MockEmbeddingProvider:
    """A deterministic provider for tests, registered as ``mock``.

    Parameters
    ----------
    config:
        When built through the registry, the resolved config; ``options`` may set
        ``dimension``, ``latency``, ``seed``, ``max_tokens``, ``max_concurrency``,
        ``token_input``, ``vocab_size``, ``load_delay``, ``fail_every``.
    dimension:
        Vector length (default 384, like all-MiniLM-L6-v2).
    latency:
        Seconds to sleep per call, to test timeouts and concurrency.
    fail_every:
        Raise on every *n*-th call (1 = always).
    fail_on:
        Raise when a batch contains one of these texts, or when this predicate
        returns true for a text.
    failure:
        Exception (class or instance) raised on an injected failure.
    seed:
        Changes every direction, giving an independent "model".
    max_tokens:
        Word limit reported in :class:`ModelInfo`; longer texts are cut (and counted in
        :attr:`truncated`); :meth:`count_tokens` counts words, so the manager applies
        ``truncation = "error"``.
    max_concurrency:
        The ``max_concurrency`` it declares in :attr:`capabilities` (default 4).
    token_input:
        Whether it declares ``token_input`` (default true): ``False`` makes a provider
        that takes text only, to test how callers refuse token ids.
    vocab_size:
        Token ids :meth:`embed_token_ids` takes are ``0`` to ``vocab_size - 1``
        (default 30522, all-MiniLM-L6-v2's).
    load_delay:
        Seconds to sleep while being built, like a real model loading (to test readiness).

    Attributes
    ----------
    calls:
        Every batch it was asked to embed, in order (a list of lists).
    token_calls:
        Every batch of token ids it was asked to embed, in order.
    """

    requires: tuple[str, ...] = ()
    thread_safe = True

    def __init__(
        self,
        config: EmbeddingConfig | int | None = None,
        *,
        dimension: int | None = None,
        latency: float = 0.0,
        fail_every: int | None = None,
        fail_on: Collection[str] | Callable[[str], bool] | None = None,
        failure: BaseException | type[BaseException] | None = None,
        seed: int = 0,
        max_tokens: int | None = 512,
        model: str = "mock",
        max_concurrency: int = 4,
        token_input: bool = True,
        vocab_size: int = 30522,
        load_delay: float = 0.0,
    ) -> None:
        options: dict[str, Any] = {}
        if isinstance(config, bool):
            raise TypeError("config must be an EmbeddingConfig or a dimension (int), not a bool")
        if isinstance(config, int):
            dimension = config if dimension is None else dimension
        elif config is not None:
            options = dict(config.options)
            if config.model and config.model != "sentence-transformers/all-MiniLM-L6-v2":
                model = config.model
            if config.max_length is not None:
                max_tokens = config.max_length
        dimension = int(options.get("dimension", dimension if dimension is not None else 384))
        if dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {dimension}")
        self.dimension = dimension
        self.latency = float(options.get("latency", latency))
        self.seed = int(options.get("seed", seed))
        self.max_tokens = options.get("max_tokens", max_tokens)
        fail_every = options.get("fail_every", fail_every)
        if fail_every is not None and (isinstance(fail_every, bool) or int(fail_every) < 1):
            raise ValueError(f"fail_every must be an integer >= 1, got {fail_every!r}")
        self.fail_every = None if fail_every is None else int(fail_every)
        self.fail_on = fail_on
        self.failure = failure if failure is not None else MockProviderFailure
        self.model = model
        token_input = options.get("token_input", token_input)
        if not isinstance(token_input, bool):
            raise TypeError(f"token_input must be a bool, got {token_input!r}")
        self.vocab_size = int(options.get("vocab_size", vocab_size))
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        self.capabilities = ProviderCapabilities(
            max_concurrency=int(options.get("max_concurrency", max_concurrency)),
            reports_usage=True,
            counts_tokens=True,
            token_input=token_input,
        )
        self.calls: list[list[str]] = []
        self.token_calls: list[list[list[int]]] = []
        self.truncated = 0
        self.closed = False
        self._lock = threading.Lock()
        load_delay = float(options.get("load_delay", load_delay))
        if load_delay > 0:
            time.sleep(load_delay)

    # -- recording -----------------------------------------------------------------------

    @property
    def call_count(self) -> int:
        """How many times :meth:`embed_batch` was called."""
        return len(self.calls)

    @property
    def texts(self) -> list[str]:
        """Every text it was asked to embed, flattened in call order."""
        with self._lock:
            return [t for batch in self.calls for t in batch]

    def reset(self) -> None:
        """Forget recorded calls."""
        with self._lock:
            self.calls.clear()
            self.token_calls.clear()
            self.truncated = 0

    # -- provider contract ---------------------------------------------------------------

    def info(self) -> ModelInfo:
        return ModelInfo(
            provider="mock",
            model=self.model,
            dimension=self.dimension,
            max_tokens=self.max_tokens,
            pooling="bag-of-words",
            normalized=True,
            revision=f"seed-{self.seed}",
            dtype="float32",
        )

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        vectors, _ = self.embed_batch_with_usage(texts)
        return vectors

    def embed_batch_with_usage(self, texts: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        texts = list(texts)
        with self._lock:
            if self.closed:
                raise RuntimeError("MockEmbeddingProvider is closed")
            self.calls.append(texts)
            n_call = len(self.calls) + len(self.token_calls)
        if self.latency:
            time.sleep(self.latency)
        self._maybe_fail(texts, n_call)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        tokens = truncated = 0
        for i, text in enumerate(texts):
            words = _WORD_RE.findall(text.lower())
            if self.max_tokens is not None and len(words) > self.max_tokens:
                words = words[: self.max_tokens]
                truncated += 1
            tokens += len(words)
            out[i] = self._vector(words)
        if truncated:
            with self._lock:
                self.truncated += truncated
        return out, {"prompt_tokens": tokens, "truncated": truncated}

    def embed_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed texts given as token ids: id ``n`` is the word ``str(n)``.

        Raises
        ------
        EmbeddingInputError
            Not lists of ints, an empty list, or an id outside ``range(vocab_size)``.
        TruncationError
            A list is longer than ``max_tokens`` (token ids are never cut).
        """
        from .backend._checks import check_token_ids  # the check every backend applies

        limit = sys.maxsize if self.max_tokens is None else int(self.max_tokens)
        rows = check_token_ids(ids, vocab_size=self.vocab_size, max_tokens=limit)
        with self._lock:
            if self.closed:
                raise RuntimeError("MockEmbeddingProvider is closed")
            self.token_calls.append(rows)
            n_call = len(self.calls) + len(self.token_calls)
        if self.latency:
            time.sleep(self.latency)
        words = [[str(i) for i in row] for row in rows]
        self._maybe_fail([" ".join(w) for w in words], n_call)
        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        for i, row_words in enumerate(words):
            out[i] = self._vector(row_words)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Words of each text before truncation (the mock's "tokens")."""
        return [len(_WORD_RE.findall(text.lower())) for text in texts]

    def close(self) -> None:
        self.closed = True

    # -- internals -----------------------------------------------------------------------

    def _maybe_fail(self, texts: list[str], n_call: int) -> None:
        fail = self.fail_every is not None and n_call % self.fail_every == 0
        if not fail and self.fail_on is not None:
            if callable(self.fail_on):
                fail = any(self.fail_on(t) for t in texts)
            else:
                fail = any(t in self.fail_on for t in texts)
        if fail:
            failure = self.failure
            if isinstance(failure, type):
                failure = failure(f"injected failure on call {n_call}")
            raise failure

    def _vector(self, words: list[str]) -> np.ndarray:
        # Each distinct word (and word bigram) counts once: repeated stop words must not
        # outweigh the content words two texts share.
        acc = np.zeros(self.dimension, dtype=np.float64)
        if not words:
            acc += _direction("\x00<empty>", self.dimension, self.seed)
        for word in dict.fromkeys(words):
            acc += _direction(word, self.dimension, self.seed)
        for a, b in dict.fromkeys(itertools.pairwise(words)):
            acc += _BIGRAM_WEIGHT * _direction(f"{a}\x00{b}", self.dimension, self.seed)
        norm = float(np.sqrt(np.dot(acc, acc)))
        return acc / norm if norm > 0 else acc
