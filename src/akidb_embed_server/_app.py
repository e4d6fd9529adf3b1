"""The HTTP routes of ``akidb-embed serve``: one FastAPI app in front of one :class:`Batcher`.

Three protocols share the batcher: akidb's own (``POST /api/v1/embed``), OpenAI's
(``POST /v1/embeddings``) and text-embeddings-inference's (``POST /embed``). Each maps
the core's typed errors to one status and answers in its own error shape, FastAPI's
validation errors included; nothing answers with a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import fastapi.responses
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from akidb_embed import EmbeddingManager, EmbeddingRequest

from ._logging import ObservabilityMiddleware, current_request
from ._reload import ReloadInProgressError
from ._schema import (
    EMBED_ERRORS,
    AkidbEmbedResponse,
    InfoResponse,
    ModelList,
    NestedError,
    OpenAIEmbeddingsResponse,
    ReloadResponse,
    Status,
    TEIEmbedResponse,
    TEIError,
    responses,
)
from ._security import KeySet, bearer_token, install_security
from ._service import PROBE_TEXT, Embedded, EmbeddingService, FailureKind, failure_of
from ._settings import ServerSettings
from ._version import __version__

__all__ = ["PROBE_TEXT", "JSONResponse", "ServerState", "create_app"]

_log = logging.getLogger("akidb_embed.server")

#: The routes' state is the protocol-agnostic service (the name the tests knew).
ServerState = EmbeddingService

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


_HTTP_STATUS: dict[FailureKind, int] = {
    "invalid": 400,
    "too_large": 413,
    "not_found": 404,
    "overloaded": 429,
    "unavailable": 503,
    "timeout": 504,
    "cancelled": 499,
    "internal": 500,
}


def _failure(exc: BaseException) -> _Failure:
    """The status and message of a core, service or batcher error."""
    if isinstance(exc, _Failure):
        return exc
    failure = failure_of(exc)
    headers = None
    if failure.retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(failure.retry_after)))}
    return _Failure(
        _HTTP_STATUS[failure.kind], failure.message, failure.code, failure.param, headers
    )


def _timing_headers(embedded: Embedded) -> dict[str, str]:
    """TEI's timing headers (milliseconds), on every embed answer."""
    return {
        "x-queue-time": f"{embedded.queue_s * 1000:.3f}",
        "x-inference-time": f"{embedded.inference_s * 1000:.3f}",
        "x-total-time": f"{embedded.total_s * 1000:.3f}",
        "x-total-tokens": str(embedded.tokens),
        "x-texts": str(embedded.texts),
    }


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


_ADMIN_ERRORS = {
    401: "Missing or wrong admin key",
    404: "The admin API is off (no admin_api_keys)",
    409: "Another reload is in progress",
    422: "The reload failed; nothing changed (the body's reload says why)",
    503: "Shutting down, or not started by akidb-embed serve",
}

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


async def _client_gone(http: Request) -> None:
    """Return once the client has closed its connection. The body has been read by
    then, so the server's next message is ``http.disconnect``."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _embed(
    state: EmbeddingService,
    request: EmbeddingRequest,
    http: Request,
    *,
    model: str | None = None,
    dimensions: int | None = None,
) -> tuple[Embedded, dict[str, str]]:
    """Embed through the service; a client that closes its connection first has its
    queued texts dropped (Starlette would let the handler run on, and the texts be
    computed for nobody)."""
    embedded = await state.embed(
        request,
        client_gone=functools.partial(_client_gone, http),
        model=model,
        dimensions=dimensions,
    )
    return embedded, _timing_headers(embedded)


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
    # Every route reaches the model through the service, read at each request.
    state = EmbeddingService(manager, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await state.start()
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="akidb-embed",
        version=__version__,
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.server = state
    metrics = state.metrics  # one registry per service, shared with gRPC
    app.state.metrics = metrics

    install_security(app, settings, _render_error, current=lambda: state.settings)

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
        embedded, headers = await _embed(state, request, http, model=body.model)
        response = embedded.response
        content = {
            "embeddings": response.embeddings,
            "model": embedded.model,
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
        request = _openai_request(body.input, state)
        state.check_dimensions(body.dimensions)
        embedded, headers = await _embed(
            state, request, http, model=body.model, dimensions=body.dimensions
        )
        response = embedded.response
        vectors = state.cut(response.embeddings, body.dimensions, embedded.normalized)
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
            "model": embedded.model,
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
        state.check_dimensions(body.dimensions)
        truncation = None if body.truncate is None else ("truncate" if body.truncate else "error")
        request = EmbeddingRequest(
            texts, normalize=body.normalize, prompt_name=body.prompt_name, truncation=truncation
        )
        embedded, headers = await _embed(state, request, http, dimensions=body.dimensions)
        vectors = state.cut(embedded.response.embeddings, body.dimensions, body.normalize)
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
        return JSONResponse(state.info())

    @app.get("/health", summary="Liveness", responses=responses(NestedError, 401, ok=Status))
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/ready",
        summary="Readiness: 503 while loading, draining, closed or down",
        responses={**responses(NestedError, 401, ok=Status), 503: {"model": Status}},
    )
    async def ready() -> Response:
        status = state.readiness()
        if status != "ready":
            return JSONResponse({"status": status}, status_code=503)
        return JSONResponse({"status": "ready", "model": state.served_model})

    @app.post(
        "/admin/reload",
        summary="Reload the configuration file (admin key; off unless admin_api_keys is set)",
        responses={
            200: {"model": ReloadResponse, "description": "Reloaded"},
            **{
                status: {"model": NestedError, "description": text}
                for status, text in _ADMIN_ERRORS.items()
            },
        },
    )
    async def admin_reload(http: Request) -> Response:
        current = state.settings
        if not current.admin_api_keys:
            message = (
                "the admin API is off: set admin_api_keys or admin_api_key_file in "
                "[server] (or AKIDB_SERVER_ADMIN_API_KEYS / _FILE) to turn it on"
            )
            return _error_response("akidb", _Failure(404, message, "admin_disabled"))
        token = bearer_token(http.scope["headers"])
        if token is None or not KeySet(current.admin_api_keys).accepts(token):
            message = "missing or invalid admin key: send 'Authorization: Bearer <admin key>'"
            challenge = {"WWW-Authenticate": 'Bearer realm="akidb-embed admin"'}
            failure = _Failure(401, message, "invalid_admin_key", None, challenge)
            return _error_response("akidb", failure)
        reloader = state.reloader
        if reloader is None or state.draining:
            message = "reload is not available: the server is shutting down, or was not "
            message += "started by `akidb-embed serve`"
            return _error_response("akidb", _Failure(503, message, "reload_unavailable"))
        try:
            outcome = await reloader.reload("admin")
        except ReloadInProgressError as exc:
            return _error_response("akidb", _Failure(409, str(exc), "reload_in_progress"))
        if not outcome.ok:
            message = f"reload failed, nothing changed: {outcome.message}"
            response = _error_response("akidb", _Failure(422, message, "reload_failed"))
            body = orjson.loads(response.body)
            return JSONResponse({**body, "reload": outcome.to_dict()}, status_code=422)
        return JSONResponse({"status": "reloaded", "reload": outcome.to_dict()})

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
    value: str | list[str] | list[int] | list[list[int]], state: EmbeddingService
) -> EmbeddingRequest:
    """OpenAI's ``input``: a text, texts, one text's token ids, or several texts' ids."""
    if isinstance(value, str):
        return EmbeddingRequest([value])
    if not value or all(isinstance(v, str) for v in value):
        return EmbeddingRequest([v for v in value if isinstance(v, str)])
    manager = state.manager
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
