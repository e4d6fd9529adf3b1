"""Deprecated alias of :mod:`akidb_embed.backend`, where the backend toolkit now lives."""

from __future__ import annotations

import warnings

from .backend import *  # noqa: F403 - the same public names, nothing more
from .backend import __all__ as __all__

warnings.warn(
    "akidb_embed.models is deprecated; import from akidb_embed.backend instead",
    DeprecationWarning,
    stacklevel=2,
)
