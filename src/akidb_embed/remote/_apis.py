"""The three wire protocols the ``remote`` provider speaks: what each one asks the server
at start-up to describe the model, and how it sends texts and reads vectors back.

Every protocol is asked for *raw* vectors where it can be (``normalize: false``, no
server-side prompt): the client's :class:`~akidb_embed.EmbeddingManager` then applies
each request's normalisation and prompt itself, exactly as it does in-process.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from .._types import ModelInfo
from ..errors import ConfigValueError
from ._errors import RemoteConfigError, RemoteModelError, RemoteResponseError
from ._http import Http

__all__ = ["APIS", "AkidbApi", "Api", "OpenAIApi", "Settings", "TeiApi"]

PROBE_TEXT = "dimension probe"
# OpenAI takes at most 2048 inputs per request.
_OPENAI_MAX_INPUTS = 2048

Usage = dict[str, int]


@dataclass(frozen=True)
class Settings:
    """What a protocol needs from the provider's options."""

    model: str | None
    dimensions: int | None
    truncation: str


def _matrix(rows: object, n: int, dimension: int | None, where: str) -> np.ndarray:
    """*rows* (a list of lists of numbers) as float32 of shape ``(n, dimension)``."""
    try:
        out = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise RemoteResponseError(f"{where} answered vectors that are not numbers: {exc}") from exc
    if out.ndim != 2 or out.shape[0] != n or (dimension is not None and out.shape[1] != dimension):
        want = f"({n}, {dimension if dimension is not None else 'd'})"
        raise RemoteResponseError(f"{where} answered vectors of shape {out.shape}, expected {want}")
    if out.shape[1] == 0:
        raise RemoteResponseError(f"{where} answered empty vectors")
    return out


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class Api:
    """One protocol: :meth:`discover` once, then :meth:`embed` for every batch."""

    name = ""

    def __init__(self, http: Http, settings: Settings) -> None:
        self.http = http
        self.settings = settings
        self.model_name: str | None = settings.model
        #: Most inputs one request may carry, as the server says, ``None`` if unknown.
        self.max_batch: int | None = None
        self.dimension: int | None = None

    def discover(self) -> ModelInfo:
        """Ask the server what it serves (and check the model asked for)."""
        raise NotImplementedError

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage]:
        """Raw vectors for *texts* (at most :attr:`max_batch` of them), and the usage."""
        raise NotImplementedError

    def _info_body(self, *, required: bool) -> Mapping[str, Any]:
        """``GET /info``; ``{}`` when the server has no such route and it is optional."""
        try:
            body = self.http.json(self.http.get("/info"))
        except RemoteConfigError:
            if required:
                raise
            return {}
        if not isinstance(body, Mapping):
            if required:
                raise RemoteConfigError(
                    f"GET {self.http.display_url}/info answered {type(body).__name__}, not an "
                    f"object: is options.api = {self.name!r} right for this server?"
                )
            return {}
        return body

    def _check_model(self, *served: str | None) -> None:
        wanted = self.settings.model
        names = [s for s in served if s]
        if wanted is not None and names and wanted not in names:
            raise RemoteModelError(
                f"{self.http.display_url} serves {names[0]!r}, not {wanted!r} (options.model)"
            )


def _akidb_info(body: Mapping[str, Any], where: str) -> ModelInfo:
    """The served :class:`ModelInfo` from an akidb server's ``/info``."""
    try:
        info = ModelInfo.from_dict(body["model"])
    except (KeyError, TypeError) as exc:
        raise RemoteResponseError(f"{where}/info has no valid 'model' description: {exc}") from exc
    if not isinstance(info.dimension, int) or info.dimension < 1:
        raise RemoteResponseError(f"{where}/info gives dimension {info.dimension!r}")
    return info


def _is_akidb(body: Mapping[str, Any]) -> bool:
    return isinstance(body.get("model"), Mapping) and "fingerprint" in body


def _limit(body: Mapping[str, Any], key: str) -> int | None:
    limits = body.get("limits")
    return _int_or_none(limits.get(key)) if isinstance(limits, Mapping) else None


class AkidbApi(Api):
    """akidb's own ``POST /api/v1/embed``, described by ``GET /info``.

    The ModelInfo is the served model's own, so vectors from the server and from the same
    model in-process carry the same fingerprint and can share an index.
    """

    name = "akidb"

    def discover(self) -> ModelInfo:
        body = self._info_body(required=True)
        if not _is_akidb(body):
            raise RemoteConfigError(
                f"GET {self.http.display_url}/info is not an akidb-embed server's answer: "
                "for text-embeddings-inference set options.api = 'tei', for an "
                "OpenAI-compatible endpoint options.api = 'openai'"
            )
        info = _akidb_info(body, self.http.display_url)
        served = body.get("model_id") if isinstance(body.get("model_id"), str) else None
        self._check_model(served, info.model)
        self.model_name = self.settings.model or served or info.model
        self.max_batch = _limit(body, "max_client_batch_size")
        self.dimension = info.dimension
        return info

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage]:
        payload = {
            "inputs": list(texts),
            "model": self.model_name,
            "normalize": False,
            # The client's manager has prepended the request's prompt already.
            "prompt_name": "",
            "truncation": self.settings.truncation,
        }
        response = self.http.post("/api/v1/embed", payload)
        body = self.http.json(response)
        where = f"POST {self.http.display_url}/api/v1/embed"
        if not isinstance(body, Mapping):
            raise RemoteResponseError(f"{where} answered {type(body).__name__}, not an object")
        vectors = _matrix(body.get("embeddings"), len(texts), self.dimension, where)
        usage = body.get("usage")
        usage = usage if isinstance(usage, Mapping) else {}
        return vectors, {
            "prompt_tokens": _int(usage.get("prompt_tokens")),
            "truncated": _int(usage.get("truncated")),
        }


class OpenAIApi(Api):
    """OpenAI's ``POST /v1/embeddings`` (base64 vectors), model from ``GET /v1/models``.

    The API has no normalisation, truncation or prompt options: the server applies its
    own, and the dimension is learnt by embedding one probe text.
    """

    name = "openai"

    def __init__(self, http: Http, settings: Settings) -> None:
        super().__init__(http, settings)
        # Both conventions: the server's root ("http://host:8080") or OpenAI's base URL,
        # which ends with /v1 ("https://api.openai.com/v1").
        self.prefix = "" if http.base_url.endswith("/v1") else "/v1"

    def discover(self) -> ModelInfo:
        if self.model_name is None:
            self.model_name = self._only_model()
        vectors, _ = self._call([PROBE_TEXT], None)
        self.dimension = int(vectors.shape[1])
        self.max_batch = _OPENAI_MAX_INPUTS
        return ModelInfo(
            provider="remote",
            model=self.model_name,
            dimension=self.dimension,
            max_tokens=None,
            pooling="unknown",
            # Most OpenAI-compatible servers return unit vectors, but nothing promises it:
            # the client's manager normalises (a no-op on unit vectors) when asked.
            normalized=False,
        )

    def _only_model(self) -> str:
        where = f"{self.http.display_url}{self.prefix}/models"
        try:
            body = self.http.json(self.http.get(f"{self.prefix}/models"))
        except RemoteConfigError as exc:
            raise RemoteConfigError(
                f"GET {where} is not there to name the model: set options.model"
            ) from exc
        data = body.get("data") if isinstance(body, Mapping) else None
        ids = [
            m["id"] for m in data or [] if isinstance(m, Mapping) and isinstance(m.get("id"), str)
        ]
        if len(ids) != 1:
            listed = ", ".join(map(repr, ids[:5])) + (", ..." if len(ids) > 5 else "")
            raise RemoteConfigError(
                f"GET {where} lists {len(ids)} models ({listed or 'none'}): set options.model "
                "to the one to use"
            )
        return ids[0]

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage]:
        return self._call(texts, self.dimension)

    def _call(self, texts: Sequence[str], dimension: int | None) -> tuple[np.ndarray, Usage]:
        payload: dict[str, Any] = {
            "input": list(texts),
            "model": self.model_name,
            # Little-endian float32 bytes: a quarter of the JSON floats' size, exact.
            "encoding_format": "base64",
        }
        if self.settings.dimensions is not None:
            payload["dimensions"] = self.settings.dimensions
        path = f"{self.prefix}/embeddings"
        where = f"POST {self.http.display_url}{path}"
        body = self.http.json(self.http.post(path, payload))
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, list) or len(data) != len(texts):
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise RemoteResponseError(f"{where} answered {got} embeddings for {len(texts)} texts")
        rows: list[Any] = [None] * len(texts)
        for position, item in enumerate(data):
            if not isinstance(item, Mapping):
                raise RemoteResponseError(f"{where}: data[{position}] is not an object")
            index = item.get("index", position)
            if not isinstance(index, int) or not 0 <= index < len(texts) or rows[index] is not None:
                raise RemoteResponseError(f"{where}: data[{position}] has index {index!r}")
            rows[index] = _decode(item.get("embedding"), where)
        vectors = _matrix(rows, len(texts), dimension, where)
        usage = body.get("usage") if isinstance(body, Mapping) else None
        usage = usage if isinstance(usage, Mapping) else {}
        return vectors, {"prompt_tokens": _int(usage.get("prompt_tokens"))}


def _decode(embedding: object, where: str) -> object:
    # A server may ignore encoding_format and answer floats: take those as they are.
    if not isinstance(embedding, str):
        return embedding
    try:
        raw = base64.b64decode(embedding, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RemoteResponseError(f"{where} answered an embedding that is not base64") from exc
    if len(raw) % 4:
        raise RemoteResponseError(f"{where} answered {len(raw)} bytes, not float32 values")
    return np.frombuffer(raw, dtype="<f4")


class TeiApi(Api):
    """text-embeddings-inference's ``POST /embed``, described by its ``GET /info``.

    An akidb-embed server answers ``/info`` in its own shape: then the served model's
    ModelInfo (fingerprint, prompts) is used, as with ``api = "akidb"``.
    """

    name = "tei"

    def __init__(self, http: Http, settings: Settings) -> None:
        super().__init__(http, settings)
        self.akidb_server = False

    def discover(self) -> ModelInfo:
        body = self._info_body(required=False)
        if _is_akidb(body):
            self.akidb_server = True
            info = _akidb_info(body, self.http.display_url)
            served = body.get("model_id") if isinstance(body.get("model_id"), str) else None
            self._check_model(served, info.model)
            self.max_batch = _limit(body, "max_client_batch_size")
            wanted = self.settings.dimensions
            if wanted is not None:
                if wanted > info.dimension:
                    raise ConfigValueError(
                        "options.dimensions",
                        f"{wanted} is more than the model's dimension {info.dimension}",
                        "options",
                    )
                # The server cuts each vector to its first *wanted* components.
                info = dataclasses.replace(info, dimension=wanted)
            self.dimension = info.dimension
            return info
        model_id = body.get("model_id") if isinstance(body.get("model_id"), str) else None
        self._check_model(model_id)
        self.max_batch = _int_or_none(body.get("max_client_batch_size"))
        vectors, _ = self._call([PROBE_TEXT], None)
        self.dimension = int(vectors.shape[1])
        model_type = body.get("model_type")
        embedding = model_type.get("embedding") if isinstance(model_type, Mapping) else None
        pooling = embedding.get("pooling") if isinstance(embedding, Mapping) else None
        sha, dtype = body.get("model_sha"), body.get("model_dtype")
        return ModelInfo(
            provider="remote",
            model=model_id or self.settings.model or "tei",
            dimension=self.dimension,
            max_tokens=_int_or_none(body.get("max_input_length")),
            pooling=pooling if isinstance(pooling, str) else "unknown",
            normalized=False,  # asked for raw vectors below
            revision=sha if isinstance(sha, str) else None,
            dtype=dtype if isinstance(dtype, str) else None,
        )

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage]:
        return self._call(texts, self.dimension)

    def _call(self, texts: Sequence[str], dimension: int | None) -> tuple[np.ndarray, Usage]:
        payload: dict[str, Any] = {
            "inputs": list(texts),
            "normalize": False,
            "truncate": self.settings.truncation == "truncate",
        }
        if self.akidb_server:
            # The client's manager has prepended the request's prompt already. (A real TEI
            # refuses an unknown prompt name, so it is sent only to akidb-embed.)
            payload["prompt_name"] = ""
        if self.settings.dimensions is not None:
            payload["dimensions"] = self.settings.dimensions
        where = f"POST {self.http.display_url}/embed"
        response = self.http.post("/embed", payload)
        vectors = _matrix(self.http.json(response), len(texts), dimension, where)
        return vectors, {"prompt_tokens": _header_tokens(response)}


def _header_tokens(response: httpx.Response) -> int:
    # TEI says x-compute-tokens; akidb-embed's TEI route says x-total-tokens.
    for name in ("x-compute-tokens", "x-total-tokens"):
        value = response.headers.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


APIS: dict[str, type[Api]] = {"akidb": AkidbApi, "openai": OpenAIApi, "tei": TeiApi}
