"""The manager around the real onnx provider: 64 concurrent async calls stay within the
provider's max_concurrency, cancelled queued calls leave no work, merged requests give
the vectors of separate calls."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager, EmbeddingRequest
from akidb_embed.errors import TruncationError
from akidb_embed_onnx import OnnxEmbeddingProvider

pytestmark = pytest.mark.slow


class _Gauge:
    """Wraps the provider's embedding call to count calls running at once."""

    def __init__(self, provider: OnnxEmbeddingProvider) -> None:
        self.active = self.peak = self.calls = 0
        self._lock = threading.Lock()
        inner = provider.embed_batch_with_usage

        def counted(texts):  # type: ignore[no-untyped-def]
            with self._lock:
                self.active += 1
                self.calls += 1
                self.peak = max(self.peak, self.active)
            try:
                return inner(texts)
            finally:
                with self._lock:
                    self.active -= 1

        provider.embed_batch_with_usage = counted  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def onnx_manager(minilm_onnx_dir: Path):
    config = EmbeddingConfig(provider="onnx", model=str(minilm_onnx_dir), cache_size=0)
    provider = OnnxEmbeddingProvider(config)
    gauge = _Gauge(provider)
    with EmbeddingManager(provider, config) as manager:
        yield manager, gauge


def test_64_concurrent_aembed_calls_use_at_most_max_concurrency(onnx_manager, varied_texts):
    manager, gauge = onnx_manager
    limit = manager.capabilities.max_concurrency
    assert limit == 1  # one onnx call already uses every core
    texts = varied_texts[:64]

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(manager.aembed([t]) for t in texts))

    before = gauge.calls
    out = asyncio.run(main())
    assert gauge.calls - before == 64 and gauge.peak <= limit
    expected = manager.embed(texts)
    np.testing.assert_allclose(np.vstack(out), expected, rtol=0, atol=1e-5)


def test_cancelling_queued_calls_leaves_no_work(onnx_manager, varied_texts):
    manager, gauge = onnx_manager
    batch = varied_texts[:64]

    async def main() -> None:
        tasks = [asyncio.create_task(manager.aembed(batch)) for _ in range(16)]
        await asyncio.sleep(0.05)
        for task in tasks[1:]:
            task.cancel()
        await tasks[0]
        await asyncio.gather(*tasks[1:], return_exceptions=True)

    before = gauge.calls
    asyncio.run(main())
    time.sleep(0.5)
    per_call = -(-len(batch) // manager.config.batch_size)
    assert gauge.calls - before <= 2 * per_call  # the running request, at most one more
    assert gauge.active == 0


def test_merged_requests_match_separate_calls(onnx_manager, varied_texts):
    manager, _ = onnx_manager
    limit = manager.info.max_tokens
    long_text = " ".join(["token"] * (limit * 2))
    a, b = varied_texts[:20], varied_texts[20:45]
    results = manager.embed_many(
        [
            EmbeddingRequest(a),
            EmbeddingRequest(["fine", long_text], truncation="error"),
            EmbeddingRequest(b, normalize=False),
        ]
    )
    assert isinstance(results[1], TruncationError) and results[1].index == 1
    assert results[1].tokens > limit
    np.testing.assert_allclose(results[0].embeddings, manager.embed(a), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        results[2].embeddings, manager.embed(b, normalize=False), rtol=0, atol=1e-5
    )
    assert results[0].usage["prompt_tokens"] == sum(
        min(n, limit) for n in manager.provider.count_tokens(a)
    )  # type: ignore[attr-defined]


def test_counting_before_embedding_tokenizes_once_and_changes_nothing(
    minilm_onnx_dir: Path, varied_texts
):
    config = EmbeddingConfig(provider="onnx", model=str(minilm_onnx_dir))
    provider = OnnxEmbeddingProvider(config)
    try:
        texts = [*varied_texts[:40], "a very long text " * 200]
        plain = provider.embed_batch(texts)
        counts = provider.count_tokens(texts)
        calls = []
        inner = provider._texts.encode
        provider._texts.encode = lambda batch: calls.append(list(batch)) or inner(batch)  # type: ignore[method-assign]
        counted = provider.embed_batch(texts)
        # Every uncut text's encoding came from count_tokens; the cut one is encoded again.
        assert calls == [[texts[-1]]]
        np.testing.assert_array_equal(counted, plain)
        assert max(counts) > provider.info().max_tokens  # counts are before truncation
        provider.count_tokens(["left behind"])
        provider.close()
        assert not provider._texts._handoff  # close() drops what was never embedded
    finally:
        provider.close()
