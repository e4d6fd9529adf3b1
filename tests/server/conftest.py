"""Fixtures for the server tests: ``akidb-embed serve`` as a real subprocess.

``serve(*args, env=..., wait=True)`` (function scope) and ``serve_module`` (module
scope) start ``python -m akidb_embed.cli serve --port <free> --grpc-port <free> *args``
on 127.0.0.1 (no ``--grpc-port`` when *args* or *env* choose gRPC's port or turn it off), poll
``/ready`` until it answers 200 (bounded), capture the server's output in a file (a
pipe would fill up and block a busy server), and stop every server they started at
teardown, its whole process group included, so no worker process outlives a test.

``serve_app(manager, **settings)`` serves ``create_app(manager)`` with uvicorn on a free
loopback port from a thread of the test process, for tests that must look at the
provider's own counters (what a mock was really asked to compute).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from server_process import Served, free_port

from akidb_embed import EmbeddingManager

ServeFactory = Callable[..., Served]


@contextlib.contextmanager
def _factory() -> Iterator[ServeFactory]:
    started: list[Served] = []

    def serve(*args: str, **kwargs: object) -> Served:
        served = Served(*args, **kwargs)  # type: ignore[arg-type]
        started.append(served)
        return served

    try:
        yield serve
    finally:
        for served in started:
            served.cleanup()


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """``serve(*args, env=None, wait=True)``: a :class:`Served`, stopped after the test."""
    with _factory() as factory:
        yield factory


@pytest.fixture(scope="module")
def serve_module() -> Iterator[ServeFactory]:
    """Like ``serve``, for servers shared by a module's tests."""
    with _factory() as factory:
        yield factory


class InProcess:
    """``create_app(manager, **settings)`` under uvicorn in a thread, on a free port.

    ``app`` and ``state`` (its :class:`~akidb_embed_server.ServerState`) are the live
    objects the server uses; ``url`` is where it listens.
    """

    def __init__(self, manager: EmbeddingManager, **settings: Any) -> None:
        import uvicorn

        from akidb_embed_server._app import create_app

        self.app = create_app(manager, **settings)
        self.state = self.app.state.server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the in-process server did not start within 30 s")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive(), "the in-process server did not stop"


@contextlib.contextmanager
def _app_factory() -> Iterator[Callable[..., InProcess]]:
    started: list[InProcess] = []

    def start(manager: EmbeddingManager, **settings: Any) -> InProcess:
        served = InProcess(manager, **settings)
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.stop()


@pytest.fixture
def serve_app() -> Iterator[Callable[..., InProcess]]:
    """``serve_app(manager, **settings)``: an :class:`InProcess` server, stopped after."""
    with _app_factory() as factory:
        yield factory


@pytest.fixture(scope="module")
def serve_app_module() -> Iterator[Callable[..., InProcess]]:
    """Like ``serve_app``, for a server shared by a module's tests."""
    with _app_factory() as factory:
        yield factory
