"""Fixtures for the python-bridge tests: real worker processes, fake workers, a second
interpreter environment, and a check that no worker process is left behind."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from akidb_embed import EmbeddingConfig
from akidb_embed.bridge import PythonBridgeProvider

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HOST_VENV = REPO / ".cache" / "bridge-host-venv"

# Worker options that make the test providers of bridge_test_providers.py loadable.
TEST_PROVIDERS: dict[str, Any] = {
    "imports": ["bridge_test_providers"],
    "env": {"PYTHONPATH": str(HERE)},
}


def bridge_config(target: str = "mock", **options: Any) -> EmbeddingConfig:
    """A python-bridge config for *target* (test providers loadable) with *options*."""
    merged = {"target": target, **TEST_PROVIDERS, **options}
    return EmbeddingConfig(provider="python-bridge", model="mock", options=merged)


def children() -> list[psutil.Process]:
    """Live (or zombie) child processes of this test process."""
    return psutil.Process().children(recursive=True)


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of *pids* is a live process of ours; return those still there."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p.pid for p in children() if p.pid in pids]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll *condition* until it is true; fail the test naming *what* after *timeout* s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.005)


def in_flight(bridge: PythonBridgeProvider) -> int:
    """Requests the bridge has written to its current worker and not had answered."""
    worker = bridge._supervisor.worker
    return 0 if worker is None else worker.in_flight()


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., None]:
    """:func:`wait_for`: wait on a real condition, never on a fixed sleep."""
    return wait_for


@pytest.fixture(name="in_flight")
def in_flight_fixture() -> Callable[[PythonBridgeProvider], int]:
    """:func:`in_flight`."""
    return in_flight


@pytest.fixture(name="bridge_config")
def bridge_config_fixture() -> Callable[..., EmbeddingConfig]:
    """:func:`bridge_config`, for test modules (they cannot import conftest)."""
    return bridge_config


class ProcessTable:
    """Reads the real process table (psutil) for children of this test process."""

    children = staticmethod(children)
    wait_gone = staticmethod(wait_gone)


@pytest.fixture
def procs() -> ProcessTable:
    return ProcessTable()


@pytest.fixture
def make_bridge() -> Iterator[Callable[..., PythonBridgeProvider]]:
    """``make_bridge(target="mock", python_path=None, **options)``: a started bridge,
    closed after the test; the test fails if a worker process outlives it."""
    made: list[PythonBridgeProvider] = []

    def make(
        target: str = "mock", python_path: str | None = None, **options: Any
    ) -> PythonBridgeProvider:
        config = bridge_config(target, **options).replace(python_path=python_path)
        provider = PythonBridgeProvider(config)
        made.append(provider)
        return provider

    before = {p.pid for p in children()}
    try:
        yield make
    finally:
        for provider in made:
            provider.close()
        left = wait_gone([p.pid for p in children() if p.pid not in before], timeout=10)
        assert not left, f"worker processes left behind: {left}"


@pytest.fixture(scope="session")
def fake_python(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """``fake_python(mode)``: path of an executable that runs fake_worker.py in *mode*,
    usable as ``python_path``."""
    folder = tmp_path_factory.mktemp("fake-python")

    def make(mode: str) -> str:
        path = folder / f"python-{mode}"
        if not path.exists():
            path.write_text(
                f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_worker.py"}" {mode}\n'
            )
            path.chmod(0o755)
        return str(path)

    return make


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The python of a fresh virtualenv with no packages at all (no akidb-embed)."""
    folder = tmp_path_factory.mktemp("bare-venv")
    venv.create(folder, with_pip=False)
    return str(folder / "bin" / "python")


def _host_venv_stamp() -> str:
    """Changes whenever the installed core would: the interpreter, pyproject, the sources."""
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    digest.update((REPO / "pyproject.toml").read_bytes())
    for path in sorted((REPO / "src" / "akidb_embed").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _host_venv_works(folder: Path, stamp: str) -> bool:
    python = folder / "bin" / "python"
    stamp_file = folder / "akidb-stamp"
    if not python.exists() or not stamp_file.exists() or stamp_file.read_text() != stamp:
        return False
    probe = subprocess.run(
        [str(python), "-c", "import akidb_embed.bridge, numpy"], capture_output=True, timeout=60
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def host_python() -> str:
    """Python of ``.cache/bridge-host-venv``: a virtualenv with only akidb-embed (the core
    distribution, built from this checkout) and numpy. It cannot import onnxruntime,
    tokenizers, torch or the backend packages.

    Built when missing or stale (pip reaches PyPI for numpy and the build backend),
    into a temporary folder renamed into place, under a file lock so parallel sessions
    do not race.
    """
    HOST_VENV.parent.mkdir(parents=True, exist_ok=True)
    stamp = _host_venv_stamp()
    with open(HOST_VENV.parent / "bridge-host-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _host_venv_works(HOST_VENV, stamp):
            tmp = HOST_VENV.parent / f"bridge-host-venv.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            venv.create(tmp, with_pip=True, symlinks=True)
            pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q"]
            pip += ["--disable-pip-version-check"]
            subprocess.run([*pip, "numpy"], check=True, timeout=600)
            # A real (not editable) install: an editable one would put all of src/ on
            # sys.path, backends included.
            subprocess.run([*pip, "--no-deps", str(REPO)], check=True, timeout=600)
            (tmp / "akidb-stamp").write_text(stamp)
            shutil.rmtree(HOST_VENV, ignore_errors=True)
            tmp.rename(HOST_VENV)
        with contextlib.suppress(OSError):
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(HOST_VENV / "bin" / "python")
