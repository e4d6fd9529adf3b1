"""Real servers for the remote provider's tests: ``akidb-embed serve`` subprocesses on a
free loopback port, and a small loopback proxy in front of one that can answer 401 or
429/503 first (what an API gateway or a loaded server does) before passing calls on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """``python -m akidb_embed.cli serve --port <free> ARGS``, ready when /ready is 200.

    The server's output goes to a file: a pipe nobody reads would fill up and block it.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # HTTP only: the remote provider speaks HTTP (gRPC would take port 9090).
        cmd = [sys.executable, "-m", "akidb_embed.cli", "serve", "--port", str(self.port)]
        cmd += ["--no-grpc", *args]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server not ready within 120 s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def mock_server() -> Iterator[Served]:
    served = Served("--provider", "mock")
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="session")
def onnx_server(minilm_onnx_dir: Path) -> Iterator[Served]:
    served = Served("--provider", "onnx", "--model", str(minilm_onnx_dir))
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="session")
def slow_server() -> Iterator[Served]:
    """A mock that takes 0.3 s per batch and queues at most 2 texts (429 past them)."""
    served = Served("--provider", "mock", "--option", "latency=0.3", "--max-queue-texts", "2")
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="session")
def short_server() -> Iterator[Served]:
    """A mock whose model takes at most 8 tokens (words)."""
    served = Served("--provider", "mock", "--option", "max_tokens=8")
    try:
        yield served
    finally:
        served.stop()


@dataclass
class Seen:
    """One request the proxy received."""

    method: str
    path: str
    authorization: str | None
    at: float


@dataclass
class Proxy:
    """A loopback HTTP proxy to *upstream* that answers the queued failures first.

    ``failures`` holds ``(status, headers, json body)`` answers, used one per request
    before requests are passed on; with ``api_key`` set, a request without
    ``Authorization: Bearer <api_key>`` gets a 401 in the akidb/OpenAI error shape.
    """

    upstream: str
    api_key: str | None = None
    failures: list[tuple[int, dict[str, str], object]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=self.upstream, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization")
                with proxy._lock:
                    proxy.seen.append(Seen(self.command, self.path, auth, time.monotonic()))
                    failure = proxy.failures.pop(0) if proxy.failures else None
                if proxy.api_key is not None and auth != f"Bearer {proxy.api_key}":
                    error = {
                        "message": "invalid API key",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                    failure = (401, {}, {"error": error})
                if failure is not None:
                    status, headers, payload = failure
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                upstream = proxy._client.request(
                    self.command,
                    self.path,
                    content=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                )
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = _handle
            do_POST = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def embed_calls(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == "POST"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


@pytest.fixture
def proxy(mock_server: Served) -> Iterator[Proxy]:
    p = Proxy(mock_server.url)
    try:
        yield p
    finally:
        p.close()
