"""python-bridge with healthy workers: results, forwarding, config, concurrency, lifetime."""

from __future__ import annotations

import asyncio
import datetime
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from akidb_embed import (
    BatchEmbeddingRequest,
    EmbeddingConfig,
    EmbeddingManager,
    MockEmbeddingProvider,
    create_provider,
)
from akidb_embed.bridge import PythonBridgeProvider
from akidb_embed.bridge import _protocol as proto
from akidb_embed.errors import (
    ConfigTypeError,
    ConfigValueError,
    EmbeddingInputError,
    ProviderClosedError,
    ProviderError,
    TruncationError,
)
from akidb_embed.testing import ProviderConformance, conformance_texts

MakeBridge = Callable[..., PythonBridgeProvider]
Config = Callable[..., EmbeddingConfig]
ProcessTable = Any


class TestBridgeConformance(ProviderConformance):
    def make_provider(self) -> PythonBridgeProvider:
        options = {"target": "mock"}
        return PythonBridgeProvider(EmbeddingConfig(provider="python-bridge", options=options))


def in_process(**options: object) -> MockEmbeddingProvider:
    return MockEmbeddingProvider(EmbeddingConfig(provider="mock", model="mock", options=options))


def test_vectors_equal_in_process_bit_for_bit(make_bridge: MakeBridge) -> None:
    bridge = make_bridge("mock", dimension=64, seed=3)
    reference = in_process(dimension=64, seed=3)
    texts = [*conformance_texts(), "lone \ud800 surrogate", "word " * 300]
    out = bridge.embed_batch(texts)
    assert out.dtype == np.float32 and out.shape == (len(texts), 64)
    np.testing.assert_array_equal(out, reference.embed_batch(texts))
    assert bridge.info() == reference.info()


def test_through_the_registry_and_manager(bridge_config: Config) -> None:
    config = bridge_config("mock", max_tokens=4)
    provider = create_provider(config)
    assert isinstance(provider, PythonBridgeProvider)
    with EmbeddingManager(provider, config) as manager:
        texts = ["one two three four five six", "short text"]
        response = manager.embed_batch(BatchEmbeddingRequest(model=None, inputs=texts))
        np.testing.assert_array_equal(
            response.embeddings, in_process(max_tokens=4).embed_batch(texts)
        )
        assert response.usage["prompt_tokens"] == 6 and response.usage["truncated"] == 1
        assert manager.stats()["truncated"] == 1


def test_text_lengths_forwarded_only_when_the_target_has_it(
    make_bridge: MakeBridge, bridge_config: Config
) -> None:
    with_lengths = make_bridge("scripted-lengths")
    assert with_lengths.text_lengths(["a b c", "", "one"]) == [3, 0, 1]
    manager = EmbeddingManager(with_lengths, bridge_config("scripted-lengths"))
    assert manager.capabilities.text_lengths  # the manager sorts batches by token count
    assert not manager.capabilities.counts_tokens
    mock = make_bridge("mock")
    assert not mock.capabilities.text_lengths and mock.capabilities.counts_tokens
    assert mock.count_tokens(["a b c", "", "one"]) == [3, 0, 1]
    with pytest.raises(ProviderError, match="no text_lengths"):
        mock.text_lengths(["a"])


def test_target_without_usage_and_float64_output(make_bridge: MakeBridge) -> None:
    bridge = make_bridge("plain")
    vectors, usage = bridge.embed_batch_with_usage(["a", "b c"])
    assert usage == {} and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, in_process().embed_batch(["a", "b c"]))


def test_provider_errors_come_back_typed_and_the_worker_stays(make_bridge: MakeBridge) -> None:
    bridge = make_bridge("scripted")
    pid = bridge.worker_pid
    with pytest.raises(TruncationError, match="10 tokens") as info:
        bridge.embed_batch(["!truncate"])
    assert (info.value.tokens, info.value.max_tokens) == (10, 5)
    assert "TruncationError" in info.value.remote_traceback  # type: ignore[attr-defined]
    with pytest.raises(ProviderError, match="RuntimeError: scripted failure"):
        bridge.embed_batch(["fine", "!raise"])
    with pytest.raises(ProviderError, match="expected a 2-d numpy array"):
        bridge.embed_batch(["!bad"])
    assert bridge.embed_batch(["still serving"]).shape == (1, 384)
    assert bridge.worker_pid == pid


def test_bad_input_is_refused_before_it_reaches_the_worker(make_bridge: MakeBridge) -> None:
    bridge = make_bridge("mock")
    with pytest.raises(EmbeddingInputError, match=r"texts\[1\] must be str"):
        bridge.embed_batch(["ok", b"bytes"])  # type: ignore[list-item]
    assert bridge.embed_batch([]).shape == (0, 384)


def test_stray_stdout_output_cannot_corrupt_frames(
    make_bridge: MakeBridge, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = make_bridge("scripted")
    with caplog.at_level(logging.INFO, logger="akidb_embed.bridge.worker"):
        out = bridge.embed_batch(["!print now", "normal"])
        np.testing.assert_array_equal(out, in_process().embed_batch(["!print now", "normal"]))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "puts() from C" not in caplog.text:
            time.sleep(0.02)
    for line in ("stray print() to stdout", "file descriptor 1", "puts() from C"):
        assert line in caplog.text


def test_worker_logging_reaches_host_logging(
    make_bridge: MakeBridge, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="akidb_embed.bridge.worker"):
        bridge = make_bridge("scripted")
        bridge.embed_batch(["!log this"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "worker says" not in caplog.text:
            time.sleep(0.02)
    records = [r for r in caplog.records if "worker says: !log this" in r.getMessage()]
    assert records and records[0].levelno == logging.WARNING
    assert records[0].name == "akidb_embed.bridge.worker"
    assert "bridge_test_providers" in records[0].getMessage()


def test_config_from_toml_and_environment(
    make_bridge: MakeBridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "akidb.toml"
    toml.write_text(
        textwrap.dedent(
            f"""
            [embedding]
            provider = "python-bridge"
            model = "mock"
            python_path = "{sys.executable}"
            [embedding.options]
            target = "onnx"
            dimension = 16
            timeout = 30
            """
        )
    )
    monkeypatch.setenv("AKIDB_EMBEDDING_TARGET", "mock")  # env beats the file
    config = EmbeddingConfig.load(toml)
    assert config.option("target") == "mock"
    with EmbeddingManager.from_config(config) as manager:
        assert isinstance(manager.provider, PythonBridgeProvider)
        assert manager.provider.python == sys.executable
        assert manager.embed(["from toml"]).shape == (1, 16)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"timeout": "soon"}, ConfigTypeError, "options.timeout"),
        ({"timeout": 0}, ConfigValueError, "must be > 0"),
        ({"max_restarts": 1.5}, ConfigTypeError, "integer"),
        ({"target": "python-bridge"}, ConfigValueError, "cannot host itself"),
        ({"start": "later"}, ConfigValueError, "'eager' or 'lazy'"),
        ({"env": {"A": 1}}, ConfigTypeError, "options.env"),
        ({"concurrency": 0}, ConfigValueError, "options.concurrency"),
        ({"timeout": float("inf")}, ConfigValueError, r"options\.timeout.*finite.*inf"),
        ({"timeout": float("nan")}, ConfigValueError, r"options\.timeout.*finite.*nan"),
        ({"timeout": 1e300}, ConfigValueError, r"options\.timeout.*at most"),
        ({"startup_timeout": float("inf")}, ConfigValueError, r"options\.startup_timeout.*finite"),
        ({"shutdown_timeout": float("-inf")}, ConfigValueError, r"shutdown_timeout.*finite"),
        ({"backoff": float("nan")}, ConfigValueError, r"options\.backoff.*finite"),
        ({"backoff": float("inf")}, ConfigValueError, r"options\.backoff.*finite"),
        (
            {"created": datetime.datetime(2024, 5, 1, 12, 0)},
            ConfigTypeError,
            r"options\.created.*JSON value.*datetime",
        ),
        ({"vocab": Path("/models/vocab.txt")}, ConfigTypeError, r"options\.vocab.*JSON value"),
        ({"nested": {"deep": [1, {2, 3}]}}, ConfigTypeError, r"options\.nested"),
    ],
)
def test_invalid_options(
    options: dict, error: type, match: str, bridge_config: Config, procs: ProcessTable
) -> None:
    before = len(procs.children())
    with pytest.raises(error, match=match):
        PythonBridgeProvider(bridge_config(**{"target": "mock", **options}))
    assert len(procs.children()) == before


def test_lazy_start(make_bridge: MakeBridge, procs: ProcessTable) -> None:
    bridge = make_bridge("mock", start="lazy")
    assert bridge.worker_pid is None and not procs.children()
    assert bridge.info().dimension == 384
    assert bridge.worker_pid is not None


@pytest.mark.parametrize("concurrency", [1, 3])
def test_many_threads_each_get_their_own_answer(make_bridge: MakeBridge, concurrency: int) -> None:
    bridge = make_bridge("mock", latency=0.001, concurrency=concurrency)
    reference = in_process()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                texts = [f"thread {t} call {i} item {j}" for j in range(1 + (i + t) % 4)]
                np.testing.assert_array_equal(
                    bridge.embed_batch(texts), reference.embed_batch(texts)
                )
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a call hung"
    assert not errors, errors[0]


def test_asyncio_gather(make_bridge: MakeBridge, bridge_config: Config) -> None:
    manager = EmbeddingManager(make_bridge("mock", start="lazy"), bridge_config("mock"))
    reference = in_process()

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(
            *(manager.aembed([f"async text {i}", f"second {i}"]) for i in range(40))
        )

    results = asyncio.run(main())
    for i, out in enumerate(results):
        np.testing.assert_array_equal(
            out, reference.embed_batch([f"async text {i}", f"second {i}"])
        )


def test_worker_started_from_a_short_lived_thread_survives_it(make_bridge: MakeBridge) -> None:
    # Linux sends PR_SET_PDEATHSIG when the forking *thread* exits.
    bridge = make_bridge("mock", start="lazy")
    thread = threading.Thread(target=bridge.embed_batch, args=(["started here"],))
    thread.start()
    thread.join(30)
    pid = bridge.worker_pid
    time.sleep(0.5)
    assert bridge.embed_batch(["still alive"]).shape == (1, 384)
    assert bridge.worker_pid == pid


def test_close_stops_the_worker(make_bridge: MakeBridge) -> None:
    bridge = make_bridge("mock")
    pid = bridge.worker_pid
    assert pid is not None
    process = psutil.Process(pid)
    bridge.close()
    assert not process.is_running()
    bridge.close()
    with pytest.raises(ProviderClosedError):
        bridge.embed_batch(["after close"])


def test_close_lets_in_flight_requests_finish(
    make_bridge: MakeBridge, wait_for: Callable[..., None], in_flight: Callable[..., int]
) -> None:
    bridge = make_bridge("mock", latency=0.3)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(bridge.embed_batch(["late"])))
    thread.start()
    wait_for(lambda: in_flight(bridge) == 1, "the request to reach the worker")
    bridge.close()
    thread.join(10)
    assert isinstance(result[0], np.ndarray)


def test_forked_child_gets_its_own_worker(make_bridge: MakeBridge) -> None:
    bridge = make_bridge("mock", shutdown_timeout=30)
    parent_worker = bridge.worker_pid
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    release = context.Event()

    def child() -> None:
        out = bridge.embed_batch(["from the child"])
        results.put((bridge.worker_pid, bridge.restarts, out.tolist()))
        release.wait(60)
        bridge.close()

    process = context.Process(target=child)
    process.start()
    try:
        child_worker, restarts, vectors = results.get(timeout=60)
        assert child_worker not in (None, parent_worker) and restarts == 0
        np.testing.assert_array_equal(vectors, in_process().embed_batch(["from the child"]))
        parent = bridge.embed_batch(["parent"])
        np.testing.assert_array_equal(parent, in_process().embed_batch(["parent"]))
        assert bridge.worker_pid == parent_worker
        # The live child let go of its copy of the worker's stdin, so the parent's
        # worker sees it close at once instead of being killed after shutdown_timeout.
        start = time.monotonic()
        bridge.close()
        assert time.monotonic() - start < 5
    finally:
        release.set()
        process.join(30)
    assert process.exitcode == 0


def test_garbage_collected_provider_stops_its_worker(
    bridge_config: Config, procs: ProcessTable
) -> None:
    bridge = PythonBridgeProvider(bridge_config("mock"))
    pid = bridge.worker_pid
    del bridge
    assert procs.wait_gone([pid]) == []


def test_worker_exits_when_its_stdin_closes(bridge_config: Config) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "akidb_embed.bridge"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    hello = {"op": "hello", "config": bridge_config("mock").replace(provider="mock").to_dict()}
    worker.stdin.write(proto.encode(hello))
    worker.stdin.flush()
    ready, _ = proto.read_frame(worker.stdout)
    assert ready["op"] == "ready" and ready["info"]["dimension"] == 384
    worker.stdin.close()
    assert worker.wait(10) == 0
    assert worker.stdout.read() == b""
    worker.stdout.close()
    worker.stderr.close()


HOST_SCRIPT = """
import sys, time
from akidb_embed import EmbeddingConfig
from akidb_embed.bridge import PythonBridgeProvider
options = {"target": "scripted", "imports": ["bridge_test_providers"],
           "env": {"PYTHONPATH": sys.argv[1]}, "timeout": 600, "start": "lazy"}
bridge = PythonBridgeProvider(EmbeddingConfig(provider="python-bridge", options=options))
bridge.info()
print(bridge.worker_pid, flush=True)
if sys.argv[2] == "busy":
    bridge.embed_batch(["!hang in the worker"])
time.sleep(600)
"""


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_no_worker_outlives_a_killed_host(state: str) -> None:
    here = str(Path(__file__).parent)
    host = subprocess.Popen(
        [sys.executable, "-c", HOST_SCRIPT, here, state], stdout=subprocess.PIPE, text=True
    )
    try:
        worker_pid = int(host.stdout.readline())
        worker = psutil.Process(worker_pid)
        time.sleep(0.3)
        assert worker.is_running() and worker.ppid() == host.pid
    finally:
        os.kill(host.pid, signal.SIGKILL)
        host.wait(10)
        host.stdout.close()
    worker.wait(10)  # raises psutil.TimeoutExpired if the orphan lives on
    assert not worker.is_running()
