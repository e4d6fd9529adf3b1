"""Many clients at once against ``akidb-embed serve``: every answer is that request's own
(no batch mix-ups), batches really merge requests, and a flood past the queue's bound is
refused at once with 429 while the accepted requests are still served."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from akidb_embed import EmbeddingManager, EmbeddingRequest
from akidb_embed.errors import TruncationError

if TYPE_CHECKING:  # the class behind the serve fixtures of conftest.py
    from conftest import Served

Serve = Callable[..., "Served"]

CLIENTS = 64
REQUESTS_PER_CLIENT = 1
WORDS = [
    *("vector", "database", "embedding", "index", "query", "search", "nearest", "neighbour"),
    *("cosine", "similarity", "token", "batch", "model", "server", "latency", "shard"),
]


@dataclass
class Call:
    """One HTTP request, and the in-process request that must give the same answer."""

    route: str
    body: dict[str, Any]
    request: EmbeddingRequest
    dimensions: int | None
    renormalize: bool


def _text(rng: random.Random, i: int, long: bool = False) -> str:
    # A long one is over the model's 256 word pieces: truncated, or a 413 with "error".
    n = rng.randint(260, 290) if long else rng.randint(1, 12)
    return f"text {i} " + " ".join(rng.choice(WORDS) for _ in range(n))


def _calls(seed: int = 20240611) -> list[Call]:
    rng = random.Random(seed)
    calls: list[Call] = []
    counter = 0
    for k in range(CLIENTS * REQUESTS_PER_CLIENT):
        # Mostly a few texts, sometimes many: the 2-core CI machine bounds the total.
        size = rng.randint(20, 50) if rng.random() < 0.15 else rng.randint(1, 8)
        long = rng.randrange(size) if k % 5 == 0 else -1
        texts = [_text(rng, counter + j, long=j == long) for j in range(size)]
        counter += len(texts)
        route = rng.choice(["/api/v1/embed", "/v1/embeddings", "/embed"])
        if route == "/api/v1/embed":
            normalize = rng.choice([None, True, False])
            truncation = rng.choice([None, "truncate", "truncate", "error"])
            body: dict[str, Any] = {"inputs": texts}
            if normalize is not None:
                body["normalize"] = normalize
            if truncation is not None:
                body["truncation"] = truncation
            request = EmbeddingRequest(texts, normalize=normalize, truncation=truncation)
            calls.append(Call(route, body, request, None, False))
        elif route == "/v1/embeddings":
            dimensions = rng.choice([None, 384, 128, 32])
            body = {"input": texts if len(texts) > 1 else texts[0], "model": "minilm"}
            body["encoding_format"] = rng.choice(["float", "base64"])
            if dimensions is not None:
                body["dimensions"] = dimensions
            calls.append(Call(route, body, EmbeddingRequest(texts), dimensions, True))
        else:
            normalize = rng.choice([True, False])
            truncate = rng.choice([None, True, True, False])
            dimensions = rng.choice([None, 256, 64])
            body = {"inputs": texts, "normalize": normalize}
            if truncate is not None:
                body["truncate"] = truncate
            if dimensions is not None:
                body["dimensions"] = dimensions
            truncation = None if truncate is None else ("truncate" if truncate else "error")
            request = EmbeddingRequest(texts, normalize=normalize, truncation=truncation)
            calls.append(Call(route, body, request, dimensions, normalize))
    return calls


def _vectors(call: Call, response: httpx.Response) -> np.ndarray:
    data = response.json()
    if call.route == "/api/v1/embed":
        return np.asarray(data["embeddings"], dtype=np.float32)
    if call.route == "/embed":
        return np.asarray(data, dtype=np.float32)
    assert [d["index"] for d in data["data"]] == list(range(len(data["data"])))
    if call.body["encoding_format"] == "base64":
        rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data["data"]]
        return np.stack(rows)
    return np.asarray([d["embedding"] for d in data["data"]], dtype=np.float32)


def _expected(call: Call, outcome: Any) -> np.ndarray:
    vectors = np.asarray(outcome.embeddings, dtype=np.float32)
    if call.dimensions is None or call.dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, : call.dimensions].astype(np.float64)
    if call.renormalize:
        cut /= np.linalg.norm(cut, axis=1, keepdims=True)
    return cut.astype(np.float32)


def _batch_sizes(metrics: str) -> tuple[float, float]:
    """(batches, batches of one text) from the ``akidb_embed_batch_size`` histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics):
        if family.name == "akidb_embed_batch_size":
            count = next(s.value for s in family.samples if s.name.endswith("_count"))
            ones = min(
                (
                    s.value
                    for s in family.samples
                    if s.name.endswith("_bucket") and float(s.labels["le"]) >= 1
                ),
                default=0.0,
            )
            return count, ones
    raise AssertionError("no akidb_embed_batch_size histogram in /metrics")


@pytest.fixture(scope="module")
def onnx_server(serve_module: Callable[..., Served], minilm_onnx_dir: Path) -> Served:
    return serve_module(
        "--provider", "onnx", "--model", str(minilm_onnx_dir), "--served-model-name", "minilm"
    )


@pytest.fixture(scope="module")
def onnx_manager(minilm_onnx_dir: Path) -> Iterator[EmbeddingManager]:
    with EmbeddingManager.from_config(provider="onnx", model=str(minilm_onnx_dir)) as m:
        yield m


@pytest.mark.slow
def test_64_clients_each_get_their_own_answer(
    onnx_server: Served, onnx_manager: EmbeddingManager
) -> None:
    calls = _calls()

    async def client(http: httpx.AsyncClient, mine: list[int]) -> list[httpx.Response]:
        return [await http.post(calls[i].route, json=calls[i].body) for i in mine]

    async def go() -> list[list[httpx.Response]]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=onnx_server.url, timeout=120, limits=limits) as h:
            return await asyncio.gather(
                *(client(h, list(range(c, len(calls), CLIENTS))) for c in range(CLIENTS))
            )

    start = time.perf_counter()
    per_client = asyncio.run(go())
    took = time.perf_counter() - start
    responses: dict[int, httpx.Response] = {}
    for c, answered in enumerate(per_client):
        for i, r in zip(range(c, len(calls), CLIENTS), answered, strict=True):
            responses[i] = r

    # In process, in batches other than the server's: what each request was merged with
    # must not matter.
    outcomes = onnx_manager.embed_many([call.request for call in calls])
    errors = 0
    for i, (call, outcome) in enumerate(zip(calls, outcomes, strict=True)):
        r = responses[i]
        if isinstance(outcome, TruncationError):
            errors += 1
            assert r.status_code == 413, (i, r.text)
            assert f"index {outcome.index}" in r.text, (i, r.text, outcome)
            continue
        assert not isinstance(outcome, BaseException), outcome
        assert r.status_code == 200, (i, call.route, r.text[:300])
        got = _vectors(call, r)
        np.testing.assert_allclose(got, _expected(call, outcome), atol=1e-6, err_msg=f"call {i}")
    assert 0 < errors < len(calls) // 4, errors  # some requests failed alone, not most
    texts = sum(len(c.request.texts) for c in calls)
    print(f"{len(calls)} requests, {texts} texts in {took:.1f} s")

    # Prometheus shows batches larger than one text.
    batches, ones = _batch_sizes(httpx.get(f"{onnx_server.url}/metrics", timeout=10).text)
    assert batches > ones, "no batch held more than one text"
    # The batcher's own counters, from /info.
    stats = httpx.get(f"{onnx_server.url}/info", timeout=10).json()["batcher"]
    assert stats["batched_texts"] >= texts and stats["dropped_texts"] == 0, stats
    # Fewer batches than requests: some batch held texts of several requests.
    assert stats["batches"] < len(calls), stats


def test_flood_past_the_queue_is_429_at_once_and_accepted_requests_succeed(
    serve: Serve,
) -> None:
    latency = 0.8
    served = serve(
        "--provider", "mock",
        "--option", f"latency={latency}", "--option", "max_concurrency=1",
        "--max-queue-texts", "20", "--max-batch-size", "10", "--max-wait-ms", "0",
    )  # fmt: skip
    with EmbeddingManager.from_config(provider="mock") as reference:
        flood = [[f"flood {i} a", f"flood {i} b"] for i in range(40)]

        async def one(http: httpx.AsyncClient, texts: list[str]) -> tuple[httpx.Response, float]:
            start = time.perf_counter()
            r = await http.post("/api/v1/embed", json={"inputs": texts})
            return r, time.perf_counter() - start

        async def go() -> list[tuple[httpx.Response, float]]:
            limits = httpx.Limits(max_connections=len(flood))
            async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as h:
                return await asyncio.gather(*(one(h, texts) for texts in flood))

        results = asyncio.run(go())
        statuses = [r.status_code for r, _ in results]
        assert set(statuses) == {200, 429}, statuses
        accepted = statuses.count(200)
        # At most the queue's 20 texts plus a batch in flight were taken.
        assert 5 <= accepted <= 16, statuses
        for (r, took), texts in zip(results, flood, strict=True):
            if r.status_code == 429:
                assert took < latency / 2, f"a 429 took {took:.2f} s: it waited in line"
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["code"] == "queue_full"
            else:
                want = reference.embed(texts)
                np.testing.assert_allclose(r.json()["embeddings"], want, atol=1e-6)
        # Once the flood has drained, the server takes requests again.
        r = httpx.post(f"{served.url}/api/v1/embed", json={"inputs": ["after"]}, timeout=10)
        assert r.status_code == 200
