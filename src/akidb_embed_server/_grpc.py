"""The gRPC API of ``akidb-embed serve``: ``akidb.embed.v1.Embedder`` (``proto/embed.proto``),
the standard ``grpc.health.v1.Health`` service and server reflection.

grpcio's asyncio server runs in the event loop uvicorn runs, so both protocols share one
:class:`~._service.EmbeddingService`, one batcher and one metrics registry. This module
only translates: protobuf messages to :class:`~akidb_embed.EmbeddingRequest`, the
service's :class:`~._service.Failure` kinds to status codes, results to messages. The
service is looked up at each call (``GrpcServer.service``), never captured.

Lifecycle, driven by ``_cli``: :meth:`GrpcServer.start` binds the port at once (health
NOT_SERVING, calls UNAVAILABLE "loading"), :meth:`GrpcServer.attach` hands it the service
once the model is loaded (SERVING), :meth:`GrpcServer.begin_drain` on SIGTERM (NOT_SERVING
for good, new calls UNAVAILABLE, open streams end once their answers are sent), and
:meth:`GrpcServer.stop` waits for the calls in flight (``drain_timeout_s``) before the
service closes its batcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from akidb_embed import EmbeddingRequest

from ._logging import RequestRecord, log_access, request_scope, sane_request_id
from ._security import KeySet
from ._service import Embedded, EmbeddingService, Failure, FailureKind, failure_of
from ._settings import ServerSettings
from .proto import embed_pb2

__all__ = ["HEALTH_SERVICE", "SERVICE", "STATUS_OF", "GrpcServer"]

_log = logging.getLogger("akidb_embed.server")

SERVICE: str = embed_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

#: One status per kind of failure (the HTTP routes answer 400/413/404/429/503/504/499/500).
STATUS_OF: dict[FailureKind, grpc.StatusCode] = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "too_large": grpc.StatusCode.OUT_OF_RANGE,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "internal": grpc.StatusCode.INTERNAL,
}
# Logged as WARNING, like an HTTP 5xx.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
    }
)

#: Messages of one stream in the batcher at once. Past it the server stops reading the
#: stream, and HTTP/2 flow control holds the client back: memory stays bounded.
STREAM_WINDOW = 64
#: How long calls still running after the drain (health Watch streams) may take to end.
_STOP_GRACE_S = 1.0

_TRUNCATION = {
    embed_pb2.TRUNCATION_UNSPECIFIED: None,
    embed_pb2.TRUNCATION_TRUNCATE: "truncate",
    embed_pb2.TRUNCATION_ERROR: "error",
}
_LOADING = ("unavailable", "the model is loading; retry shortly", "loading")
_DRAINING = ("unavailable", "the server is shutting down", "unavailable")

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]


class _Refused(Exception):
    """A call (or stream message) answered with an error status."""

    def __init__(self, code: grpc.StatusCode, message: str, metadata: Metadata) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata


def _parse_embed_request(data: bytes) -> embed_pb2.EmbedRequest | Failure:
    # grpcio answers a message it cannot parse with INTERNAL (or UNKNOWN); a client's
    # malformed message (a string that is not UTF-8) is an INVALID_ARGUMENT.
    try:
        return embed_pb2.EmbedRequest.FromString(data)
    except DecodeError as exc:
        message = f"the request message is not a valid akidb.embed.v1.EmbedRequest: {exc}"
        return Failure("invalid", message, "invalid_message")


def _bind_error(host: str, port: int) -> str | None:
    """Why the OS refuses *host*:*port* (grpcio only says it failed), or None."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return sane_request_id(value if isinstance(value, str) else None)
    return sane_request_id(None)


class _Health(health.aio.HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer, with the status read fresh on every Check
    (Watch gets it when it changes: at load, drain, and on the periodic refresh)."""

    def __init__(self, status: Callable[[], int]) -> None:
        super().__init__()
        self._status = status
        self._last: int | None = None

    async def refresh(self) -> None:
        status = self._status()
        if status != self._last:
            self._last = status
            for name in ("", SERVICE):
                await self.set(name, status)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)


class _KeyCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """``authorization: Bearer <key>`` metadata, checked against the HTTP server's keys
    (read from ``front.settings`` at each call: a reload may change them)."""

    def __init__(self, front: GrpcServer) -> None:
        self._front = front
        self._seen: ServerSettings | None = None
        self._keys: KeySet | None = None
        self._public: frozenset[str] = frozenset()

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        settings = self._front.settings
        if settings is not self._seen:
            self._keys = KeySet(settings.api_keys) if settings.api_keys else None
            self._public = frozenset({f"/{HEALTH_SERVICE}", *settings.public_paths})
            self._seen = settings
        method: str = details.method
        if self._keys is None or method in self._public:
            return await continuation(details)
        if method.rpartition("/")[0] in self._public:
            return await continuation(details)
        token = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                raw = value.encode("utf-8") if isinstance(value, str) else value
                scheme, _, rest = raw.strip().partition(b" ")
                if scheme.lower() == b"bearer" and rest.strip():
                    token = rest.strip()
                break
        if token is not None and self._keys.accepts(token):
            return await continuation(details)
        # Never echoed: the key sent may be a near-miss of a real one.
        if token is None:
            message = "missing API key: send it as 'authorization: Bearer <key>' metadata"
        else:
            message = "invalid API key"
        self._front.observe_refusal(method, details.invocation_metadata)
        return _refusing(await continuation(details), message)


def _refusing(handler: Any, message: str) -> Any:
    """A handler of the same kind as *handler* that answers UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:  # an unknown method: without a key, nothing about them shows
        return grpc.unary_unary_rpc_method_handler(refuse)
    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class GrpcServer:
    """The gRPC server of one ``akidb-embed serve`` process.

    Parameters
    ----------
    settings:
        The server settings: host, ``grpc_port``, API keys and public paths, the
        largest request message (``max_body_bytes``), ``drain_timeout_s``.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        #: The service, once the model is loaded (None while loading).
        self.service: EmbeddingService | None = None
        #: The port bound, once started.
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = _Health(self._serving_status)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_started: float | None = None
        self._draining = asyncio.Event()
        self._active = 0  # Embedder calls running
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port if self.port is not None else self.settings.grpc_port}"

    async def start(self) -> int:
        """Bind the port and serve (health NOT_SERVING until :meth:`attach`); the port.

        Raises :class:`OSError` when the port cannot be bound.
        """
        s = self.settings
        self._loop = asyncio.get_running_loop()
        options = [
            # The HTTP routes' body limit, for the same requests as protobuf messages;
            # grpcio answers a larger one RESOURCE_EXHAUSTED before reading it whole.
            ("grpc.max_receive_message_length", s.max_body_bytes),
            # Answers are bounded by max_client_batch_size x the model's dimension; the
            # client's own receive limit applies (grpcio's default is 4 MiB).
            ("grpc.max_send_message_length", -1),
            # grpcio sets SO_REUSEPORT by default: a second server would share the port
            # silently instead of failing to bind it.
            ("grpc.so_reuseport", 0),
        ]
        interceptors = [_KeyCheck(self)]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        server.add_generic_rpc_handlers((self._handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
        address = f"{f'[{s.host}]' if ':' in s.host else s.host}:{s.grpc_port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen for gRPC on {address}: {_bind_error(s.host, s.grpc_port) or exc}"
                " (choose another grpc_port / --grpc-port, or turn gRPC off with --no-grpc)"
            ) from exc
        await self._health.refresh()
        await server.start()
        self._server = server
        self._spawn(self._refresh_health())
        return self.port

    def attach(self, service: EmbeddingService) -> None:
        """Serve *service* (the model is loaded): health turns SERVING. Call it on the loop."""
        self.service = service
        self._spawn(self._health.refresh())

    def begin_drain(self) -> None:
        """Health NOT_SERVING for good; new calls UNAVAILABLE; idle streams end. Call it
        on the loop (``loop.call_soon_threadsafe`` from a signal handler)."""
        if self._drain_started is not None:
            return
        self._drain_started = time.monotonic()
        self._draining.set()
        self._spawn(self._health.enter_graceful_shutdown())

    def begin_drain_threadsafe(self) -> None:
        """:meth:`begin_drain` from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.begin_drain)

    async def stop(self) -> None:
        """Drain (waiting up to ``drain_timeout_s`` from :meth:`begin_drain` for the calls
        in flight), then stop the server. Safe to call twice."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopped)

    async def _stop(self) -> None:
        self.begin_drain()
        assert self._drain_started is not None
        left = self._drain_started + self.settings.drain_timeout_s - time.monotonic()
        try:
            await asyncio.wait_for(self._idle.wait(), max(left, 0.0))
        except asyncio.TimeoutError:
            _log.warning("gRPC drain: %d calls still running after drain_timeout_s", self._active)
        if self._server is not None:
            await self._server.stop(_STOP_GRACE_S)
        for task in list(self._background):
            task.cancel()

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _serving_status(self) -> int:
        service = self.service
        if self._draining.is_set() or service is None or service.readiness() != "ready":
            return health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVING

    async def _refresh_health(self) -> None:
        # Check reads the status fresh; this keeps Watch streams current when the
        # provider goes down and recovers (readiness() then starts its recovery probe).
        while True:
            await asyncio.sleep(1.0)
            await self._health.refresh()

    # -- calls -------------------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler:
        serialize = embed_pb2.EmbedResponse.SerializeToString
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Embed": grpc.unary_unary_rpc_method_handler(
                    self._embed,
                    request_deserializer=_parse_embed_request,
                    response_serializer=serialize,
                ),
                "EmbedStream": grpc.stream_stream_rpc_method_handler(
                    self._embed_stream,
                    request_deserializer=_parse_embed_request,
                    response_serializer=serialize,
                ),
                "Info": grpc.unary_unary_rpc_method_handler(
                    self._info,
                    request_deserializer=embed_pb2.InfoRequest.FromString,
                    response_serializer=embed_pb2.InfoResponse.SerializeToString,
                ),
            },
        )

    def _service(self) -> EmbeddingService:
        service = self.service
        if self._draining.is_set():
            raise Failure(*_DRAINING)  # type: ignore[arg-type]
        if service is None:
            raise Failure(*_LOADING)  # type: ignore[arg-type]
        return service

    def _enter(self) -> None:
        self._active += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def _observed(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        request_id: str,
        work: Callable[[], Awaitable[T]],
    ) -> T:
        """Run *work* as one request of the access log and the metrics; its failure
        becomes :class:`_Refused` with the status of its kind."""
        route = f"/{SERVICE}/{method}"
        record = RequestRecord(request_id, "GRPC", route, context.peer())
        service = self.service
        metrics = None if service is None else service.metrics
        code = grpc.StatusCode.OK
        failure: Failure | None = None
        start = time.perf_counter()
        if metrics is not None:
            metrics.in_flight.inc()
        try:
            with request_scope(record):
                return await work()
        except asyncio.CancelledError:
            # The client cancelled, or its deadline passed: the batcher dropped the texts.
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                code, record.error = grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"
            else:
                code, record.error = grpc.StatusCode.CANCELLED, "client_closed"
            raise
        except Exception as exc:  # mapped to a status; never a traceback
            failure = failure_of(exc)
            code, record.error = STATUS_OF[failure.kind], failure.code
        finally:
            seconds = time.perf_counter() - start
            if metrics is not None:
                metrics.in_flight.dec()
                metrics.observe_request(record, route, code.name, seconds)
            log_access(record, route, code.name, seconds, server_error=code in _SERVER_ERRORS)
        metadata: Metadata = (("x-request-id", request_id),)
        if failure.retry_after is not None:
            # Seconds, as HTTP's Retry-After; and gRPC's own server pushback (gRFC A6),
            # which grpcio clients with a retry policy honour.
            retry = failure.retry_after
            metadata += (
                ("retry-after", str(max(1, math.ceil(retry)))),
                ("grpc-retry-pushback-ms", str(max(1, int(retry * 1000)))),
            )
        raise _Refused(code, failure.message, metadata)

    def observe_refusal(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> None:
        """Log and count a call refused before it ran (a missing or wrong key)."""
        request_id = sane_request_id(None)
        for key, value in metadata or ():
            if key == "x-request-id" and isinstance(value, str):
                request_id = sane_request_id(value)
        record = RequestRecord(request_id, "GRPC", method, None, error="invalid_api_key")
        status = grpc.StatusCode.UNAUTHENTICATED.name
        service = self.service
        if service is not None and service.metrics is not None:
            service.metrics.observe_request(record, method, status, 0.0)
        log_access(record, method, status, 0.0, server_error=False)

    async def _embed(
        self, message: embed_pb2.EmbedRequest | Failure, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedResponse:
        request_id = _request_id(context)
        self._enter()
        try:
            response = await self._observed(
                context, "Embed", request_id, lambda: self._embed_one(message, context)
            )
        except _Refused as refused:
            await context.abort(refused.code, refused.message, refused.metadata)
        finally:
            self._leave()
        context.set_trailing_metadata((("x-request-id", request_id),))
        return response

    async def _embed_one(
        self, message: embed_pb2.EmbedRequest | Failure, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedResponse:
        if isinstance(message, Failure):
            raise message
        service = self._service()
        model = message.model if message.HasField("model") else None
        service.check_model(model)
        if message.truncation not in _TRUNCATION:
            names = ", ".join(embed_pb2.Truncation.Name(v) for v in _TRUNCATION)
            raise Failure(
                "invalid",
                f"truncation {message.truncation} is not one of {names}",
                "invalid_input",
                "truncation",
            )
        normalize = message.normalize if message.HasField("normalize") else None
        dimensions = message.dimensions if message.HasField("dimensions") else None
        service.check_dimensions(dimensions)
        request = EmbeddingRequest(
            list(message.inputs),
            normalize=normalize,
            prompt_name=message.prompt_name if message.HasField("prompt_name") else None,
            truncation=_TRUNCATION[message.truncation],
        )
        embedded = await service.embed(
            request, timeout=context.time_remaining(), model=model, dimensions=dimensions
        )
        renormalize = embedded.normalized if normalize is None else normalize
        return _embed_response(service, embedded, dimensions, renormalize)

    async def _embed_stream(
        self,
        messages: AsyncIterator[embed_pb2.EmbedRequest | Failure],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[embed_pb2.EmbedResponse]:
        """Answer each message in order, up to :data:`STREAM_WINDOW` of them in the
        batcher at once; an error ends the stream after the answers before it."""
        request_id = _request_id(context)
        context.set_trailing_metadata((("x-request-id", request_id),))
        window = asyncio.Semaphore(STREAM_WINDOW)
        pending: deque[asyncio.Future[embed_pb2.EmbedResponse]] = deque()
        more = asyncio.Event()
        read_all = False

        async def one(message: embed_pb2.EmbedRequest | Failure, index: int) -> Any:
            return await self._observed(
                context,
                "EmbedStream",
                f"{request_id}.{index}",
                lambda: self._embed_one(message, context),
            )

        async def read() -> None:
            nonlocal read_all
            try:
                index = 0
                async for message in messages:
                    await window.acquire()
                    task = asyncio.ensure_future(one(message, index))
                    # A failure after an earlier one ended the stream is never awaited.
                    task.add_done_callback(_retrieve)
                    pending.append(task)
                    more.set()
                    index += 1
            finally:
                read_all = True
                more.set()

        self._enter()
        reader = asyncio.ensure_future(read())
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            while True:
                while not pending:
                    if read_all:
                        if not reader.cancelled() and reader.exception() is not None:
                            raise reader.exception()  # type: ignore[misc]
                        return
                    if self._draining.is_set():  # idle while draining: end it now
                        code, message = grpc.StatusCode.UNAVAILABLE, _DRAINING[1]
                        await context.abort(code, message, (("x-request-id", request_id),))
                    more.clear()
                    waiter = asyncio.ensure_future(more.wait())
                    await asyncio.wait([waiter, draining], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                task = pending.popleft()
                try:
                    response = await task
                except _Refused as refused:
                    await context.abort(refused.code, refused.message, refused.metadata)
                finally:
                    window.release()
                yield response
        finally:
            reader.cancel()
            draining.cancel()
            for task in pending:  # their texts are dropped, never computed
                task.cancel()
            self._leave()

    async def _info(
        self, message: embed_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.InfoResponse:
        request_id = _request_id(context)
        self._enter()
        try:
            response = await self._observed(context, "Info", request_id, lambda: self._info_one())
        except _Refused as refused:
            await context.abort(refused.code, refused.message, refused.metadata)
        finally:
            self._leave()
        context.set_trailing_metadata((("x-request-id", request_id),))
        return response

    async def _info_one(self) -> embed_pb2.InfoResponse:
        service = self._service()
        info = service.info()
        model = info["model"]
        limits = info["limits"]
        return embed_pb2.InfoResponse(
            model_id=info["model_id"],
            provider=info["provider"],
            model=model["model"],
            dimension=service.dimension,
            max_tokens=model["max_tokens"],
            pooling=model["pooling"],
            normalized=model["normalized"],
            revision=model["revision"],
            dtype=model["dtype"],
            prompts=model["prompts"],
            default_prompt_name=model["default_prompt_name"],
            fingerprint_json=json.dumps(info["fingerprint"], sort_keys=True),
            limits=embed_pb2.Limits(
                max_batch_tokens=limits["max_batch_tokens"],
                max_batch_size=limits["max_batch_size"],
                max_wait_ms=limits["max_wait_ms"],
                max_queue_texts=limits["max_queue_texts"],
                max_concurrency=limits["max_concurrency"],
                max_client_batch_size=limits["max_client_batch_size"],
                max_input_chars=limits["max_input_chars"],
                max_message_bytes=limits["max_body_bytes"],
                request_timeout_s=limits["request_timeout_s"],
                drain_timeout_s=limits["drain_timeout_s"],
                max_input_tokens=limits["max_input_tokens"],
            ),
            version=info["version"],
            core_version=info["core_version"],
        )


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _embed_response(
    service: EmbeddingService, embedded: Embedded, dimensions: int | None, renormalize: bool
) -> embed_pb2.EmbedResponse:
    response = embedded.response
    vectors = service.cut(response.embeddings, dimensions, renormalize)
    out = embed_pb2.EmbedResponse(
        model=embedded.model,
        dimension=vectors.shape[1],
        usage=embed_pb2.Usage(
            texts=int(response.usage.get("texts", embedded.texts)),
            prompt_tokens=embedded.tokens,
            truncated=embedded.truncated,
        ),
        timing=embed_pb2.Timing(
            queue_ms=embedded.queue_s * 1000,
            inference_ms=embedded.inference_s * 1000,
            total_ms=embedded.total_s * 1000,
        ),
    )
    rows = out.embeddings
    for row in vectors.tolist():
        rows.add(values=row)
    return out
