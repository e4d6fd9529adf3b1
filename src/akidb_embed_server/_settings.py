"""The server's settings: one frozen dataclass shared by the HTTP app, gRPC and the CLI.

:meth:`ServerSettings.load` layers them like the core's
:meth:`~akidb_embed.EmbeddingConfig.load`: defaults < the ``[server]`` table of the TOML
file < ``AKIDB_SERVER_*`` environment variables < explicit arguments (``serve`` flags),
and :meth:`ServerSettings.source` tells where each value came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The file discovery and TOML reading of the core, shared rather than copied: this
# distribution pins the exact core version, so its private helpers are a stable seam.
from akidb_embed.config import SOURCE_ARGUMENT as ARGUMENT
from akidb_embed.config import SOURCE_DEFAULT as DEFAULT
from akidb_embed.config import find_config_file, parse_bool, read_config_table
from akidb_embed.errors import ConfigTypeError, ConfigValueError, UnknownConfigKeyError

__all__ = ["ENV_PREFIX", "ServerSettings", "config_section"]

ENV_PREFIX = "AKIDB_SERVER_"
TABLE = "server"

# The seed's variable names, still honoured. An ``AKIDB_SERVER_*`` variable for the same
# setting is the more specific one and wins over these.
ENV_ALIASES: Mapping[str, str] = {
    "AKIDB_LOG_LEVEL": "log_level",
    "AKIDB_LOG_FORMAT": "log_format",
    "AKIDB_METRICS_ENABLED": "metrics_enabled",
}

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")
LOG_LEVELS: tuple[str, ...] = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

SECRET_MASK = "***"


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``akidb-embed serve`` can be told, with its defaults.

    Build it directly (``ServerSettings(port=9000)``) or with :meth:`load`. Every value is
    checked on construction; a bad one raises :class:`~akidb_embed.errors.ConfigError`
    naming the key and where the value came from. The API keys never appear in
    ``repr()``, :meth:`to_dict` or error messages.

    Attributes
    ----------
    host, port:
        Where to listen (``port`` 0 lets the OS choose).
    api_keys:
        Accepted ``Authorization: Bearer`` keys; empty means no authentication. After
        construction it also holds the keys read from *api_key_file*.
    api_key_file:
        A file with one key per line (blank lines and ``#`` comment lines skipped), read
        on construction and added to *api_keys*; missing, unreadable or keyless is an
        error.
    admin_api_keys:
        Keys of the admin API (``POST /admin/reload``), separate from *api_keys*: an
        admin key is not a client key, nor the reverse. Empty (the default) turns the
        admin API off (its paths answer 404). After construction it also holds the keys
        read from *admin_api_key_file*.
    admin_api_key_file:
        A file of admin keys, read like *api_key_file* and added to *admin_api_keys*
        (for secrets mounted as files, e.g. Docker or Kubernetes secrets).
    public_paths:
        Paths answered without a key even when keys are set.
    cors_origins:
        Allowed CORS origins (``"*"`` for any); empty (the default) turns CORS off.
    max_batch_tokens, max_batch_size, max_wait_ms, max_queue_texts:
        The micro-batcher's limits (see :class:`~akidb_embed_server.Batcher`);
        ``max_batch_size`` ``None`` uses the ``[embedding]`` ``batch_size``.
    max_client_batch_size:
        Most inputs one request may carry (HTTP 413 past it).
    max_input_chars:
        Longest text, in characters (HTTP 413 past it).
    max_body_bytes:
        Largest request body (HTTP 413, refused before it is read whole).
    request_timeout_s:
        Per-request deadline (HTTP 504 past it); ``None`` or ``0`` (stored as ``None``)
        means no deadline.
    drain_timeout_s:
        How long in-flight requests may take to finish on shutdown.
    drain_grace_s:
        On shutdown, how long the HTTP port stays open first, answering ``/ready`` 503
        (and new embed requests 503) while in-flight requests go on, so a load balancer
        polling readiness sees the server leave before its port closes. ``0`` (the
        default) closes the port at the signal. ``drain_timeout_s`` counts from the
        end of the grace.
    log_format, log_level:
        ``text`` or ``json`` lines; a :mod:`logging` level name (stored upper-case).
    access_log:
        Write one access line per request (at INFO). ``False`` keeps only the lines
        of requests answered with a 5xx (WARNING): a line is ~10% of the server's CPU
        for a short request (``benchmarks/bench_server.py --rows overhead``).
    metrics_enabled:
        Serve ``GET /metrics``.
    served_model_name:
        The name clients use in ``model``; defaults to the provider's model id.
    grpc_port:
        Port of the gRPC server (``0`` lets the OS choose), on the same host as HTTP.
    grpc_enabled:
        Serve gRPC beside HTTP (in the same process and event loop).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: str | None = None
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_api_key_file: str | None = None
    public_paths: tuple[str, ...] = ("/health", "/metrics")
    cors_origins: tuple[str, ...] = ()
    max_batch_tokens: int = 16384
    max_batch_size: int | None = None
    max_wait_ms: float = 2.0
    max_queue_texts: int = 4096
    max_client_batch_size: int = 2048
    max_input_chars: int = 1_000_000
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout_s: float | None = 30.0
    drain_timeout_s: float = 30.0
    drain_grace_s: float = 0.0
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    access_log: bool = True
    metrics_enabled: bool = True
    served_model_name: str | None = None
    grpc_port: int = 9090
    grpc_enabled: bool = True
    _sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # The keys given as api_keys / admin_api_keys, before their files' were added:
    # replace() starts from these, so a changed or removed key file never leaves stale
    # keys behind.
    _given_keys: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        sources = dict(self._sources)
        for name in _FIELDS:
            value = getattr(self, name)
            sources.setdefault(name, DEFAULT if _same(value, _DEFAULTS[name]) else ARGUMENT)
        for name in _FIELDS:
            object.__setattr__(self, name, _check(name, getattr(self, name), sources[name]))
        given_keys: dict[str, tuple[str, ...]] = {}
        for keys_name, file_name in _KEY_FILES.items():
            given = given_keys[keys_name] = getattr(self, keys_name)
            sources[_GIVEN_KEYS_SOURCE + keys_name] = given_source = sources[keys_name]
            path = getattr(self, file_name)
            if path is None:
                continue
            file_keys = _read_key_file(path, file_name, sources[file_name])
            object.__setattr__(self, keys_name, tuple(dict.fromkeys((*given, *file_keys))))
            where = f"file:{Path(path).resolve()}"
            sources[keys_name] = f"{given_source} + {where}" if given else where
        object.__setattr__(self, "_given_keys", given_keys)
        object.__setattr__(self, "_sources", sources)
        if self.grpc_enabled and self.port != 0 and self.grpc_port == self.port:
            raise ConfigValueError(
                "grpc_port",
                f"must differ from port ({self.port}): HTTP and gRPC listen on their own "
                "ports (or set grpc_enabled = false)",
                sources["grpc_port"],
            )

    # -- public helpers ------------------------------------------------------------------

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return _FIELDS

    def source(self, name: str) -> str:
        """Where *name* got its value: ``"default"``, ``"argument"``, ``"env:VAR"`` or
        ``"file:PATH"`` (``api_keys`` / ``admin_api_keys`` read from a key file:
        ``"file:KEYFILE"``, after ``" + "`` when keys were given as well)."""
        if name not in _FIELDS:
            raise UnknownConfigKeyError(name, "source()", _FIELDS)
        return self._sources[name]

    def sources(self) -> dict[str, str]:
        """``{setting: source}`` for every setting."""
        return {name: self._sources[name] for name in _FIELDS}

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with *changes* applied (recorded as explicit arguments)."""
        for key in changes:
            if key not in _FIELDS:
                raise UnknownConfigKeyError(key, "arguments", _FIELDS)
        sources = {**self._sources, **dict.fromkeys(changes, ARGUMENT)}
        for keys_name in _KEY_FILES:
            if keys_name not in changes:
                changes[keys_name] = self._given_keys[keys_name]
                sources[keys_name] = self._sources[_GIVEN_KEYS_SOURCE + keys_name]
        return dataclasses.replace(self, **changes, _sources=sources)

    def to_dict(self) -> dict[str, Any]:
        """The resolved values, JSON-serialisable, with every API key shown as ``"***"``
        (so the list still tells how many there are)."""
        values: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            values[name] = list(value) if isinstance(value, tuple) else value
        for name in _SECRETS:
            values[name] = [SECRET_MASK] * len(getattr(self, name))
        return values

    def batcher_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~akidb_embed_server.Batcher`."""
        return {
            "max_batch_tokens": self.max_batch_tokens,
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "max_queue_texts": self.max_queue_texts,
        }

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ServerSettings:
        """Resolve the settings.

        Precedence: *overrides* (the ``serve`` flags) > ``AKIDB_SERVER_*`` environment
        variables > the seed's ``AKIDB_LOG_LEVEL``, ``AKIDB_LOG_FORMAT`` and
        ``AKIDB_METRICS_ENABLED`` > the ``[server]`` table of the file > defaults. The
        file is found as the core finds it: *path*, else ``$AKIDB_CONFIG``, else
        ``./akidb.toml`` when it exists; an explicitly named file must exist. In the
        environment, list settings are comma-separated, ``none`` (or empty) sets an
        optional setting to ``None``, and booleans are ``1/0``, ``true/false``,
        ``yes/no`` or ``on/off``.

        Raises
        ------
        ConfigFileError
            The file is missing, unreadable or not valid TOML.
        UnknownConfigKeyError
            A key in ``[server]``, an ``AKIDB_SERVER_*`` variable or an override is not a
            setting.
        ConfigTypeError, ConfigValueError
            A value has the wrong type or is out of range, or the key file cannot be read.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}

        file = find_config_file(path, env)
        if file is not None:
            for key, value in read_config_table(file, TABLE).items():
                if key not in _FIELDS:
                    raise UnknownConfigKeyError(key, f"[{TABLE}] of {file}", _FIELDS)
                values[key] = value
                sources[key] = f"file:{file}"

        # Aliases first, so the AKIDB_SERVER_* variable of the same setting overrides them.
        for var, key in ENV_ALIASES.items():
            if var in env:
                values[key] = _parse_env(key, env[var], f"env:{var}")
                sources[key] = f"env:{var}"
        for var, raw in sorted(env.items()):
            if not var.startswith(ENV_PREFIX):
                continue
            key = var[len(ENV_PREFIX) :].lower()
            if key not in _FIELDS:
                valid = [ENV_PREFIX + f.upper() for f in _FIELDS]
                raise UnknownConfigKeyError(var, "the environment", valid)
            values[key] = _parse_env(key, raw, f"env:{var}")
            sources[key] = f"env:{var}"

        for key, value in overrides.items():
            if key not in _FIELDS:
                raise UnknownConfigKeyError(key, "arguments", _FIELDS)
            values[key] = value
            sources[key] = ARGUMENT
        return cls(**values, _sources=sources)


# Where the keys given as api_keys / admin_api_keys came from (the public source also
# names the key file), under this prefix + the setting's name.
_GIVEN_KEYS_SOURCE = "_given_"
# Each key list and the file whose keys are added to it.
_KEY_FILES = {"api_keys": "api_key_file", "admin_api_keys": "admin_api_key_file"}

_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ServerSettings) if not f.name.startswith("_")
)
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(ServerSettings) if not f.name.startswith("_")
}

# Settings by kind; every field is in exactly one.
_STRINGS = (
    "host",
    "api_key_file",
    "admin_api_key_file",
    "log_format",
    "log_level",
    "served_model_name",
)
_LISTS = ("api_keys", "admin_api_keys", "public_paths", "cors_origins")
# Never shown: to_dict() masks them, error messages name their type only.
_SECRETS = ("api_keys", "admin_api_keys")
_INTS = (
    "port",
    "max_batch_tokens",
    "max_batch_size",
    "max_queue_texts",
    "max_client_batch_size",
    "max_input_chars",
    "max_body_bytes",
    "grpc_port",
)
_FLOATS = ("max_wait_ms", "request_timeout_s", "drain_timeout_s", "drain_grace_s")
_BOOLS = ("access_log", "metrics_enabled", "grpc_enabled")
_NULLABLE = (
    "api_key_file",
    "admin_api_key_file",
    "max_batch_size",
    "request_timeout_s",
    "served_model_name",
)
# Lower bounds; the ports also have an upper one.
_MINIMUM: dict[str, float] = {
    "port": 0,
    "grpc_port": 0,
    "max_batch_tokens": 1,
    "max_batch_size": 1,
    "max_queue_texts": 1,
    "max_client_batch_size": 1,
    "max_input_chars": 1,
    "max_body_bytes": 1,
    "max_wait_ms": 0,
    "request_timeout_s": 0,
    "drain_timeout_s": 0,
    "drain_grace_s": 0,
}


def _same(value: Any, default: Any) -> bool:
    # A list given for a tuple default is still the default.
    if isinstance(value, list):
        value = tuple(value)
    return bool(type(value) is type(default) and value == default)


def _type_error(name: str, expected: str, value: Any, source: str) -> ConfigTypeError:
    if name not in _SECRETS:
        return ConfigTypeError(name, expected, value, source)
    err = ConfigTypeError(name, expected, SECRET_MASK, source)
    # The value may be a key: name its type only.
    err.args = (
        f"Configuration key {name!r} from {source} must be {expected}, "
        f"got {type(value).__name__} (value not shown).",
    )
    return err


def _check(name: str, value: Any, source: str) -> Any:
    """*value* checked for setting *name*, normalised (lists to tuples, ints to floats,
    level names upper-case, a zero request timeout to ``None``)."""
    if value is None and name in _NULLABLE:
        return None
    nullable = " or null" if name in _NULLABLE else ""
    if name in _LISTS:
        # A bare string is refused: iterating it would make one entry per character.
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _type_error(name, "a list of strings", value, source)
        for item in value:
            if not isinstance(item, str):
                raise _type_error(name, "a list of strings", value, source)
        items = tuple(value)
        _check_list(name, items, source)
        return items
    if name in _KEY_FILES.values() and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if name in _STRINGS:
        if not isinstance(value, str):
            raise ConfigTypeError(name, "a string" + nullable, value, source)
        if not value.strip():
            raise ConfigValueError(name, "must not be empty", source)
        if name == "log_format":
            value = value.lower()
            if value not in LOG_FORMATS:
                allowed = ", ".join(map(repr, LOG_FORMATS))
                raise ConfigValueError(name, f"must be one of {allowed}, got {value!r}", source)
        if name == "log_level":
            value = value.upper()
            value = "WARNING" if value == "WARN" else value
            if value not in LOG_LEVELS:
                allowed = ", ".join(LOG_LEVELS)
                raise ConfigValueError(name, f"must be one of {allowed}, got {value!r}", source)
        return value
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise ConfigTypeError(name, "a boolean", value, source)
        return value
    # Numbers. bool is an int subclass: refuse True where a number is meant.
    if isinstance(value, bool):
        kind = "an integer" if name in _INTS else "a number"
        raise ConfigTypeError(name, kind + nullable, value, source)
    if name in _INTS:
        if not isinstance(value, int):
            raise ConfigTypeError(name, "an integer" + nullable, value, source)
    else:
        if not isinstance(value, (int, float)):
            raise ConfigTypeError(name, "a number" + nullable, value, source)
        value = float(value)
        if not math.isfinite(value):
            raise ConfigValueError(name, f"must be a finite number, got {value}", source)
    low = _MINIMUM[name]
    if value < low:
        raise ConfigValueError(name, f"must be >= {low:g}, got {value:g}", source)
    if name in ("port", "grpc_port") and value > 65535:
        raise ConfigValueError(name, f"must be <= 65535, got {value}", source)
    if name == "request_timeout_s" and value == 0:
        return None  # 0 is how TOML (which has no null) and flags say "no deadline"
    return value


def _check_list(name: str, items: tuple[str, ...], source: str) -> None:
    for i, item in enumerate(items):
        if name in _SECRETS:
            problem = _key_problem(item)
            if problem:
                raise ConfigValueError(name, f"key {i} {problem}", source)
        elif not item.strip():
            raise ConfigValueError(name, f"entry {i} is empty", source)
        elif name == "public_paths" and not item.startswith("/"):
            raise ConfigValueError(name, f"entry {i} must start with '/', got {item!r}", source)


def _key_problem(key: str) -> str | None:
    """Why *key* cannot be a Bearer key (never quoting it), or None."""
    if not key:
        return "is empty"
    # A header carries visible ASCII only; a space would end the token.
    if not all("!" <= c <= "~" for c in key):
        return "has a space, a control or a non-ASCII character"
    return None


def _read_key_file(path: str, name: str, source: str) -> tuple[str, ...]:
    """The keys of key file *path*, given as setting *name* (which errors name)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigValueError(name, f"no such file: {path}", source) from None
    except UnicodeDecodeError:
        raise ConfigValueError(name, f"{path} is not UTF-8 text", source) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigValueError(name, f"cannot read {path}: {reason}", source) from None
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        problem = _key_problem(key)
        if problem:
            raise ConfigValueError(name, f"{path}, line {number}: {problem}", source)
        keys.append(key)
    if not keys:
        raise ConfigValueError(name, f"{path} has no keys", source)
    return tuple(keys)


def _parse_env(key: str, raw: str, source: str) -> Any:
    """The value of variable *raw* for setting *key*, before :func:`_check`."""
    text = raw.strip()
    if key in _LISTS:
        return [item.strip() for item in text.split(",") if item.strip()]
    if key in _NULLABLE and text.lower() in ("", "none", "null"):
        return None
    if key in _BOOLS:
        flag = parse_bool(text)
        if flag is not None:
            return flag
        raise ConfigTypeError(key, "a boolean (1/0, true/false, yes/no, on/off)", raw, source)
    if key in _INTS:
        try:
            return int(text)
        except ValueError:
            raise ConfigTypeError(key, "an integer", raw, source) from None
    if key in _FLOATS:
        try:
            return float(text)
        except ValueError:
            raise ConfigTypeError(key, "a number", raw, source) from None
    return raw


def config_section(path: str | None) -> dict[str, tuple[Any, str]]:
    """The ``[server]`` section of ``akidb-embed config``: ``{setting: (value, source)}``,
    API keys (client and admin) masked (entry point ``akidb_embed.config_sections``)."""
    settings = ServerSettings.load(path)
    values = settings.to_dict()
    sources = settings.sources()
    return {name: (values[name], sources[name]) for name in _FIELDS}
