"""Faults a running server must survive: deadlines, clients going away, SIGTERM, and a
python-bridge worker killed with ``kill -9`` under load.

Deadlines and disconnects are checked against the provider's own record of what it was
asked to compute (a mock held by the test, served by uvicorn in a thread); the others
run ``akidb-embed serve`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import numpy as np
import psutil
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager, MockEmbeddingProvider

if TYPE_CHECKING:  # the classes behind the fixtures of conftest.py
    from conftest import InProcess, Served

ServeApp = Callable[..., "InProcess"]
Serve = Callable[..., "Served"]

REFERENCE = MockEmbeddingProvider()


def _slow_manager() -> tuple[MockEmbeddingProvider, EmbeddingManager]:
    """A mock serving one call at a time behind an uncached manager (a cache hit would
    hide what the provider was asked); the test slows it down once the server is up."""
    provider = MockEmbeddingProvider(max_concurrency=1)
    return provider, EmbeddingManager(provider, EmbeddingConfig(provider="mock", cache_size=0))


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.005)


# -- deadlines ----------------------------------------------------------------------------


def test_request_timeout_is_504_and_its_queued_texts_are_never_computed(
    serve_app: ServeApp,
) -> None:
    provider, manager = _slow_manager()
    with manager:
        served = serve_app(manager, request_timeout_s=0.3, max_wait_ms=0)
        provider.reset()  # the readiness probe
        provider.latency = 0.8
        busy = ["the batch in flight when its deadline passes"]
        queued = [f"queued text {i}" for i in range(5)]

        async def go() -> tuple[httpx.Response, httpx.Response, float]:
            async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
                first = asyncio.ensure_future(client.post("/embed", json={"inputs": busy}))
                await asyncio.to_thread(_wait_for, lambda: provider.calls, "the first batch")
                start = time.perf_counter()
                second = await client.post("/v1/embeddings", json={"input": queued})
                return await first, second, time.perf_counter() - start

        first, second, took = asyncio.run(go())
        assert first.status_code == 504 and first.json()["error_type"] == "Backend"
        assert second.status_code == 504, second.text
        assert second.json()["error"]["code"] == "timeout"
        assert took < 0.7, f"the 504 came after {took:.2f} s, not at the 0.3 s deadline"
        # The first batch finishes in the provider; the queued request's texts must not
        # follow it there.
        _wait_for(lambda: served.state.batcher.stats().in_flight_batches == 0, "the batch")
        time.sleep(0.2)
        assert provider.texts == busy
        stats = served.state.batcher.stats()
        assert stats.dropped_texts == len(queued) and stats.timed_out_requests == 2
        assert stats.queued_texts == 0

        provider.latency = 0.0  # the server still serves once the provider is quick
        r = httpx.post(f"{served.url}/api/v1/embed", json={"inputs": queued}, timeout=10)
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["embeddings"], REFERENCE.embed_batch(queued), atol=1e-6)


# -- clients that go away -----------------------------------------------------------------


def test_client_disconnect_drops_its_queued_texts(serve_app: ServeApp) -> None:
    provider, manager = _slow_manager()
    with manager:
        served = serve_app(manager, max_wait_ms=0)
        provider.reset()
        provider.latency = 0.6
        busy = ["keeps the provider busy"]
        gone = [f"a text whose client left {i}" for i in range(7)]

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(base_url=served.url, timeout=10) as keeper:
                first = asyncio.ensure_future(keeper.post("/api/v1/embed", json={"inputs": busy}))
                await asyncio.to_thread(_wait_for, lambda: provider.calls, "the first batch")
                async with httpx.AsyncClient(base_url=served.url, timeout=10) as leaver:
                    leaving = asyncio.ensure_future(
                        leaver.post("/api/v1/embed", json={"inputs": gone})
                    )
                    await asyncio.to_thread(
                        _wait_for,
                        lambda: served.state.batcher.stats().queued_texts == len(gone),
                        "the second request to queue",
                    )
                    leaving.cancel()  # closes its connection: the client is gone
                    with pytest.raises(asyncio.CancelledError):
                        await leaving
                return await first

        first = asyncio.run(go())
        assert first.status_code == 200
        _wait_for(
            lambda: served.state.batcher.stats().dropped_texts == len(gone),
            "the server to drop the texts of the client that left",
            timeout=5,
        )
        _wait_for(lambda: served.state.batcher.stats().in_flight_batches == 0, "the batch")
        time.sleep(0.2)
        assert provider.texts == busy, "texts of a client that left were computed"
        assert served.state.batcher.stats().queued_texts == 0


# -- shutdown -----------------------------------------------------------------------------


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _workers(served: Served) -> list[psutil.Process]:
    """The python-bridge worker processes of *served*, alive now."""
    found = []
    for child in psutil.Process(served.pid).children(recursive=True):
        try:
            if "akidb_embed.bridge" in " ".join(child.cmdline()) and _alive(child):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


BRIDGE = ("--provider", "python-bridge", "--model", "mock", "--option", "target=mock")


def test_sigterm_answers_in_flight_requests_closes_the_provider_and_exits_0(
    serve: Serve,
) -> None:
    served = serve(*BRIDGE, "--option", "latency=0.4", "--max-wait-ms", "0")
    (worker,) = _workers(served)
    texts = [[f"in flight {i}", f"request {i}"] for i in range(6)]

    async def go() -> tuple[list[httpx.Response], list[int | None]]:
        limits = httpx.Limits(max_connections=len(texts))
        async with httpx.AsyncClient(base_url=served.url, timeout=30, limits=limits) as client:
            tasks = [
                asyncio.ensure_future(client.post("/api/v1/embed", json={"inputs": t}))
                for t in texts
            ]
            await asyncio.sleep(0.3)  # all sent; one batch in the worker, the rest queued
            served.signal(signal.SIGTERM)
            readiness = []
            while not all(t.done() for t in tasks):
                readiness.append(await asyncio.to_thread(served.ready_status))
            return await asyncio.gather(*tasks), readiness

    responses, readiness = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * len(texts)
    for r, t in zip(responses, texts, strict=True):
        np.testing.assert_allclose(r.json()["embeddings"], REFERENCE.embed_batch(t), atol=1e-6)
    # Draining, the server takes no new request (uvicorn closes its socket at once, so a
    # new connection is refused rather than told 503): never "ready".
    assert readiness and 200 not in readiness, readiness
    # The provider is closed before the server exits: its worker is gone while the server
    # still runs (a worker killed for its parent's death would go after it).
    closed_first = False
    deadline = time.monotonic() + 30
    while served.proc.poll() is None and time.monotonic() < deadline:
        closed_first = closed_first or not _alive(worker)
        time.sleep(0.002)
    assert served.wait(timeout=5) == 0, served.output()
    assert closed_first, "the worker outlived the server: the provider was not closed"


def test_drain_grace_answers_ready_503_before_the_port_closes(serve: Serve) -> None:
    grace = 1.5
    served = serve(
        "--provider", "mock", "--option", "latency=0.4", "--max-wait-ms", "0",
        "--max-batch-size", "2", "--drain-grace-s", str(grace),
    )  # fmt: skip
    texts = [[f"in flight {i}", f"request {i}"] for i in range(3)]

    async def go() -> tuple[list[httpx.Response], list[httpx.Response | None], float]:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            tasks = [
                asyncio.ensure_future(client.post("/api/v1/embed", json={"inputs": t}))
                for t in texts
            ]
            await asyncio.sleep(0.2)  # one batch computing, two queued
            served.signal(signal.SIGTERM)
            signalled = time.monotonic()
            answers: list[httpx.Response | None] = []
            while served.proc.poll() is None and time.monotonic() - signalled < 20:
                try:  # a new connection each time, as a load balancer's probe
                    answers.append(await asyncio.to_thread(httpx.get, f"{served.url}/ready"))
                except httpx.HTTPError:
                    answers.append(None)  # refused: the grace is over
                    break
                await asyncio.sleep(0.05)
            return await asyncio.gather(*tasks), answers, time.monotonic() - signalled

    responses, answers, elapsed = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * len(texts)
    for r, t in zip(responses, texts, strict=True):
        np.testing.assert_allclose(r.json()["embeddings"], REFERENCE.embed_batch(t), atol=1e-6)
    # Answered 503 "draining" (not refused) for the grace, then the port closes.
    answered = [a for a in answers if a is not None]
    assert len(answered) >= 5, answers
    assert all(a.status_code == 503 and a.json() == {"status": "draining"} for a in answered)
    assert answers[-1] is None and elapsed >= grace * 0.9, (answers, elapsed)
    assert served.wait(timeout=30) == 0, served.output()


def test_a_second_signal_ends_the_drain_grace(serve: Serve) -> None:
    served = serve("--provider", "mock", "--drain-grace-s", "60")
    served.signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while served.ready_status() != 503:  # draining, still listening
        assert time.monotonic() < deadline, served.output()
        time.sleep(0.02)
    started = time.monotonic()
    served.signal(signal.SIGTERM)
    assert served.wait(timeout=15) == 0, served.output()
    assert time.monotonic() - started < 10


# -- a python-bridge worker killed under load ---------------------------------------------


def test_bridge_worker_killed_under_load(serve: Serve) -> None:
    # Batches of one request (two texts each): the manager retries each request of a
    # merged batch that failed on its own, so the requests of a merged batch caught in
    # the dead worker would be answered by the next one, and none would show the 503.
    served = serve(
        *BRIDGE, "--option", "latency=0.4", "--option", "backoff=0.2", "--max-batch-size", "2"
    )
    (first,) = _workers(served)
    seen = {first.pid: first}
    results: list[tuple[list[str], httpx.Response]] = []
    readiness: list[int | None] = []
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient, c: int) -> None:
        i = 0
        while not stop.is_set():
            texts = [f"client {c} request {i}", f"part {i % 3}"]
            results.append((texts, await http.post("/api/v1/embed", json={"inputs": texts})))
            i += 1

    async def go() -> None:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            clients = [asyncio.ensure_future(client(http, c)) for c in range(8)]
            await asyncio.sleep(0.5)
            # Strike while a batch is in the worker (its 0.4 s sleep), not between two.
            while (await http.get("/info")).json()["batcher"]["in_flight_batches"] == 0:
                pass
            await asyncio.sleep(0.1)
            os.kill(first.pid, signal.SIGKILL)
            # Readiness goes 503 while no worker runs, then recovers.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                status = await asyncio.to_thread(served.ready_status)
                readiness.append(status)
                for worker in _workers(served):
                    seen.setdefault(worker.pid, worker)
                if status == 200 and 503 in readiness:
                    break
            await asyncio.sleep(0.5)  # requests served by the new worker
            stop.set()
            await asyncio.gather(*clients)

    asyncio.run(go())
    assert 503 in readiness and readiness[-1] == 200, readiness
    statuses = [r.status_code for _, r in results]
    assert set(statuses) <= {200, 503}, statuses
    failed = [r for _, r in results if r.status_code == 503]
    assert failed, "no request was caught in the killed worker"
    for r in failed:  # typed, in the route's shape, never a traceback
        error = r.json()["error"]
        assert error["code"] == "unavailable" and "SIGKILL" in error["message"], error
    last = [(t, r) for t, r in results[-8:]]
    assert all(r.status_code == 200 for _, r in last), [r.text for _, r in last]
    for texts, r in results:
        if r.status_code == 200:
            want = REFERENCE.embed_batch(texts)
            np.testing.assert_allclose(r.json()["embeddings"], want, atol=1e-6)
    assert len(seen) == 2, seen  # the killed worker and its replacement

    assert served.stop() == 0, served.output()
    left = [p.pid for p in seen.values() if _alive(p)]
    assert not left, f"worker processes left after shutdown: {left}"


# -- listening while the model loads ---------------------------------------------------------


def test_ready_is_503_loading_until_the_model_is_loaded(serve: Serve) -> None:
    served = serve("--provider", "mock", "--option", "load_delay=3", wait=False)
    deadline = time.monotonic() + 30
    while served.ready_status() is None:  # the port opens before the model has loaded
        assert time.monotonic() < deadline and served.proc.poll() is None, served.output()
        time.sleep(0.05)
    loading = httpx.get(f"{served.url}/ready", timeout=5)
    assert loading.status_code == 503 and loading.json() == {"status": "loading"}
    assert httpx.get(f"{served.url}/health", timeout=5).status_code == 200
    early = httpx.post(f"{served.url}/v1/embeddings", json={"input": ["x"]}, timeout=5)
    assert early.status_code == 503 and early.headers["retry-after"] == "1"
    assert early.json()["error"]["code"] == "loading"
    tei = httpx.post(f"{served.url}/embed", json={"inputs": "x"}, timeout=5)
    assert tei.status_code == 503 and tei.json()["error_type"] == "Unhealthy"
    served.wait_ready()
    out = httpx.post(f"{served.url}/api/v1/embed", json={"inputs": ["loaded"]}, timeout=10)
    expected = REFERENCE.embed_batch(["loaded"])
    assert np.allclose(np.asarray(out.json()["embeddings"]), expected, atol=1e-6)
    assert served.stop() == 0


def test_a_model_that_fails_to_load_exits_nonzero_with_the_error(serve: Serve, tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    served = serve("--provider", "onnx", "--model", str(missing), wait=False)
    assert served.wait(timeout=60) != 0
    output = served.output()
    assert str(missing) in output and "Traceback" not in output
