"""Host side of one worker process: spawn, handshake, multiplexed requests, death."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import queue
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import errors
from . import _protocol as proto
from ._worker import LOG_PREFIX

__all__ = ["PROVIDER", "Worker", "describe_exit", "remote_error"]

PROVIDER = "python-bridge"
WORKER_LOG = logging.getLogger("akidb_embed.bridge.worker")
_log = logging.getLogger("akidb_embed.bridge")

_TAIL_LINES = 40
_TAIL_CHARS = 6000
_STDERR_GRACE = 1.0  # seconds to wait for the last stderr lines of a dead worker
_EXIT_GRACE = 5.0  # seconds a worker that closed its stdout gets to exit before a kill
_NONBLOCKING_WRITES = os.name == "posix"


class _Call:
    __slots__ = ("error", "event", "header", "payload", "sent")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.header: dict[str, Any] | None = None
        self.payload: bytearray | None = None
        self.error: BaseException | None = None
        self.sent = False


class _Spawner:
    """Starts workers from one long-lived thread.

    Linux delivers ``PR_SET_PDEATHSIG`` when the *thread* that forked the child exits,
    so a worker forked from a short-lived thread (``asyncio.to_thread``, a request
    handler) would be killed with it. A daemon thread lives as long as the host.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, job: Callable[[], Any]) -> Any:
        if not sys.platform.startswith("linux"):
            return job()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="akidb-bridge-spawner", daemon=True
                )
                self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, job))
        return future.result()

    def _loop(self) -> None:
        while True:
            future, job = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the thread that asked
                future.set_exception(exc)


_spawner = _Spawner()


def reset_spawner() -> None:
    """Forget the spawner thread and its lock (after a fork, in the child)."""
    global _spawner
    _spawner = _Spawner()


def describe_exit(returncode: int | None) -> str:
    """Human words for a worker's exit status."""
    if returncode is None:
        return "closed its output"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = {
            "SIGKILL": " (kill -9, or the out-of-memory killer)",
            "SIGSEGV": " (a segmentation fault in native code)",
            "SIGABRT": " (an abort in native code)",
        }.get(name, "")
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


def remote_error(target: str, error: Mapping[str, Any]) -> Exception:
    """Rebuild an exception the worker's provider raised.

    akidb-embed's own typed errors come back as the same class with the same message
    and attributes; anything else becomes a :class:`~akidb_embed.errors.ProviderError`.
    """
    name = str(error.get("type", "Exception"))
    message = str(error.get("message", ""))
    cls = getattr(errors, name, None) if error.get("module") == errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, errors.AkidbEmbedError):
        exc = cls.__new__(cls, message)
        exc.args = (message,)
        attrs = error.get("attrs")
        if isinstance(attrs, dict):
            exc.__dict__.update(attrs)
    else:
        exc = errors.ProviderError(
            PROVIDER, f"target provider {target!r} raised {error.get('module')}.{name}: {message}"
        )
    exc.remote_traceback = str(error.get("traceback", ""))  # type: ignore[attr-defined]
    return exc


class Worker:
    """One worker process and the threads that read its stdout and stderr."""

    def __init__(
        self,
        python: str,
        *,
        env: Mapping[str, str],
        target: str,
    ) -> None:
        self.python = python
        self.target = target
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        # Set under the write lock when stdin is closed: a writer that checks it under the
        # same lock can never write to a closed (or since reused) file descriptor.
        self._stdin_closed = False
        self._pending: dict[int, _Call] = {}
        self._death: tuple[type[errors.AkidbEmbedError], str] | None = None
        self._kill_reason: tuple[type[errors.AkidbEmbedError], str] | None = None
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._stderr_done = threading.Event()
        self.ready: dict[str, Any] = {}
        cmd = [
            python,
            "-m",
            "akidb_embed.bridge",
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            str(WORKER_LOG.getEffectiveLevel()),
        ]
        self.command = cmd
        try:
            self.proc: subprocess.Popen[bytes] = _spawner.run(
                lambda: subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**os.environ, **env},
                    bufsize=1 << 16,
                )
            )
        except OSError as exc:
            raise errors.WorkerStartupError(
                PROVIDER, f"cannot run python_path {python!r}: {exc.strerror or exc}"
            ) from exc
        self.pid = self.proc.pid
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin_fd = self.proc.stdin.fileno()
        if _NONBLOCKING_WRITES:
            os.set_blocking(self._stdin_fd, False)
        self._stdout_thread = threading.Thread(
            target=self._read_stdout, name=f"akidb-bridge-stdout-{self.pid}", daemon=True
        )
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, name=f"akidb-bridge-stderr-{self.pid}", daemon=True
        )
        self._stderr_thread.start()
        self._stdout_thread.start()

    # -- state ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._death is None and self._kill_reason is None and not _exited(self.proc)

    def stderr_tail(self) -> str:
        text = "\n".join(self._tail)
        return text[-_TAIL_CHARS:]

    def in_flight(self) -> int:
        """Requests written to the worker and not answered yet."""
        with self._lock:
            return sum(call.sent for call in self._pending.values())

    # -- requests ------------------------------------------------------------------------

    def handshake(self, hello: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send *hello* and return the worker's ``ready`` header.

        Raises :class:`~akidb_embed.errors.WorkerStartupError` (or
        :class:`~akidb_embed.errors.WorkerProtocolError`) saying what went wrong.
        """
        try:
            header, _ = self.request(hello, timeout, request_id=0)
        except errors.WorkerTimeoutError as exc:
            raise errors.WorkerStartupError(
                PROVIDER,
                f"the worker ({shlex.join(self.command)}) did not become ready within "
                f"{timeout:g} s (option startup_timeout)",
                exc.stderr_tail,
            ) from None
        except errors.WorkerProtocolError:
            raise
        except errors.WorkerError as exc:
            raise errors.WorkerStartupError(
                PROVIDER, self._explain_early_exit(), exc.stderr_tail
            ) from None
        op = header.get("op")
        if op == "startup_error":
            self.kill(None)
            raise self._startup_failure(header.get("error") or {})
        if op != "ready" or not isinstance(header.get("info"), dict):
            self.kill(None)
            raise errors.WorkerProtocolError(
                PROVIDER, f"worker answered the handshake with {header!r:.300}", self.stderr_tail()
            )
        self.ready = header
        return header

    def request(
        self, header: dict[str, Any], timeout: float, *, request_id: int | None = None
    ) -> tuple[dict[str, Any], bytearray]:
        """Send one request frame and wait for its answer.

        The *timeout* seconds start once this request has the pipe: waiting for another
        thread's frame to go out is not this request's time. That wait is bounded too,
        as the writer ahead holds the pipe for at most its own timeout.
        """
        call = _Call()
        rid = next(self._ids) if request_id is None else request_id
        header["id"] = rid
        data = proto.encode(header)
        if not self._write_lock.acquire(timeout=timeout + _EXIT_GRACE):
            self.kill(None)  # unreachable unless a writer ignores its deadline: stop it all
            raise errors.WorkerTimeoutError(
                PROVIDER,
                f"request {rid} could not reach the worker (pid {self.pid}): another "
                f"request held its input for over {timeout:g} s; the worker was killed",
                self.stderr_tail(),
            )
        try:
            with self._lock:
                reason = self._death or self._kill_reason
                if reason is None and self._stdin_closed:
                    reason = (
                        errors.WorkerCrashedError,
                        f"the input of the worker (pid {self.pid}) is already closed",
                    )
                if reason is not None:
                    raise self._error(*reason)
                self._pending[rid] = call
            deadline = time.monotonic() + timeout
            failed: OSError | None = None
            try:
                self._write_locked(data, deadline)
                call.sent = True
            except OSError as exc:  # TimeoutError included
                failed = exc
        finally:
            self._write_lock.release()
        if isinstance(failed, TimeoutError):
            return self._timed_out(rid, call, timeout)
        # A broken pipe: the worker is gone and its reader thread fails every pending call.
        if failed is not None and not call.event.wait(_STDERR_GRACE + _EXIT_GRACE + 1):
            self.kill(None)
            call.event.wait(_STDERR_GRACE + 1)
        if not call.event.wait(max(0.0, deadline - time.monotonic())):
            return self._timed_out(rid, call, timeout)
        if call.error is not None:
            raise call.error
        assert call.header is not None and call.payload is not None
        return call.header, call.payload

    def _timed_out(self, rid: int, call: _Call, timeout: float) -> tuple[dict[str, Any], bytearray]:
        with self._lock:
            mine = self._pending.pop(rid, None) is not None
        if not mine:  # answered (or failed) at the very deadline
            call.event.wait()
            if call.error is not None:
                raise call.error
            assert call.header is not None and call.payload is not None
            return call.header, call.payload
        what = f"request {rid}" if rid else "the handshake"
        self.kill(
            (
                errors.WorkerCrashedError,
                f"the worker (pid {self.pid}) was killed because {what} exceeded its "
                f"timeout of {timeout:g} s",
            )
        )
        self._stderr_done.wait(_STDERR_GRACE)
        raise errors.WorkerTimeoutError(
            PROVIDER,
            f"the worker (pid {self.pid}) did not answer within {timeout:g} s (option "
            "timeout); it was killed and will be replaced on the next request",
            self.stderr_tail(),
        )

    def _write_locked(self, data: bytes, deadline: float) -> None:
        """Write *data* to stdin; the caller holds the write lock and checked stdin is open."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._stdin_fd, view)
            except BlockingIOError:
                n = 0
            if n:
                view = view[n:]
                continue
            # The pipe is full: the worker is busy or stuck. Wait, but not past the
            # deadline (select.select would fail on descriptors above 1023), and in
            # slices, as epoll refuses timeouts beyond about 24 days.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            with selectors.DefaultSelector() as selector:
                selector.register(self._stdin_fd, selectors.EVENT_WRITE)
                selector.select(min(remaining, 60.0))

    def _close_stdin(self, timeout: float) -> None:
        if not self._write_lock.acquire(timeout=timeout):
            return
        try:
            self._stdin_closed = True
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        finally:
            self._write_lock.release()

    # -- shutdown ------------------------------------------------------------------------

    def kill(self, reason: tuple[type[errors.AkidbEmbedError], str] | None) -> None:
        """Kill the process; pending calls fail with *reason* (or as a crash)."""
        with self._lock:
            if self._kill_reason is None and reason is not None:
                self._kill_reason = reason
        with contextlib.suppress(OSError):  # already reaped
            self.proc.kill()

    def abandon(self) -> None:
        """In a forked child: let go of the parent's worker without touching it.

        The inherited pipe ends are pointed at /dev/null (not closed, so the stream
        objects that still own those descriptor numbers cannot close a reused one), so
        the parent's worker still sees its stdin close when the parent closes it.
        """
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending = {}
        self._death = (errors.WorkerCrashedError, "this worker belongs to the parent process")
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    os.dup2(devnull, stream.fileno())  # type: ignore[union-attr]
        finally:
            os.close(devnull)
        # Never waited for here: it is not our child.
        self.proc.returncode = 0

    def close(self, timeout: float) -> None:
        """Close stdin (the worker finishes what it has and exits), then reap it."""
        with self._lock:
            if self._kill_reason is None:
                self._kill_reason = (
                    errors.ProviderClosedError,
                    "the python-bridge provider was closed while this request was in flight",
                )
        self._close_stdin(timeout)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _log.warning(
                "worker pid %s did not exit within %g s of close(); killing it", self.pid, timeout
            )
            self.kill(None)
        self.reap()

    def reap(self) -> None:
        """Wait for the process and the reader threads (bounded)."""
        try:
            self.proc.wait(_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.kill(None)
            self.proc.wait()
        self._stdout_thread.join(_EXIT_GRACE + _STDERR_GRACE + 1)
        self._stderr_thread.join(_STDERR_GRACE)
        # The reader threads close stdout and stderr themselves (closing a buffered
        # stream another thread is reading would block); stdin only under the write lock,
        # so no writer can hit a recycled file descriptor.
        self._close_stdin(_EXIT_GRACE)

    # -- reader threads ------------------------------------------------------------------

    def _read_stdout(self) -> None:
        failure: BaseException | None = None
        try:
            self._read_answers()
        except proto.FrameError as exc:
            failure = exc
        except (OSError, ValueError):  # stdout closed under us: the process is gone
            pass
        except BaseException as exc:  # a bug or MemoryError: pending calls must not hang
            failure = exc
        finally:
            # Whatever ended this thread, nobody else would ever answer the pending calls.
            if failure is not None:
                self.kill(None)
            self._on_death(failure)

    def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        while True:
            frame = proto.read_frame(self.proc.stdout)  # type: ignore[arg-type]
            if frame is None:
                return
            header, payload = frame
            rid = header.get("id")
            if not isinstance(rid, int) or isinstance(rid, bool):
                raise proto.BadFrameError(f"an answer whose id {rid!r:.100} is not a request id")
            with self._lock:
                call = self._pending.pop(rid, None)
            if call is None:
                raise proto.BadFrameError(f"an answer to request id {rid!r}, which is not pending")
            call.header, call.payload = header, payload
            call.event.set()

    def _on_death(self, failure: BaseException | None) -> None:
        try:
            returncode = self.proc.wait(_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.kill(None)
            returncode = self.proc.wait()
        self._stderr_done.wait(_STDERR_GRACE)
        with self._lock:
            if self._kill_reason is not None:
                death = self._kill_reason
            elif isinstance(failure, proto.FrameError) and not (
                isinstance(failure, proto.TruncatedFrameError) and returncode < 0
            ):
                death = (errors.WorkerProtocolError, self._explain_protocol(failure))
            elif failure is not None and not isinstance(failure, proto.FrameError):
                death = (
                    errors.WorkerProtocolError,
                    f"the host failed to read an answer of the worker (pid {self.pid}): "
                    f"{type(failure).__name__}: {failure}; the worker was killed",
                )
            else:
                death = (
                    errors.WorkerCrashedError,
                    f"the worker (pid {self.pid}) {describe_exit(returncode)} while serving "
                    "this request; the next request starts a new worker",
                )
            self._death = death
            pending = list(self._pending.values())
            self._pending.clear()
        for call in pending:
            call.error = self._error(*death)
            call.event.set()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for raw in iter(lambda: self.proc.stderr.readline(1 << 16), b""):  # type: ignore[union-attr]
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._log_line(line)
        except (OSError, ValueError):  # stderr closed under us
            pass
        finally:
            self._stderr_done.set()
            with contextlib.suppress(OSError):
                self.proc.stderr.close()  # type: ignore[union-attr]

    def _log_line(self, line: str) -> None:
        if line.startswith(LOG_PREFIX):
            level_name, _, rest = line[len(LOG_PREFIX) :].partition(" ")
            name, _, message = rest.partition(" ")
            level = logging.getLevelName(level_name)
            if not isinstance(level, int):
                level = logging.WARNING
            self._tail.append(f"{level_name} {name}: {message}")
            if WORKER_LOG.isEnabledFor(level):
                WORKER_LOG.log(level, "[worker %s] %s: %s", self.pid, name, message)
        else:
            self._tail.append(line)
            WORKER_LOG.warning("[worker %s] %s", self.pid, line)

    # -- error text ----------------------------------------------------------------------

    def _error(self, cls: type[errors.AkidbEmbedError], message: str) -> errors.AkidbEmbedError:
        if issubclass(cls, errors.WorkerError):
            return cls(PROVIDER, message, self.stderr_tail())
        return cls(message)

    def _explain_protocol(self, failure: proto.FrameError) -> str:
        if isinstance(failure, proto.VersionMismatchError):
            from .. import __version__

            return (
                f"the worker ({self.python}) speaks python-bridge protocol version "
                f"{failure.version}, this host speaks version {proto.VERSION}: install the "
                f"same akidb-embed version ({__version__}) in both interpreters"
            )
        return (
            f"the worker (pid {self.pid}, {self.python}) sent bytes that are not a valid "
            f"python-bridge frame: {failure}. Something in the worker may write to the "
            "original stdout; the worker was killed"
        )

    def _explain_early_exit(self) -> str:
        returncode = self.proc.poll()
        tail = self.stderr_tail()
        python = shlex.quote(self.python)
        if "No module named" in tail and "akidb_embed" in tail:
            from .. import __version__

            return (
                f"the interpreter {self.python} cannot import akidb_embed.bridge; install "
                f"akidb-embed there: {python} -m pip install 'akidb-embed=={__version__}'"
            )
        return (
            f"the worker ({shlex.join(self.command)}) {describe_exit(returncode)} before "
            "it was ready"
        )

    def _startup_failure(self, error: Mapping[str, Any]) -> errors.WorkerStartupError:
        name = error.get("type", "Exception")
        message = str(error.get("message", ""))
        text = (
            f"the worker ({self.python}) could not start provider {self.target!r}: "
            f"{name}: {message}"
        )
        attrs = error.get("attrs") if isinstance(error.get("attrs"), dict) else {}
        install = attrs.get("install") if attrs else None  # type: ignore[union-attr]
        if isinstance(install, str) and install.startswith("pip "):
            install = f"{shlex.quote(self.python)} -m {install}"
            text += f" Install it in that interpreter with: {install}"
        tail = self.stderr_tail()
        remote_tb = str(error.get("traceback", ""))
        exc = errors.WorkerStartupError(
            PROVIDER, text, "\n".join(s for s in (tail, remote_tb) if s)
        )
        exc.install = install  # type: ignore[attr-defined]
        exc.remote_type = name  # type: ignore[attr-defined]
        return exc


def check_texts(texts: Sequence[object]) -> list[str]:
    """The texts as a list, refusing anything that is not ``str``."""
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise errors.EmbeddingInputError(
                f"texts[{i}] must be str, got {type(text).__name__} ({text!r:.60})"
            )
    return out  # type: ignore[return-value]  # every item was checked above


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether *proc* has exited, without reaping it.

    ``Popen.poll()`` answers "still running" whenever another thread holds its waitpid
    lock (the reader thread waits for a dying worker), so a corpse could pass for a live
    worker; ``waitid(WNOWAIT)`` asks the kernel directly and leaves the status in place.
    """
    if proc.returncode is not None:
        return True
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # not on macOS: fall back to poll()
        return proc.poll() is not None
    try:
        state = waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped, by us or by someone else
        return True
    return state is not None
