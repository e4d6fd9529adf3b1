"""Moved to the public :mod:`akidb_embed.fingerprint` (embeddings outside an index use it too)."""

from __future__ import annotations

from ..fingerprint import (
    Fingerprint,
    as_fingerprint,
    check_fingerprint,
    describe,
    manager_fingerprint,
)

__all__ = ["Fingerprint", "as_fingerprint", "check_fingerprint", "describe", "manager_fingerprint"]
