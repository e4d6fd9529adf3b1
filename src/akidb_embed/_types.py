"""The provider contract and the request/response types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BatchEmbeddingRequest",
    "BatchEmbeddingResponse",
    "EmbeddingProvider",
    "ModelInfo",
]


@dataclass(frozen=True)
class ModelInfo:
    """What a provider serves.

    Parameters
    ----------
    provider, model:
        Provider name (``"onnx"``) and model id or path.
    dimension:
        Length of every vector.
    max_tokens:
        Longest input in tokens before truncation, ``None`` when unlimited.
    pooling:
        How token states become one vector (``"mean"``, ``"cls"``, ``"max"``,
        ``"lasttoken"``, ...).
    normalized:
        Whether the provider already returns unit-norm vectors.
    revision:
        Model revision (commit hash or tag) when known.
    dtype:
        Weight precision or quantization (``"float32"``, ``"int8"``, ...).
    prompts:
        Named prompts prepended to texts (``{"query": "query: "}``), as
        sentence-transformers' ``config_sentence_transformers.json`` defines them.
    default_prompt_name:
        Prompt used for documents when none is asked for.
    """

    provider: str
    model: str
    dimension: int
    max_tokens: int | None = None
    pooling: str = "mean"
    normalized: bool = False
    revision: str | None = None
    dtype: str | None = None
    prompts: Mapping[str, str] = field(default_factory=dict, hash=False)
    default_prompt_name: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """Everything that must match for two vectors to be comparable."""
        return {
            "provider": self.provider,
            "model": self.model,
            "revision": self.revision,
            "dtype": self.dtype,
            "pooling": self.pooling,
            "normalized": self.normalized,
            "max_tokens": self.max_tokens,
            "dimension": self.dimension,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        d = asdict(self)
        d["prompts"] = dict(self.prompts)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer peers)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@runtime_checkable
class EmbeddingProvider(Protocol):
    """What every provider implements.

    Only :meth:`embed_batch` does real work; the manager builds normalization,
    batching, caching, prompts, single queries and async on top of it. Optional
    capabilities are attributes a provider may define:

    ``thread_safe: bool`` (default ``True``)
        ``False`` makes the manager serialise calls.
    ``embed_batch_with_usage(texts) -> (ndarray, Mapping[str, int])``
        Same vectors plus token usage (``prompt_tokens``, ``truncated``), reported in
        :class:`BatchEmbeddingResponse` and in ``stats()``.
    """

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed *texts*; return float32 of shape ``(len(texts), dimension)``."""
        ...

    def info(self) -> ModelInfo:
        """Describe the model being served."""
        ...

    def close(self) -> None:
        """Release resources. Calling it twice is harmless."""
        ...


@dataclass(frozen=True)
class BatchEmbeddingRequest:
    """A batch of texts to embed, as the HTTP API and the bridge send it."""

    model: str | None
    inputs: Sequence[str]
    normalize: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "inputs": list(self.inputs), "normalize": self.normalize}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchEmbeddingRequest:
        return cls(
            model=data.get("model"),
            inputs=data["inputs"],
            normalize=bool(data.get("normalize", True)),
        )


@dataclass(frozen=True)
class BatchEmbeddingResponse:
    """Vectors for a :class:`BatchEmbeddingRequest`.

    ``embeddings`` is a float32 array of shape ``(len(inputs), dimension)``; ``usage``
    counts ``texts``, ``prompt_tokens`` and ``truncated`` where the provider reports them.
    """

    embeddings: np.ndarray
    model: str
    dimension: int
    usage: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (vectors as lists of floats)."""
        return {
            "embeddings": self.embeddings.tolist(),
            "model": self.model,
            "dimension": self.dimension,
            "usage": dict(self.usage),
        }
