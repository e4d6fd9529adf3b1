"""Observability of ``akidb-embed serve``: ``/metrics``, access logs, request ids.

Real servers: ``akidb-embed serve`` subprocesses (JSON and text logs, the seed's
``AKIDB_LOG_FORMAT`` / ``AKIDB_METRICS_ENABLED`` variables) and, where a test needs a
slow provider it controls, the app under uvicorn in a thread. ``/metrics`` is read with
prometheus-client's own parser; log lines with ``json.loads``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from akidb_embed import EmbeddingConfig, EmbeddingManager, MockEmbeddingProvider

if TYPE_CHECKING:  # the classes behind the fixtures of conftest.py
    from conftest import InProcess, Served

SECRET_KEY = "sk-observability-5f1e9c"
SECRET_TEXT = "a private sentence 8d3b7a that must never reach a log"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"


@pytest.fixture(scope="module")
def json_server(serve_module: Callable[..., Served]) -> Served:
    # The latency keeps a batch in flight long enough for concurrent requests to merge.
    env = {"AKIDB_LOG_FORMAT": "json", "AKIDB_LOG_LEVEL": "INFO"}
    return serve_module("--provider", "mock", "--option", "latency=0.02", env=env)


# --- helpers ------------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[Samples, dict[str, Any]]:
    """Every sample of ``/metrics`` by (sample name, sorted labels), and the families."""
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    families = {}
    for family in text_string_to_metric_families(r.text):
        families[family.name] = family
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def log_lines(served: Served) -> list[dict[str, Any]]:
    """Every line the server wrote, each parsed as JSON (a line that is not fails)."""
    out = []
    for line in served.output().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"a log line is not JSON: {line!r}")
    return out


def access_lines(
    served: Served, request_id: str, timeout: float = 5.0, count: int = 1
) -> list[dict[str, Any]]:
    """The access lines of *request_id*, once there are *count* of them (each is written
    just after its answer: poll briefly)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            line
            for line in log_lines(served)
            if line.get("logger") == "akidb_embed.server.access"
            and line.get("request_id") == request_id
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# --- /metrics -----------------------------------------------------------------------------


def test_metrics_count_what_was_sent(json_server: Served) -> None:
    url = json_server.url
    before, _ = scrape(url)
    sent = {"/api/v1/embed": 0, "/v1/embeddings": 0, "/embed": 0}
    texts = tokens = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in (1, 2, 3):
            for route, body in (
                ("/api/v1/embed", {"inputs": [f"akidb text {i}" for i in range(n)]}),
                ("/v1/embeddings", {"input": [f"openai text {i}" for i in range(n)]}),
                ("/embed", {"inputs": [f"tei text {i}" for i in range(n)]}),
            ):
                r = client.post(route, json=body)
                assert r.status_code == 200, r.text
                sent[route] += 1
                texts += n
                tokens += int(r.headers["x-total-tokens"])
        assert client.post("/api/v1/embed", json={"inputs": []}).status_code == 400
        assert client.post("/v1/embeddings", json={"input": 5}).status_code == 422
        assert client.post("/v1/embeddings", json={"input": "a", "model": "x"}).status_code == 404
        assert client.get("/no/such/path").status_code == 404
    after, families = scrape(url)

    name = "akidb_embed_requests_total"
    for route, count in sent.items():
        assert delta(before, after, name, route=route, status="200") == count
    assert delta(before, after, name, route="/api/v1/embed", status="400") == 1
    assert delta(before, after, name, route="/v1/embeddings", status="422") == 1
    assert delta(before, after, name, route="/v1/embeddings", status="404") == 1
    # The route label is the template: an unknown path does not make a label of its own.
    assert delta(before, after, name, route="unmatched", status="404") == 1
    assert not any("/no/such/path" in str(labels) for _, labels in after)

    errors = "akidb_embed_errors_total"
    assert delta(before, after, errors, code="empty_input") == 1
    assert delta(before, after, errors, code="validation_error") == 1
    assert delta(before, after, errors, code="model_not_found") == 1
    # The unknown path: the app's own code for it, or http_404 when it has none.
    unknown = [delta(before, after, errors, code=c) for c in ("not_found", "http_404")]
    assert sum(unknown) == 1

    assert delta(before, after, "akidb_embed_texts_total") == texts
    assert delta(before, after, "akidb_embed_tokens_total") == tokens > 0
    assert delta(before, after, "akidb_embed_truncated_texts_total") == 0
    embeds = sum(sent.values())
    for histogram in ("akidb_embed_queue_wait_seconds", "akidb_embed_inference_seconds"):
        assert delta(before, after, f"{histogram}_count") == embeds
    # Inference took at least the mock's 20 ms per batch.
    assert delta(before, after, "akidb_embed_inference_seconds_sum") >= 0.02 * embeds * 0.9
    duration = "akidb_embed_request_duration_seconds_count"
    assert delta(before, after, duration, route="/embed") == sent["/embed"]
    assert delta(before, after, "akidb_embed_batch_size_count") > 0
    assert delta(before, after, "akidb_embed_batch_size_sum") == texts
    assert delta(before, after, "akidb_embed_batch_tokens_count") > 0
    assert delta(before, after, "akidb_embed_provider_call_duration_seconds_count") > 0
    assert value(after, "akidb_embed_queue_depth") == 0
    assert value(after, "akidb_embed_dropped_texts_total") == 0
    # This scrape is the one request in flight.
    assert value(after, "akidb_embed_requests_in_flight") == 1

    info = httpx.get(f"{url}/info", timeout=10).json()
    (model,) = families["akidb_embed_model_info"].samples
    assert model.name == "akidb_embed_model_info" and model.value == 1
    assert model.labels == {
        "provider": "mock",
        "model": "mock",
        "served_model": info["model_id"],
        "dimension": "384",
        "dtype": info["model"]["dtype"],
        "version": info["version"],
    }


def test_concurrent_requests_are_batched(json_server: Served) -> None:
    before, _ = scrape(json_server.url)

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=json_server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v1/embeddings", json={"input": f"query {i}"}) for i in range(32))
            )

    assert [r.status_code for r in asyncio.run(go())] == [200] * 32
    after, _ = scrape(json_server.url)
    batches = delta(before, after, "akidb_embed_batch_size_count")
    ones = delta(before, after, "akidb_embed_batch_size_bucket", le="1.0")
    assert delta(before, after, "akidb_embed_batch_size_sum") == 32
    # Fewer batches than requests, and some batch held more than one text.
    assert 0 < batches < 32 and ones < batches


def test_timed_out_texts_are_counted_as_dropped(serve_app: Callable[..., InProcess]) -> None:
    # One provider slot, slowed once the server is up (the readiness probe stays quick):
    # the second request waits in the queue past its deadline, and its texts are dropped.
    provider = MockEmbeddingProvider(max_concurrency=1)
    with EmbeddingManager(provider, EmbeddingConfig(provider="mock", cache_size=0)) as manager:
        served = serve_app(manager, request_timeout_s=0.3, max_wait_ms=0)
        provider.reset()  # forget the readiness probe's call
        # The second request must reach the server within latency - timeout (1.2 s) of
        # the first batch leaving, or it is computed rather than dropped: slack for a
        # loaded machine.
        provider.latency = 1.5

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
                first = asyncio.ensure_future(client.post("/embed", json={"inputs": "first"}))
                while not provider.calls:  # the first batch is on the provider
                    await asyncio.sleep(0.005)
                second = client.post("/embed", json={"inputs": ["a", "b", "c"]})
                return list(await asyncio.gather(first, second))

        statuses = [r.status_code for r in asyncio.run(go())]
        samples, _ = scrape(served.url)
        served.stop()
    assert statuses == [504, 504]
    # The first was computing when its deadline passed (nothing left to drop); the
    # second's three texts were still queued.
    assert value(samples, "akidb_embed_dropped_texts_total") == 3
    assert value(samples, "akidb_embed_errors_total", code="timeout") == 2
    assert value(samples, "akidb_embed_requests_total", route="/embed", status="504") == 2
    assert value(samples, "akidb_embed_texts_total") == 0
    assert provider.texts == ["first"]  # the dropped texts were never computed


def test_each_app_has_its_own_registry(serve_app: Callable[..., InProcess]) -> None:
    with EmbeddingManager.from_config(provider="mock") as manager:
        one, two = serve_app(manager), serve_app(manager)
        assert httpx.post(f"{one.url}/embed", json={"inputs": ["a", "b"]}).status_code == 200
        first, _ = scrape(one.url)
        second, _ = scrape(two.url)
        one.stop()
        two.stop()
    assert value(first, "akidb_embed_texts_total") == 2
    assert value(second, "akidb_embed_texts_total") == 0
    # Stopped, each app took its observer off the manager (which outlives them).
    for served in (one, two):
        with pytest.raises(ValueError):
            manager.remove_observer(served.app.state.metrics._provider_observer)


def test_metrics_disabled_is_404_and_text_logs(serve: Callable[..., Served]) -> None:
    served = serve("--provider", "mock", env={"AKIDB_METRICS_ENABLED": "0"})
    assert httpx.get(f"{served.url}/metrics", timeout=10).status_code == 404
    r = httpx.post(
        f"{served.url}/embed",
        json={"inputs": ["hello"]},
        headers={"X-Request-ID": "text-format-1"},
        timeout=10,
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "text-format-1"
    served.stop()
    lines = served.output().splitlines()
    (line,) = [x for x in lines if "request_id=text-format-1" in x]
    # One readable line: time, level, logger, then the fields as key=value.
    assert " INFO akidb_embed.server.access " in line
    for field in ("method=POST", "route=/embed", "status=200", "texts=1", "total_ms="):
        assert field in line
    assert any("serving provider=mock" in x for x in lines)
    assert not any(x.lstrip().startswith("{") for x in lines)


def test_no_access_log_keeps_only_the_5xx_lines(serve: Callable[..., Served]) -> None:
    # Every second provider call fails: answers alternate between 200 and a 5xx.
    served = serve("--provider", "mock", "--option", "fail_every=2", "--no-access-log")
    statuses = {}
    with httpx.Client(base_url=served.url, timeout=10) as client:
        for i in range(4):
            r = client.post(
                "/embed", json={"inputs": [f"text {i}"]}, headers={"X-Request-ID": f"q-{i}"}
            )
            statuses[f"q-{i}"] = r.status_code
    assert 200 in statuses.values(), statuses
    assert any(code >= 500 for code in statuses.values()), statuses
    served.stop()
    lines = [x for x in served.output().splitlines() if "akidb_embed.server.access" in x]
    logged = {x.split("request_id=")[1].split()[0] for x in lines}
    assert logged == {rid for rid, code in statuses.items() if code >= 500}, (statuses, lines)
    assert all(" WARNING akidb_embed.server.access " in x for x in lines)
    assert any("serving provider=mock" in x for x in served.output().splitlines())


# --- logs ---------------------------------------------------------------------------------


def test_json_logs_have_the_access_fields(json_server: Served) -> None:
    r = httpx.post(
        f"{json_server.url}/api/v1/embed",
        json={"inputs": ["one", "two"]},
        headers={"X-Request-ID": "client-id-42"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "client-id-42"
    (line,) = access_lines(json_server, "client-id-42")
    assert line["level"] == "INFO" and line["method"] == "POST"
    assert line["route"] == line["path"] == "/api/v1/embed" and line["status"] == 200
    assert line["texts"] == 2 and line["tokens"] == int(r.headers["x-total-tokens"])
    # The timing of the headers, not a second measurement of its own.
    assert line["queue_ms"] == pytest.approx(float(r.headers["x-queue-time"]), abs=1e-3)
    assert line["inference_ms"] == pytest.approx(float(r.headers["x-inference-time"]), abs=1e-3)
    assert line["total_ms"] >= float(r.headers["x-total-time"]) - 1e-3
    assert line["error"] is None and line["client"].startswith("127.0.0.1:")
    assert line["time"] and line["message"]

    lines = log_lines(json_server)
    (startup,) = [x for x in lines if str(x.get("message", "")).startswith("serving ")]
    assert startup["provider"] == "mock" and startup["dimension"] == 384
    assert startup["limits"]["max_batch_tokens"] == 16384
    assert startup["fingerprint"]["dimension"] == 384
    # uvicorn's own lines go through the same JSON handler.
    assert any(x.get("logger", "").startswith("uvicorn") for x in lines)


def test_errors_are_logged_with_their_code(json_server: Served) -> None:
    r = httpx.post(
        f"{json_server.url}/v1/embeddings",
        json={"input": "a", "model": "not-served"},
        headers={"X-Request-ID": "error-id-7"},
        timeout=10,
    )
    assert r.status_code == 404 and r.headers["x-request-id"] == "error-id-7"
    (line,) = access_lines(json_server, "error-id-7")
    assert line["status"] == 404 and line["error"] == "model_not_found"
    assert line["route"] == "/v1/embeddings" and line["queue_ms"] is None


def test_request_ids_generated_or_sanitised(json_server: Served) -> None:
    with httpx.Client(base_url=json_server.url, timeout=10) as client:
        generated = client.get("/health").headers["x-request-id"]
        other = client.get("/health").headers["x-request-id"]
        bad = "has spaces and\ttabs " + "x" * 300
        replaced = client.get("/health", headers={"X-Request-ID": bad}).headers["x-request-id"]
        too_long = "a" * 129
        long_replaced = client.get("/health", headers={"X-Request-ID": too_long})
    assert re.fullmatch(r"[0-9a-f]{32}", generated) and generated != other
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert re.fullmatch(r"[0-9a-f]{32}", long_replaced.headers["x-request-id"])
    (line,) = access_lines(json_server, generated)
    assert line["route"] == "/health" and line["status"] == 200
    assert access_lines(json_server, replaced, timeout=1)
    assert "has spaces" not in json_server.output() and too_long not in json_server.output()


def test_no_api_key_or_text_in_logs(json_server: Served) -> None:
    headers = {"Authorization": f"Bearer {SECRET_KEY}", "X-Request-ID": "secret-check"}
    for route, body in (
        ("/api/v1/embed", {"inputs": [SECRET_TEXT]}),
        ("/v1/embeddings", {"input": SECRET_TEXT}),
        ("/embed", {"inputs": SECRET_TEXT}),
        ("/api/v1/embed", {"inputs": [SECRET_TEXT], "normalize": "not a bool"}),  # 422
    ):
        httpx.post(json_server.url + route, json=body, headers=headers, timeout=10)
    assert len(access_lines(json_server, "secret-check", count=4)) == 4
    output = json_server.output()
    assert SECRET_KEY not in output
    assert "8d3b7a" not in output and "private sentence" not in output


# --- in process -----------------------------------------------------------------------------


@pytest.fixture
def manager() -> Iterator[EmbeddingManager]:
    with EmbeddingManager.from_config(provider="mock") as m:
        yield m


def test_configure_logging_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    import logging
    import warnings

    from akidb_embed_server import _logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        _logging.configure_logging("debug", "json")
        _logging.configure_logging("info", "json")  # again: replaces, does not add
        logging.getLogger("uvicorn.error").info("from uvicorn")
        logging.getLogger("akidb_embed.server").debug("hidden at INFO")
        logging.getLogger("akidb_embed.server").info("with fields", extra={"texts": 3})
        warnings.warn("a warning becomes a JSON line too", UserWarning, stacklevel=1)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("akidb_embed.server").exception("failed")
    finally:
        handler = _logging._handler
        if handler is not None:
            root.removeHandler(handler)
        _logging._handler = None
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert [x["message"] for x in lines][:2] == ["from uvicorn", "with fields"]
    assert lines[0]["logger"] == "uvicorn.error" and lines[1]["texts"] == 3
    assert "a warning becomes a JSON line too" in lines[2]["message"]
    assert lines[3]["level"] == "ERROR" and "ValueError: boom" in lines[3]["exc_info"]
    assert len(lines) == 4
    with pytest.raises(ValueError, match="'text' or 'json'"):
        _logging.configure_logging("INFO", "xml")


def test_metrics_route_absent_when_disabled(manager: EmbeddingManager) -> None:
    from fastapi.testclient import TestClient

    from akidb_embed_server import create_app

    with TestClient(create_app(manager, metrics_enabled=False)) as client:
        r = client.get("/metrics")
        assert r.status_code == 404
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
    with TestClient(create_app(manager)) as client:
        openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.rstrip().endswith("# EOF")


def _exposed_names(manager: EmbeddingManager) -> set[str]:
    """The metric names a server exposes (counters with ``_total``), less the
    ``_created`` timestamps prometheus-client adds to counters and histograms."""
    from fastapi.testclient import TestClient

    from akidb_embed_server import create_app

    app = create_app(manager)
    with TestClient(app) as client:
        text = client.get("/metrics").text
    families = list(text_string_to_metric_families(text))
    names = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    timestamps = {f.name + "_created" for f in families if f.type in ("counter", "histogram")}
    return names - timestamps


def test_documented_metrics_are_the_exposed_ones(manager: EmbeddingManager) -> None:
    section = DOCS.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(akidb_embed_\w+)` \|", section, flags=re.M))
    assert documented == _exposed_names(manager)


def test_documented_log_fields_are_the_logged_ones() -> None:
    from akidb_embed_server._logging import ACCESS_FIELDS

    section = DOCS.read_text().split("## Logs", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert sorted(documented) == sorted(ACCESS_FIELDS)
