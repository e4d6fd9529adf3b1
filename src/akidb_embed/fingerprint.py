"""Embedding fingerprints: what must match for two vectors to be comparable.

A fingerprint is a JSON-ready dict (provider, model, revision, dtype, pooling,
normalized, max_tokens, dimension) that travels with stored vectors: in a saved index's
manifest, in the schema metadata of the Parquet files ``akidb-embed embed-corpus``
writes. Two sets of vectors are mixed only when their fingerprints are equal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FingerprintMismatchError, IndexInputError

if TYPE_CHECKING:
    from ._manager import EmbeddingManager
    from ._types import ModelInfo

__all__ = [
    "IDENTITY_FIELDS",
    "IDENTITY_OPTIONS",
    "Fingerprint",
    "as_fingerprint",
    "check_fingerprint",
    "describe",
    "embedding_identity",
    "manager_fingerprint",
    "recorded_identity",
]

Fingerprint = dict[str, Any]

# What a saved collection records about its embedding (``embedding_config``), and all
# that ``akidb-embed search`` takes from it: a saved folder may come from anyone, so
# nothing that runs code (python_path, options.imports), carries secrets (options.env,
# tokens) or points at the builder's machine (cache_dir) is written or read back. An
# option is kept only when it is listed here and is a plain JSON scalar.
IDENTITY_FIELDS = ("provider", "model", "max_length", "normalize", "truncation")
IDENTITY_OPTIONS = (
    "target",  # python-bridge: the provider its worker runs
    "revision",
    "onnx_file",
    "dtype",
    "pooling",
    "padding_side",
    "query_instruction",
    "dimension",  # mock
    "seed",  # mock
    "max_tokens",  # mock
)


def as_fingerprint(value: ModelInfo | Mapping[str, Any] | None) -> Fingerprint | None:
    """A JSON-ready fingerprint dict from a :class:`ModelInfo`, a mapping or ``None``."""
    if value is None:
        return None
    if hasattr(value, "fingerprint") and callable(value.fingerprint):
        value = value.fingerprint()
    if not isinstance(value, Mapping):
        raise IndexInputError(
            f"fingerprint must be a ModelInfo, a mapping or None, got {type(value).__name__}"
        )
    try:
        return dict(json.loads(json.dumps(dict(value), allow_nan=False, sort_keys=True)))
    except (TypeError, ValueError) as exc:
        raise IndexInputError(f"fingerprint is not JSON-serialisable: {exc}") from exc


def manager_fingerprint(manager: EmbeddingManager) -> Fingerprint:
    """The fingerprint of the vectors *manager* returns from ``embed``.

    ``normalized`` says whether those vectors are unit-norm, which the manager's
    ``normalize`` setting decides as much as the provider.
    """
    info = manager.info
    fingerprint = info.fingerprint()
    fingerprint["normalized"] = bool(info.normalized or manager.config.normalize)
    result = as_fingerprint(fingerprint)
    assert result is not None
    return result


def describe(fingerprint: Mapping[str, Any]) -> str:
    """One line: ``provider:model@revision (pooling=..., normalized=..., ...)``."""
    head = f"{fingerprint.get('provider')}:{fingerprint.get('model')}"
    if fingerprint.get("revision"):
        head += f"@{fingerprint['revision']}"
    rest = ", ".join(
        f"{k}={fingerprint[k]!r}"
        for k in sorted(fingerprint)
        if k not in ("provider", "model", "revision")
    )
    return f"{head} ({rest})"


_INDEX_ADVICE = (
    "embed with the index's model, rebuild the index, or pass ignore_fingerprint=True if "
    "you know they are compatible."
)


def check_fingerprint(
    expected: Fingerprint | None,
    got: Fingerprint | None,
    action: str,
    *,
    ignore: bool = False,
    holder: str = "the index",
    advice: str = _INDEX_ADVICE,
) -> None:
    """Raise :class:`FingerprintMismatchError` naming both fingerprints when they differ.

    Nothing is compared when either side is unknown (``None``) or *ignore* is true.
    The message reads "cannot *action*: *holder* holds vectors from ..., but these come
    from ... (differs in ...). Vectors of different embeddings are not comparable:
    *advice*".
    """
    if ignore or expected is None or got is None or expected == got:
        return
    keys = sorted(set(expected) | set(got))
    diff = "; ".join(
        f"{k}: {expected.get(k)!r} vs {got.get(k)!r}" for k in keys if expected.get(k) != got.get(k)
    )
    raise FingerprintMismatchError(
        f"cannot {action}: {holder} holds vectors from {describe(expected)}, but these come "
        f"from {describe(got)} (differs in {diff}). Vectors of different embeddings are not "
        f"comparable: {advice}"
    )


def embedding_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of an embedding configuration that identify the embedding, and only those.

    *config* is an :meth:`EmbeddingConfig.to_dict` or a saved ``embedding_config``
    (possibly written by an older version, or by someone else): only
    :data:`IDENTITY_FIELDS` and the :data:`IDENTITY_OPTIONS` whose values are JSON
    scalars are kept; ``python_path``, ``cache_dir``, ``options.env``,
    ``options.imports`` and anything unknown are dropped.
    """
    identity = {k: config[k] for k in IDENTITY_FIELDS if k in config}
    options = config.get("options")
    options = options if isinstance(options, Mapping) else {}
    identity["options"] = {
        k: v
        for k, v in options.items()
        if k in IDENTITY_OPTIONS and (v is None or isinstance(v, (str, int, float, bool)))
    }
    return identity


def recorded_identity(manager: EmbeddingManager) -> dict[str, Any]:
    """:func:`embedding_identity` of *manager*'s configuration, with a relative model
    folder made absolute: what a saved index or embedding output records, enough to
    rebuild the manager elsewhere."""
    identity = embedding_identity(manager.config.to_dict())
    model = identity.get("model")
    # A relative model folder would not be found from another working directory.
    if isinstance(model, str) and not Path(model).is_absolute() and Path(model).exists():
        identity["model"] = str(Path(model).resolve())
    return identity
