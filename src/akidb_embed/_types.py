"""The provider contract and the request/response types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "LEGACY_THREAD_SAFE_CONCURRENCY",
    "BatchEmbeddingRequest",
    "BatchEmbeddingResponse",
    "EmbeddingProvider",
    "ModelInfo",
    "ProviderCapabilities",
    "provider_capabilities",
]

#: ``max_concurrency`` for a provider that declares no capabilities but says
#: ``thread_safe = True`` (the attribute plugins used before capabilities existed).
LEGACY_THREAD_SAFE_CONCURRENCY = 4


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


@dataclass(frozen=True)
class ProviderCapabilities:
    """What a provider can do beyond :meth:`EmbeddingProvider.embed_batch`.

    Parameters
    ----------
    max_concurrency:
        Provider calls worth running at once (and safe to). 1 for a provider that uses
        every core in one call, or that is not thread-safe: the manager then serialises
        calls instead of oversubscribing the CPU; more for a provider whose calls wait
        on something else (a worker process, a remote server, an accelerator queue).
    reports_usage:
        It defines ``embed_batch_with_usage``.
    counts_tokens:
        It defines ``count_tokens`` (untruncated token counts), which lets the manager
        apply the truncation policy, count usage per request, and merge requests.
    text_lengths:
        It defines ``text_lengths``.
    token_input:
        It defines ``embed_token_ids``.
    max_batch_size:
        Most texts one call takes, ``None`` for no limit of its own.
    """

    max_concurrency: int = 1
    reports_usage: bool = False
    counts_tokens: bool = False
    text_lengths: bool = False
    token_input: bool = False
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_concurrency, bool) or not isinstance(self.max_concurrency, int):
            raise TypeError(f"max_concurrency must be an int, got {self.max_concurrency!r}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {self.max_batch_size}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProviderCapabilities:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer peers)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


_METHODS = {
    "reports_usage": ("embed_batch_with_usage",),
    "counts_tokens": ("count_tokens",),
    "text_lengths": ("text_lengths",),
    "token_input": ("embed_token_ids",),
}


def provider_capabilities(provider: object) -> ProviderCapabilities:
    """The capabilities of *provider*: declared, or read from what it defines.

    A declared :class:`ProviderCapabilities` is checked against the methods it promises
    (a missing one raises ``TypeError`` naming it). Without a declaration, each
    capability whose methods the provider defines counts as present, and
    ``thread_safe`` maps to ``max_concurrency`` as the :class:`EmbeddingProvider`
    docstring says. This is the one place the core reads capabilities.
    """
    declared = getattr(provider, "capabilities", None)
    if declared is not None:
        if not isinstance(declared, ProviderCapabilities):
            raise TypeError(
                f"{type(provider).__name__}.capabilities must be a ProviderCapabilities, "
                f"got {type(declared).__name__}"
            )
        for flag, methods in _METHODS.items():
            if getattr(declared, flag):
                for method in methods:
                    if not callable(getattr(provider, method, None)):
                        raise TypeError(
                            f"{type(provider).__name__} declares {flag}=True but has no "
                            f"{method}() method"
                        )
        return declared
    found = {
        flag: all(callable(getattr(provider, m, None)) for m in methods)
        for flag, methods in _METHODS.items()
    }
    # thread_safe defaulted to True before capabilities existed: unset still means it.
    thread_safe = getattr(provider, "thread_safe", True)
    concurrency = 1 if thread_safe is False else LEGACY_THREAD_SAFE_CONCURRENCY
    return ProviderCapabilities(max_concurrency=concurrency, **found)


@runtime_checkable
class EmbeddingProvider(Protocol):
    """What every provider implements.

    Only :meth:`embed_batch` does real work; the manager builds normalization,
    batching, caching, prompts, single queries, per-request results and async on top
    of it. A provider declares what else it can do in a ``capabilities`` attribute
    (a :class:`ProviderCapabilities`), and then defines the matching methods:

    ``embed_batch_with_usage(texts) -> (ndarray, Mapping[str, int])``
        (``reports_usage``) Same vectors plus ``{"prompt_tokens", "truncated"}``.
    ``count_tokens(texts) -> list[int]``
        (``counts_tokens``) Tokens of each text *before* truncation, special tokens
        included. The manager uses it to enforce the truncation policy per request,
        to report usage per request, and to merge requests into one provider call.
    ``text_lengths(texts) -> list[int]``
        (``text_lengths``) Tokens of each text after truncation, to sort texts so each
        batch pads to a similar length.
    ``embed_token_ids(ids) -> ndarray``
        (``token_input``) Embed texts given as lists of token ids.

    A provider without ``capabilities`` is read with :func:`provider_capabilities`:
    methods it defines count as declared, and the older ``thread_safe`` attribute maps
    to ``max_concurrency`` (``False`` -> 1; ``True`` or unset, its old default -> 4).
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
