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
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, StrictBool, StrictInt, StrictStr

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
from ._settings import ServerSettings
from ._version import __version__
from .errors import BatcherClosedError, QueueFullError, RequestTimeoutError

__all__ = ["JSONResponse", "ServerState", "create_app"]

_log = logging.getLogger("akidb_embed.server")

PROBE_TEXT = "readiness probe"

Style = Literal["akidb", "openai", "tei"]


class JSONResponse(Response):
    """orjson-encoded JSON; numpy arrays are written directly (float32 stays float32)."""

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


_OPENAI_TYPES = {429: "rate_limit_error", 404: "invalid_request_error"}
_TEI_TYPES = {429: "Overloaded", 503: "Unhealthy", 504: "Backend", 500: "Backend"}


def _failure(exc: BaseException) -> _Failure:
    """The status and message of a core or batcher error."""
    if isinstance(exc, _Failure):
        return exc
    if isinstance(exc, TruncationError):
        return _Failure(413, str(exc), "input_too_long", "input")
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
        self, request: EmbeddingRequest
    ) -> tuple[BatchEmbeddingResponse, dict[str, str]]:
        if not request.texts:
            message = "the input is empty: give at least one text"
            raise _Failure(400, message, "empty_input", "input")
        if self.draining or self.batcher is None:
            raise _Failure(503, "the server is shutting down", "unavailable")
        timing = RequestTiming()
        start = time.perf_counter()
        response = await self.batcher.embed(request, timeout=self.request_timeout_s, timing=timing)
        total = time.perf_counter() - start
        headers = {
            "x-queue-time": f"{timing.queue * 1000:.3f}",
            "x-inference-time": f"{timing.inference * 1000:.3f}",
            "x-total-time": f"{total * 1000:.3f}",
            "x-total-tokens": str(int(response.usage.get("prompt_tokens", 0))),
            "x-texts": str(len(request.texts)),
        }
        return response, headers


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
            state.ready = True
            yield
        finally:
            state.ready = False
            state.draining = True
            await state.batcher.close(drain_timeout=drain_timeout_s)

    app = FastAPI(
        title="akidb-embed",
        version=__version__,
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.server = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        style = _style_of(request.url.path) or "akidb"
        message, param = _validation_message(exc)
        return _error_response(style, _Failure(422, message, "validation_error", param))

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

    @app.post("/api/v1/embed", summary="Embed texts (akidb)")
    @guarded("akidb")
    async def akidb_embed(body: AkidbEmbedBody) -> Response:
        state.check_model(body.model)
        request = EmbeddingRequest(
            body.inputs,
            normalize=body.normalize,
            prompt_name=body.prompt_name,
            truncation=body.truncation,
        )
        response, headers = await state.embed(request)
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

    @app.post("/v1/embeddings", summary="Create embeddings (OpenAI-compatible)")
    @guarded("openai")
    async def openai_embeddings(body: OpenAIEmbeddingsBody) -> Response:
        state.check_model(body.model)
        texts = _openai_texts(body.input)
        full = manager.dimension
        _check_dimensions(body.dimensions, full)
        response, headers = await state.embed(EmbeddingRequest(texts))
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

    @app.post("/embed", summary="Embed texts (text-embeddings-inference-compatible)")
    @guarded("tei")
    async def tei_embed(body: TEIEmbedBody) -> Response:
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
        response, headers = await state.embed(request)
        vectors = _cut(response.embeddings, body.dimensions, body.normalize, full)
        return JSONResponse(vectors, headers=headers)

    @app.get("/v1/models", summary="The served model (OpenAI-compatible)")
    async def models() -> Response:
        entry = {"id": state.served_model, "object": "model", "created": 0}
        entry["owned_by"] = "akidb-embed"
        return JSONResponse({"object": "list", "data": [entry]})

    @app.get("/info", summary="Model, fingerprint, limits and versions")
    async def info() -> Response:
        model_info = manager.info
        return JSONResponse(
            {
                "model_id": state.served_model,
                "provider": model_info.provider,
                "model": model_info.to_dict(),
                "fingerprint": model_info.fingerprint(),
                "limits": state.limits(),
                "version": __version__,
                "core_version": core_version,
            }
        )

    @app.get("/health", summary="Liveness")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready", summary="Readiness: 503 while loading, draining or closed")
    async def ready() -> Response:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if manager.closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "model": state.served_model})

    return app


def _openai_texts(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value and not all(isinstance(v, str) for v in value):
        raise _Failure(
            400,
            "token input (lists of token ids) is not supported yet: send the texts as strings",
            "token_input_not_supported",
            "input",
        )
    return [v for v in value if isinstance(v, str)]
