"""Reading the shared configuration file, for distributions with their own table.

``akidb-embed-server`` reads ``[server]`` from the same ``akidb.toml`` as the core's
``[embedding]``; these are the core's own helpers, so both find the same file (explicit
path, then ``$AKIDB_CONFIG``, then ``./akidb.toml``), report the same errors
(:class:`~akidb_embed.errors.ConfigFileError` with the line) and name sources alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._config import (
    _FALSE,
    _TRUE,
    ARGUMENT,
    CONFIG_ENV,
    DEFAULT,
    SECRET_MASK,
    _find_file,
    _read_table,
    redact_options,
)

__all__ = [
    "CONFIG_ENV",
    "SECRET_MASK",
    "SOURCE_ARGUMENT",
    "SOURCE_DEFAULT",
    "find_config_file",
    "parse_bool",
    "read_config_table",
    "redact_options",
]

SOURCE_DEFAULT = DEFAULT
"""The source of a value nobody set."""
SOURCE_ARGUMENT = ARGUMENT
"""The source of a value given by the caller (a keyword argument or a command-line flag)."""


def find_config_file(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The configuration file in use: *path*, else ``$AKIDB_CONFIG``, else ``./akidb.toml``
    if it exists (``None`` when there is none). An explicit file that does not exist raises
    :class:`~akidb_embed.errors.ConfigFileError`."""
    return _find_file(path, os.environ if environ is None else environ)


def read_config_table(path: Path, name: str) -> dict[str, Any]:
    """The ``[name]`` table of the TOML file *path* (empty when absent)."""
    return _read_table(path, name)


def parse_bool(text: str) -> bool | None:
    """``True``/``False`` for the words the core accepts in variables (``1/true/yes/on``,
    ``0/false/no/off``, any case); ``None`` for anything else."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None
