"""The server's logs: ``configure_logging`` and one access line per request.

``configure_logging(level, "json")`` makes every record (ours, uvicorn's, Python's
warnings) one JSON object per line, through python-json-logger; ``"text"`` gives one
readable line. :class:`ObservabilityMiddleware` is a pure ASGI middleware (Starlette's
``BaseHTTPMiddleware`` runs each request through an extra task and memory stream) that
gives each request an id, writes its access line on ``akidb_embed.server.access`` and
feeds the Prometheus metrics. Route handlers add what only they know (texts, tokens,
queue and inference time, the error code) to the :class:`RequestRecord` of the request
being served, found with :func:`current_request`. Texts and API keys are never logged.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ._metrics import ServerMetrics

__all__ = [
    "ACCESS_FIELDS",
    "ObservabilityMiddleware",
    "RequestRecord",
    "configure_logging",
    "current_request",
    "log_access",
    "request_scope",
]

ACCESS_LOGGER = "akidb_embed.server.access"
_access = logging.getLogger(ACCESS_LOGGER)

#: The keys of an access line, in the order the text format writes them.
ACCESS_FIELDS = (
    "request_id",
    "method",
    "route",
    "path",
    "status",
    "texts",
    "tokens",
    "queue_ms",
    "inference_ms",
    "total_ms",
    "error",
    "client",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# A client's id is echoed into headers and logs: printable, no spaces, bounded.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_MAX_PATH = 256
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

_handler: logging.Handler | None = None


def configure_logging(
    level: str | int = "INFO", fmt: str = "text", *, access_log: bool = True
) -> None:
    """Send every log record to stderr, as text lines or (``fmt="json"``) JSON lines.

    With ``access_log=False`` the access logger keeps only WARNING and above: the lines of
    requests answered with a 5xx.

    Replaces the handler a previous call installed (so it can be called again) and
    routes uvicorn's loggers and :mod:`warnings` through the same handler, so with
    ``json`` every line the server writes is one JSON object. Give uvicorn
    ``log_config=None`` so it does not install handlers of its own.
    """
    global _handler
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    formatter: logging.Formatter
    if fmt == "json":
        from pythonjsonlogger.core import RESERVED_ATTRS
        from pythonjsonlogger.orjson import OrjsonFormatter

        formatter = OrjsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601 in UTC, with microseconds
            # uvicorn adds a copy of some messages with ANSI colour codes.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    _access.setLevel(logging.NOTSET if access_log else logging.WARNING)
    _handler = handler
    for name in _UVICORN_LOGGERS:  # one format for all: uvicorn's own handlers go
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)  # the root's level applies
        logger.propagate = True
    logging.captureWarnings(True)


@dataclass
class RequestRecord:
    """What the access line and the metrics say about one request.

    The middleware fills the id, method, path, status and total time; an embed route
    fills ``texts``, ``tokens``, ``truncated``, ``queue_s`` and ``inference_s`` (the
    figures of its timing headers), and an error response its ``error`` code.
    """

    request_id: str
    method: str
    path: str
    client: str | None
    texts: int | None = None
    tokens: int | None = None
    truncated: int | None = None
    queue_s: float | None = None
    inference_s: float | None = None
    error: str | None = None
    embedded: bool = False  # the embedding succeeded (usage and timing are real)


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "akidb_embed_request", default=None
)


def current_request() -> RequestRecord | None:
    """The record of the request this task serves; ``None`` outside a request."""
    return _current.get()


@contextlib.contextmanager
def request_scope(record: RequestRecord) -> Iterator[RequestRecord]:
    """Make *record* what :func:`current_request` returns inside the block (for
    protocols served outside the ASGI middleware: gRPC)."""
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a new one."""
    for key, value in headers:
        if key == b"x-request-id":
            return sane_request_id(value.decode("latin-1"))
    return uuid.uuid4().hex


def sane_request_id(candidate: str | None) -> str:
    """*candidate* when it is a sane request id (printable, no spaces, at most 128
    characters), else a new random one."""
    if candidate is not None and _REQUEST_ID.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class ObservabilityMiddleware:
    """Request id, access line and request metrics for every HTTP request.

    Add it last (``app.add_middleware`` puts the last one outermost), so it also sees
    the requests other middleware refuses.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "backslashreplace")
        client = scope.get("client")
        record = RequestRecord(
            request_id=request_id_from(scope["headers"]),
            method=scope["method"],
            # Percent-encoded as sent: no spaces or control characters reach a log line.
            path=raw_path.decode("latin-1")[:_MAX_PATH],
            client=f"{client[0]}:{client[1]}" if client else None,
        )
        header = (b"x-request-id", record.request_id.encode("latin-1"))
        status = 500  # what the client gets when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = _current.set(record)
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
            seconds = time.perf_counter() - start
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None)
            if status >= 400 and record.error is None:
                record.error = f"http_{status}"  # answered by Starlette (404, 405) or a crash
            if metrics is not None:
                metrics.in_flight.dec()
                metrics.observe_request(record, route or "unmatched", status, seconds)
            _log_access(record, route or "unmatched", status, seconds)


def log_access(
    record: RequestRecord, route: str, status: int | str, seconds: float, *, server_error: bool
) -> None:
    """Write the access line of a request that did not pass the HTTP middleware (gRPC:
    *status* is the status code's name, *server_error* makes it a WARNING)."""
    _log_access(record, route, status, seconds, server_error=server_error)


def _log_access(
    record: RequestRecord,
    route: str,
    status: int | str,
    seconds: float,
    *,
    server_error: bool | None = None,
) -> None:
    if server_error is None:
        server_error = isinstance(status, int) and status >= 500
    level = logging.WARNING if server_error else logging.INFO
    if not _access.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "method": record.method,
        "route": route,
        "path": record.path,
        "status": status,
        "texts": record.texts,
        "tokens": record.tokens,
        "queue_ms": _ms(record.queue_s),
        "inference_ms": _ms(record.inference_s),
        "total_ms": _ms(seconds),
        "error": record.error,
        "client": record.client,
    }
    # The message is the readable text line; with JSON logs the same fields are keys.
    message = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    _access.log(level, message, extra=fields)
