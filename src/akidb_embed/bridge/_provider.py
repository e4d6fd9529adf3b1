"""``PythonBridgeProvider``: a provider that runs in another Python interpreter."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._config import EmbeddingConfig
from .._types import LEGACY_THREAD_SAFE_CONCURRENCY, ModelInfo, ProviderCapabilities
from ..errors import (
    ConfigTypeError,
    ConfigValueError,
    ProviderClosedError,
    WorkerError,
    WorkerProtocolError,
    WorkerStartupError,
)
from . import _protocol as proto
from ._client import PROVIDER, Worker, check_texts, remote_error, reset_spawner

__all__ = ["BRIDGE_OPTIONS", "PythonBridgeProvider"]

_MAX_BACKOFF = 5.0
# Upper bound of every time option: far beyond any real request, and small enough for
# Lock.acquire, Event.wait and epoll, which refuse timeouts beyond a few weeks or years.
_MAX_SECONDS = 1_000_000.0

# Options the bridge consumes itself; every other option goes to the target provider.
BRIDGE_OPTIONS: dict[str, Any] = {
    "target": "onnx",
    "start": "eager",
    "timeout": 60.0,
    "startup_timeout": 120.0,
    "shutdown_timeout": 5.0,
    "max_restarts": 5,
    "backoff": 0.1,
    "concurrency": 1,
    "env": {},
    "imports": [],
}


@dataclass(frozen=True)
class _Settings:
    target: str
    python: str
    start: str
    timeout: float
    startup_timeout: float
    shutdown_timeout: float
    max_restarts: int
    backoff: float
    concurrency: int
    env: dict[str, str]
    imports: list[str]

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> _Settings:
        source = config.source("options")

        def get(key: str) -> Any:
            return config.option(key, BRIDGE_OPTIONS[key])

        def number(key: str, *, integer: bool = False, positive: bool = True) -> Any:
            value = get(key)
            types = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, types):
                kind = "an integer" if integer else "a number of seconds"
                raise ConfigTypeError(f"options.{key}", kind, value, source)
            # NaN fails every comparison, so it is refused here rather than below.
            if not integer and not math.isfinite(value):
                raise ConfigValueError(
                    f"options.{key}", f"must be a finite number of seconds, got {value}", source
                )
            if value < 0 or (positive and value == 0):
                bound = "> 0" if positive else ">= 0"
                raise ConfigValueError(f"options.{key}", f"must be {bound}, got {value}", source)
            if not integer and value > _MAX_SECONDS:
                raise ConfigValueError(
                    f"options.{key}",
                    f"must be at most {_MAX_SECONDS:g} seconds (about 11 days), got {value}",
                    source,
                )
            return value

        target = get("target")
        if not isinstance(target, str) or not target.strip():
            raise ConfigTypeError("options.target", "a provider name", target, source)
        if target == PROVIDER:
            raise ConfigValueError(
                "options.target", "the python-bridge cannot host itself; name a provider", source
            )
        start = get("start")
        if start not in ("eager", "lazy"):
            raise ConfigValueError(
                "options.start", f"must be 'eager' or 'lazy', got {start!r}", source
            )
        env = get("env")
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ConfigTypeError("options.env", "a table of strings", env, source)
        imports = get("imports")
        if isinstance(imports, str):
            imports = [imports]
        if not isinstance(imports, Sequence) or not all(isinstance(m, str) for m in imports):
            raise ConfigTypeError("options.imports", "a list of module names", imports, source)
        return cls(
            target=target,
            python=_resolve_python(config.python_path),
            start=start,
            timeout=float(number("timeout")),
            startup_timeout=float(number("startup_timeout")),
            shutdown_timeout=float(number("shutdown_timeout")),
            max_restarts=int(number("max_restarts", integer=True, positive=False)),
            backoff=float(number("backoff", positive=False)),
            concurrency=int(number("concurrency", integer=True)),
            env=dict(env),
            imports=list(imports),
        )


def _resolve_python(path: str | None) -> str:
    if path is None:
        return sys.executable
    expanded = os.path.expanduser(path)
    if os.sep in expanded or (os.altsep and os.altsep in expanded):
        candidate: str | None = expanded
    else:
        candidate = shutil.which(expanded)
    if candidate is None or not os.path.exists(candidate):
        raise WorkerStartupError(
            PROVIDER, f"python_path {path!r} does not exist (no such interpreter)"
        )
    if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
        raise WorkerStartupError(PROVIDER, f"python_path {path!r} is not an executable file")
    # Not resolved through symlinks: a virtualenv's python is a symlink that must stay one.
    return os.path.abspath(candidate)


def _check_hello(hello: dict[str, Any], config: EmbeddingConfig) -> None:
    """Refuse, before any worker starts, an option the hello frame cannot carry.

    The other config fields are type-checked by :class:`EmbeddingConfig` and the
    bridge's own options above; the target's options are free-form.
    """
    source = config.source("options")
    for key, value in hello["config"]["options"].items():
        try:
            if not isinstance(key, str):
                raise TypeError("keys must be strings")
            json.dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            # Every option not meant for the bridge travels to the worker as JSON.
            raise ConfigTypeError(
                f"options.{key}",
                "a JSON value (string, number, boolean, list or table of those)",
                value,
                source,
            ) from exc


class _Slots:
    """Lets at most *limit* requests reach the worker at once; the others wait their turn.

    A request's timeout measures the worker's work, so it must not start while the
    request is only queued behind others (the worker serves ``concurrency`` at once).
    The wait has no timeout of its own, yet it is bounded: every request holding a slot
    ends within its start-up time plus its timeout. It ends at once, with
    ProviderClosedError, when the provider is closed; once the bridge gave up
    restarting workers, each waiter fails with WorkerStartupError as soon as its turn
    comes.
    """

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._limit = limit
        self._busy = 0
        self._closed = False
        self.waiting = 0  # callers waiting for a slot, for introspection

    def acquire(self) -> None:
        with self._cond:
            self.waiting += 1
            try:
                while not self._closed and self._busy >= self._limit:
                    self._cond.wait()
            finally:
                self.waiting -= 1
            if self._closed:
                raise ProviderClosedError("the python-bridge provider is closed")
            self._busy += 1

    def release(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify()

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Supervisor:
    """Owns the current worker: starts it, restarts it with backoff, closes it.

    Kept apart from the provider so a ``weakref.finalize`` can close the worker when the
    provider is garbage-collected or the interpreter exits.
    """

    def __init__(self, settings: _Settings, hello: dict[str, Any]) -> None:
        self.settings = settings
        self.hello = hello
        self.lock = threading.Lock()
        self.worker: Worker | None = None
        self.failures = 0
        self.restarts = 0
        self.last_failure = ""
        self.info: ModelInfo | None = None
        self.capabilities: dict[str, Any] = {}
        self.closed = False
        self.started = False
        self.slots = _Slots(settings.concurrency)

    def get(self) -> Worker:
        worker = self.worker
        if worker is not None and worker.alive:
            return worker
        s = self.settings
        wait = s.startup_timeout + _MAX_BACKOFF + s.shutdown_timeout
        if not self.lock.acquire(timeout=wait):
            raise WorkerStartupError(
                PROVIDER, f"another thread has been starting the worker for over {wait:g} s"
            )
        try:
            return self._get_locked()
        finally:
            self.lock.release()

    def _get_locked(self) -> Worker:
        s = self.settings
        if self.closed:
            raise ProviderClosedError("the python-bridge provider is closed")
        worker = self.worker
        if worker is not None:
            if worker.alive:
                return worker
            self.worker = None
            self.failures += 1
            self.last_failure = f"worker pid {worker.pid} died"
            worker.reap()
        if self.failures > s.max_restarts:
            raise WorkerStartupError(
                PROVIDER,
                f"gave up: the worker failed {self.failures} times in a row (max_restarts="
                f"{s.max_restarts}); last failure: {self.last_failure}. Create a new provider "
                "once the cause is fixed",
            )
        if self.failures and s.backoff:
            time.sleep(min(s.backoff * 2 ** (self.failures - 1), _MAX_BACKOFF))
        try:
            worker = Worker(s.python, env=s.env, target=s.target)
            try:
                ready = worker.handshake(dict(self.hello), s.startup_timeout)
                info = _model_info(worker, ready)
            except BaseException:
                worker.kill(None)  # a live worker would hold reap() up for seconds
                worker.reap()
                raise
        except WorkerError as exc:
            self.failures += 1
            self.last_failure = str(exc).splitlines()[0]
            raise
        if self.info is not None and info != self.info:
            worker.close(s.shutdown_timeout)
            self.failures += 1
            self.last_failure = "the restarted worker serves another model"
            raise WorkerStartupError(
                PROVIDER,
                f"the restarted worker serves {info.fingerprint()}, but the first one served "
                f"{self.info.fingerprint()}",
            )
        if self.started:
            self.restarts += 1
        self.started = True
        self.info = info
        self.capabilities = dict(ready.get("capabilities") or {})
        # The worker serves one request at a time when its target takes one call at a
        # time; more slots would let requests wait inside it, on their timeout's clock.
        self.slots.set_limit(min(s.concurrency, self.target_capabilities().max_concurrency))
        self.worker = worker
        return worker

    def target_capabilities(self) -> ProviderCapabilities:
        """What the worker said its target can do (older workers: the legacy keys)."""
        caps = self.capabilities
        declared = caps.get("declared")
        if isinstance(declared, dict):
            return ProviderCapabilities.from_dict(declared)
        return ProviderCapabilities(
            max_concurrency=LEGACY_THREAD_SAFE_CONCURRENCY if caps.get("thread_safe", True) else 1,
            reports_usage=bool(caps.get("usage")),
            text_lengths=bool(caps.get("lengths")),
        )

    def forget_after_fork(self) -> None:
        self.lock = threading.Lock()
        self.slots = _Slots(self.settings.concurrency)
        self.started = False
        self.restarts = self.failures = 0
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.abandon()

    def close(self) -> None:
        self.slots.close()
        with self.lock:
            self.closed = True
            worker, self.worker = self.worker, None
        if worker is not None:
            worker.close(self.settings.shutdown_timeout)


def _model_info(worker: Worker, ready: dict[str, Any]) -> ModelInfo:
    """The :class:`ModelInfo` of a ``ready`` header, or WorkerProtocolError."""
    data = ready["info"]
    try:
        info = ModelInfo.from_dict(data)
        if not isinstance(info.dimension, int) or isinstance(info.dimension, bool):
            raise TypeError(f"dimension is {info.dimension!r}, not an integer")
        if info.dimension < 1:
            raise ValueError(f"dimension is {info.dimension}")
    except Exception as exc:  # any field the worker got wrong
        raise WorkerProtocolError(
            PROVIDER,
            f"the worker (pid {worker.pid}) sent invalid model info {data!r:.300}: "
            f"{type(exc).__name__}: {exc}",
            worker.stderr_tail(),
        ) from exc
    return info


_supervisors: weakref.WeakSet[_Supervisor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child (multiprocessing, a pre-forking server) must not talk to its
    # parent's worker: the reader threads did not survive the fork, and the two
    # processes would interleave frames. Each child starts its own worker on first use.
    reset_spawner()
    for supervisor in list(_supervisors):
        supervisor.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PythonBridgeProvider:
    """Runs any registered provider in another Python interpreter (``python-bridge``).

    The host starts ``<python_path> -m akidb_embed.bridge`` and speaks a framed binary
    protocol with it over the worker's stdin/stdout; the worker builds the target
    provider through the registry with the same config (model, options ...). A worker
    that crashes or hangs fails the requests it was serving with a typed
    :class:`~akidb_embed.errors.WorkerError` and is replaced on the next request.

    Parameters
    ----------
    config:
        ``python_path`` picks the interpreter (default: this one). The ``options``
        table sets the target and the bridge's behaviour; every other option is passed
        to the target provider:

        ``target`` (``"onnx"``)
            Provider the worker hosts (env ``AKIDB_EMBEDDING_TARGET``).
        ``start`` (``"eager"``)
            ``"eager"`` starts the worker in the constructor; ``"lazy"`` on first use.
        ``timeout`` (60), ``startup_timeout`` (120), ``shutdown_timeout`` (5)
            Seconds a request, the start-up (model load included) and ``close()`` may
            take (finite, at most 1e6). A request past its timeout kills and replaces
            the worker. The timeout counts from when the request goes to the worker:
            beyond ``concurrency`` requests at once, callers wait their turn first.
        ``max_restarts`` (5), ``backoff`` (0.1)
            Consecutive worker failures tolerated, and the first delay before a restart
            (doubling, at most 5 s). A successful request resets the count.
        ``concurrency`` (1)
            Requests the worker serves at once (only if the target is thread-safe).
        ``env`` (``{}``), ``imports`` (``[]``)
            Extra environment variables for the worker, and modules it imports before
            building the target (for providers registered with ``register_provider``).
    **options:
        Shorthand for extra ``options`` keys.

    Raises
    ------
    WorkerStartupError
        The interpreter is missing, lacks akidb-embed or the target's package (the
        message gives the ``pip`` command for that interpreter), or the model fails to
        load (eager start).
    """

    requires: tuple[str, ...] = ()
    thread_safe = True

    def __init__(self, config: EmbeddingConfig | None = None, **options: Any) -> None:
        if config is None:
            config = EmbeddingConfig(provider=PROVIDER)
        if options:
            config = config.replace(options={**config.options, **options})
        self.config = config
        self._settings = settings = _Settings.from_config(config)
        target_options = {k: v for k, v in config.options.items() if k not in BRIDGE_OPTIONS}
        target_config = config.replace(
            provider=settings.target, python_path=None, options=target_options
        )
        hello = {
            "op": "hello",
            "config": target_config.to_dict(),
            "imports": settings.imports,
            "concurrency": settings.concurrency,
        }
        _check_hello(hello, config)
        self._supervisor = _Supervisor(settings, hello)
        _supervisors.add(self._supervisor)
        self._finalizer = weakref.finalize(self, self._supervisor.close)
        if settings.start == "eager":
            self._supervisor.get()

    # -- provider contract ---------------------------------------------------------------

    def info(self) -> ModelInfo:
        """The target provider's :class:`~akidb_embed.ModelInfo`, from the handshake."""
        if self._supervisor.info is None:
            self._supervisor.get()
        assert self._supervisor.info is not None
        return self._supervisor.info

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed *texts* in the worker; float32 of shape ``(len(texts), dimension)``."""
        return self.embed_batch_with_usage(texts)[0]

    def embed_batch_with_usage(self, texts: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        """Vectors plus the token usage the target reports (empty if it reports none)."""
        items = check_texts(texts)
        worker, header, payload = self._request({"op": "embed", "texts": items})
        vectors = self._vectors(worker, header, payload, len(items))
        usage = header.get("usage")
        return vectors, dict(usage) if isinstance(usage, dict) else {}

    def _vectors(
        self, worker: Worker, header: dict[str, Any], payload: bytearray, rows: int
    ) -> np.ndarray:
        try:
            vectors = proto.array_from_payload(header, payload)
            if vectors.shape[0] != rows:
                raise proto.BadFrameError(f"{vectors.shape[0]} vectors for {rows} texts")
        except proto.FrameError as exc:
            worker.kill(None)  # a worker that answers nonsense is not trusted again
            raise WorkerProtocolError(
                PROVIDER, f"the worker (pid {worker.pid}) sent an invalid answer: {exc}"
            ) from exc
        self._supervisor.failures = 0
        return vectors

    @property
    def capabilities(self) -> ProviderCapabilities:
        """The target's capabilities as the worker reported them, with the bridge's own
        ``max_concurrency`` (its ``concurrency`` option, at most the target's)."""
        if self._supervisor.info is None:
            self._supervisor.get()
        target = self._supervisor.target_capabilities()
        return ProviderCapabilities(
            max_concurrency=min(self._settings.concurrency, target.max_concurrency),
            reports_usage=True,
            counts_tokens=target.counts_tokens,
            text_lengths=target.text_lengths,
            token_input=target.token_input,
            max_batch_size=target.max_batch_size,
        )

    def embed_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed texts given as token ids, in the worker (``capabilities.token_input``:
        declared when the target takes token ids). The target checks the ids and raises
        its own typed errors (``EmbeddingInputError``, ``TruncationError``)."""
        rows = [list(row) for row in ids]
        worker, header, payload = self._request({"op": "embed_ids", "ids": rows})
        return self._vectors(worker, header, payload, len(rows))

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts after truncation, from the target (``capabilities.text_lengths``)."""
        return self._int_list("lengths", texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts before truncation, from the target (``capabilities.counts_tokens``)."""
        return self._int_list("count", texts)

    def _int_list(self, op: str, texts: Sequence[str]) -> list[int]:
        key = {"lengths": "lengths", "count": "counts"}[op]
        worker, header, _ = self._request({"op": op, "texts": check_texts(texts)})
        values = header.get(key)
        if (
            not isinstance(values, list)
            or len(values) != len(texts)
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in values)
        ):
            worker.kill(None)
            raise WorkerProtocolError(
                PROVIDER, f"the worker sent an invalid {op!r} answer: {values!r:.200}"
            )
        self._supervisor.failures = 0
        return values

    def ping(self) -> float:
        """Round-trip time of an empty request to the worker, in seconds."""
        start = time.perf_counter()
        self._request({"op": "ping"})
        return time.perf_counter() - start

    def close(self) -> None:
        """Shut the worker down (stdin closed, then killed after ``shutdown_timeout``)."""
        self._finalizer()

    def __enter__(self) -> PythonBridgeProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- introspection -------------------------------------------------------------------

    @property
    def python(self) -> str:
        """The interpreter the worker runs with."""
        return self._settings.python

    @property
    def target(self) -> str:
        """Name of the provider the worker hosts."""
        return self._settings.target

    @property
    def worker_pid(self) -> int | None:
        """Process id of the running worker, ``None`` when none runs."""
        worker = self._supervisor.worker
        return worker.pid if worker is not None and worker.alive else None

    @property
    def restarts(self) -> int:
        """How many times a worker was replaced."""
        return self._supervisor.restarts

    @property
    def available(self) -> bool:
        """Whether a worker is up to serve now (a server's readiness reads it).

        ``False`` from a worker's death until its replacement is ready (the next request
        starts one), after the bridge gave up restarting, and once closed; ``True``
        before a lazy start.
        """
        supervisor = self._supervisor
        if supervisor.closed:
            return False
        worker = supervisor.worker
        if worker is None:
            return not supervisor.started
        return worker.alive

    def __repr__(self) -> str:
        return (
            f"<PythonBridgeProvider target={self._settings.target!r} "
            f"python={self._settings.python!r} pid={self.worker_pid}>"
        )

    # -- internals -----------------------------------------------------------------------

    def _request(self, header: dict[str, Any]) -> tuple[Worker, dict[str, Any], bytearray]:
        slots = self._supervisor.slots
        # Queued behind other threads before the timeout starts (and before a worker is
        # started for it): only the worker's own work counts against the timeout.
        slots.acquire()
        try:
            worker = self._supervisor.get()
            answer, payload = worker.request(header, self._settings.timeout)
        finally:
            slots.release()
        if not answer.get("ok"):
            # The provider failed, not the worker: it stays, and counts as healthy.
            self._supervisor.failures = 0
            error = answer.get("error")
            raise remote_error(self._settings.target, error if isinstance(error, dict) else {})
        return worker, answer, payload
