"""``akidb-embed serve`` as a real subprocess on a free loopback port."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import openai
import pytest

from akidb_embed import EmbeddingManager, EmbeddingRequest

if TYPE_CHECKING:  # the class behind the serve fixtures of conftest.py
    from conftest import Served


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Served]) -> Served:
    return serve_module("--provider", "mock")


@pytest.fixture(scope="module")
def manager() -> Iterator[EmbeddingManager]:
    with EmbeddingManager.from_config(provider="mock") as m:
        yield m


TEXTS = ["hello world", "a somewhat longer sentence about vector databases", "x"]


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_openai_client_matches_in_process(
    server: Served, manager: EmbeddingManager, encoding: str
) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", timeout=10, max_retries=0)
    if encoding == "float":
        out = client.embeddings.create(model="mock", input=TEXTS, encoding_format="float")
    else:
        out = client.embeddings.create(model="mock", input=TEXTS)  # base64 by default
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    np.testing.assert_allclose(got, manager.embed(TEXTS), atol=1e-6)
    assert [d.index for d in out.data] == [0, 1, 2]
    assert out.model == "mock" and out.usage.total_tokens == out.usage.prompt_tokens


def test_openai_dimensions_cut_and_renormalise(server: Served, manager: EmbeddingManager) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", timeout=10, max_retries=0)
    out = client.embeddings.create(model="mock", input="hello", dimensions=8)
    want = manager.embed(["hello"])[0, :8]
    np.testing.assert_allclose(out.data[0].embedding, want / np.linalg.norm(want), atol=1e-6)


def test_tei_and_akidb_shapes(server: Served, manager: EmbeddingManager) -> None:
    r = httpx.post(f"{server.url}/embed", json={"inputs": "hello world"}, timeout=10)
    assert r.status_code == 200
    np.testing.assert_allclose(r.json(), manager.embed(["hello world"]), atol=1e-6)
    r = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS, "normalize": False}, timeout=10)
    np.testing.assert_allclose(r.json(), manager.embed(TEXTS, normalize=False), atol=1e-5)
    r = httpx.post(f"{server.url}/api/v1/embed", json={"inputs": TEXTS}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["model"] == "mock" and body["dimension"] == 384
    assert body["usage"]["texts"] == 3
    np.testing.assert_allclose(body["embeddings"], manager.embed(TEXTS), atol=1e-6)
    for header in ("x-queue-time", "x-inference-time", "x-total-time", "x-total-tokens"):
        assert header in r.headers


def _nested(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["code"], str)
    if code is not None:
        assert error["code"] == code


def test_errors_in_each_routes_shape(server: Served) -> None:
    post = lambda path, body: httpx.post(server.url + path, json=body, timeout=10)  # noqa: E731
    _nested(post("/v1/embeddings", {"input": []}), 400, "empty_input")
    # Token ids a text-only provider refuses: tests/server/test_token_input.py.
    _nested(post("/v1/embeddings", {"input": "a", "dimensions": 385}), 400)
    r = post("/v1/embeddings", {"input": "a", "model": "other"})
    _nested(r, 404, "model_not_found")
    assert "mock" in r.json()["error"]["message"]
    _nested(post("/v1/embeddings", {"input": 5}), 422, "validation_error")
    _nested(post("/v1/embeddings", {"input": "a", "encoding_format": "int8"}), 422)
    long = "word " * 700
    r = post("/api/v1/embed", {"inputs": ["ok", long], "truncation": "error"})
    _nested(r, 413, "input_too_long")
    assert "index 1" in r.json()["error"]["message"] and "512" in r.json()["error"]["message"]
    _nested(post("/api/v1/embed", {"inputs": []}), 400)
    _nested(post("/api/v1/embed", {"inputs": ["a"], "model": "other"}), 404)
    for body in ({"inputs": "a", "normalize": "false"}, {"inputs": 3}):
        r = post("/embed", body)
        assert r.status_code == 422 and set(r.json()) == {"error", "error_type"}
    r = post("/embed", {"inputs": []})
    assert r.status_code == 400 and set(r.json()) == {"error", "error_type"}
    r = post("/embed", {"inputs": long, "truncate": False})
    assert r.status_code == 413 and set(r.json()) == {"error", "error_type"}


def test_info_models_health(server: Served) -> None:
    info = httpx.get(f"{server.url}/info", timeout=10).json()
    assert info["model_id"] == "mock" and info["fingerprint"]["dimension"] == 384
    assert info["limits"]["max_batch_tokens"] == 16384 and info["version"]
    models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "mock"
    assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}


def test_concurrent_requests_each_equal_in_process(
    server: Served, manager: EmbeddingManager
) -> None:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "vector", "database", "embedding"]
    batches = [
        [" ".join(rng.choice(words, int(rng.integers(1, 40)))) for _ in range(int(n))]
        for n in rng.integers(1, 20, size=32)
    ]
    flags = [bool(i % 2) for i in range(32)]

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/api/v1/embed", json={"inputs": b, "normalize": f})
                    for b, f in zip(batches, flags, strict=True)
                )
            )

    responses = asyncio.run(go())
    for r, texts, flag in zip(responses, batches, flags, strict=True):
        assert r.status_code == 200
        want = manager.embed_many([EmbeddingRequest(texts, normalize=flag)])[0]
        np.testing.assert_allclose(r.json()["embeddings"], want.embeddings, atol=1e-5)


def test_sigterm_answers_in_flight_and_exits_0(serve: Callable[..., Served]) -> None:
    served = serve("--provider", "mock", "--option", "latency=0.3")

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            tasks = [
                asyncio.ensure_future(client.post("/api/v1/embed", json={"inputs": [f"text {i}"]}))
                for i in range(8)
            ]
            await asyncio.sleep(0.15)
            served.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * 8
    assert served.proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_onnx_model_through_openai_client(
    serve: Callable[..., Served], minilm_onnx_dir: Path
) -> None:
    served = serve("--provider", "onnx", "--model", str(minilm_onnx_dir))
    with EmbeddingManager.from_config(provider="onnx", model=str(minilm_onnx_dir)) as m:
        want = m.embed(TEXTS)
    model = httpx.get(f"{served.url}/v1/models", timeout=10).json()["data"][0]["id"]
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", timeout=30)
    out = client.embeddings.create(model=model, input=TEXTS)
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)
