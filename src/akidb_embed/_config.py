"""``EmbeddingConfig``: the ``[embedding]`` table of a TOML file plus environment overrides."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    ConfigFileError,
    ConfigTypeError,
    ConfigValueError,
    UnknownConfigKeyError,
)

__all__ = ["ENV_PREFIX", "SECRET_MASK", "EmbeddingConfig", "redact_options"]

#: What a secret value is shown as.
SECRET_MASK = "***"
_SECRET_OPTION = re.compile(r"(^|_)(api_?key|key|token|secret|password|passwd|credentials?)$", re.I)


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """*options* with the values of secret-looking keys (``api_key``, ``hf_token``,
    ``password``, ...) replaced by ``"***"`` (nested tables too)."""
    shown: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            shown[key] = redact_options(value)
        elif value is not None and _SECRET_OPTION.search(str(key)):
            shown[key] = SECRET_MASK
        else:
            shown[key] = value
    return shown


ENV_PREFIX = "AKIDB_EMBEDDING_"
CONFIG_ENV = "AKIDB_CONFIG"
DEFAULT_CONFIG_FILE = "akidb.toml"

DEFAULT = "default"
ARGUMENT = "argument"

# Environment variables that set one key of the free ``options`` table.
_ENV_OPTION_ALIASES = {"TARGET": "target"}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which provider and model to use, and how.

    Build it directly (``EmbeddingConfig(provider="mock")``) or with :meth:`load`,
    which layers explicit arguments over ``AKIDB_EMBEDDING_*`` environment
    variables over the ``[embedding]`` table of a TOML file over the defaults.
    :meth:`source` tells where each value came from.

    Parameters
    ----------
    provider:
        Registered provider name (``onnx``, ``mlx``, ``mock``, ``python-bridge``, ...).
    model:
        Hugging Face repo id (``org/name`` or ``org/name@revision``) or a local folder.
    python_path:
        Interpreter the ``python-bridge`` provider runs its worker with.
    batch_size:
        Texts per provider call.
    max_length:
        Token limit; ``None`` uses the model's own.
    normalize:
        Return unit-norm vectors.
    truncation:
        ``"truncate"`` cuts long texts (and counts them); ``"error"`` raises.
    cache_dir:
        Where models are cached (defaults to the Hugging Face cache).
    offline:
        Never touch the network.
    cache_size:
        Vectors the manager keeps in its in-memory LRU cache (0 disables it).
    options:
        Provider-specific keys (``[embedding.options]``).
    """

    provider: str = "onnx"
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    python_path: str | None = None
    batch_size: int = 32
    max_length: int | None = None
    normalize: bool = True
    truncation: str = "truncate"
    cache_dir: str | None = None
    offline: bool = False
    cache_size: int = 4096
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    _sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        sources = dict(self._sources)
        for name in _FIELDS:
            sources.setdefault(
                name, DEFAULT if getattr(self, name) == _DEFAULTS[name] else ARGUMENT
            )
        object.__setattr__(self, "_sources", sources)
        object.__setattr__(self, "options", dict(self.options))
        for name in _FIELDS:
            _check(name, getattr(self, name), sources[name])

    # -- public helpers ------------------------------------------------------------------

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """Names of the configuration keys."""
        return _FIELDS

    def source(self, name: str) -> str:
        """Where *name* got its value: ``"default"``, ``"argument"``, ``"env:VAR"`` or
        ``"file:PATH"``."""
        if name not in _FIELDS:
            raise UnknownConfigKeyError(name, "source()", _FIELDS)
        return self._sources[name]

    def sources(self) -> dict[str, str]:
        """``{field: source}`` for every field."""
        return {name: self._sources[name] for name in _FIELDS}

    def replace(self, **changes: Any) -> EmbeddingConfig:
        """A copy with *changes* applied (recorded as explicit arguments)."""
        for key in changes:
            if key not in _FIELDS:
                raise UnknownConfigKeyError(key, "arguments", _FIELDS)
        sources = {**self._sources, **{k: ARGUMENT for k in changes}}
        return dataclasses.replace(self, **changes, _sources=sources)

    def option(self, key: str, default: Any = None) -> Any:
        """One key of the provider-specific ``options`` table."""
        return self.options.get(key, default)

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        """The resolved values, JSON-serialisable.

        With *redact*, the values of secret-looking options (``api_key``, ``token``,
        ``password``, ``secret``, ... by name) are shown as ``"***"``: for display.
        """
        values = {name: getattr(self, name) for name in _FIELDS}
        values["options"] = redact_options(self.options) if redact else dict(self.options)
        return values

    def __repr__(self) -> str:
        # Options may hold an API key; a repr ends up in logs and tracebacks.
        shown = ", ".join(f"{k}={v!r}" for k, v in self.to_dict(redact=True).items())
        return f"EmbeddingConfig({shown})"

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> EmbeddingConfig:
        """Resolve the configuration.

        Precedence: *overrides* > ``AKIDB_EMBEDDING_*`` environment > the ``[embedding]``
        table of the file > defaults. The file is *path*, else ``$AKIDB_CONFIG``, else
        ``./akidb.toml`` when it exists; an explicitly named file must exist.

        Raises
        ------
        ConfigFileError
            The file is missing, unreadable or not valid TOML.
        UnknownConfigKeyError
            A key (in the file, the environment or *overrides*) is not a field.
        ConfigTypeError, ConfigValueError
            A value has the wrong type or is out of range.
        """
        environ = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        options: dict[str, Any] = {}

        file = _find_file(path, environ)
        if file is not None:
            table = _read_table(file)
            src = f"file:{file}"
            for key, value in table.items():
                if key not in _FIELDS:
                    raise UnknownConfigKeyError(key, f"[embedding] of {file}", _FIELDS)
                if key == "options":
                    if not isinstance(value, dict):
                        raise ConfigTypeError("options", "a table", value, src)
                    options.update(value)
                else:
                    values[key] = value
                sources[key] = src

        for var, raw in sorted(environ.items()):
            if not var.startswith(ENV_PREFIX):
                continue
            suffix = var[len(ENV_PREFIX) :]
            src = f"env:{var}"
            if suffix in _ENV_OPTION_ALIASES:
                options[_ENV_OPTION_ALIASES[suffix]] = raw
                sources["options"] = src
                continue
            key = suffix.lower()
            if key not in _FIELDS:
                valid = [ENV_PREFIX + f.upper() for f in _FIELDS] + [
                    ENV_PREFIX + a for a in _ENV_OPTION_ALIASES
                ]
                raise UnknownConfigKeyError(var, "the environment", valid)
            if key == "options":
                options.update(_parse_env_options(raw, src))
            else:
                values[key] = _parse_env(key, raw, src)
            sources[key] = src

        for key, value in overrides.items():
            if key not in _FIELDS:
                raise UnknownConfigKeyError(key, "arguments", _FIELDS)
            if key == "options":
                if not isinstance(value, Mapping):
                    raise ConfigTypeError("options", "a mapping", value, ARGUMENT)
                options.update(value)
            else:
                values[key] = value
            sources[key] = ARGUMENT

        if options:
            values["options"] = options
        return cls(**values, _sources=sources)


_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(EmbeddingConfig) if not f.name.startswith("_")
)
_DEFAULTS: dict[str, Any] = {
    f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    for f in dataclasses.fields(EmbeddingConfig)
    if not f.name.startswith("_")
}

# (expected python types, human description, allows None)
_TYPES: dict[str, tuple[tuple[type, ...], str, bool]] = {
    "provider": ((str,), "a string", False),
    "model": ((str,), "a string", False),
    "python_path": ((str,), "a string", True),
    "batch_size": ((int,), "an integer", False),
    "max_length": ((int,), "an integer", True),
    "normalize": ((bool,), "a boolean", False),
    "truncation": ((str,), "a string", False),
    "cache_dir": ((str,), "a string", True),
    "offline": ((bool,), "a boolean", False),
    "cache_size": ((int,), "an integer", False),
    "options": ((Mapping,), "a table", False),
}
_TRUNCATION_MODES = ("truncate", "error")


def _check(name: str, value: Any, source: str) -> None:
    types, desc, nullable = _TYPES[name]
    if value is None and nullable:
        return
    if isinstance(value, os.PathLike) and str in types:
        raise ConfigTypeError(name, desc + " (use str(path))", value, source)
    # bool is an int subclass: refuse True where a number is meant, and 1 for a flag.
    if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
        raise ConfigTypeError(name, desc + (" or null" if nullable else ""), value, source)
    if name == "batch_size" and isinstance(value, int) and value < 1:
        raise ConfigValueError(name, f"must be >= 1, got {value}", source)
    if name == "max_length" and isinstance(value, int) and value < 1:
        raise ConfigValueError(name, f"must be >= 1, got {value}", source)
    if name == "cache_size" and isinstance(value, int) and value < 0:
        raise ConfigValueError(name, f"must be >= 0, got {value}", source)
    if name == "truncation" and value not in _TRUNCATION_MODES:
        raise ConfigValueError(
            name, f"must be one of {', '.join(map(repr, _TRUNCATION_MODES))}, got {value!r}", source
        )
    if name in ("provider", "model") and isinstance(value, str) and not value.strip():
        raise ConfigValueError(name, "must not be empty", source)


def _parse_env(key: str, raw: str, source: str) -> Any:
    types, desc, nullable = _TYPES[key]
    text = raw.strip()
    if nullable and text.lower() in ("", "none", "null"):
        return None
    if bool in types:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigTypeError(key, "a boolean (1/0, true/false, yes/no, on/off)", raw, source)
    if int in types:
        try:
            return int(text)
        except ValueError:
            raise ConfigTypeError(key, desc, raw, source) from None
    return raw


def _parse_env_options(raw: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigTypeError("options", "a JSON object", raw, source) from exc
    if not isinstance(value, dict):
        raise ConfigTypeError("options", "a JSON object", value, source)
    return value


def _find_file(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    if path is not None:
        explicit = Path(path)
    elif environ.get(CONFIG_ENV):
        explicit = Path(environ[CONFIG_ENV])
    else:
        default = Path(DEFAULT_CONFIG_FILE)
        return default.resolve() if default.is_file() else None
    if not explicit.is_file():
        raise ConfigFileError(str(explicit), "no such file")
    return explicit.resolve()


_LINE_RE = re.compile(r"at line (\d+)")


def _read_table(path: Path, name: str = "embedding") -> dict[str, Any]:
    """The ``[name]`` table of the TOML file *path* (empty when absent); the server reads
    its ``[server]`` table with it."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib

    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigFileError(str(path), exc.strerror or str(exc)) from exc
    except tomllib.TOMLDecodeError as exc:
        match = _LINE_RE.search(str(exc))
        line = getattr(exc, "lineno", None) or (int(match.group(1)) if match else None)
        raise ConfigFileError(str(path), f"invalid TOML: {exc}", line=line) from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(str(path), f"not UTF-8 text: {exc}") from exc
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ConfigTypeError(name, "a table", table, f"file:{path}")
    return table
