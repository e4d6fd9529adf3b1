"""The HTTP routes of ``akidb-embed serve``: one FastAPI app in front of one :class:`Batcher`.

Three protocols share the batcher: akidb's own (``POST /api/v1/embed``), OpenAI's
(``POST /v1/embeddings``) and text-embeddings-inference's (``POST /embed``). Each maps
the core's typed errors to one status and answers in its own error shape, FastAPI's
validation errors included; nothing answers with a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import fastapi.responses
import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from akidb_embed import BatchEmbeddingResponse, EmbeddingManager, EmbeddingRequest
from akidb_embed import __version__ as core_version
from akidb_embed.errors import (
    AkidbEmbedError,
    EmbeddingInputError,
    ModelMismatchError,
    ProviderBusyError,
    ProviderClosedError,
    ProviderError,
    TruncationError,
)

from ._batcher import Batcher, RequestTiming
from ._limits import RequestLimitError, check_inputs
from ._logging import ObservabilityMiddleware, current_request
from ._metrics import ServerMetrics
from ._schema import (
    EMBED_ERRORS,
    AkidbEmbedResponse,
    InfoResponse,
    ModelList,
    NestedError,
    OpenAIEmbeddingsResponse,
    Status,
    TEIEmbedResponse,
    TEIError,
    responses,
)
from ._security import install_security
from ._settings import ServerSettings
from ._version import __version__
from .errors import BatcherClosedError, QueueFullError, RequestTimeoutError

__all__ = ["JSONResponse", "ServerState", "create_app"]

_log = logging.getLogger("akidb_embed.server")

PROBE_TEXT = "readiness probe"

Style = Literal["akidb", "openai", "tei"]


class JSONResponse(fastapi.responses.JSONResponse):
    """orjson-encoded JSON; numpy arrays are written directly (float32 stays float32).

    A JSONResponse subclass, so FastAPI documents the routes' JSON response models (for
    any other response class it declares a plain string).
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# --- request bodies -----------------------------------------------------------------------


class _Body(BaseModel):
    model_config = {"extra": "ignore"}


class AkidbEmbedBody(_Body):
    """``POST /api/v1/embed``."""

    inputs: list[StrictStr]
    model: StrictStr | None = None
    normalize: StrictBool | None = None
    truncation: Literal["truncate", "error"] | None = None
    prompt_name: StrictStr | None = None


class OpenAIEmbeddingsBody(_Body):
    """``POST /v1/embeddings``."""

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


class TEIEmbedBody(_Body):
    """``POST /embed`` (text-embeddings-inference)."""

    inputs: StrictStr | list[StrictStr]
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    truncation_direction: Literal["right", "Right", "left", "Left"] = "right"
    prompt_name: StrictStr | None = None
    dimensions: StrictInt | None = None


# --- errors -------------------------------------------------------------------------------


@dataclass
class _Failure(Exception):
    status: int
    message: str
    code: str
    param: str | None = None
    headers: dict[str, str] | None = None


_OPENAI_TYPES = {401: "authentication_error", 429: "rate_limit_error", 404: "invalid_request_error"}
_TEI_TYPES = {
    401: "Unauthorized",
    429: "Overloaded",
    503: "Unhealthy",
    504: "Backend",
    500: "Backend",
}


def _failure(exc: BaseException) -> _Failure:
    """The status and message of a core or batcher error."""
    if isinstance(exc, _Failure):
        return exc
    if isinstance(exc, TruncationError):
        return _Failure(413, str(exc), "input_too_long", "input")
    if isinstance(exc, RequestLimitError):
        return _Failure(exc.status, str(exc), exc.code, exc.param)
    if isinstance(exc, ModelMismatchError):
        return _Failure(404, str(exc), "model_not_found", "model")
    if isinstance(exc, EmbeddingInputError):  # InvalidRequestError included
        return _Failure(400, str(exc), "invalid_input", "input")
    if isinstance(exc, QueueFullError):
        retry = str(max(1, math.ceil(exc.retry_after)))
        return _Failure(429, str(exc), "queue_full", headers={"Retry-After": retry})
    if isinstance(exc, RequestTimeoutError):
        return _Failure(504, str(exc), "timeout")
    if isinstance(exc, (BatcherClosedError, ProviderClosedError, ProviderBusyError, ProviderError)):
        return _Failure(503, str(exc), "unavailable")
    if isinstance(exc, AkidbEmbedError):
        return _Failure(400, str(exc), "invalid_request")
    _log.error("unexpected error serving a request", exc_info=exc)
    return _Failure(500, "internal server error", "internal_error")


def _error_response(style: Style, failure: _Failure) -> JSONResponse:
    status = failure.status
    record = current_request()
    if record is not None:  # the access log and errors_total name the code
        record.error = failure.code
    body: Any
    if style == "tei":
        kind = _TEI_TYPES.get(status, "Validation")
        body = {"error": failure.message, "error_type": kind}
    else:
        default = "invalid_request_error" if status < 500 else "server_error"
        kind = _OPENAI_TYPES.get(status, default)
        body = {
            "error": {
                "message": failure.message,
                "type": kind,
                "param": failure.param,
                "code": failure.code,
            }
        }
    return JSONResponse(body, status_code=status, headers=failure.headers)


_STYLES: dict[str, Style] = {"/api/v1/embed": "akidb", "/v1/embeddings": "openai", "/embed": "tei"}


def _style_of(path: str) -> Style | None:
    return _STYLES.get(path)


def _path_style(path: str) -> Style:
    """The error shape at *path*: its route's, OpenAI's under ``/v1/``, else akidb's."""
    return _style_of(path) or ("openai" if path.startswith("/v1/") else "akidb")


def _render_error(
    path: str,
    status: int,
    message: str,
    code: str,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error response in the shape of the route at *path* (for the middleware)."""
    failure = _Failure(status, message, code, param, None if headers is None else dict(headers))
    return _error_response(_path_style(path), failure)


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, parameters aside."""
    if not content_type:
        return False
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


_HTTP_CODES = {
    400: "invalid_body",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def _http_error_message(exc: StarletteHTTPException) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):  # FastAPI's "error parsing the body"
        return (
            f"the request body is not valid UTF-8: byte 0x{cause.object[cause.start]:02x} "
            f"at position {cause.start}"
        )
    return str(exc.detail)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        if param is None and loc:
            param = loc[0]
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(dict.fromkeys(parts)) or "invalid request body", param


# --- the app ------------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the routes share: the manager, its batcher, the settings, readiness."""

    manager: EmbeddingManager
    settings: ServerSettings
    batcher: Batcher | None = None
    ready: bool = False
    draining: bool = False

    @property
    def served_model(self) -> str:
        return self.settings.served_model_name or self.manager.info.model

    @property
    def request_timeout_s(self) -> float | None:
        return self.settings.request_timeout_s

    def limits(self) -> dict[str, Any]:
        s = self.settings
        options = s.batcher_options()
        if options.get("max_batch_size") is None:
            options["max_batch_size"] = self.manager.config.batch_size
        return {
            **options,
            "max_concurrency": self.manager.capabilities.max_concurrency,
            "max_client_batch_size": s.max_client_batch_size,
            "max_input_chars": s.max_input_chars,
            "max_body_bytes": s.max_body_bytes,
            "request_timeout_s": s.request_timeout_s,
            "drain_timeout_s": s.drain_timeout_s,
            "max_input_tokens": self.manager.info.max_tokens,
        }

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in (self.served_model, self.manager.info.model):
            raise _Failure(
                404,
                f"model {model!r} is not served here; this server serves {self.served_model!r}",
                "model_not_found",
                "model",
            )

    async def embed(
        self, request: EmbeddingRequest, http: Request | None = None
    ) -> tuple[BatchEmbeddingResponse, dict[str, str]]:
        """Embed *request* through the batcher; with *http*, a client that closes its
        connection first has its queued texts dropped (Starlette would let the handler
        run on, and the texts be computed for nobody)."""
        inputs = request.texts if request.token_ids is None else request.token_ids
        if not inputs:
            message = "the input is empty: give at least one text"
            raise _Failure(400, message, "empty_input", "input")
        limits = self.settings
        check_inputs(
            inputs,
            max_client_batch_size=limits.max_client_batch_size,
            max_input_chars=limits.max_input_chars,
        )
        record = current_request()
        if record is not None:
            record.texts = len(inputs)
        if self.draining or self.batcher is None:
            raise _Failure(503, "the server is shutting down", "unavailable")
        timing = RequestTiming()
        start = time.perf_counter()
        work = asyncio.ensure_future(
            self.batcher.embed(request, timeout=self.request_timeout_s, timing=timing)
        )
        gone = None if http is None else asyncio.ensure_future(_client_gone(http))
        try:
            done, _ = await asyncio.wait(
                [work] if gone is None else [work, gone], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if gone is not None:
                gone.cancel()
            if not work.done():  # client gone, or this task cancelled: the batcher drops it
                work.cancel()
        if work not in done:
            with contextlib.suppress(asyncio.CancelledError):
                await work
            message = "the client closed the connection before the answer"
            raise _Failure(499, message, "client_closed")
        response = work.result()
        total = time.perf_counter() - start
        headers = {
            "x-queue-time": f"{timing.queue * 1000:.3f}",
            "x-inference-time": f"{timing.inference * 1000:.3f}",
            "x-total-time": f"{total * 1000:.3f}",
            "x-total-tokens": str(int(response.usage.get("prompt_tokens", 0))),
            "x-texts": str(len(inputs)),
        }
        if record is not None:  # the same figures feed the access log and the metrics
            record.tokens = int(response.usage.get("prompt_tokens", 0))
            record.truncated = int(response.usage.get("truncated", 0))
            record.queue_s, record.inference_s = timing.queue, timing.inference
            record.embedded = True
        return response, headers


async def _client_gone(http: Request) -> None:
    """Return once the client has closed its connection. The body has been read by
    then, so the server's next message is ``http.disconnect``."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


def _cut(vectors: np.ndarray, dimensions: int | None, renormalize: bool, full: int) -> np.ndarray:
    """Keep the first *dimensions* components (Matryoshka), re-normalised if asked."""
    if dimensions is None or dimensions == full:
        return vectors
    out: np.ndarray = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)
    if renormalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out


def _check_dimensions(dimensions: int | None, full: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= full:
        raise _Failure(
            400,
            f"dimensions must be between 1 and the model's dimension {full}, got {dimensions}",
            "invalid_dimensions",
            "dimensions",
        )


def create_app(
    manager: EmbeddingManager,
    settings: ServerSettings | None = None,
    **changes: Any,
) -> FastAPI:
    """The FastAPI app serving *manager*.

    Parameters
    ----------
    manager:
        The open manager to serve; the app does not close it.
    settings:
        The server's :class:`ServerSettings` (defaults when omitted).
    **changes:
        Settings to change from *settings*, by name (``max_wait_ms=0.5``).

    The :class:`Batcher` starts with the app (lifespan startup, after which a probe text
    is embedded and ``/ready`` answers 200) and drains on shutdown for up to
    ``drain_timeout_s`` seconds.
    """
    settings = (settings or ServerSettings()).replace(**changes)
    state = ServerState(manager=manager, settings=settings)
    request_timeout_s = settings.request_timeout_s
    drain_timeout_s = settings.drain_timeout_s
    # Validate the options now, not at the first request.
    Batcher(manager, **settings.batcher_options())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher = Batcher(manager, **settings.batcher_options())
        try:
            await state.batcher.embed(EmbeddingRequest([PROBE_TEXT]), timeout=request_timeout_s)
            if metrics is not None:  # after the probe: the metrics count clients' work
                metrics.attach(state.batcher)
            state.ready = True
            yield
        finally:
            state.ready = False
            state.draining = True
            await state.batcher.close(drain_timeout=drain_timeout_s)
            if metrics is not None:
                metrics.detach()

    app = FastAPI(
        title="akidb-embed",
        version=__version__,
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.server = state
    # One registry per app: several apps in one process never share counters.
    metrics = ServerMetrics(manager, state.served_model) if settings.metrics_enabled else None
    app.state.metrics = metrics

    install_security(app, settings, _render_error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        style = _style_of(request.url.path) or "akidb"
        content_type = request.headers.get("content-type")
        if not _is_json(content_type):
            # FastAPI parses JSON bodies only; anything else fails the schema obscurely.
            message = (
                "send the request body as JSON, with 'Content-Type: application/json' "
                f"(got {content_type or 'no content type'})"
            )
            return _error_response(style, _Failure(415, message, "unsupported_media_type"))
        invalid = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if invalid:  # not JSON at all: a 400, as TEI answers; well-formed but wrong is a 422
            where = invalid[0].get("loc", ("body", "?"))[-1]
            reason = (invalid[0].get("ctx") or {}).get("error", "invalid JSON")
            message = f"the request body is not valid JSON: {reason} (at character {where})"
            return _error_response(style, _Failure(400, message, "invalid_json"))
        message, param = _validation_message(exc)
        return _error_response(style, _Failure(422, message, "validation_error", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown paths, wrong methods and unreadable bodies, in the route's shape too.
        status = exc.status_code
        code = _HTTP_CODES.get(status, f"http_{status}")
        headers = None if exc.headers is None else dict(exc.headers)
        failure = _Failure(status, _http_error_message(exc), code, headers=headers)
        return _error_response(_path_style(request.url.path), failure)

    def guarded(
        style: Style,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Every exception of the route becomes a JSON error in the route's shape."""

        def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(handler)
            async def run(*args: Any, **kwargs: Any) -> Response:
                try:
                    result: Response = await handler(*args, **kwargs)
                except Exception as exc:  # mapped to a status; never a traceback
                    return _error_response(style, _failure(exc))
                return result

            return run

        return wrap

    @app.post(
        "/api/v1/embed",
        summary="Embed texts (akidb)",
        responses=responses(NestedError, *EMBED_ERRORS, ok=AkidbEmbedResponse),
    )
    @guarded("akidb")
    async def akidb_embed(body: AkidbEmbedBody, http: Request) -> Response:
        state.check_model(body.model)
        request = EmbeddingRequest(
            body.inputs,
            normalize=body.normalize,
            prompt_name=body.prompt_name,
            truncation=body.truncation,
        )
        response, headers = await state.embed(request, http)
        content = {
            "embeddings": response.embeddings,
            "model": state.served_model,
            "dimension": response.dimension,
            "usage": {
                "texts": int(response.usage.get("texts", len(body.inputs))),
                "prompt_tokens": int(response.usage.get("prompt_tokens", 0)),
                "truncated": int(response.usage.get("truncated", 0)),
            },
        }
        return JSONResponse(content, headers=headers)

    @app.post(
        "/v1/embeddings",
        summary="Create embeddings (OpenAI-compatible)",
        responses=responses(NestedError, *EMBED_ERRORS, ok=OpenAIEmbeddingsResponse),
    )
    @guarded("openai")
    async def openai_embeddings(body: OpenAIEmbeddingsBody, http: Request) -> Response:
        state.check_model(body.model)
        request = _openai_request(body.input, manager)
        full = manager.dimension
        _check_dimensions(body.dimensions, full)
        response, headers = await state.embed(request, http)
        vectors = _cut(response.embeddings, body.dimensions, manager.config.normalize, full)
        if body.encoding_format == "base64":
            rows: Sequence[Any] = [
                base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors
            ]
        else:
            rows = list(vectors)
        tokens = int(response.usage.get("prompt_tokens", 0))
        content = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
            ],
            "model": state.served_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return JSONResponse(content, headers=headers)

    @app.post(
        "/embed",
        summary="Embed texts (text-embeddings-inference-compatible)",
        responses=responses(TEIError, *EMBED_ERRORS, ok=TEIEmbedResponse),
    )
    @guarded("tei")
    async def tei_embed(body: TEIEmbedBody, http: Request) -> Response:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if body.truncation_direction.lower() == "left":
            raise _Failure(
                400, "truncation_direction 'left' is not supported", "invalid_input", "input"
            )
        full = manager.dimension
        _check_dimensions(body.dimensions, full)
        truncation = None if body.truncate is None else ("truncate" if body.truncate else "error")
        request = EmbeddingRequest(
            texts, normalize=body.normalize, prompt_name=body.prompt_name, truncation=truncation
        )
        response, headers = await state.embed(request, http)
        vectors = _cut(response.embeddings, body.dimensions, body.normalize, full)
        return JSONResponse(vectors, headers=headers)

    @app.get(
        "/v1/models",
        summary="The served model (OpenAI-compatible)",
        responses=responses(NestedError, 401, ok=ModelList),
    )
    async def models() -> Response:
        entry = {"id": state.served_model, "object": "model", "created": 0}
        entry["owned_by"] = "akidb-embed"
        return JSONResponse({"object": "list", "data": [entry]})

    @app.get(
        "/info",
        summary="Model, fingerprint, limits and versions",
        responses=responses(NestedError, 401, ok=InfoResponse),
    )
    async def info() -> Response:
        model_info = manager.info
        return JSONResponse(
            {
                "model_id": state.served_model,
                "provider": model_info.provider,
                "model": model_info.to_dict(),
                "fingerprint": model_info.fingerprint(),
                "limits": state.limits(),
                # Counters since start (batches, batched/dropped texts, queue depth).
                "batcher": None if state.batcher is None else asdict(state.batcher.stats()),
                "version": __version__,
                "core_version": core_version,
            }
        )

    @app.get("/health", summary="Liveness", responses=responses(NestedError, 401, ok=Status))
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    recovery: list[asyncio.Future[Any]] = []

    @app.get(
        "/ready",
        summary="Readiness: 503 while loading, draining, closed or down",
        responses={**responses(NestedError, 401, ok=Status), 503: {"model": Status}},
    )
    async def ready() -> Response:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if manager.closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        # A provider may say it is down (a python-bridge worker that died). It restarts
        # on its next call, so a probe is sent, one at a time: readiness recovers even
        # when no traffic comes while it reads 503.
        if not getattr(manager.provider, "available", True):
            if not recovery or recovery[0].done():
                recovery[:] = [asyncio.ensure_future(asyncio.to_thread(manager.health))]
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready", "model": state.served_model})

    if metrics is not None:
        # Prometheus text, not JSON: kept out of the OpenAPI schema, whose responses
        # are JSON (without the route, /metrics is a 404).
        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics(request: Request) -> Response:
            body, content_type = metrics.render(request.headers.get("accept"))
            return Response(body, headers={"content-type": content_type})

    # Added last, so outermost of the app's middleware: it also logs and counts the
    # requests that other middleware answers (auth, body limits).
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app


def _openai_request(
    value: str | list[str] | list[int] | list[list[int]], manager: EmbeddingManager
) -> EmbeddingRequest:
    """OpenAI's ``input``: a text, texts, one text's token ids, or several texts' ids."""
    if isinstance(value, str):
        return EmbeddingRequest([value])
    if not value or all(isinstance(v, str) for v in value):
        return EmbeddingRequest([v for v in value if isinstance(v, str)])
    if not manager.capabilities.token_input:
        raise _Failure(
            400,
            f"this provider ({manager.info.provider}) takes text only: send the input as "
            "strings, not token ids",
            "token_input_not_supported",
            "input",
        )
    # The schema let through only list[int] (one text) or list[list[int]] (several).
    ids: Sequence[Any] = [value] if isinstance(value[0], int) else value
    return EmbeddingRequest(token_ids=ids)
