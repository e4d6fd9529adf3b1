"""The per-request pipeline: embed_many isolation, usage per request, observers, async
limits and cancellation, declared capabilities."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from akidb_embed import (
    EmbeddingConfig,
    EmbeddingManager,
    EmbeddingRequest,
    MockEmbeddingProvider,
    ModelInfo,
    ProviderCallEvent,
    ProviderCapabilities,
    RequestEvent,
    provider_capabilities,
)
from akidb_embed.errors import (
    EmbeddingInputError,
    InvalidRequestError,
    ModelMismatchError,
    ProviderBusyError,
    ProviderClosedError,
    ProviderError,
    TruncationError,
)


def manager_for(provider, **config) -> EmbeddingManager:
    config.setdefault("cache_size", 0)
    return EmbeddingManager(provider, EmbeddingConfig(provider="mock", model="mock", **config))


class Legacy:
    """A provider written before capabilities: embed_batch only."""

    thread_safe = False

    def __init__(self) -> None:
        self.mock = MockEmbeddingProvider(max_tokens=4)
        self.calls: list[list[str]] = []

    def info(self) -> ModelInfo:
        return self.mock.info()

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if "poison" in texts:
            raise RuntimeError("poisoned batch")
        return self.mock.embed_batch(texts)

    def close(self) -> None:
        pass


class Tracking(MockEmbeddingProvider):
    """Counts the provider calls running at once."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.active = 0
        self.peak = 0
        self._count_lock = threading.Lock()

    def embed_batch_with_usage(self, texts):
        with self._count_lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return super().embed_batch_with_usage(texts)
        finally:
            with self._count_lock:
                self.active -= 1


# -- embed_many isolation -------------------------------------------------------------------


GOOD_A = ["the cat sat on the mat", "a dog barked", "the cat sat on the mat"]
GOOD_B = ["interest rates rose", "a dog barked", ""]


def alone(texts: list[str], **request) -> np.ndarray:
    with manager_for(MockEmbeddingProvider(max_tokens=8)) as manager:
        return manager.embed(texts, **request)


@pytest.mark.parametrize(
    ("bad", "error", "fragment"),
    [
        (EmbeddingRequest(["fine", 3]), EmbeddingInputError, "texts[1] must be str"),  # type: ignore[list-item]
        (EmbeddingRequest(["x"], prompt_name="nope"), EmbeddingInputError, "no prompt named"),
        (EmbeddingRequest(["x"], model="other"), ModelMismatchError, "other"),
        (
            EmbeddingRequest(["short", "w " * 12], truncation="error"),
            TruncationError,
            "index 1 has 12 tokens",
        ),
        (EmbeddingRequest(["a", "poison pill"]), ProviderError, "MockProviderFailure"),
    ],
)
def test_one_bad_request_among_good_ones_fails_alone(bad, error, fragment) -> None:
    provider = MockEmbeddingProvider(max_tokens=8, fail_on={"poison pill"})
    manager = manager_for(provider, batch_size=4)
    results = manager.embed_many(
        [EmbeddingRequest(GOOD_A), bad, EmbeddingRequest(GOOD_B, normalize=False)]
    )
    assert isinstance(results[1], error), results[1]
    assert fragment in str(results[1])
    # The good ones are byte-identical to separate calls.
    np.testing.assert_array_equal(results[0].embeddings, alone(GOOD_A))
    np.testing.assert_array_equal(results[2].embeddings, alone(GOOD_B, normalize=False))
    assert results[0].usage == {"texts": 3, "prompt_tokens": 15, "truncated": 0, "cached": 0}
    assert results[2].usage["prompt_tokens"] == 6


def test_requests_share_provider_calls_and_keep_their_own_usage() -> None:
    provider = MockEmbeddingProvider(max_tokens=3)
    manager = manager_for(provider, batch_size=32)
    results = manager.embed_many(
        [EmbeddingRequest(["one two three four five", "a b"]), EmbeddingRequest(["a b", "c"])]
    )
    assert provider.call_count == 1  # merged, de-duplicated
    assert sorted(provider.calls[0]) == ["a b", "c", "one two three four five"]
    assert results[0].usage == {"texts": 2, "prompt_tokens": 5, "truncated": 1, "cached": 0}
    assert results[1].usage == {"texts": 2, "prompt_tokens": 3, "truncated": 0, "cached": 0}
    np.testing.assert_array_equal(results[0].embeddings[1], results[1].embeddings[0])


def test_truncation_policy_is_per_request_and_indexes_are_the_requests_own() -> None:
    manager = manager_for(MockEmbeddingProvider(max_tokens=3))
    long = "w x y z"
    results = manager.embed_many(
        [
            EmbeddingRequest(["ok", long], truncation="truncate"),
            EmbeddingRequest(["ok", "fine", long], truncation="error"),
        ]
    )
    assert results[0].usage["truncated"] == 1
    err = results[1]
    assert isinstance(err, TruncationError)
    assert (err.index, err.tokens, err.max_tokens) == (2, 4, 3)
    with pytest.raises(InvalidRequestError, match="truncation"):
        EmbeddingRequest(["x"], truncation="cut")


def test_a_provider_error_in_a_merged_call_fails_only_the_request_to_blame() -> None:
    provider = MockEmbeddingProvider(fail_on={"poison"})
    manager = manager_for(provider, batch_size=64)
    shared = "shared text"
    results = manager.embed_many(
        [
            EmbeddingRequest([shared, "alpha"]),
            EmbeddingRequest(["poison", shared]),
            EmbeddingRequest(["beta", shared]),
        ]
    )
    assert isinstance(results[1], ProviderError)
    assert isinstance(results[1].__cause__, Exception)
    np.testing.assert_array_equal(results[0].embeddings, alone([shared, "alpha"]))
    np.testing.assert_array_equal(results[2].embeddings, alone(["beta", shared]))


def test_provider_truncation_error_in_a_merged_call_is_mapped_to_each_request() -> None:
    class Strict(MockEmbeddingProvider):
        def embed_batch_with_usage(self, texts):
            for i, text in enumerate(texts):
                if len(text.split()) > 5:
                    raise TruncationError(i, len(text.split()), 5)
            return super().embed_batch_with_usage(texts)

    manager = manager_for(Strict(max_tokens=None), batch_size=8)
    long = "w " * 9
    results = manager.embed_many(
        [EmbeddingRequest(["a", "b", long]), EmbeddingRequest(["c"]), EmbeddingRequest([long])]
    )
    assert isinstance(results[0], TruncationError) and results[0].index == 2
    assert isinstance(results[2], TruncationError) and results[2].index == 0
    np.testing.assert_array_equal(results[1].embeddings, alone(["c"]))


def test_providers_that_do_not_count_tokens_get_calls_per_request() -> None:
    provider = Legacy()
    manager = manager_for(provider, batch_size=8)
    results = manager.embed_many(
        [EmbeddingRequest(["a", "b"]), EmbeddingRequest(["poison", "c"]), EmbeddingRequest(["b"])]
    )
    assert sorted(map(sorted, provider.calls)) == [["a", "b"], ["b"], ["c", "poison"]]
    assert isinstance(results[1], ProviderError) and "poisoned batch" in str(results[1])
    assert results[0].embeddings.shape == (2, 384) and results[2].embeddings.shape == (1, 384)
    # A per-request "error" policy cannot be applied without token counts.
    refused = manager.embed_many([EmbeddingRequest(["x"], truncation="error")])[0]
    assert isinstance(refused, InvalidRequestError) and "count tokens" in str(refused)


def test_embed_many_of_nothing_and_of_empty_requests() -> None:
    manager = manager_for(MockEmbeddingProvider())
    assert manager.embed_many([]) == []
    (result,) = manager.embed_many([EmbeddingRequest([])])
    assert result.embeddings.shape == (0, 384) and result.usage["texts"] == 0
    bad = manager.embed_many(["not a request"])[0]  # type: ignore[list-item]
    assert isinstance(bad, InvalidRequestError)


def test_cache_hits_keep_their_token_counts() -> None:
    provider = MockEmbeddingProvider(max_tokens=2)
    manager = manager_for(provider, cache_size=16)
    manager.embed(["one two three"])
    result = manager.embed_many([EmbeddingRequest(["one two three"], truncation="error")])[0]
    assert isinstance(result, TruncationError) and result.tokens == 3
    assert provider.call_count == 1
    usage = manager.embed_many([EmbeddingRequest(["one two three"])])[0].usage
    assert usage == {"texts": 1, "prompt_tokens": 2, "truncated": 1, "cached": 1}


# -- observers ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[ProviderCallEvent] = []
        self.requests: list[RequestEvent] = []

    def on_provider_call(self, event: ProviderCallEvent) -> None:
        self.calls.append(event)

    def on_request(self, event: RequestEvent) -> None:
        self.requests.append(event)


def test_observers_see_every_call_and_request() -> None:
    recorder = Recorder()
    provider = MockEmbeddingProvider(max_tokens=3, fail_on={"poison"})
    manager = EmbeddingManager(
        provider, EmbeddingConfig(provider="mock", batch_size=2), observers=[recorder]
    )
    manager.embed_many([EmbeddingRequest(["a b", "c d e f", "g"]), EmbeddingRequest(["poison"])])
    ok = [c for c in recorder.calls if c.error is None]
    assert sum(c.texts for c in ok) == 3
    assert sum(c.tokens for c in ok) == 6 and sum(c.truncated for c in ok) == 1
    assert any(isinstance(c.error, ProviderError) for c in recorder.calls)
    assert all(c.seconds >= 0 and c.wait_seconds >= 0 for c in recorder.calls)
    assert [r.error is None for r in recorder.requests] == [True, False]
    assert recorder.requests[0].prompt_tokens == 6
    stats = manager.stats()
    assert stats["requests"] == 2 and stats["errors"] == 1 and stats["texts"] == 3
    manager.remove_observer(recorder)
    manager.embed(["again"])
    assert len(recorder.requests) == 2
    with pytest.raises(ValueError, match="not an observer"):
        manager.remove_observer(recorder)


def test_a_failing_observer_never_fails_an_embedding(caplog) -> None:
    class Broken:
        def on_provider_call(self, event):
            raise RuntimeError("observer bug")

        def on_request(self, event):
            raise RuntimeError("observer bug")

    manager = manager_for(MockEmbeddingProvider())
    manager.add_observer(Broken())
    assert manager.embed(["still works"]).shape == (1, 384)
    assert "observer bug" in caplog.text


# -- concurrency, async, cancellation ---------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_64_concurrent_aembed_calls_stay_within_max_concurrency(limit: int) -> None:
    provider = Tracking(latency=0.01, max_concurrency=limit)
    manager = manager_for(provider)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(manager.aembed([f"text {i}"]) for i in range(64)))

    out = asyncio.run(main())
    assert len(out) == 64 and provider.call_count == 64
    assert provider.peak <= limit
    if limit > 1:
        assert provider.peak > 1  # the limit is a limit, not serialisation


def test_sync_callers_share_the_same_slots() -> None:
    provider = Tracking(latency=0.02, max_concurrency=2)
    manager = manager_for(provider)
    threads = [threading.Thread(target=manager.embed, args=([f"t{i}"],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert provider.call_count == 12 and provider.peak <= 2


def test_cancelled_queued_calls_never_reach_the_provider() -> None:
    provider = Tracking(latency=0.1, max_concurrency=1)
    manager = manager_for(provider)

    async def main() -> None:
        tasks = [asyncio.create_task(manager.aembed([f"text {i}"])) for i in range(20)]
        await asyncio.sleep(0.05)  # the first call is running, 19 are queued
        for task in tasks[1:]:
            task.cancel()
        first = await tasks[0]
        assert first.shape == (1, 384)
        results = await asyncio.gather(*tasks[1:], return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)

    asyncio.run(main())
    time.sleep(0.3)  # anything left behind would run now
    assert provider.call_count <= 2  # the running one, and at most one that had started


def test_waiting_for_a_slot_is_bounded() -> None:
    provider = MockEmbeddingProvider(latency=1.0, max_concurrency=1)
    manager = EmbeddingManager(
        provider, EmbeddingConfig(provider="mock", cache_size=0), slot_timeout=0.1
    )
    busy = threading.Thread(target=manager.embed, args=(["slow"],))
    busy.start()
    time.sleep(0.2)
    with pytest.raises(ProviderBusyError, match="no provider slot") as info:
        manager.embed(["waits too long"])
    assert isinstance(info.value, TimeoutError)
    busy.join()


def test_async_calls_after_close_are_typed() -> None:
    manager = manager_for(MockEmbeddingProvider())

    async def main() -> None:
        await manager.aembed_documents(["before"])
        manager.close()
        with pytest.raises(ProviderClosedError):
            await manager.aembed(["after"])

    asyncio.run(main())


def test_async_helpers_match_the_sync_ones() -> None:
    manager = manager_for(MockEmbeddingProvider())

    async def main():
        return (
            await manager.aembed_documents(["doc"]),
            await manager.aembed_queries(["q1", "q2"]),
            await manager.aembed_query("q1"),
            await manager.aembed_many([EmbeddingRequest(["m"]), EmbeddingRequest([1])]),  # type: ignore[list-item]
        )

    docs, queries, query, many = asyncio.run(main())
    np.testing.assert_array_equal(docs, manager.embed_documents(["doc"]))
    np.testing.assert_array_equal(query, queries[0])
    assert isinstance(many[1], EmbeddingInputError)


# -- capabilities ---------------------------------------------------------------------------


def test_legacy_attributes_map_to_capabilities() -> None:
    caps = provider_capabilities(Legacy())
    assert caps == ProviderCapabilities(max_concurrency=1)

    class Unset:  # says nothing: thread_safe's old default (True) applies
        def embed_batch(self, texts):
            return np.zeros((len(texts), 2), np.float32)

    assert provider_capabilities(Unset()) == ProviderCapabilities(max_concurrency=4)

    class ThreadSafe(Legacy):
        thread_safe = True

        def text_lengths(self, texts):
            return [len(t) for t in texts]

    caps = provider_capabilities(ThreadSafe())
    assert caps.max_concurrency == 4 and caps.text_lengths and not caps.counts_tokens


def test_declared_capabilities_are_checked() -> None:
    class Liar(Legacy):
        capabilities = ProviderCapabilities(counts_tokens=True)

    with pytest.raises(TypeError, match="count_tokens"):
        provider_capabilities(Liar())
    with pytest.raises(ProviderError, match="count_tokens"):
        EmbeddingManager(Liar())
    with pytest.raises(ValueError, match="max_concurrency"):
        ProviderCapabilities(max_concurrency=0)
    assert ProviderCapabilities.from_dict({"max_concurrency": 2, "future": 1}).max_concurrency == 2


def test_count_tokens_is_public_and_says_when_it_cannot() -> None:
    manager = manager_for(MockEmbeddingProvider(max_tokens=2))
    assert manager.count_tokens(["one two three", ""]) == [3, 0]
    assert manager.count_tokens([]) == []
    with pytest.raises(EmbeddingInputError):
        manager.count_tokens("not a list")
    assert manager_for(Legacy()).count_tokens(["a"]) is None


def test_a_text_the_provider_cannot_count_fails_only_its_request() -> None:
    class Picky(MockEmbeddingProvider):
        def count_tokens(self, texts):
            if "uncountable" in texts:
                raise ValueError("cannot tokenize")
            return super().count_tokens(texts)

    manager = manager_for(Picky())
    results = manager.embed_many(
        [EmbeddingRequest(["good"]), EmbeddingRequest(["uncountable"]), EmbeddingRequest(["b"])]
    )
    assert isinstance(results[1], ProviderError) and "cannot tokenize" in str(results[1])
    np.testing.assert_array_equal(results[0].embeddings, alone(["good"]))
    np.testing.assert_array_equal(results[2].embeddings, alone(["b"]))


def test_lone_surrogates_are_refused_as_input_errors() -> None:
    manager = manager_for(MockEmbeddingProvider())
    results = manager.embed_many(
        [EmbeddingRequest(["ok", "bad \ud800 text"]), EmbeddingRequest(["x"])]
    )
    assert isinstance(results[0], EmbeddingInputError)
    assert "texts[1] is not valid Unicode" in str(results[0])
    assert results[1].embeddings.shape == (1, 384)


def test_a_request_cannot_loosen_a_strict_provider() -> None:
    manager = manager_for(MockEmbeddingProvider(), truncation="error")
    refused = manager.embed_many([EmbeddingRequest(["x"], truncation="truncate")])[0]
    assert isinstance(refused, InvalidRequestError) and "truncation = 'error'" in str(refused)


def test_documents_and_queries_fall_back_to_the_default_prompt() -> None:
    class Prompted(MockEmbeddingProvider):
        def info(self) -> ModelInfo:
            base = super().info().to_dict()
            base.update(prompts={"passage": "passage: "}, default_prompt_name="passage")
            return ModelInfo(**base)

    provider = Prompted()
    manager = manager_for(provider)
    manager.embed_documents(["doc"])
    manager.embed_queries(["q"])
    assert provider.texts == ["passage: doc", "passage: q"]
