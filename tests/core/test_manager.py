from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from akidb_embed import (
    BatchEmbeddingRequest,
    EmbeddingConfig,
    EmbeddingManager,
    MockEmbeddingProvider,
    ModelInfo,
)
from akidb_embed.errors import (
    EmbeddingInputError,
    ModelMismatchError,
    ProviderClosedError,
    ProviderError,
    ProviderOutputError,
)
from akidb_embed.mock import MockProviderFailure


class ArrayProvider:
    """A provider returning whatever array function it is given (for output checks)."""

    def __init__(self, make, dimension: int = 4, normalized: bool = False) -> None:
        self.make = make
        self.dimension = dimension
        self.normalized = normalized
        self.closed = 0

    def info(self) -> ModelInfo:
        return ModelInfo(
            provider="array",
            model="array",
            dimension=self.dimension,
            max_tokens=None,
            pooling="none",
            normalized=self.normalized,
        )

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.make(texts)

    def close(self) -> None:
        self.closed += 1


def manager_for(provider, **config) -> EmbeddingManager:
    info = provider.info()
    return EmbeddingManager(
        provider, EmbeddingConfig(provider=info.provider, model=info.model, **config)
    )


def test_embed_shapes_and_norms(embedding_manager: EmbeddingManager) -> None:
    out = embedding_manager.embed(["alpha beta", "", "gamma"])
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert embedding_manager.dimension == 384
    assert embedding_manager.info.provider == "mock"


def test_empty_list_gives_empty_array(embedding_manager, mock_provider) -> None:
    out = embedding_manager.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert mock_provider.call_count == 0


@pytest.mark.parametrize(
    ("texts", "fragment"),
    [
        (None, "got None"),
        ("a single string", "single str"),
        (b"bytes", "single bytes"),
        (42, "got int"),
        ({"a", "b"}, "got set"),
        (iter(["a"]), "got list_iterator"),
        (["ok", 3, "x"], r"texts\[1\] must be str, got int"),
        (["ok", None], r"texts\[1\] must be str, got NoneType"),
        (("a", b"b"), r"texts\[1\] must be str, got bytes"),
    ],
)
def test_bad_input_is_typed(embedding_manager, texts, fragment) -> None:
    with pytest.raises(EmbeddingInputError, match=fragment) as info:
        embedding_manager.embed(texts)
    assert isinstance(info.value, TypeError)
    assert embedding_manager.stats()["errors"] == 1


def test_embed_query_returns_1d(embedding_manager) -> None:
    vector = embedding_manager.embed_query("what is a cat")
    assert vector.shape == (384,)
    np.testing.assert_allclose(vector, embedding_manager.embed(["what is a cat"])[0])
    with pytest.raises(EmbeddingInputError):
        embedding_manager.embed_query(["not", "a", "str"])  # type: ignore[arg-type]


def test_batching_dedupe_and_order(mock_provider) -> None:
    manager = manager_for(mock_provider, batch_size=3, cache_size=0)
    texts = [f"text number {i} " + "w " * (i % 5) for i in range(10)] + ["text number 0 "]
    out = manager.embed(texts)
    assert [len(c) for c in mock_provider.calls] == [3, 3, 3, 1]  # 10 unique texts
    expected = MockEmbeddingProvider().embed_batch(texts)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_array_equal(out[0], out[-1])


def test_sorted_by_provider_lengths(mock_provider) -> None:
    class LengthAware(MockEmbeddingProvider):
        def text_lengths(self, texts):
            return [len(t.split()) for t in texts]

    provider = LengthAware()
    manager = manager_for(provider, batch_size=2, cache_size=0)
    texts = ["a b c d e", "a", "a b c", "a b", "a b c d"]
    out = manager.embed(texts)
    assert provider.calls == [["a", "a b"], ["a b c", "a b c d"], ["a b c d e"]]
    np.testing.assert_allclose(out, MockEmbeddingProvider().embed_batch(texts), atol=1e-6)


def test_cache_hits_skip_provider(mock_provider) -> None:
    manager = manager_for(mock_provider, cache_size=10)
    first = manager.embed(["cached text", "other"])
    second = manager.embed(["cached text"])
    np.testing.assert_array_equal(first[0], second[0])
    assert sorted(mock_provider.texts) == ["cached text", "other"]
    stats = manager.stats()
    assert stats["cache_hits"] == 1 and stats["cache_misses"] == 2
    # Returned arrays are the caller's: writing to them does not corrupt the cache.
    second[0][:] = 0
    np.testing.assert_array_equal(manager.embed(["cached text"])[0], first[0])


def test_cache_is_bounded(mock_provider) -> None:
    manager = manager_for(mock_provider, cache_size=2)
    manager.embed(["a", "b", "c"])
    assert manager.stats()["cache_size"] == 2
    manager.embed(["a"])  # evicted: asked again
    assert mock_provider.texts.count("a") == 2


def test_normalize_flag() -> None:
    provider = ArrayProvider(lambda texts: np.full((len(texts), 4), 2.0, dtype=np.float32))
    manager = manager_for(provider)
    np.testing.assert_allclose(manager.embed(["x"]), [[0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(manager.embed(["y"], normalize=False), [[2, 2, 2, 2]])
    raw = manager_for(provider, normalize=False)
    np.testing.assert_allclose(raw.embed(["z"]), [[2, 2, 2, 2]])


def test_zero_vector_normalizes_without_nan() -> None:
    provider = ArrayProvider(lambda texts: np.zeros((len(texts), 4), dtype=np.float32))
    out = manager_for(provider).embed(["zero"])
    assert np.isfinite(out).all() and not out.any()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda t: np.zeros((len(t), 3), np.float32), r"shape \(1, 3\)"),
        (lambda t: np.zeros((len(t) + 1, 4), np.float32), r"shape \(2, 4\)"),
        (lambda t: [[0.0] * 4 for _ in t], "returned list"),
        (lambda t: np.full((len(t), 4), np.nan, np.float32), "non-finite"),
        (lambda t: np.full((len(t), 4), np.inf, np.float64), "non-finite"),
        (lambda t: np.zeros((len(t), 4), np.int64), "dtype int64"),
    ],
)
def test_bad_provider_output_is_typed(make, fragment) -> None:
    manager = manager_for(ArrayProvider(make))
    with pytest.raises(ProviderOutputError, match=fragment) as info:
        manager.embed(["x"])
    assert "'array'" in str(info.value)


def test_float64_output_becomes_float32() -> None:
    manager = manager_for(ArrayProvider(lambda t: np.ones((len(t), 4), np.float64)))
    assert manager.embed(["x"]).dtype == np.float32


def test_provider_exception_is_wrapped_and_counted() -> None:
    provider = MockEmbeddingProvider(fail_on={"bad"})
    manager = manager_for(provider, cache_size=0)
    with pytest.raises(ProviderError, match=r"'mock'.*MockProviderFailure") as info:
        manager.embed(["good", "bad"])
    assert isinstance(info.value.__cause__, MockProviderFailure)
    assert manager.embed(["good"]).shape == (1, 384)
    stats = manager.stats()
    assert stats["errors"] == 1 and stats["requests"] == 2


def test_embed_batch_request_response(embedding_manager) -> None:
    request = BatchEmbeddingRequest(model="mock", inputs=["a", "b"], normalize=True)
    response = embedding_manager.embed_batch(request)
    assert response.embeddings.shape == (2, 384)
    assert response.model == "mock" and response.dimension == 384
    assert response.usage["texts"] == 2 and response.usage["prompt_tokens"] == 2
    assert response.to_dict()["embeddings"][0] == pytest.approx(response.embeddings[0].tolist())
    with pytest.raises(ModelMismatchError, match="other-model"):
        embedding_manager.embed_batch(BatchEmbeddingRequest(model="other-model", inputs=["a"]))


def test_usage_reports_truncation() -> None:
    provider = MockEmbeddingProvider(max_tokens=3)
    manager = manager_for(provider)
    response = manager.embed_batch(BatchEmbeddingRequest(None, ["one two three four", "short"]))
    assert response.usage["truncated"] == 1
    assert manager.stats()["truncated"] == 1


def test_prompts_are_prepended() -> None:
    class Prompted(MockEmbeddingProvider):
        def info(self) -> ModelInfo:
            base = super().info()
            return ModelInfo(
                **{**base.to_dict(), "prompts": {"query": "query: ", "document": "passage: "}}
            )

    provider = Prompted()
    manager = manager_for(provider, cache_size=0)
    manager.embed_query("cats")
    manager.embed_documents(["dogs"])
    manager.embed(["plain"])
    assert provider.texts == ["query: cats", "passage: dogs", "plain"]
    with pytest.raises(EmbeddingInputError, match="no prompt named 'nope'"):
        manager.embed(["x"], prompt_name="nope")


def test_thread_safety_many_threads(mock_provider) -> None:
    manager = manager_for(mock_provider, batch_size=4)
    reference = MockEmbeddingProvider()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(30):
                texts = [f"thread {t} item {i} {j}" for j in range(t % 5 + 1)] + ["shared"]
                np.testing.assert_allclose(
                    manager.embed(texts), reference.embed_batch(texts), atol=1e-6
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert manager.stats()["requests"] == 240


def test_not_thread_safe_provider_is_serialised() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    class Fragile(MockEmbeddingProvider):
        thread_safe = False

        def __init__(self) -> None:
            super().__init__()
            self.capabilities = None  # a plugin written before capabilities existed

        def embed_batch(self, texts):
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.01)
            with lock:
                active -= 1
            return MockEmbeddingProvider.embed_batch_with_usage(self, texts)[0]

        embed_batch_with_usage = None  # type: ignore[assignment]

    manager = manager_for(Fragile(), cache_size=0)
    threads = [threading.Thread(target=manager.embed, args=([f"t{i}"],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 1
    assert manager.stats()["requests"] == 6 and manager.stats()["errors"] == 0


def test_aembed_does_not_block_the_loop() -> None:
    provider = MockEmbeddingProvider(latency=0.2)
    manager = manager_for(provider, cache_size=0)

    async def main() -> tuple[np.ndarray, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        out = await manager.aembed(["async text"])
        query = await manager.aembed_query("q")
        task.cancel()
        assert query.shape == (384,)
        return out, ticks

    out, ticks = asyncio.run(main())
    assert out.shape == (1, 384)
    assert ticks >= 10  # the loop kept running during ~0.4 s of provider latency


def test_stats_latency_percentiles(mock_provider) -> None:
    manager = manager_for(mock_provider)
    assert manager.stats()["latency_ms_p50"] is None
    for i in range(20):
        manager.embed([f"t{i}"])
    stats = manager.stats()
    assert stats["requests"] == 20 and stats["texts"] == 20 and stats["errors"] == 0
    assert 0 < stats["latency_ms_p50"] <= stats["latency_ms_p95"] <= stats["latency_ms_p99"]


def test_health_ok_and_error() -> None:
    assert manager_for(MockEmbeddingProvider()).health()["status"] == "ok"
    broken = manager_for(MockEmbeddingProvider(fail_every=1))
    report = broken.health()
    assert report["status"] == "error" and "MockProviderFailure" in report["error"]


def test_close_is_idempotent_and_final() -> None:
    provider = ArrayProvider(lambda t: np.ones((len(t), 4), np.float32))
    with manager_for(provider) as manager:
        manager.embed(["x"])
    assert provider.closed == 1 and manager.closed
    manager.close()
    assert provider.closed == 1
    with pytest.raises(ProviderClosedError):
        manager.embed(["x"])
    assert manager.health()["status"] == "error"


def test_from_config_with_overrides(monkeypatch) -> None:
    monkeypatch.setenv("AKIDB_EMBEDDING_PROVIDER", "mock")
    monkeypatch.setenv("AKIDB_EMBEDDING_OPTIONS", '{"dimension": 12}')
    with EmbeddingManager.from_config(batch_size=2) as manager:
        assert manager.dimension == 12
        assert manager.config.source("provider") == "env:AKIDB_EMBEDDING_PROVIDER"
    config = EmbeddingConfig(provider="mock", options={"dimension": 5})
    with EmbeddingManager.from_config(config, batch_size=3) as manager:
        assert manager.dimension == 5 and manager.config.batch_size == 3


def test_progress_callback(mock_provider) -> None:
    manager = manager_for(mock_provider, batch_size=4)
    seen: list[int] = []
    manager.embed([f"t{i}" for i in range(10)], progress=seen.append)
    assert seen == [4, 8, 10]


def test_truncation_error_names_the_callers_index() -> None:
    from akidb_embed.errors import TruncationError

    class Strict(MockEmbeddingProvider):
        def embed_batch_with_usage(self, texts):
            for i, text in enumerate(texts):
                if len(text.split()) > 5:
                    raise TruncationError(i, len(text.split()), 5)
            return super().embed_batch_with_usage(texts)

    manager = manager_for(Strict(), batch_size=2, cache_size=0)
    texts = ["short", "a b", "short", "w " * 9, "x y z"]
    with pytest.raises(TruncationError) as info:
        manager.embed(texts)
    assert info.value.index == 3 and info.value.tokens == 9
    assert "index 3" in str(info.value)
