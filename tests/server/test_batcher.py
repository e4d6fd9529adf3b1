"""The batcher merges concurrent requests into token-budgeted batches, and every
request still gets exactly what ``manager.embed_many`` gives it alone."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from akidb_embed import (
    BatchEmbeddingResponse,
    EmbeddingConfig,
    EmbeddingManager,
    EmbeddingRequest,
    MockEmbeddingProvider,
)
from akidb_embed.errors import AkidbEmbedError, TruncationError
from akidb_embed_server import (
    Batcher,
    BatcherClosedError,
    BatchEvent,
    QueueFullError,
    RequestTimeoutError,
)

_T = TypeVar("_T")
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def run(coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make_manager(latency: float = 0.0, max_concurrency: int = 2, **config: Any) -> EmbeddingManager:
    provider = MockEmbeddingProvider(latency=latency, max_concurrency=max_concurrency)
    return EmbeddingManager(provider, EmbeddingConfig(provider="mock", cache_size=0, **config))


@pytest.fixture
def manager() -> Iterator[EmbeddingManager]:
    with make_manager(latency=0.005) as m:
        yield m


def calls(manager: EmbeddingManager) -> list[list[str]]:
    provider: Any = manager.provider
    return list(provider.calls)


def computed(manager: EmbeddingManager) -> list[str]:
    provider: Any = manager.provider
    return list(provider.texts)


def mixed_requests(
    rng: random.Random, count: int, texts: list[str] | None = None
) -> list[EmbeddingRequest]:
    requests = []
    for i in range(count):
        # Real-model requests: mostly short, every eighth one of 50 texts (bounds the time).
        n = rng.randint(1, 50) if texts is None else (50 if i % 8 == 0 else rng.randint(1, 8))
        if texts is None:
            items = [
                f"r{i} " + " ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(n)
            ]
        else:
            items = rng.choices(texts, k=n)
        truncation = rng.choice([None, "truncate", "error"])
        if texts is None and i % 7 == 3:
            items[rng.randrange(n)] = "long " * 600  # over the mock's 512-word limit
        requests.append(
            EmbeddingRequest(
                items,
                normalize=rng.choice([None, True, False]),
                prompt_name=rng.choice([None, ""]),
                truncation=truncation,
            )
        )
    return requests


def assert_same(got: object, want: object, atol: float | None = None) -> None:
    if isinstance(want, AkidbEmbedError):
        assert type(got) is type(want) and str(got) == str(want), (got, want)
        return
    assert isinstance(got, BatchEmbeddingResponse) and isinstance(want, BatchEmbeddingResponse)
    if atol is None:
        assert np.array_equal(got.embeddings, want.embeddings)
    else:
        np.testing.assert_allclose(got.embeddings, want.embeddings, atol=atol, rtol=0)
    assert dict(got.usage) == dict(want.usage)


async def outcome(batcher: Batcher, request: EmbeddingRequest) -> object:
    try:
        return await batcher.embed(request)
    except AkidbEmbedError as exc:
        return exc


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def test_64_concurrent_mixed_requests_equal_embed_many_alone(manager: EmbeddingManager) -> None:
    requests = mixed_requests(random.Random(7), 64)
    with make_manager() as reference:
        expected = [reference.embed_many([r])[0] for r in requests]
    assert any(isinstance(e, TruncationError) for e in expected)
    events: list[BatchEvent] = []

    async def main() -> list[object]:
        batcher = Batcher(manager, max_batch_tokens=4096, observers=[events.append])
        try:
            return await asyncio.gather(*(outcome(batcher, r) for r in requests))
        finally:
            await batcher.close(5)

    results = run(main())
    for got, want in zip(results, expected, strict=True):
        assert_same(got, want)
    assert max(e.pieces for e in events) > 1  # requests really were merged
    assert max(e.texts for e in events) > 1


def test_pieces_leave_in_fifo_order() -> None:
    with make_manager(latency=0.01, max_concurrency=1) as manager:

        async def main() -> None:
            batcher = Batcher(manager, max_batch_size=3)
            try:
                first = asyncio.ensure_future(batcher.embed(EmbeddingRequest(["blocker"])))
                await wait_until(lambda: batcher.stats().in_flight_batches == 1)
                tasks = []
                for i in range(12):
                    tasks.append(
                        asyncio.ensure_future(
                            batcher.embed(EmbeddingRequest([f"q{i} a", f"q{i} b"][: i % 2 + 1]))
                        )
                    )
                    await asyncio.sleep(0)  # arrival order = creation order
                await asyncio.gather(first, *tasks)
            finally:
                await batcher.close(5)

        run(main())
        order = [int(t.split()[0][1:]) for t in computed(manager) if t.startswith("q")]
        assert order == sorted(order)


def test_a_large_request_is_split_and_reassembled_in_order(manager: EmbeddingManager) -> None:
    texts = [f"text number {i} " + "w " * i for i in range(10)]
    bad = [*texts[:7], "long " * 600, *texts[8:]]
    events: list[BatchEvent] = []

    async def main() -> tuple[BatchEmbeddingResponse, object]:
        batcher = Batcher(manager, max_batch_size=4, observers=[events.append])
        try:
            good = await batcher.embed(EmbeddingRequest(texts))
            failed = await outcome(batcher, EmbeddingRequest(bad, truncation="error"))
            return good, failed
        finally:
            await batcher.close(5)

    good, failed = run(main())
    assert_same(good, manager.embed_many([EmbeddingRequest(texts)])[0])
    assert [e.texts for e in events[:3]] == [4, 4, 2]
    assert isinstance(failed, TruncationError)
    assert failed.index == 7  # offset back into the request's own numbering
    assert "index 7" in str(failed)


def test_a_large_request_is_cut_in_token_order_and_answered_in_its_own() -> None:
    # One batch at a time: the events (sent as batches finish) come in cut order.
    with make_manager(latency=0.005, max_concurrency=1) as manager:
        _check_token_order_cut(manager)


def _check_token_order_cut(manager: EmbeddingManager) -> None:
    rng = random.Random(5)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(23)]
    bad = list(texts)
    bad[11] = "long " * 600
    events: list[BatchEvent] = []

    async def main() -> tuple[BatchEmbeddingResponse, object]:
        batcher = Batcher(manager, max_batch_size=4, observers=[events.append])
        try:
            good = await batcher.embed(EmbeddingRequest(texts))
            failed = await outcome(batcher, EmbeddingRequest(bad, truncation="error"))
            return good, failed
        finally:
            await batcher.close(5)

    good, failed = run(main())
    assert_same(good, manager.embed_many([EmbeddingRequest(texts)])[0])
    # Pieces hold texts of like length: each pads to little more than its own texts.
    longest = [e.longest for e in events[:6]]
    assert longest == sorted(longest) and len(set(longest)) > 1, longest
    counts = sorted(manager.count_tokens(texts) or [])
    assert sum(e.padded_tokens for e in events[:6]) == sum(
        max(counts[i : i + 4]) * len(counts[i : i + 4]) for i in range(0, len(counts), 4)
    )
    assert isinstance(failed, TruncationError)
    assert failed.index == 11  # the request's own numbering, not the sorted one
    assert "index 11" in str(failed)


def test_batches_respect_the_padded_token_budget(manager: EmbeddingManager) -> None:
    rng = random.Random(3)
    requests = [
        EmbeddingRequest([" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(n)])
        for n in (rng.randint(1, 12) for _ in range(40))
    ]
    events: list[BatchEvent] = []

    async def main() -> None:
        batcher = Batcher(manager, max_batch_tokens=64, observers=[events.append])
        try:
            await asyncio.gather(*(batcher.embed(r) for r in requests))
        finally:
            await batcher.close(5)

    run(main())
    assert events
    for event in events:
        assert event.padded_tokens == event.longest * event.texts
        assert event.padded_tokens <= 64 or event.texts == 1
    count: Any = manager.provider
    for call in calls(manager):
        lengths = count.count_tokens(call)
        assert max(lengths) * len(call) <= 64 or len(call) == 1


def test_a_full_queue_refuses_at_once_while_accepted_requests_succeed() -> None:
    with make_manager(latency=0.1, max_concurrency=1) as manager:

        async def main() -> None:
            batcher = Batcher(manager, max_queue_texts=20)
            try:
                blocker = asyncio.ensure_future(batcher.embed(EmbeddingRequest(["blocker"])))
                await wait_until(lambda: batcher.stats().in_flight_batches == 1)
                accepted = [
                    asyncio.ensure_future(batcher.embed(EmbeddingRequest([f"a{i}"] * 5)))
                    for i in range(4)
                ]
                await wait_until(lambda: batcher.stats().queued_texts == 20)
                start = time.perf_counter()
                with pytest.raises(QueueFullError) as info:
                    await batcher.embed(EmbeddingRequest(["one too many"]))
                assert time.perf_counter() - start < 0.05
                assert isinstance(info.value, RuntimeError)
                assert info.value.retry_after > 0
                results = await asyncio.gather(blocker, *accepted)
                assert [r.embeddings.shape[0] for r in results] == [1, 5, 5, 5, 5]
                assert batcher.stats().rejected_requests == 1
            finally:
                await batcher.close(5)

        run(main())
        assert "one too many" not in computed(manager)


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_request_gone_away_is_dropped_never_computed(how: str) -> None:
    with make_manager(latency=0.15, max_concurrency=1) as manager:

        async def main() -> None:
            batcher = Batcher(manager)
            try:
                blocker = asyncio.ensure_future(batcher.embed(EmbeddingRequest(["blocker"])))
                await wait_until(lambda: batcher.stats().in_flight_batches == 1)
                gone = EmbeddingRequest(["gone one", "gone two", "gone three"])
                if how == "timeout":
                    with pytest.raises(RequestTimeoutError) as info:
                        await batcher.embed(gone, timeout=0.03)
                    assert isinstance(info.value, TimeoutError)
                else:
                    task = asyncio.ensure_future(batcher.embed(gone))
                    await wait_until(lambda: batcher.stats().queued_texts == 3)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                assert batcher.stats().queued_texts == 0
                await blocker
                after = await batcher.embed(EmbeddingRequest(["after"]))
                assert after.embeddings.shape == (1, manager.dimension)
                stats = batcher.stats()
                assert stats.dropped_texts == 3
                assert stats.timed_out_requests == (how == "timeout")
            finally:
                await batcher.close(5)

        run(main())
        assert computed(manager) == ["blocker", "after"]


def test_never_more_batches_in_flight_than_max_concurrency() -> None:
    with make_manager(latency=0.01, max_concurrency=2) as manager:
        provider: Any = manager.provider
        inner = provider.embed_batch_with_usage
        lock = threading.Lock()
        gauge = {"active": 0, "peak": 0}

        def counted(texts: list[str]) -> Any:
            with lock:
                gauge["active"] += 1
                gauge["peak"] = max(gauge["peak"], gauge["active"])
            try:
                return inner(texts)
            finally:
                with lock:
                    gauge["active"] -= 1

        provider.embed_batch_with_usage = counted
        peak_in_flight = 0

        def observe(event: BatchEvent) -> None:
            nonlocal peak_in_flight
            peak_in_flight = max(peak_in_flight, batcher.stats().in_flight_batches)

        batcher = Batcher(manager, max_batch_size=4, observers=[observe])

        async def main() -> None:
            try:
                await asyncio.gather(
                    *(batcher.embed(EmbeddingRequest([f"t{i}", f"u{i}"])) for i in range(40))
                )
            finally:
                await batcher.close(5)

        run(main())
        assert gauge["peak"] == 2
        assert peak_in_flight <= 2
        assert batcher.stats().batches >= 20


def test_close_drains_queued_work_then_refuses() -> None:
    with make_manager(latency=0.02, max_concurrency=1) as manager:

        async def main() -> None:
            batcher = Batcher(manager, max_batch_size=4)
            tasks = [
                asyncio.ensure_future(batcher.embed(EmbeddingRequest([f"d{i}"] * 3)))
                for i in range(8)
            ]
            await wait_until(lambda: batcher.stats().in_flight_batches == 1)
            await batcher.close(drain_timeout=5)
            results = await asyncio.gather(*tasks)
            assert all(r.embeddings.shape == (3, manager.dimension) for r in results)
            with pytest.raises(BatcherClosedError):
                await batcher.embed(EmbeddingRequest(["late"]))
            assert batcher.stats().closed

        run(main())


def test_close_fails_what_the_drain_timeout_leaves() -> None:
    with make_manager(latency=0.3, max_concurrency=1) as manager:

        async def main() -> None:
            batcher = Batcher(manager)
            first = asyncio.ensure_future(batcher.embed(EmbeddingRequest(["slow"])))
            await wait_until(lambda: batcher.stats().in_flight_batches == 1)
            queued = asyncio.ensure_future(batcher.embed(EmbeddingRequest(["never"])))
            await wait_until(lambda: batcher.stats().queued_texts == 1)
            start = time.perf_counter()
            await batcher.close(drain_timeout=0.05)
            assert time.perf_counter() - start < 0.25
            for task in (first, queued):
                with pytest.raises(BatcherClosedError):
                    await task

        run(main())
        assert "never" not in computed(manager)


@pytest.mark.slow
def test_onnx_concurrent_mixed_requests_equal_embed_many_alone(
    minilm_onnx_dir: Path, varied_texts: list[str]
) -> None:
    onnx = pytest.importorskip("akidb_embed_onnx")
    config = EmbeddingConfig(provider="onnx", model=str(minilm_onnx_dir), cache_size=0)
    requests = mixed_requests(random.Random(11), 64, texts=varied_texts)
    events: list[BatchEvent] = []
    with EmbeddingManager(onnx.OnnxEmbeddingProvider(config), config) as manager:
        expected = [manager.embed_many([r])[0] for r in requests]

        async def main() -> list[object]:
            batcher = Batcher(manager, observers=[events.append])
            try:
                return await asyncio.gather(*(outcome(batcher, r) for r in requests))
            finally:
                await batcher.close(5)

        results = run(main(), timeout=300)
    for got, want in zip(results, expected, strict=True):
        assert_same(got, want, atol=1e-5)
    assert max(e.pieces for e in events) > 1


def test_an_idle_provider_never_waits_for_the_queue_to_fill() -> None:
    with make_manager(max_concurrency=2) as manager:

        async def main() -> float:
            batcher = Batcher(manager, max_wait_ms=500)
            try:
                await batcher.embed(EmbeddingRequest(["warm up"]))
                start = time.perf_counter()
                await batcher.embed(EmbeddingRequest(["alone"]))
                return time.perf_counter() - start
            finally:
                await batcher.close(5)

        assert run(main()) < 0.2


def test_a_thin_queue_fills_while_a_batch_is_in_flight() -> None:
    with make_manager(latency=0.1, max_concurrency=2) as manager:
        events: list[BatchEvent] = []

        async def main() -> None:
            batcher = Batcher(manager, max_wait_ms=50, observers=[events.append])
            try:
                first = asyncio.ensure_future(batcher.embed(EmbeddingRequest(["first"])))
                await wait_until(lambda: batcher.stats().in_flight_batches == 1)
                tasks = []
                for i in range(3):  # arrive 10 ms apart, within the 50 ms window
                    tasks.append(asyncio.ensure_future(batcher.embed(EmbeddingRequest([f"t{i}"]))))
                    await asyncio.sleep(0.01)
                await asyncio.gather(first, *tasks)
            finally:
                await batcher.close(5)

        run(main())
        assert [e.texts for e in events] == [1, 3]


def test_the_docs_example_runs() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text("utf-8")
    blocks = [b.split("```", 1)[0] for b in doc.split("```python\n")[1:]]
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/server.md", "exec"), {})
