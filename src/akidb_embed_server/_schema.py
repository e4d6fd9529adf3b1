"""Response models for ``/openapi.json``: what each route answers, errors included.

The routes build their JSON by hand (orjson, numpy arrays written directly), so these
models only describe it; the schema test (schemathesis) checks that every answer
matches them. Each protocol's error shape is declared on every status it can answer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, RootModel

__all__ = [
    "EMBED_ERRORS",
    "AkidbEmbedResponse",
    "InfoResponse",
    "ModelList",
    "NestedError",
    "OpenAIEmbeddingsResponse",
    "Status",
    "TEIEmbedResponse",
    "TEIError",
    "responses",
]


class ErrorDetail(BaseModel):
    """The nested error of the akidb and OpenAI routes (OpenAI SDKs read it)."""

    message: str
    type: str
    param: str | None
    code: str


class NestedError(BaseModel):
    """``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


class TEIError(BaseModel):
    """text-embeddings-inference's flat error: ``{"error", "error_type"}``."""

    error: str
    error_type: str


class AkidbUsage(BaseModel):
    texts: int
    prompt_tokens: int
    truncated: int


class AkidbEmbedResponse(BaseModel):
    """``POST /api/v1/embed``: one float32 vector per input, in order."""

    embeddings: list[list[float]]
    model: str
    dimension: int
    usage: AkidbUsage


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    """``POST /v1/embeddings``."""

    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class TEIEmbedResponse(RootModel[list[list[float]]]):
    """``POST /embed``: the vectors, nothing else."""


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"]
    data: list[ModelEntry]


class InfoResponse(BaseModel):
    """``GET /info``."""

    model_id: str
    provider: str
    model: dict[str, Any]
    fingerprint: dict[str, Any]
    limits: dict[str, Any]
    batcher: dict[str, Any] | None = None
    reload: dict[str, Any] | None = None
    version: str
    core_version: str


class ReloadResponse(BaseModel):
    """``POST /admin/reload``: ``status`` ``reloaded`` and what the reload did."""

    status: str
    reload: dict[str, Any]


class Status(BaseModel):
    """``GET /health`` and ``GET /ready``: ``status`` (``ready``, ``loading`` ...)."""

    status: str
    model: str | None = None


_DESCRIPTIONS = {
    400: "Invalid input (empty, token ids the provider cannot take, bad dimensions ...)",
    401: "Missing or wrong API key",
    404: "The request names a model this server does not serve",
    413: "Too many inputs, a text or body too large, or a text over the model's limit "
    "with truncation 'error'",
    422: "The body does not match the schema",
    429: "The queue is full; retry after Retry-After seconds",
    503: "Not ready: loading, shutting down, or the provider is down",
    504: "Not answered within the request timeout",
}

#: The statuses an embedding route answers besides 200.
EMBED_ERRORS = (400, 401, 404, 413, 422, 429, 503, 504)


def responses(
    error: type[BaseModel], *statuses: int, ok: Any = None
) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=``: *ok* on 200 and the *error* model on each of *statuses*."""
    out: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        out[200] = {"model": ok, "description": "Success"}
    for status in statuses:
        entry: dict[str, Any] = {"model": error, "description": _DESCRIPTIONS[status]}
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}
            }
        out[status] = entry
    return out
