"""Zero-downtime reloads of ``akidb-embed serve`` (SIGHUP, ``POST /admin/reload``).

Real servers on 127.0.0.1, real clients: the configuration file is rewritten and the
server reloads it while 16 clients keep sending requests of mixed sizes. Every answer
must be a 200 whose vectors are those of the model it names (computed again in this
process), whatever the reloads in between did. Bounded: a fixed number of reloads, and
each client stops when they are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager

from .conftest import Served

Serve = Callable[..., Served]

ADMIN_KEY = "reload-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ENV = {"AKIDB_SERVER_ADMIN_API_KEYS": ADMIN_KEY}

# Mixed request sizes: a query, small and medium batches, and a request of 40 texts,
# which the batcher cuts into pieces over several batches (max_batch_size 16 below).
SIZES = (1, 2, 5, 12, 40)
CLIENTS = 16
POOL = [
    f"text {i}: "
    + " ".join(["reloading", "a", "running", "embedding", "server"][: 1 + i % 5]) * (1 + i % 7)
    for i in range(200)
]


def mock_toml(model: str = "mock") -> str:
    return f'[embedding]\nprovider = "mock"\nmodel = "{model}"\n'


def onnx_toml(folder: Path) -> str:
    return f'[embedding]\nprovider = "onnx"\nmodel = "{folder}"\n'


BRIDGE_TOML = (
    '[embedding]\nprovider = "python-bridge"\nmodel = "mock"\n'
    '\n[embedding.options]\ntarget = "mock"\n'
)


def start(serve: Serve, config: Path, text: str, *args: str) -> Served:
    config.write_text(text)
    return serve("--config", str(config), "--max-batch-size", "16", *args, env=ENV)


def reload(served: Served, client: httpx.Client | None = None) -> httpx.Response:
    post = httpx.post if client is None else client.post
    return post(f"{served.url}/admin/reload", headers=ADMIN, timeout=120)


def info(served: Served) -> dict[str, Any]:
    return httpx.get(f"{served.url}/info", timeout=10).json()


@pytest.fixture(scope="module")
def references(minilm_onnx_dir: Path) -> Iterator[dict[str, dict[str, np.ndarray]]]:
    """``{model name as served: {text: vector}}`` for the mock and the ONNX model."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for config in (
        EmbeddingConfig(provider="mock", model="mock"),
        EmbeddingConfig(provider="mock", model="mock-b"),
        EmbeddingConfig(provider="onnx", model=str(minilm_onnx_dir)),
    ):
        with EmbeddingManager.from_config(config) as manager:
            vectors = manager.embed(POOL)
            out[manager.info.model] = dict(zip(POOL, vectors, strict=True))
    yield out


# -- load while reloading -------------------------------------------------------------------


@dataclass
class Load:
    """What the clients saw: latencies with their start time, and every failure."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    models: dict[str, int] = field(default_factory=dict)


async def _client(
    number: int,
    http: httpx.AsyncClient,
    stop: asyncio.Event,
    load: Load,
    references: dict[str, dict[str, np.ndarray]],
) -> None:
    i = number
    while not stop.is_set():
        size = SIZES[i % len(SIZES)]
        first = (i * 7) % (len(POOL) - size)
        texts = POOL[first : first + size]
        i += CLIENTS
        started = time.monotonic()
        try:
            response = await http.post("/api/v1/embed", json={"inputs": texts})
        except httpx.HTTPError as exc:
            load.failures.append(f"{type(exc).__name__}: {exc}")
            continue
        load.latencies.append((started, time.monotonic() - started))
        if response.status_code != 200:
            load.failures.append(f"{response.status_code}: {response.text[:300]}")
            continue
        body = response.json()
        model = body["model"]
        want = references.get(model)
        if want is None:
            load.failures.append(f"unknown model {model!r}")
            continue
        got = np.asarray(body["embeddings"], dtype=np.float32)
        expected = np.stack([want[t] for t in texts])
        cosine = np.sum(got * expected, axis=1)
        if got.shape != expected.shape or not np.all(cosine >= 0.9999):
            load.failures.append(f"vectors of {size} texts are not {model!r}'s: {cosine.min()}")
            continue
        load.ok += 1
        load.models[model] = load.models.get(model, 0) + 1


async def _under_load(
    served: Served,
    references: dict[str, dict[str, np.ndarray]],
    during: Callable[[httpx.AsyncClient], Any],
) -> tuple[Load, Any]:
    load = Load()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=CLIENTS + 2)
    async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as http:
        clients = [
            asyncio.ensure_future(_client(n, http, stop, load, references)) for n in range(CLIENTS)
        ]
        try:
            await asyncio.sleep(0.5)  # the load is on before the first reload
            result = await during(http)
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), 120)
    return load, result


def test_mock_onnx_mock_five_times_under_load(
    serve: Serve, tmp_path: Path, minilm_onnx_dir: Path, references: dict[str, Any]
) -> None:
    config = tmp_path / "akidb.toml"
    served = start(serve, config, mock_toml())

    async def reloads(http: httpx.AsyncClient) -> list[dict[str, Any]]:
        outcomes = []
        for _ in range(5):
            for text in (onnx_toml(minilm_onnx_dir), mock_toml()):
                config.write_text(text)
                response = await http.post("/admin/reload", headers=ADMIN, timeout=120)
                assert response.status_code == 200, response.text
                outcomes.append(response.json()["reload"])
                await asyncio.sleep(0.3)
        return outcomes

    load, outcomes = asyncio.run(_under_load(served, references, reloads))
    assert load.failures == [], load.failures[:5]
    assert [o["provider"] for o in outcomes] == ["onnx", "mock"] * 5
    assert all(o["provider_reloaded"] for o in outcomes)
    # Both models answered clients, and every answer was checked.
    assert len(load.models) == 2 and "mock" in load.models, load.models
    assert load.ok > 100, load.ok
    state = info(served)
    assert state["provider"] == "mock"
    assert state["reload"]["reloads"] == {"success": 10, "failure": 0}
    assert state["reload"]["generation"] == 11
    assert state["batcher"]["in_flight_batches"] == 0
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert 'akidb_embed_reloads_total{result="success"} 10.0' in metrics
    assert 'akidb_embed_model_info{dimension="384",dtype="float32",model="mock"' in metrics
    # The startup-style line was logged for each new model.
    output = served.output()
    assert output.count("serving (reloaded) provider=onnx") == 5
    assert output.count("serving (reloaded) provider=mock") == 5


def test_broken_configurations_change_nothing_and_a_good_one_then_loads(
    serve: Serve, tmp_path: Path, references: dict[str, Any]
) -> None:
    config = tmp_path / "akidb.toml"
    served = start(serve, config, mock_toml())
    missing = tmp_path / "no-such-model"
    broken = [
        ("ConfigFileError", "[embedding]\nprovider = \n"),  # not TOML
        ("UnknownProviderError", '[embedding]\nprovider = "no-such-provider"\n'),
        ("ModelNotFoundError", f'[embedding]\nprovider = "onnx"\nmodel = "{missing}"\n'),
        ("UnknownConfigKeyError", mock_toml() + "\n[server]\nno_such_setting = 1\n"),
        # Builds, then fails the probe text (the mock's injected failure on every call).
        ("injected failure", mock_toml("mock-c") + "\n[embedding.options]\nfail_every = 1\n"),
    ]

    async def reloads(http: httpx.AsyncClient) -> list[httpx.Response]:
        answers = []
        for _, text in broken:
            config.write_text(text)
            answers.append(await http.post("/admin/reload", headers=ADMIN))
            state = (await http.get("/info")).json()
            assert state["provider"] == "mock" and state["model"]["model"] == "mock"
            assert (
                state["reload"]["last_error"]["message"] == answers[-1].json()["reload"]["message"]
            )
        config.write_text(mock_toml("mock-b"))
        answers.append(await http.post("/admin/reload", headers=ADMIN))
        await asyncio.sleep(0.5)  # the clients get the new model for a while
        return answers

    load, answers = asyncio.run(_under_load(served, references, reloads))
    assert load.failures == [], load.failures[:5]
    for (kind, _), answer in zip(broken, answers, strict=False):
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["error"]["code"] == "reload_failed"
        assert body["reload"]["result"] == "failure"
        assert kind in body["reload"]["message"], body
    assert answers[2].json()["reload"]["message"].find(str(missing)) >= 0
    good = answers[-1]
    assert good.status_code == 200, good.text
    assert good.json()["reload"]["model"] == "mock-b"
    assert set(load.models) == {"mock", "mock-b"}, load.models
    state = info(served)
    assert state["model"]["model"] == "mock-b"
    assert state["reload"]["reloads"] == {"success": 1, "failure": 5}
    assert state["reload"]["last"]["result"] == "success"
    assert "injected failure" in state["reload"]["last_error"]["message"]
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert 'akidb_embed_reloads_total{result="failure"} 5.0' in metrics
    assert "reload failed, nothing changed" in served.output()


# -- processes ------------------------------------------------------------------------------


def _workers(served: Served) -> list[int]:
    """The pids of the python-bridge workers of *served*, alive now."""
    found = []
    for child in psutil.Process(served.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "akidb_embed.bridge" in " ".join(
                child.cmdline()
            ):
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def test_python_bridge_onnx_python_bridge_leaves_no_worker_behind(
    serve: Serve, tmp_path: Path, minilm_onnx_dir: Path
) -> None:
    config = tmp_path / "akidb.toml"
    served = start(serve, config, BRIDGE_TOML)
    (first,) = _workers(served)
    config.write_text(onnx_toml(minilm_onnx_dir))
    answer = reload(served)
    assert answer.status_code == 200, answer.text
    # The reload answers once the old provider is closed: its worker has exited.
    assert _workers(served) == []
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    config.write_text(BRIDGE_TOML)
    assert reload(served).status_code == 200
    (second,) = _workers(served)
    assert second != first
    response = httpx.post(f"{served.url}/api/v1/embed", json={"inputs": ["a"]}, timeout=30)
    assert response.status_code == 200 and response.json()["model"] == "mock"
    # And the last one goes with the server.
    assert served.stop() == 0
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == psutil.STATUS_ZOMBIE


# -- settings, admin API, SIGHUP, gRPC ---------------------------------------------------------


def test_server_settings_apply_without_rebuilding_the_provider(
    serve: Serve, tmp_path: Path
) -> None:
    config = tmp_path / "akidb.toml"
    served = start(serve, config, mock_toml())
    texts = {"inputs": ["x"] * 5}
    assert httpx.post(f"{served.url}/api/v1/embed", json=texts).status_code == 200
    config.write_text(
        mock_toml()
        + '\n[server]\nmax_client_batch_size = 4\napi_keys = ["client-key"]\n'
        + 'log_level = "WARNING"\nmax_body_bytes = 1000\nserved_model_name = "renamed"\n'
    )
    answer = reload(served)
    assert answer.status_code == 200, answer.text
    outcome = answer.json()["reload"]
    assert outcome["provider_reloaded"] is False
    assert outcome["generation"] == 1
    changed = ["api_keys", "log_level", "max_client_batch_size", "served_model_name"]
    assert sorted(outcome["changed"]) == changed
    # The port comes from a flag (flags stay); max_body_bytes needs a restart.
    assert outcome["restart_required"] == ["max_body_bytes"]
    assert "max_body_bytes" in outcome["message"] and "restart" in outcome["message"]
    # Keys on: a request without one is refused; with one, the new limit applies.
    assert httpx.post(f"{served.url}/api/v1/embed", json=texts).status_code == 401
    auth = {"Authorization": "Bearer client-key"}
    too_many = httpx.post(f"{served.url}/api/v1/embed", json=texts, headers=auth)
    assert too_many.status_code == 413, too_many.text
    one = httpx.post(f"{served.url}/api/v1/embed", json={"inputs": ["x"]}, headers=auth)
    assert one.status_code == 200 and one.json()["model"] == "renamed"
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text  # public by default
    assert 'served_model="renamed"' in metrics
    # The client key is not an admin key, nor the reverse.
    refused = httpx.post(f"{served.url}/admin/reload", headers=auth)
    assert refused.status_code == 401
    assert httpx.get(f"{served.url}/info", headers=ADMIN).status_code == 401
    # log_level WARNING: access lines (INFO) stop.
    before = served.output().count("route=/api/v1/embed")
    httpx.post(f"{served.url}/api/v1/embed", json={"inputs": ["y"]}, headers=auth)
    assert served.output().count("route=/api/v1/embed") == before
    assert "not reloaded, applied only at a restart: max_body_bytes" in served.output()


def test_admin_api_is_off_without_an_admin_key_and_refuses_wrong_keys(
    serve: Serve, tmp_path: Path
) -> None:
    config = tmp_path / "akidb.toml"
    config.write_text(mock_toml())
    served = serve("--config", str(config))
    off = httpx.post(f"{served.url}/admin/reload", headers=ADMIN)
    assert off.status_code == 404 and off.json()["error"]["code"] == "admin_disabled"
    assert info(served)["reload"]["reloads"] == {"success": 0, "failure": 0}
    served = start(serve, tmp_path / "second.toml", mock_toml())
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.post(f"{served.url}/admin/reload", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_admin_key"
        assert "WWW-Authenticate" in refused.headers


def test_admin_keys_from_a_key_file_rotate_on_reload(serve: Serve, tmp_path: Path) -> None:
    keys = tmp_path / "admin-keys"
    keys.write_text("# mounted as a secret\nfile-admin-key\n")
    config = tmp_path / "akidb.toml"
    config.write_text(mock_toml())
    served = serve("--config", str(config), "--admin-api-key-file", str(keys))
    first = {"Authorization": "Bearer file-admin-key"}
    assert httpx.post(f"{served.url}/admin/reload", headers=first, timeout=60).status_code == 200
    # An admin key is not a client key: with client keys set, it does not open /v1/embeddings.
    keys.write_text("rotated-admin-key\n")
    config.write_text('[server]\napi_keys = ["client-key"]\n' + mock_toml())
    assert httpx.post(f"{served.url}/admin/reload", headers=first, timeout=60).status_code == 200
    # The reload read the file again: the old key is gone, the new one works.
    refused = httpx.post(f"{served.url}/admin/reload", headers=first, timeout=60)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_admin_key"
    second = {"Authorization": "Bearer rotated-admin-key"}
    assert httpx.post(f"{served.url}/admin/reload", headers=second, timeout=60).status_code == 200
    body = {"input": "hello"}
    as_admin = httpx.post(f"{served.url}/v1/embeddings", json=body, headers=second, timeout=30)
    assert as_admin.status_code == 401
    as_client = {"Authorization": "Bearer client-key"}
    ok = httpx.post(f"{served.url}/v1/embeddings", json=body, headers=as_client, timeout=30)
    assert ok.status_code == 200, ok.text
    assert "file-admin-key" not in served.output() and "rotated-admin-key" not in served.output()


def test_a_second_reload_during_one_is_refused_with_409(
    serve: Serve, tmp_path: Path, minilm_onnx_dir: Path
) -> None:
    config = tmp_path / "akidb.toml"
    served = start(serve, config, mock_toml())
    config.write_text(onnx_toml(minilm_onnx_dir))  # seconds to load: time for a second

    async def both() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=120) as http:
            first = asyncio.ensure_future(http.post("/admin/reload", headers=ADMIN))
            while not (await http.get("/info")).json()["reload"]["in_progress"]:
                await asyncio.sleep(0.005)
            second = await http.post("/admin/reload", headers=ADMIN)
            return await first, second

    first, second = asyncio.run(both())
    assert first.status_code == 200, first.text
    assert second.status_code == 409 and second.json()["error"]["code"] == "reload_in_progress"
    assert reload(served).status_code == 200  # retried after: nothing changed, fine


def test_sighup_reloads_and_grpc_follows(
    serve: Serve, tmp_path: Path, references: dict[str, Any]
) -> None:
    from akidb_embed_server.proto import embed_pb2, embed_pb2_grpc

    config = tmp_path / "akidb.toml"
    served = start(serve, config, mock_toml())
    config.write_text(mock_toml("mock-b"))
    served.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while info(served)["model"]["model"] != "mock-b":
        assert time.monotonic() < deadline, served.output()
        assert served.proc.poll() is None, served.output()
        time.sleep(0.05)
    assert info(served)["reload"]["last"]["trigger"] == "SIGHUP"
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = embed_pb2_grpc.EmbedderStub(channel)
        answer = stub.Embed(embed_pb2.EmbedRequest(inputs=POOL[:3]), timeout=30)
        assert stub.Info(embed_pb2.InfoRequest(), timeout=30).model == "mock-b"
    assert answer.model == "mock-b"
    got = np.array([list(e.values) for e in answer.embeddings], dtype=np.float32)
    np.testing.assert_allclose(got, [references["mock-b"][t] for t in POOL[:3]], atol=1e-6)


def test_admin_keys_are_a_masked_setting_of_their_own(tmp_path: Path) -> None:
    from akidb_embed.cli import main
    from akidb_embed_server._settings import ServerSettings

    config = tmp_path / "akidb.toml"
    config.write_text('[server]\nadmin_api_keys = ["from-file"]\n')
    settings = ServerSettings.load(config, environ={"AKIDB_SERVER_ADMIN_API_KEYS": "a1,a2"})
    assert settings.admin_api_keys == ("a1", "a2") and settings.api_keys == ()
    assert settings.source("admin_api_keys") == "env:AKIDB_SERVER_ADMIN_API_KEYS"
    assert settings.to_dict()["admin_api_keys"] == ["***", "***"]
    assert "a1" not in repr(settings)
    with pytest.raises(ValueError, match="admin_api_keys"):
        ServerSettings(admin_api_keys=("has space",))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config", "--config", str(config), "--section", "server"]) == 0
    assert "admin_api_keys" in out.getvalue() and "from-file" not in out.getvalue()


def test_a_cut_batch_finishes_on_the_old_provider_queued_requests_move_to_the_new() -> None:
    from akidb_embed import EmbeddingRequest
    from akidb_embed_server._reload import Reloader
    from akidb_embed_server._service import EmbeddingService
    from akidb_embed_server._settings import ServerSettings

    settings = ServerSettings(max_batch_size=2, max_wait_ms=0)
    slow = {"latency": 0.3, "max_concurrency": 1}
    old_config = EmbeddingConfig(provider="mock", model="old", options=slow)
    new_config = EmbeddingConfig(provider="mock", model="new")

    async def go() -> tuple[list[str], dict[str, Any]]:
        service = EmbeddingService(EmbeddingManager.from_config(old_config), settings)
        await service.start()
        reloader = Reloader(service, lambda: (settings, new_config), old_config)
        texts = [[f"text {i}", f"other {i}"] for i in range(4)]
        calls = [asyncio.ensure_future(service.embed(EmbeddingRequest(t))) for t in texts]
        await asyncio.sleep(0.1)  # the first request is in a batch; the other three queue
        outcome = await reloader.reload()
        assert outcome.ok and outcome.provider_reloaded, outcome
        results = await asyncio.gather(*calls)
        for result, t in zip(results, texts, strict=True):
            with EmbeddingManager.from_config(provider="mock", model=result.model) as m:
                np.testing.assert_allclose(result.response.embeddings, m.embed(t), atol=1e-6)
        stats = service.info()["batcher"]
        await service.close()
        service.manager.close()
        return [r.model for r in results], stats

    models, stats = asyncio.run(go())
    assert models == ["old", "new", "new", "new"]
    # Moved texts are not "dropped"; each text was computed once (+1: the startup probe).
    assert stats["dropped_texts"] == 0 and stats["batched_texts"] == 8 + 1


def test_a_moved_request_is_checked_again_against_the_new_model() -> None:
    """A queued request moved by a reload still meets what it asked for, or gets the
    typed error: a cut wider than the new model, a model name the server no longer
    serves, token ids of the old tokenizer. Never the old answer from the new model."""
    from akidb_embed import EmbeddingRequest
    from akidb_embed_server._reload import Reloader
    from akidb_embed_server._service import EmbeddingService, Failure
    from akidb_embed_server._settings import ServerSettings

    settings = ServerSettings(max_batch_size=1, max_wait_ms=0)
    old_config = EmbeddingConfig(
        provider="mock", model="old", options={"latency": 0.3, "max_concurrency": 1}
    )
    new_config = EmbeddingConfig(provider="mock", model="new", options={"dimension": 128})

    async def go() -> list[Any]:
        service = EmbeddingService(EmbeddingManager.from_config(old_config), settings)
        await service.start()
        reloader = Reloader(service, lambda: (settings, new_config), old_config)
        calls = [
            service.embed(EmbeddingRequest(["in a batch"])),  # finishes on "old"
            service.embed(EmbeddingRequest(["wide cut"]), dimensions=256),
            service.embed(EmbeddingRequest(["named old"]), model="old"),
            service.embed(EmbeddingRequest(token_ids=[[101, 7592, 102]])),
            service.embed(EmbeddingRequest(["plain"])),  # runs on "new"
        ]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.1)  # the first is in a batch; the others queue
        outcome = await reloader.reload()
        assert outcome.ok and outcome.provider_reloaded, outcome
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await service.close()
        service.manager.close()
        return results

    first, wide, named, ids, plain = asyncio.run(go())
    assert first.model == "old" and first.response.embeddings.shape == (1, 384)
    assert isinstance(wide, Failure) and wide.code == "invalid_dimensions", wide
    assert "128" in str(wide)
    assert isinstance(named, Failure) and named.code == "model_not_found", named
    assert isinstance(ids, Failure) and ids.code == "model_changed", ids
    assert plain.model == "new" and plain.response.embeddings.shape == (1, 128)


def test_a_sighup_during_an_admin_reload_runs_one_more_after_it() -> None:
    """The file may have changed again after the running reload read it: a SIGHUP that
    arrives meanwhile is not lost, whoever started the running one."""
    from akidb_embed_server._reload import Reloader
    from akidb_embed_server._service import EmbeddingService
    from akidb_embed_server._settings import ServerSettings

    settings = ServerSettings()
    configs = iter(
        EmbeddingConfig(provider="mock", model=name, options={"load_delay": 0.2})
        for name in ("second", "third", "fourth")
    )
    first = EmbeddingConfig(provider="mock", model="first")

    async def go() -> tuple[list[str], dict[str, Any]]:
        service = EmbeddingService(EmbeddingManager.from_config(first), settings)
        await service.start()
        reloader = Reloader(service, lambda: (settings, next(configs)), first)
        admin = asyncio.ensure_future(reloader.reload())
        await asyncio.sleep(0.05)
        reloader.on_signal()  # during the admin reload
        reloader.on_signal()  # twice: still one more, not two
        outcome = await admin
        models = [outcome.model]
        deadline = time.monotonic() + 10
        while reloader.generation < 3 or reloader.busy:  # 1 at start, +1 a reload
            assert time.monotonic() < deadline, reloader.status()
            await asyncio.sleep(0.02)
        models.append(service.manager.info.model)
        status = reloader.status()
        await reloader.aclose()
        await service.close()
        service.manager.close()
        return models, status

    models, status = asyncio.run(go())
    assert models == ["second", "third"]
    assert status["reloads"] == {"success": 2, "failure": 0}, status
