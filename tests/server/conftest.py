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
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from akidb_embed import EmbeddingManager

READY_TIMEOUT = 120.0  # the onnx model loads in seconds; a bound, not an expectation


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies (Linux only)."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """One ``akidb-embed serve`` subprocess on a free loopback port.

    Parameters
    ----------
    *args:
        Arguments after ``serve --port N`` (``--provider mock`` ...).
    env:
        Variables added to this process's environment for the server.
    wait:
        Wait for ``/ready`` to answer 200 (else only start the process).
    ready_timeout:
        Seconds to wait for readiness before failing with the server's output.
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # gRPC listens by default (on 9090): every server gets a free port of its own.
        grpc_chosen = any(a in ("--grpc-port", "--no-grpc") for a in args) or any(
            k.startswith("AKIDB_SERVER_GRPC_") for k in env or {}
        )
        self.grpc_port: int | None = None if grpc_chosen else free_port()
        self.grpc_target = None if self.grpc_port is None else f"127.0.0.1:{self.grpc_port}"
        if self.grpc_port is not None:
            args = ("--grpc-port", str(self.grpc_port), *args)
        self.args = args
        self._log: IO[bytes] = tempfile.NamedTemporaryFile(  # noqa: SIM115 closed in stop()
            prefix="akidb-serve-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        cmd = [sys.executable, "-m", "akidb_embed.cli", "serve", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            # Its own process group: stop() can reach the workers it started as well.
            start_new_session=True,
            # And it dies with this process, even one killed before its fixtures ran.
            preexec_fn=_die_with_parent,
        )
        if wait:
            self.wait_ready(ready_timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def ready_status(self) -> int | None:
        """The status of ``GET /ready`` now, ``None`` when nothing answers."""
        try:
            return httpx.get(f"{self.url}/ready", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``/ready`` until 200; fail with the server's output on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the server exited with {self.proc.returncode} before it was ready:\n"
                    + self.output()
                )
            if self.ready_status() == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"the server was not ready within {timeout:g} s:\n{self.output()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send *sig* to the server process (not its workers)."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the server to exit; its exit status."""
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL to the whole process group past *timeout*; the exit status.

        Safe to call twice; never leaves a process of the group behind.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Workers of a server killed hard would be orphans: their group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


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
