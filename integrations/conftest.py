"""Fixtures for the framework integrations' tests, run in the repository's main suite.

The repository's own fixtures (``minilm_onnx_dir``: the real all-MiniLM-L6-v2 exported to
ONNX, cached; the ``AKIDB_*`` isolation every test opts in to) come from
``tests/conftest.py``, loaded here by path: ``integrations/`` is not below ``tests/``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _repo_conftest() -> Any:
    name = "akidb_embed_repo_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_repo = _repo_conftest()
_isolated = _repo._isolated
minilm_onnx_dir = _repo.minilm_onnx_dir


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> Generator[None]:
    """Mark the coroutine tests of these folders for pytest-asyncio.

    langchain-tests' async standard tests are plain ``async def`` methods; LangChain's
    partner packages run them with ``asyncio_mode = "auto"``. The repository runs
    pytest-asyncio in its default strict mode (the rest of the suite has no async tests
    and other plugins may claim them), so the async tests collected here get the marker
    that auto mode would give them. ``trylast`` puts this wrapper inside
    pytest-asyncio's, so the marker is there when it converts the item.
    """
    outcome = yield
    result = outcome.get_result()
    for item in result if isinstance(result, list) else [result]:
        is_test = isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)
        if is_test and item.get_closest_marker("asyncio") is None:
            item.add_marker(pytest.mark.asyncio)


class NetworkBlocked(AssertionError):
    """Raised by any attempt to open a network connection while ``no_network`` is on."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[object, ...]]]:
    """Fail every outbound socket connection (but local AF_UNIX ones) and record it.

    The frameworks have code paths that download (Chroma's default embedding function
    fetches an ONNX model; LlamaIndex's tokenizer may fetch its encoding; telemetry):
    with this fixture, any such attempt fails the test instead of reaching the network.
    """
    attempts: list[tuple[object, ...]] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        attempts.append((address,))
        raise NetworkBlocked(f"network access attempted: {address!r}")

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise NetworkBlocked(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(scope="session")
def paraphrases() -> dict[str, str]:
    """Paraphrased questions and the start of the sample-corpus line that answers each:
    they share few words, so only a real model ranks the answer first (as in tests/index)."""
    return {
        "what happens when the moon blocks the sun": "A total solar eclipse happens",
        "my program keeps eating more RAM until it dies": "A memory leak slowly consumes RAM",
        "how to teach a young dog good manners": "Puppies learn faster",
        "why does my homemade loaf come out heavy and dense": "Proofing the dough",
    }


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """The lines of ``examples/sample_corpus.txt`` (273 short texts on many topics)."""
    text = (EXAMPLES / "sample_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


@pytest.fixture
def run_example() -> Callable[..., str]:
    """``run_example(name, *args, env={...})`` runs ``examples/<name>`` as a user would, in
    a fresh interpreter (offline for the Hugging Face hub), and returns its stdout."""

    def run(name: str, *args: str, env: dict[str, str]) -> str:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / name), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            cwd=ROOT,
        )
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    return run
