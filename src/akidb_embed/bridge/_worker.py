"""The python-bridge worker: hosts one provider and serves frames on stdin/stdout.

Run as ``python -m akidb_embed.bridge --parent-pid PID``. The host sends a ``hello``
frame (target provider name and config); the worker builds the provider through the
registry, answers ``ready`` (with the provider's :class:`~akidb_embed.ModelInfo`) or
``startup_error``, then serves ``embed``/``lengths``/``ping`` requests until its stdin
closes. Frames go out on a private copy of the original stdout; file descriptor 1 is
pointed at stderr, so stray prints (from Python or C code) can never corrupt a frame.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from .._types import provider_capabilities
from . import _protocol as proto

__all__ = ["LOG_PREFIX", "error_to_dict", "main"]

# Log records leave the worker as stderr lines with this prefix, so the host can re-emit
# them at their level; any other stderr line is passed on as it is.
LOG_PREFIX = "akidb-bridge-log "
_log = logging.getLogger("akidb_embed.bridge.worker")

_TRACEBACK_LINES = 30


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """Describe *exc* for an error frame: type, module, message, simple attributes, traceback."""
    attrs: dict[str, Any] = {}
    for key, value in vars(exc).items():
        if isinstance(value, (str, int, float, bool, type(None))):
            attrs[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            attrs[key] = list(value)
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    lines = "".join(tb).splitlines()[-_TRACEBACK_LINES:]
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "attrs": attrs,
        "traceback": "\n".join(lines),
    }


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # a libc without prctl: the watchdog still works
            pass


def _host_alive(host_pid: int) -> bool:
    try:
        os.kill(host_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (pid reused): treat as gone
        return False
    return True


def _watch_host(host_pid: int, parent_pid: int) -> None:
    """Exit when the host is gone, even if the serving threads are stuck in a model.

    *parent_pid* is our parent at start: the host itself, or a wrapper script between
    us (``python_path`` may be a shell script that does not ``exec``).
    """
    while True:
        if os.getppid() != parent_pid or not _host_alive(host_pid):
            os._exit(1)
        time.sleep(0.5)


class _Server:
    def __init__(self, provider: Any, reader: BinaryIO, writer: BinaryIO, concurrency: int) -> None:
        self.provider = provider
        self.reader = reader
        self.writer = writer
        self.concurrency = concurrency
        self.read_lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.stopping = False
        self.exit_code = 0
        self.capabilities = provider_capabilities(provider)

    def run(self) -> int:
        threads = [
            threading.Thread(target=self._loop, name=f"bridge-serve-{i}", daemon=True)
            for i in range(1, self.concurrency)
        ]
        for thread in threads:
            thread.start()
        self._loop()
        for thread in threads:
            thread.join()
        return self.exit_code

    def _loop(self) -> None:
        # Leader/follower: the thread that reads a request also answers it, so a
        # request is never handed from one thread to another.
        while True:
            with self.read_lock:
                if self.stopping:
                    return
                try:
                    frame = proto.read_frame(self.reader)
                except proto.FrameError as exc:
                    _log.error("host sent an invalid frame, exiting: %s", exc)
                    self.stopping, self.exit_code = True, 3
                    return
                if frame is None:
                    self.stopping = True
                    return
            self._handle(frame[0])

    def _handle(self, header: dict[str, Any]) -> None:
        request_id = header.get("id")
        try:
            reply, payload = self._dispatch(header)
            reply["id"] = request_id
            data = payload.data.cast("B") if payload is not None and payload.size else b""
            head = proto.encode(reply, len(data))
        except Exception as exc:  # every failure goes back to the host as an error frame
            data = b""
            head = proto.encode({"ok": False, "id": request_id, "error": error_to_dict(exc)})
        self._send(head, data)

    def _dispatch(self, header: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray | None]:
        op = header.get("op")
        if op == "ping":
            return {"ok": True}, None
        if op == "embed_ids":
            if not self.capabilities.token_input:
                raise TypeError("the target provider has no embed_token_ids()")
            ids = header.get("ids")
            if not isinstance(ids, list) or not all(isinstance(row, list) for row in ids):
                raise TypeError("request 'embed_ids' needs 'ids', a list of lists of int")
            # The target checks the ids themselves (range, length) with its own typed errors.
            return self._vectors(self.provider.embed_token_ids(ids), {})
        texts = header.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"request {op!r} needs 'texts', a list of str")
        if op == "embed":
            return self._embed(texts)
        if op == "lengths":
            if not self.capabilities.text_lengths:
                raise TypeError("the target provider has no text_lengths()")
            lengths = self.provider.text_lengths(texts)
            return {"ok": True, "lengths": [int(n) for n in lengths]}, None
        if op == "count":
            if not self.capabilities.counts_tokens:
                raise TypeError("the target provider has no count_tokens()")
            counts = self.provider.count_tokens(texts)
            return {"ok": True, "counts": [int(n) for n in counts]}, None
        raise ValueError(f"unknown request op {op!r}")

    def _embed(self, texts: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
        usage: Any = {}
        if self.capabilities.reports_usage:
            result, usage = self.provider.embed_batch_with_usage(texts)
        else:
            result = self.provider.embed_batch(texts)
        return self._vectors(result, usage)

    @staticmethod
    def _vectors(result: Any, usage: Any) -> tuple[dict[str, Any], np.ndarray]:
        if not isinstance(result, np.ndarray) or result.ndim != 2:
            got = type(result).__name__
            if isinstance(result, np.ndarray):
                got += f" of shape {result.shape}"
            raise TypeError(f"target provider returned {got}, expected a 2-d numpy array")
        if not np.issubdtype(result.dtype, np.floating):
            raise TypeError(f"target provider returned dtype {result.dtype}, expected float32")
        vectors = np.ascontiguousarray(result, dtype=proto.FLOAT32)
        clean_usage = {str(k): int(v) for k, v in dict(usage).items()}
        reply = {"ok": True, "shape": list(vectors.shape), "dtype": proto.FLOAT32}
        reply["usage"] = clean_usage
        return reply, vectors

    def _send(self, head: bytes, data: memoryview | bytes) -> None:
        with self.write_lock:
            try:
                self.writer.write(head)
                if data:
                    self.writer.write(data)
                self.writer.flush()
            except (BrokenPipeError, ValueError):  # the host has gone: stop serving
                self.stopping = True


def _send_once(writer: BinaryIO, header: dict[str, Any]) -> None:
    writer.write(proto.encode(header))
    writer.flush()


def _setup_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_PREFIX + "%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _take_stdio() -> tuple[BinaryIO, BinaryIO]:
    """Keep private copies of stdin/stdout for frames; point fds 0 and 1 elsewhere."""
    sys.stdout.flush()
    in_fd, out_fd = os.dup(0), os.dup(1)  # new fds are not inherited by grandchildren
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True, errors="backslashreplace")
    reader = os.fdopen(in_fd, "rb", buffering=1 << 16)
    writer = os.fdopen(out_fd, "wb", buffering=1 << 16)
    return reader, writer  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m akidb_embed.bridge``."""
    parser = argparse.ArgumentParser(prog="python -m akidb_embed.bridge")
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    args = parser.parse_args(argv)

    reader, writer = _take_stdio()
    faulthandler.enable(file=sys.stderr)
    # Ctrl-C in a terminal reaches the whole process group; the host decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.parent_pid:
        parent = os.getppid()
        _die_with_parent()
        # Checked after prctl: a host that died before it would never signal us.
        threading.Thread(target=_watch_host, args=(args.parent_pid, parent), daemon=True).start()
    _setup_logging(args.log_level)
    code = _serve(reader, writer)
    sys.stderr.flush()
    # Threads a model library left behind must not keep an orphan alive.
    os._exit(code)


def _serve(reader: BinaryIO, writer: BinaryIO) -> int:
    try:
        frame = proto.read_frame(reader)
    except proto.VersionMismatchError as exc:
        _log.error("%s", exc)
        _send_once(writer, {"op": "startup_error", "id": 0, "error": error_to_dict(exc)})
        return 2
    except proto.FrameError as exc:
        _log.error("host sent an invalid hello frame: %s", exc)
        return 3
    if frame is None:
        return 0
    try:
        provider, concurrency = _build(frame[0])
    except Exception as exc:  # reported to the host, which raises WorkerStartupError
        _send_once(writer, {"op": "startup_error", "id": 0, "error": error_to_dict(exc)})
        return 1
    try:
        try:
            ready = _ready(provider)
        except Exception as exc:  # info() failing is a start-up failure too
            _send_once(writer, {"op": "startup_error", "id": 0, "error": error_to_dict(exc)})
            return 1
        _send_once(writer, ready)
        return _Server(provider, reader, writer, concurrency).run()
    finally:
        try:
            provider.close()
        except Exception:  # closing must not turn a clean exit into a crash report
            _log.exception("closing the target provider failed")


def _ready(provider: Any) -> dict[str, Any]:
    from .. import __version__

    caps = provider_capabilities(provider)
    return {
        "op": "ready",
        "id": 0,
        "info": provider.info().to_dict(),
        # The older keys stay for hosts that predate "declared".
        "capabilities": {
            "usage": caps.reports_usage,
            "lengths": caps.text_lengths,
            "thread_safe": caps.max_concurrency > 1,
            "declared": caps.to_dict(),
        },
        "pid": os.getpid(),
        "executable": sys.executable,
        "python": sys.version.split()[0],
        "akidb_embed": __version__,
    }


def _build(hello: dict[str, Any]) -> tuple[Any, int]:
    from .._config import EmbeddingConfig
    from .._registry import create_provider

    if hello.get("op") != "hello":
        raise ValueError(f"expected a hello frame, got op {hello.get('op')!r}")
    for module in hello.get("imports", []):
        __import__(module)
    fields = set(EmbeddingConfig.fields())
    values = {k: v for k, v in dict(hello.get("config", {})).items() if k in fields}
    config = EmbeddingConfig(**values)
    provider = create_provider(config)
    # More serving threads than the target takes calls at once would only queue
    # requests inside the worker, on their timeout's clock.
    concurrency = min(
        int(hello.get("concurrency", 1)), provider_capabilities(provider).max_concurrency
    )
    return provider, max(1, concurrency)
