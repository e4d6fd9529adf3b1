"""Token-id input through the batcher and ``POST /v1/embeddings`` of a real
``akidb-embed serve`` subprocess (mock and the ONNX model), called with the ``openai``
client."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import numpy as np
import openai
import pytest

from akidb_embed import (
    BatchEmbeddingResponse,
    EmbeddingConfig,
    EmbeddingManager,
    EmbeddingRequest,
    MockEmbeddingProvider,
)
from akidb_embed.errors import EmbeddingInputError, TruncationError
from akidb_embed_server import Batcher, BatchEvent

if TYPE_CHECKING:  # the classes behind the fixtures of conftest.py
    from conftest import Served

Serve = Callable[..., "Served"]
_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T], timeout: float = 60.0) -> _T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def outcome(
    batcher: Batcher, request: EmbeddingRequest
) -> BatchEmbeddingResponse | Exception:
    try:
        return await batcher.embed(request)
    except Exception as exc:  # compared with embed_many's outcome for the same request
        return exc


def mock_manager(**options: Any) -> EmbeddingManager:
    config = EmbeddingConfig(provider="mock", options=options, cache_size=0)
    return EmbeddingManager(MockEmbeddingProvider(config), config)


# --- the batcher ------------------------------------------------------------------------


def test_concurrent_text_and_token_requests_equal_embed_many_alone() -> None:
    rng = random.Random(5)
    requests = []
    for i in range(48):
        n = rng.randint(1, 12)
        normalize = rng.choice([None, False])
        if i % 2:
            ids = [[rng.randrange(30522) for _ in range(rng.randint(1, 14))] for _ in range(n)]
            requests.append(EmbeddingRequest(token_ids=ids, normalize=normalize))
        else:
            texts = [" ".join(f"w{rng.randrange(50)}" for _ in range(rng.randint(1, 14)))]
            requests.append(EmbeddingRequest(texts * n, normalize=normalize))
    requests.append(EmbeddingRequest(token_ids=[[1] * 13], truncation="error"))
    requests.append(EmbeddingRequest(token_ids=[[1, 2], [30522]]))
    events: list[BatchEvent] = []
    with mock_manager(max_tokens=10, latency=0.01) as manager:
        expected = [manager.embed_many([r])[0] for r in requests]
        provider = manager.provider
        assert isinstance(provider, MockEmbeddingProvider)
        provider.reset()

        async def main() -> list[Any]:
            async with Batcher(manager, max_wait_ms=5, observers=[events.append]) as batcher:
                return await asyncio.gather(*(outcome(batcher, r) for r in requests))

        results = run(main())
        # No provider call mixed the kinds: texts went to embed_batch, ids to embed_token_ids.
        assert all(isinstance(t, str) for call in provider.calls for t in call)
        assert provider.token_calls
    for got, want in zip(results, expected, strict=True):
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
            continue
        assert isinstance(got, BatchEmbeddingResponse), got
        np.testing.assert_array_equal(got.embeddings, want.embeddings)
        assert got.usage == want.usage
    assert isinstance(results[-2], TruncationError) and results[-2].index == 0
    assert isinstance(results[-1], EmbeddingInputError)
    assert max(e.pieces for e in events) > 1


def test_the_token_budget_counts_ids_and_splits_a_large_request() -> None:
    ids = [[i + 1] * (4 if i % 2 else 2) for i in range(10)]  # 2 or 4 tokens each
    ids[7] = [1, 2, 3, 40000]  # outside the vocabulary, in the third piece
    events: list[BatchEvent] = []
    with mock_manager() as manager:
        good = ids[:7]
        want = manager.embed_token_ids(good)

        async def main() -> tuple[Any, Any]:
            async with Batcher(manager, max_batch_tokens=12, observers=[events.append]) as b:
                ok = await b.embed(EmbeddingRequest(token_ids=good))
                bad = await outcome(b, EmbeddingRequest(token_ids=ids))
                return ok, bad

        ok, bad = run(main())
    np.testing.assert_array_equal(ok.embeddings, want)
    assert ok.usage["prompt_tokens"] == sum(map(len, good))
    # Pieces of at most 12 padded tokens (longest x texts): ids, not characters, count.
    assert events and all(e.padded_tokens <= 12 for e in events)
    assert [e.texts for e in events[:3]] == [3, 3, 1]
    assert isinstance(bad, EmbeddingInputError)
    assert "token id 40000 at index 1" in str(bad) and "counts from input 6" in str(bad)


# --- HTTP -----------------------------------------------------------------------------------


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", timeout=30, max_retries=0)


def _post(served: Served, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/embeddings", json=body, timeout=30)


STRICT = {"AKIDB_EMBEDDING_TRUNCATION": "error"}


@pytest.fixture(scope="module")
def strict_mock(serve_module: Serve) -> Served:
    """The mock with an 8-token limit and truncation ``error``."""
    return serve_module("--provider", "mock", "--option", "max_tokens=8", env=STRICT)


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return str(error["message"])


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_openai_client_token_ids_equal_in_process(strict_mock: Served, encoding: str) -> None:
    ids = [[101, 7592, 102], [101, 2088, 2003, 102], [7]]
    with EmbeddingManager.from_config(provider="mock", options={"max_tokens": 8}) as manager:
        want = manager.embed_token_ids(ids)
    kwargs: dict[str, Any] = {"encoding_format": "float"} if encoding == "float" else {}
    out = _client(strict_mock).embeddings.create(input=ids, model="mock", **kwargs)
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert [d.index for d in out.data] == [0, 1, 2]
    assert out.usage.prompt_tokens == out.usage.total_tokens == 3 + 4 + 1
    # [int] is one text's ids.
    one = _client(strict_mock).embeddings.create(input=[101, 7592, 102], model="mock")
    np.testing.assert_allclose(one.data[0].embedding, want[0], atol=1e-6)
    assert len(one.data) == 1 and one.usage.prompt_tokens == 3


def test_token_id_errors_over_http(strict_mock: Served) -> None:
    message = _error(_post(strict_mock, {"input": [[101, 102], [1] * 9]}), 413, "input_too_long")
    assert "index 1" in message and "8" in message
    client = _client(strict_mock)
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(input=[[101, 102], list(range(1, 10))], model="mock")
    assert info.value.status_code == 413
    message = _error(_post(strict_mock, {"input": [[1, 2], [30522]]}), 400, "invalid_input")
    assert "token id 30522 at index 1" in message and "vocabulary" in message
    _error(_post(strict_mock, {"input": [[1, 2], [-1]]}), 400, "invalid_input")
    assert "is empty" in _error(_post(strict_mock, {"input": [[1], []]}), 400, "invalid_input")
    _error(_post(strict_mock, {"input": []}), 400, "empty_input")
    r = _post(strict_mock, {"input": [[1, "a"]]})
    assert r.status_code == 422, r.text
    r = _post(strict_mock, {"input": [[1, 2.5]]})
    assert r.status_code == 422, r.text
    # The server still answers after every refusal.
    assert _post(strict_mock, {"input": [[5, 6]]}).status_code == 200


def test_a_text_only_provider_answers_400_that_says_so(serve: Serve) -> None:
    served = serve("--provider", "mock", "--option", "token_input=false")
    for body in ({"input": [[101, 7592, 102]]}, {"input": [101, 7592, 102]}):
        message = _error(_post(served, body), 400, "token_input_not_supported")
        assert "this provider (mock) takes text only" in message
    with pytest.raises(openai.BadRequestError, match="takes text only"):
        _client(served).embeddings.create(input=[[101, 7592, 102]], model="mock")
    assert _post(served, {"input": ["101 7592 102"]}).status_code == 200


@pytest.mark.slow
def test_onnx_server_token_ids_equal_in_process(minilm_onnx_dir: Path, serve: Serve) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(minilm_onnx_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    texts = ["hello", "vector databases store embeddings", "Café crème"]
    ids = [tokenizer.encode(t).ids for t in texts]
    assert ids[0] == [101, 7592, 102]
    with EmbeddingManager.from_config(provider="onnx", model=str(minilm_onnx_dir)) as manager:
        want = manager.embed_token_ids(ids)
        np.testing.assert_allclose(want, manager.embed(texts), atol=1e-5)
    served = serve("--provider", "onnx", "--model", str(minilm_onnx_dir), env=STRICT)
    model = httpx.get(f"{served.url}/v1/models", timeout=10).json()["data"][0]["id"]
    client = _client(served)
    out = client.embeddings.create(input=[[101, 7592, 102]], model=model)
    np.testing.assert_allclose(out.data[0].embedding, want[0], atol=1e-6)
    out = client.embeddings.create(input=ids, model=model)
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert out.usage.prompt_tokens == sum(map(len, ids))
    long = [101] + [2773] * 300 + [102]
    message = _error(_post(served, {"input": [ids[0], long]}), 413, "input_too_long")
    assert "index 1" in message and "302" in message and "256" in message
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    _error(_post(served, {"input": [[101, vocab, 102]]}), 400, "invalid_input")
