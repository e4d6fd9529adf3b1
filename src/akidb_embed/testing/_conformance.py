"""The provider conformance suite."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from .._config import EmbeddingConfig
from .._manager import EmbeddingManager
from .._pipeline import EmbeddingRequest
from .._types import EmbeddingProvider, ModelInfo, ProviderCapabilities, provider_capabilities
from ..errors import EmbeddingInputError, TruncationError

__all__ = ["ProviderConformance", "conformance_texts"]


def conformance_texts() -> list[str]:
    """Short, varied texts: plain, empty, whitespace, unicode, code, markup."""
    return [
        "The quick brown fox jumps over the lazy dog.",
        "",
        "   \t\n ",
        "a",
        "Embeddings map text to vectors.",
        "東京は日本の首都です。",
        "Ελληνικά και русский текст вместе",
        "emoji 🚀🔥 and accents: café, naïve, façade",
        "مرحبا بالعالم",
        "zero\u200bwidth and combining e\u0301",
        "def f(x):\n    return x ** 2  # code",
        "<p>Some <b>HTML</b> &amp; entities</p>",
    ]


class ProviderConformance:
    """Checks every provider must pass. Subclass it in a test module::

        class TestMyProvider(ProviderConformance):
            def make_provider(self):
                return MyProvider(EmbeddingConfig(provider="mine", model="..."))

    Attributes
    ----------
    batch_atol:
        Largest allowed difference between a text's vector alone and inside a batch.
    threads:
        Threads used by the concurrency check.
    """

    batch_atol: float = 1e-5
    threads: int = 4

    def make_provider(self) -> EmbeddingProvider:
        """Return a new, ready provider. Called once per class, and again by the close check."""
        raise NotImplementedError("subclasses of ProviderConformance implement make_provider()")

    # -- fixtures ------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls) -> Iterator[EmbeddingProvider]:
        provider = cls().make_provider()
        try:
            yield provider
        finally:
            provider.close()

    @pytest.fixture(scope="class")
    @classmethod
    def manager(cls, provider: EmbeddingProvider) -> EmbeddingManager:
        info = provider.info()
        # No cache: every call below must reach the provider.
        config = EmbeddingConfig(provider=info.provider, model=info.model, cache_size=0)
        return EmbeddingManager(provider, config)

    @staticmethod
    def _embed(provider: EmbeddingProvider, texts: list[str]) -> np.ndarray:
        out = provider.embed_batch(texts)
        assert isinstance(out, np.ndarray), f"embed_batch returned {type(out).__name__}"
        return out

    # -- the checks ----------------------------------------------------------------------

    def test_info(self, provider: EmbeddingProvider) -> None:
        info = provider.info()
        assert isinstance(info, ModelInfo)
        assert isinstance(info.dimension, int) and info.dimension > 0
        assert isinstance(info.provider, str) and info.provider
        assert isinstance(info.model, str) and info.model
        assert info.max_tokens is None or info.max_tokens > 0

    def test_shape_and_dtype(self, provider: EmbeddingProvider) -> None:
        texts = ["one", "two words", "three words here"]
        out = self._embed(provider, texts)
        assert out.dtype == np.float32
        assert out.shape == (3, provider.info().dimension)
        assert np.isfinite(out).all()

    def test_deterministic(self, provider: EmbeddingProvider) -> None:
        texts = ["determinism matters", "so does reproducibility"]
        first = self._embed(provider, texts)
        second = self._embed(provider, texts)
        np.testing.assert_allclose(first, second, rtol=0, atol=self.batch_atol)

    def test_distinct_texts_differ(self, provider: EmbeddingProvider) -> None:
        out = self._embed(provider, ["a cat sleeps on the sofa", "interest rates rose in March"])
        assert not np.allclose(out[0], out[1], atol=1e-3)

    def test_batch_invariance(self, provider: EmbeddingProvider) -> None:
        texts = [*conformance_texts(), "word " * 40, "short"]
        together = self._embed(provider, texts)
        reverse = self._embed(provider, texts[::-1])[::-1]
        for i, text in enumerate(texts):
            alone = self._embed(provider, [text])[0]
            np.testing.assert_allclose(
                alone,
                together[i],
                rtol=0,
                atol=self.batch_atol,
                err_msg=f"text {i} ({text!r:.40}) depends on its batch",
            )
        np.testing.assert_allclose(reverse, together, rtol=0, atol=self.batch_atol)

    def test_empty_input(self, provider: EmbeddingProvider, manager: EmbeddingManager) -> None:
        out = manager.embed([])
        assert out.shape == (0, provider.info().dimension)
        assert out.dtype == np.float32
        empty = self._embed(provider, [""])
        assert empty.shape == (1, provider.info().dimension)
        assert np.isfinite(empty).all()

    def test_unicode(self, provider: EmbeddingProvider) -> None:
        texts = conformance_texts()
        out = self._embed(provider, texts)
        assert out.shape == (len(texts), provider.info().dimension)
        assert np.isfinite(out).all()

    def test_longer_than_limit(
        self, provider: EmbeddingProvider, manager: EmbeddingManager
    ) -> None:
        limit = provider.info().max_tokens or 2048
        long_text = " ".join(f"word{i % 97}" for i in range(limit * 3))
        out = self._embed(provider, [long_text, "short"])
        assert np.isfinite(out).all()
        response_vectors = manager.embed([long_text])
        assert np.isfinite(response_vectors).all()
        norms = np.linalg.norm(response_vectors, axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)

    def test_manager_normalizes(self, manager: EmbeddingManager) -> None:
        out = manager.embed(["normalise me", "and me too", ""])
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)

    def test_concurrent_calls(self, provider: EmbeddingProvider) -> None:
        batches = [
            [f"thread {t} text {i} " + "x " * (t * 3 + i) for i in range(5)]
            for t in range(self.threads)
        ]
        expected = [self._embed(provider, b) for b in batches]
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(t: int) -> None:
            try:
                for _ in range(3):
                    out = self._embed(provider, batches[t])
                    with lock:
                        results[t] = out
                    np.testing.assert_allclose(out, expected[t], rtol=0, atol=self.batch_atol)
            except BaseException as exc:  # collected and re-raised in the main thread
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=300)
        assert not any(w.is_alive() for w in workers), "a concurrent call hung"
        if errors:
            raise errors[0]
        assert len(results) == self.threads

    def test_close_twice(self) -> None:
        provider = self.make_provider()
        provider.embed_batch(["before close"])
        provider.close()
        provider.close()

    def test_declared_capabilities(self, provider: EmbeddingProvider) -> None:
        caps = provider_capabilities(provider)  # raises if a declared method is missing
        assert isinstance(caps, ProviderCapabilities)
        assert caps.max_concurrency >= 1
        texts = ["one", "two words here", ""]
        info = provider.info()
        long_text = " ".join(f"word{i % 97}" for i in range((info.max_tokens or 64) * 3))
        if caps.counts_tokens:
            counts = provider.count_tokens([*texts, long_text])  # type: ignore[attr-defined]
            assert len(counts) == 4
            assert all(isinstance(n, int) and n >= 0 for n in counts)
            assert counts[1] > counts[0]
            if info.max_tokens is not None:
                assert counts[3] > info.max_tokens, "count_tokens must count before truncation"
        if caps.text_lengths:
            lengths = provider.text_lengths([*texts, long_text])  # type: ignore[attr-defined]
            assert len(lengths) == 4 and all(isinstance(n, int) for n in lengths)
            if info.max_tokens is not None:
                assert lengths[3] <= info.max_tokens
        if caps.reports_usage:
            vectors, usage = provider.embed_batch_with_usage(texts)  # type: ignore[attr-defined]
            assert vectors.shape == (3, info.dimension)
            assert all(isinstance(v, int) for v in dict(usage).values())

    #: Token ids the token-input check embeds; valid in any vocabulary of 200+ ids.
    token_ids: tuple[tuple[int, ...], ...] = ((101, 2023, 2003, 102), (101, 102), (7, 8, 9, 10, 11))

    def test_token_input(self, provider: EmbeddingProvider, manager: EmbeddingManager) -> None:
        """A provider that declares ``token_input`` embeds ids like texts: float32 rows of
        its dimension, independent of the batch, and bad ids are typed errors."""
        if not provider_capabilities(provider).token_input:
            return  # nothing declared, nothing to check (the capabilities check covers it)
        embed_ids = provider.embed_token_ids  # type: ignore[attr-defined]
        rows = [list(row) for row in self.token_ids]
        out = embed_ids(rows)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert out.shape == (len(rows), provider.info().dimension)
        assert np.isfinite(out).all()
        for i, row in enumerate(rows):
            alone = embed_ids([row])[0]
            np.testing.assert_allclose(alone, out[i], rtol=0, atol=self.batch_atol)
        via_manager = manager.embed_token_ids(rows, normalize=False)
        np.testing.assert_allclose(via_manager, out, rtol=0, atol=self.batch_atol)
        bad_ids: tuple[list[list[object]], ...] = ([[]], [[-1, 5]], [["7"]])
        for bad in bad_ids:
            with pytest.raises(EmbeddingInputError):
                embed_ids(bad)
        limit = provider.info().max_tokens
        if limit is not None:
            with pytest.raises(TruncationError):  # token ids are never cut silently
                embed_ids([[rows[0][0]] * (limit + 1)])

    def test_embed_many_isolates_requests(self, manager: EmbeddingManager) -> None:
        good_a = ["a cat sleeps on the sofa", "interest rates rose in March", "short"]
        good_b = ["short", "the third request", ""]
        requests = [
            EmbeddingRequest(good_a),
            EmbeddingRequest(["fine", 42]),  # type: ignore[list-item]
            EmbeddingRequest(good_b, normalize=False),
        ]
        limit = manager.info.max_tokens
        strict = manager.capabilities.counts_tokens and limit is not None
        if strict:
            long_text = " ".join(f"word{i % 97}" for i in range((limit or 0) * 3))
            requests.append(EmbeddingRequest(["ok", long_text], truncation="error"))
        results = manager.embed_many(requests)
        assert len(results) == len(requests)
        assert isinstance(results[1], EmbeddingInputError)
        assert "texts[1]" in str(results[1])
        if strict:
            assert isinstance(results[3], TruncationError)
            assert results[3].index == 1, "the index must count within its own request"
        for result, texts, normalize in ((results[0], good_a, True), (results[2], good_b, False)):
            assert not isinstance(result, Exception), result
            alone = manager.embed(texts, normalize=normalize)
            np.testing.assert_allclose(result.embeddings, alone, rtol=0, atol=self.batch_atol)
            assert result.usage["texts"] == len(texts)
