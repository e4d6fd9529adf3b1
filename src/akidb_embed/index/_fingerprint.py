"""Embedding fingerprints: what must match for two vectors to be comparable."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import FingerprintMismatchError, IndexInputError

if TYPE_CHECKING:
    from .._manager import EmbeddingManager
    from .._types import ModelInfo

__all__ = ["Fingerprint", "as_fingerprint", "check_fingerprint", "manager_fingerprint"]

Fingerprint = dict[str, Any]


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


def check_fingerprint(
    expected: Fingerprint | None, got: Fingerprint | None, action: str, *, ignore: bool = False
) -> None:
    """Raise :class:`FingerprintMismatchError` naming both fingerprints when they differ.

    Nothing is compared when either side is unknown (``None``) or *ignore* is true.
    """
    if ignore or expected is None or got is None or expected == got:
        return
    keys = sorted(set(expected) | set(got))
    diff = "; ".join(
        f"{k}: {expected.get(k)!r} vs {got.get(k)!r}" for k in keys if expected.get(k) != got.get(k)
    )
    raise FingerprintMismatchError(
        f"cannot {action}: the index holds vectors from {describe(expected)}, but these come "
        f"from {describe(got)} (differs in {diff}). Vectors of different embeddings are not "
        "comparable: embed with the index's model, rebuild the index, or pass "
        "ignore_fingerprint=True if you know they are compatible."
    )
