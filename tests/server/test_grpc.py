"""The gRPC API of ``akidb-embed serve`` (``akidb.embed.v1.Embedder``, health, reflection),
against the server as a real subprocess on free loopback ports.

Clients: the committed stubs (``akidb_embed_server.proto``), a client that knows nothing
but server reflection (grpcio-reflection's descriptor database), and grpcio-health-checking's
stubs. Vectors are compared with the REST routes' and with the in-process manager's.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from akidb_embed import EmbeddingManager, EmbeddingRequest
from akidb_embed_server.proto import embed_pb2, embed_pb2_grpc

if TYPE_CHECKING:  # the class behind the serve fixtures of conftest.py
    from conftest import Served

Serve = Callable[..., "Served"]

SERVICE = "akidb.embed.v1.Embedder"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TEXTS = ["hello world", "a somewhat longer sentence about vector databases", "x"]

# The module's server: small limits, so every limit can be crossed cheaply.
LIMITS = ("--max-client-batch-size", "8", "--max-input-chars", "200", "--max-body-bytes", "4096")


@pytest.fixture(scope="module")
def server(serve_module: Serve) -> Served:
    # The mock counts words as tokens and cuts at max_tokens (truncation "error" fails).
    return serve_module("--provider", "mock", "--option", "max_tokens=16", *LIMITS)


@pytest.fixture(scope="module")
def manager() -> Iterator[EmbeddingManager]:
    with EmbeddingManager.from_config(provider="mock", options={"max_tokens": 16}) as m:
        yield m


@pytest.fixture(scope="module")
def stub(server: Served) -> Iterator[embed_pb2_grpc.EmbedderStub]:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield embed_pb2_grpc.EmbedderStub(channel)


def in_process(manager: EmbeddingManager, request: EmbeddingRequest) -> np.ndarray:
    (outcome,) = manager.embed_many([request])
    assert not isinstance(outcome, Exception), outcome
    return outcome.embeddings


def vectors(reply: Any) -> np.ndarray:
    return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)


def failure(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# -- the committed stubs -------------------------------------------------------------------


def test_embed_equals_rest_and_in_process(
    server: Served, stub: embed_pb2_grpc.EmbedderStub, manager: EmbeddingManager
) -> None:
    reply, call = stub.Embed.with_call(
        embed_pb2.EmbedRequest(inputs=TEXTS),
        metadata=(("x-request-id", "grpc-test-1"),),
        timeout=10,
    )
    rest = httpx.post(f"{server.url}/api/v1/embed", json={"inputs": TEXTS}, timeout=10).json()
    got = vectors(reply)
    # float32 on both wires: the same numbers exactly.
    np.testing.assert_array_equal(got, np.array(rest["embeddings"], dtype=np.float32))
    np.testing.assert_allclose(got, manager.embed(TEXTS), atol=1e-6)
    assert reply.model == "mock" and reply.dimension == 384 == got.shape[1]
    assert reply.usage.texts == 3 and reply.usage.prompt_tokens == rest["usage"]["prompt_tokens"]
    assert reply.timing.total_ms >= reply.timing.inference_ms > 0
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-test-1"


def test_embed_options_equal_rest_and_in_process(
    server: Served, stub: embed_pb2_grpc.EmbedderStub, manager: EmbeddingManager
) -> None:
    plain = stub.Embed(embed_pb2.EmbedRequest(inputs=TEXTS, normalize=False), timeout=10)
    want = in_process(manager, EmbeddingRequest(TEXTS, normalize=False))
    np.testing.assert_allclose(vectors(plain), want, atol=1e-6)
    rest = httpx.post(
        f"{server.url}/api/v1/embed", json={"inputs": TEXTS, "normalize": False}, timeout=10
    ).json()
    np.testing.assert_array_equal(vectors(plain), np.array(rest["embeddings"], dtype=np.float32))

    # Matryoshka: the first 8 components, re-normalised, as /v1/embeddings' dimensions.
    cut = stub.Embed(embed_pb2.EmbedRequest(inputs=TEXTS, dimensions=8), timeout=10)
    openai = httpx.post(
        f"{server.url}/v1/embeddings", json={"input": TEXTS, "dimensions": 8}, timeout=10
    ).json()
    assert cut.dimension == 8
    np.testing.assert_array_equal(
        vectors(cut), np.array([d["embedding"] for d in openai["data"]], dtype=np.float32)
    )
    full = manager.embed(TEXTS)[:, :8]
    np.testing.assert_allclose(
        vectors(cut), full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-6
    )

    long = " ".join(["word"] * 40)  # 40 tokens for the mock, over its 16
    cut_text = stub.Embed(
        embed_pb2.EmbedRequest(inputs=[long], truncation=embed_pb2.TRUNCATION_TRUNCATE), timeout=10
    )
    assert cut_text.usage.truncated == 1
    want = in_process(manager, EmbeddingRequest([long], truncation="truncate"))
    np.testing.assert_allclose(vectors(cut_text), want, atol=1e-6)


def test_stream_answers_in_order_under_16_concurrent_streams(
    server: Served, manager: EmbeddingManager
) -> None:
    rng = random.Random(11)
    streams = [
        [
            [f"stream {s} message {m} text {t} " + "pad " * rng.randint(0, 10) for t in range(n)]
            for m, n in enumerate(rng.randint(1, 5) for _ in range(12))
        ]
        for s in range(16)
    ]

    async def run(messages: list[list[str]], channel: grpc.aio.Channel) -> list[np.ndarray]:
        stub = embed_pb2_grpc.EmbedderStub(channel)

        async def requests() -> Any:
            for texts in messages:
                yield embed_pb2.EmbedRequest(inputs=texts)
                await asyncio.sleep(0)  # interleave with the other streams

        return [vectors(r) async for r in stub.EmbedStream(requests(), timeout=60)]

    async def main() -> list[list[np.ndarray]]:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            return await asyncio.gather(*(run(m, channel) for m in streams))

    answers = asyncio.run(main())
    for messages, replies in zip(streams, answers, strict=True):
        assert len(replies) == len(messages)
        for texts, got in zip(messages, replies, strict=True):
            np.testing.assert_allclose(got, manager.embed(texts), atol=1e-6)
    # Messages of different streams were merged into shared batches.
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    sizes = {
        s.labels["le"]: s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "akidb_embed_batch_size"
        for s in family.samples
        if s.name.endswith("_bucket")
    }
    total = sum(len(t) for m in streams for t in m)
    assert sizes["+Inf"] < total, "every text was a batch of its own"


def test_info_equals_rest(server: Served, stub: embed_pb2_grpc.EmbedderStub) -> None:
    info = stub.Info(embed_pb2.InfoRequest(), timeout=10)
    rest = httpx.get(f"{server.url}/info", timeout=10).json()
    assert info.model_id == rest["model_id"] and info.provider == rest["provider"] == "mock"
    assert info.dimension == rest["model"]["dimension"] == 384
    assert json.loads(info.fingerprint_json) == rest["fingerprint"]
    assert info.limits.max_client_batch_size == 8 == rest["limits"]["max_client_batch_size"]
    assert info.limits.max_message_bytes == 4096 and info.limits.max_input_chars == 200
    assert info.max_tokens == 16 and info.version == rest["version"]


# -- statuses -------------------------------------------------------------------------------

CASES = {
    "empty input": (embed_pb2.EmbedRequest(), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    "dimensions 0": (
        embed_pb2.EmbedRequest(inputs=["a"], dimensions=0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "between 1 and the model's dimension 384",
    ),
    "dimensions over": (
        embed_pb2.EmbedRequest(inputs=["a"], dimensions=385),
        grpc.StatusCode.INVALID_ARGUMENT,
        "384",
    ),
    "unknown truncation": (
        embed_pb2.EmbedRequest(inputs=["a"], truncation=7),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "TRUNCATION_ERROR",
    ),
    "unknown prompt": (
        embed_pb2.EmbedRequest(inputs=["a"], prompt_name="nope"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "nope",
    ),
    "other model": (
        embed_pb2.EmbedRequest(inputs=["a"], model="gpt-9"),
        grpc.StatusCode.NOT_FOUND,
        "this server serves 'mock'",
    ),
    "too many inputs": (
        embed_pb2.EmbedRequest(inputs=["a"] * 9),
        grpc.StatusCode.OUT_OF_RANGE,
        "max_client_batch_size = 8",
    ),
    "text too large": (
        embed_pb2.EmbedRequest(inputs=["ok", "y" * 201]),
        grpc.StatusCode.OUT_OF_RANGE,
        "index 1 has 201 characters, more than the limit of 200",
    ),
    "too many tokens": (
        embed_pb2.EmbedRequest(
            inputs=["short", " ".join(["w"] * 40)], truncation=embed_pb2.TRUNCATION_ERROR
        ),
        grpc.StatusCode.OUT_OF_RANGE,
        "16",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_status_of_each_refusal(stub: embed_pb2_grpc.EmbedderStub, case: str) -> None:
    request, code, words = CASES[case]
    error = failure(lambda: stub.Embed(request, timeout=10))
    assert error.code() == code, error.details()
    assert words in error.details()


def test_message_over_the_size_limit_is_refused_before_it_is_read(
    stub: embed_pb2_grpc.EmbedderStub,
) -> None:
    # max_body_bytes (4096 here) bounds gRPC messages too; grpcio answers it itself.
    error = failure(lambda: stub.Embed(embed_pb2.EmbedRequest(inputs=["z" * 150] * 30)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4096" in error.details()


def test_malformed_message_is_invalid_argument(server: Served) -> None:
    # Field 1 (inputs, a string) holding bytes that are not UTF-8.
    raw = bytes([0x0A, 0x02, 0xC3, 0x28])
    with grpc.insecure_channel(server.grpc_target) as channel:
        embed = channel.unary_unary(f"/{SERVICE}/Embed")  # bytes in, bytes out
        error = failure(lambda: embed(raw, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid akidb.embed.v1.EmbedRequest" in error.details()


def test_an_error_ends_the_stream_after_the_answers_before_it(
    stub: embed_pb2_grpc.EmbedderStub, manager: EmbeddingManager
) -> None:
    requests = [
        embed_pb2.EmbedRequest(inputs=["first"]),
        embed_pb2.EmbedRequest(inputs=["second"]),
        embed_pb2.EmbedRequest(inputs=[]),
        embed_pb2.EmbedRequest(inputs=["never answered"]),
    ]
    answers = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in stub.EmbedStream(iter(requests), timeout=10):
            answers.append(vectors(reply))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(answers) == 2
    np.testing.assert_allclose(np.vstack(answers), manager.embed(["first", "second"]), atol=1e-6)


# -- health and reflection ------------------------------------------------------------------


def test_health_serving_when_ready(server: Served) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == SERVING
        error = failure(lambda: health.Check(health_pb2.HealthCheckRequest(service="x.Y")))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert next(watch).status == SERVING
        watch.cancel()


def test_a_client_that_knows_only_reflection_lists_the_services_and_embeds(
    server: Served, manager: EmbeddingManager
) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME} <= services
        # A pool of its own: nothing from the committed stubs, only what the server says.
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(SERVICE).methods_by_name["Embed"]
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        assert request_class is not embed_pb2.EmbedRequest
        embed = channel.unary_unary(
            f"/{SERVICE}/{method.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = embed(request_class(inputs=TEXTS), timeout=10)
    np.testing.assert_allclose(vectors(reply), manager.embed(TEXTS), atol=1e-6)
    assert reply.usage.texts == 3


def test_the_docs_python_example_runs(server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text("utf-8")
    (block,) = [b.split("```", 1)[0] for b in doc.split("```py\n")[1:] if "EmbedderStub" in b]
    namespace: dict[str, Any] = {}
    exec(
        compile(block.replace("127.0.0.1:9090", server.grpc_target), "server.md", "exec"), namespace
    )
    assert len(namespace["vectors"]) == 2 and len(namespace["vectors"][0]) == 384
    assert len(capsys.readouterr().out.splitlines()) == 100  # one line per streamed answer


# -- observability --------------------------------------------------------------------------


def test_metrics_and_access_log_count_grpc_calls(
    server: Served, stub: embed_pb2_grpc.EmbedderStub
) -> None:
    stub.Embed(embed_pb2.EmbedRequest(inputs=["counted"]), timeout=10)
    failure(lambda: stub.Embed(embed_pb2.EmbedRequest(), timeout=10))
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "akidb_embed_requests"
        for s in family.samples
        if s.name == "akidb_embed_requests_total"
    }
    assert requests[(f"/{SERVICE}/Embed", "OK")] >= 1
    assert requests[(f"/{SERVICE}/Embed", "INVALID_ARGUMENT")] >= 1
    assert requests[(f"/{SERVICE}/EmbedStream", "OK")] >= 1  # one per stream message
    assert re.search(r'akidb_embed_errors_total\{code="empty_input"\} [1-9]', text)
    deadline = time.monotonic() + 5
    while "method=GRPC route=/akidb.embed.v1.Embedder/Embed" not in server.output():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    line = next(x for x in server.output().splitlines() if "status=OK texts=1" in x)
    assert "method=GRPC" in line and "tokens=1" in line and "queue_ms=" in line


# -- servers of their own -------------------------------------------------------------------


def _health(target: str, service: str = "") -> int | None:
    with grpc.insecure_channel(target) as channel:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
        except grpc.RpcError:
            return None  # not listening yet
    return int(reply.status)


def test_not_serving_and_unavailable_while_loading_then_serving(serve: Serve) -> None:
    served = serve("--provider", "mock", "--option", "load_delay=4", wait=False)
    target = served.grpc_target
    deadline = time.monotonic() + 60
    while (status := _health(target)) is None:
        assert served.proc.poll() is None and time.monotonic() < deadline, served.output()
        time.sleep(0.05)
    assert status == NOT_SERVING
    with grpc.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=60
        )
        assert next(watch).status == NOT_SERVING
        stub = embed_pb2_grpc.EmbedderStub(channel)
        error = failure(lambda: stub.Embed(embed_pb2.EmbedRequest(inputs=["x"]), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "loading" in error.details()
        error = failure(lambda: stub.Info(embed_pb2.InfoRequest(), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert served.ready_status() == 503
        # Watch hears SERVING once the model is loaded and the probe text embedded.
        assert next(watch).status == SERVING
        watch.cancel()
        assert served.ready_status() == 200
        assert len(stub.Embed(embed_pb2.EmbedRequest(inputs=["x"]), timeout=5).embeddings) == 1


def test_sigterm_drains_grpc_in_flight_answered_then_exit_0(serve: Serve) -> None:
    served = serve("--provider", "mock", "--option", "latency=0.6", "--option", "max_concurrency=1")
    target = served.grpc_target

    async def main() -> tuple[list[Any], Any, Any, int, Any]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = embed_pb2_grpc.EmbedderStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            in_flight = [
                asyncio.ensure_future(
                    stub.Embed(embed_pb2.EmbedRequest(inputs=[f"in flight {i}"]), timeout=30)
                )
                for i in range(3)
            ]
            idle = stub.EmbedStream(timeout=30)  # opened, nothing sent: ends on drain
            await asyncio.sleep(0.3)
            served.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
            try:
                await stub.Embed(embed_pb2.EmbedRequest(inputs=["too late"]), timeout=5)
                late: Any = None
            except grpc.aio.AioRpcError as exc:
                late = exc
            idle_code = await idle.code()
            answers = await asyncio.gather(*in_flight, return_exceptions=True)
            return answers, late, idle_code, status, None

    answers, late, idle_code, status, _ = asyncio.run(main())
    assert status == NOT_SERVING
    assert late is not None and late.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in late.details()
    assert idle_code == grpc.StatusCode.UNAVAILABLE
    assert all(not isinstance(a, BaseException) for a in answers), answers
    assert [len(a.embeddings) for a in answers] == [1, 1, 1]
    assert served.wait(timeout=30) == 0, served.output()


def test_deadlines_are_honoured_and_expired_work_dropped(serve: Serve) -> None:
    # One text per batch, 1 s each; the server's own deadline is 1.2 s (the probe fits).
    served = serve(
        "--provider", "mock", "--option", "latency=1.0", "--option", "max_concurrency=1",
        "--max-batch-size", "1", "--max-wait-ms", "0", "--request-timeout-s", "1.2",
    )  # fmt: skip
    queued = [f"queued {i}" for i in range(5)]

    async def main() -> tuple[list[Any], Any, float]:
        async with grpc.aio.insecure_channel(served.grpc_target) as channel:
            stub = embed_pb2_grpc.EmbedderStub(channel)
            # The first runs at once; the second waits 1 s for it, so passes the server's
            # 1.2 s while in its own batch.
            busy = [
                asyncio.ensure_future(
                    stub.Embed(embed_pb2.EmbedRequest(inputs=[f"busy {i}"]), timeout=30)
                )
                for i in range(2)
            ]
            await asyncio.sleep(0.2)
            start = time.perf_counter()
            try:  # the client's own deadline, passed while its texts wait in the queue
                await stub.Embed(embed_pb2.EmbedRequest(inputs=queued), timeout=0.2)
                client: Any = None
            except grpc.aio.AioRpcError as exc:
                client = exc
            took = time.perf_counter() - start
            return await asyncio.gather(*busy, return_exceptions=True), client, took

    answers, client, took = asyncio.run(main())
    assert client.code() == grpc.StatusCode.DEADLINE_EXCEEDED and took < 0.7
    # Which of the two arrived first is the server's to see; one ran at once, one waited.
    (late,) = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    (done,) = [a for a in answers if not isinstance(a, BaseException)]
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED, late
    assert "not answered within 1.2 s" in late.details()
    assert len(done.embeddings) == 1
    # Nothing of the client-expired request was computed: its texts left the queue unbatched.
    stats: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = httpx.get(f"{served.url}/info", timeout=10).json()["batcher"]
        if stats["in_flight_batches"] == 0:
            break
        time.sleep(0.05)
    assert stats["queued_texts"] == 0 and stats["dropped_texts"] == len(queued), stats
    assert stats["batched_texts"] == 3, stats  # the probe text and the two busy ones


def test_queue_full_is_resource_exhausted_with_retry_after(serve: Serve) -> None:
    served = serve(
        "--provider", "mock", "--option", "latency=0.5", "--option", "max_concurrency=1",
        "--max-queue-texts", "4", "--max-wait-ms", "0",
    )  # fmt: skip

    async def main() -> tuple[Any, list[Any]]:
        async with grpc.aio.insecure_channel(served.grpc_target) as channel:
            stub = embed_pb2_grpc.EmbedderStub(channel)
            accepted = [
                asyncio.ensure_future(stub.Embed(embed_pb2.EmbedRequest(inputs=["a"]), timeout=30))
            ]
            await asyncio.sleep(0.15)
            accepted.append(
                asyncio.ensure_future(
                    stub.Embed(embed_pb2.EmbedRequest(inputs=["b", "c", "d"]), timeout=30)
                )
            )
            await asyncio.sleep(0.15)
            call = stub.Embed(embed_pb2.EmbedRequest(inputs=["e", "f"]), timeout=30)
            try:
                await call
                refused: Any = None
            except grpc.aio.AioRpcError as exc:
                refused = exc
            return refused, await asyncio.gather(*accepted)

    refused, accepted = asyncio.run(main())
    assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue_texts=4" in refused.details()
    trailers = dict(refused.trailing_metadata())
    assert int(trailers["retry-after"]) >= 1 and int(trailers["grpc-retry-pushback-ms"]) > 0
    assert [len(r.embeddings) for r in accepted] == [1, 3]


def test_api_keys_over_metadata(serve: Serve) -> None:
    public = ("--public-path", "/ready", "--public-path", "/metrics")
    served = serve("--provider", "mock", *public, env={"AKIDB_SERVER_API_KEYS": "key-one,key-two"})
    request = embed_pb2.EmbedRequest(inputs=["secret stuff"])
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = embed_pb2_grpc.EmbedderStub(channel)
        for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", "key-one"),)):
            error = failure(lambda m=metadata: stub.Embed(request, metadata=m, timeout=10))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            assert "nope" not in error.details()
        for key in ("key-one", "key-two"):
            reply = stub.Embed(request, metadata=(("authorization", f"Bearer {key}"),), timeout=10)
            assert len(reply.embeddings) == 1
        # Streams, Info, reflection and unknown methods need the key too ...
        error = failure(lambda: list(stub.EmbedStream(iter([request]), timeout=10)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        error = failure(lambda: stub.Info(embed_pb2.InfoRequest(), timeout=10))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        error = failure(lambda: ProtoReflectionDescriptorDatabase(channel).get_services())
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        unknown = channel.unary_unary(f"/{SERVICE}/Nope")
        error = failure(lambda: unknown(b"", timeout=10))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    # ... health does not: probes cannot send metadata (like /health over HTTP).
    assert _health(served.grpc_target) == SERVING
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert re.search(r'akidb_embed_errors_total\{code="invalid_api_key"\} [1-9]', metrics)
    assert "key-one" not in served.output() and "key-two" not in served.output()


def test_no_grpc_and_a_taken_port(serve: Serve, tmp_path: Path) -> None:
    http_only = serve("--provider", "mock", "--no-grpc")
    assert http_only.ready_status() == 200
    assert "grpc=off" in http_only.output()
    assert http_only.grpc_target is None

    taken = serve("--provider", "mock")  # holds its gRPC port
    clash = serve("--provider", "mock", "--grpc-port", str(taken.grpc_port), wait=False)
    assert clash.wait(timeout=60) == 1
    out = clash.output()
    assert f"cannot listen for gRPC on 127.0.0.1:{taken.grpc_port}" in out
    assert "Address already in use" in out and "Traceback" not in out
    assert "serving provider" not in out  # refused before the model loaded


# -- settings -------------------------------------------------------------------------------


def test_grpc_settings_have_sources_and_refuse_a_shared_port(tmp_path: Path) -> None:
    from akidb_embed.errors import ConfigValueError
    from akidb_embed_server import ServerSettings

    assert ServerSettings().grpc_port == 9090 and ServerSettings().grpc_enabled is True
    env = {"AKIDB_SERVER_GRPC_PORT": "9191", "AKIDB_SERVER_GRPC_ENABLED": "off"}
    settings = ServerSettings.load(environ=env)
    assert (settings.grpc_port, settings.grpc_enabled) == (9191, False)
    assert settings.source("grpc_port") == "env:AKIDB_SERVER_GRPC_PORT"
    path = tmp_path / "akidb.toml"
    path.write_text("[server]\ngrpc_port = 9292\n")
    settings = ServerSettings.load(path, environ={}, grpc_enabled=False)
    assert settings.grpc_port == 9292 and settings.source("grpc_port").startswith("file:")
    assert settings.source("grpc_enabled") == "argument"
    with pytest.raises(ConfigValueError, match=r"grpc_port.*must differ from port"):
        ServerSettings(port=9000, grpc_port=9000)
    ServerSettings(port=9000, grpc_port=9000, grpc_enabled=False)  # HTTP only: no clash
    with pytest.raises(ConfigValueError, match="grpc_port"):
        ServerSettings(grpc_port=70000)


# -- the real model -------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_model_grpc_equals_rest_and_in_process(serve: Serve, minilm_onnx_dir: Path) -> None:
    served = serve("--provider", "onnx", "--model", str(minilm_onnx_dir))
    with EmbeddingManager.from_config(provider="onnx", model=str(minilm_onnx_dir)) as m:
        want = m.embed(TEXTS)
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = embed_pb2_grpc.EmbedderStub(channel)
        reply = stub.Embed(embed_pb2.EmbedRequest(inputs=TEXTS), timeout=60)
        streamed = [
            vectors(r)
            for r in stub.EmbedStream(
                iter([embed_pb2.EmbedRequest(inputs=[t]) for t in TEXTS]), timeout=60
            )
        ]
    rest = httpx.post(f"{served.url}/api/v1/embed", json={"inputs": TEXTS}, timeout=60).json()
    got = vectors(reply)
    np.testing.assert_array_equal(got, np.array(rest["embeddings"], dtype=np.float32))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.vstack(streamed), want, atol=1e-5)
    assert reply.dimension == 384 and reply.usage.prompt_tokens == rest["usage"]["prompt_tokens"]
