"""Typed errors raised by akidb-embed.

Every error derives from :class:`AkidbEmbedError` *and* from the builtin exception a
caller would naturally catch (``LookupError``, ``ImportError``, ``ValueError``,
``TypeError``, ``RuntimeError``, ``TimeoutError``), so both ``except AkidbEmbedError``
and ``except ValueError`` work.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

__all__ = [
    "AkidbEmbedError",
    "BadRowError",
    "ConfigError",
    "ConfigFileError",
    "ConfigTypeError",
    "ConfigValueError",
    "CorpusChangedError",
    "CorpusInputError",
    "DuplicateProviderError",
    "EmbeddingInputError",
    "EmbeddingsOutputError",
    "ExecutionProviderError",
    "FingerprintMismatchError",
    "IndexBackendNotInstalledError",
    "IndexCorruptedError",
    "IndexInputError",
    "InvalidRequestError",
    "MissingDependencyError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "ProviderBusyError",
    "ProviderClosedError",
    "ProviderError",
    "ProviderNotInstalledError",
    "ProviderOutputError",
    "TruncationError",
    "UnknownConfigKeyError",
    "UnknownIdError",
    "UnknownProviderError",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerProtocolError",
    "WorkerStartupError",
    "WorkerTimeoutError",
    "closest",
]


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to *name*, or ``None`` when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


class AkidbEmbedError(Exception):
    """Base class of every error raised by akidb-embed."""


# --- registry -------------------------------------------------------------------------


class UnknownProviderError(AkidbEmbedError, LookupError):
    """No provider is registered under the requested name."""

    def __init__(self, name: str, available: Sequence[str]) -> None:
        self.name = name
        self.available = sorted(available)
        self.suggestion = closest(name, self.available)
        msg = f"Unknown embedding provider: {name!r}."
        if self.suggestion:
            msg += f" Did you mean {self.suggestion!r}?"
        msg += f" Available providers: {', '.join(self.available) or '(none)'}."
        super().__init__(msg)

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0])


class ProviderNotInstalledError(AkidbEmbedError, ImportError):
    """The provider is known but its dependencies are not installed."""

    def __init__(self, name: str, install: str, reason: str | None = None) -> None:
        self.provider = name
        self.install = install
        msg = f"Embedding provider {name!r} is not available"
        msg += f" ({reason})." if reason else "."
        msg += f" Install it with: {install}"
        super().__init__(msg)


class DuplicateProviderError(AkidbEmbedError, ValueError):
    """Two registrations claim the same provider name."""

    def __init__(self, name: str, first: str, second: str) -> None:
        self.name = name
        self.claimants = (first, second)
        super().__init__(
            f"Embedding provider name {name!r} is claimed twice: by {first} and by {second}."
        )


# --- configuration --------------------------------------------------------------------


class ConfigError(AkidbEmbedError, ValueError):
    """The configuration is invalid."""


class ConfigFileError(ConfigError):
    """A configuration file cannot be read or is not valid TOML."""

    def __init__(self, path: str, reason: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"Cannot read config file {where}: {reason}")


class UnknownConfigKeyError(ConfigError):
    """A key in the configuration is not a known field (usually a typo)."""

    def __init__(self, key: str, source: str, valid: Iterable[str]) -> None:
        self.key = key
        self.source = source
        self.suggestion = closest(key, valid)
        msg = f"Unknown configuration key {key!r} in {source}."
        if self.suggestion:
            msg += f" Did you mean {self.suggestion!r}?"
        else:
            msg += f" Valid keys: {', '.join(sorted(valid))}."
        super().__init__(msg)


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value has the wrong type."""

    def __init__(self, key: str, expected: str, value: object, source: str) -> None:
        self.key = key
        self.expected = expected
        self.source = source
        super().__init__(
            f"Configuration key {key!r} from {source} must be {expected}, "
            f"got {type(value).__name__} {value!r}."
        )


class ConfigValueError(ConfigError):
    """A configuration value has the right type but an invalid value."""

    def __init__(self, key: str, message: str, source: str) -> None:
        self.key = key
        self.source = source
        super().__init__(f"Configuration key {key!r} from {source}: {message}")


# --- input and output -----------------------------------------------------------------


class EmbeddingInputError(AkidbEmbedError, TypeError):
    """The texts passed to ``embed`` are not a sequence of ``str``."""


class InvalidRequestError(EmbeddingInputError, ValueError):
    """A request's options are invalid (an unknown truncation mode, a policy the
    provider cannot apply, something that is not a request)."""


class TruncationError(AkidbEmbedError, ValueError):
    """A text is longer than the model accepts and truncation is set to ``"error"``."""

    def __init__(self, index: int, tokens: int, max_tokens: int) -> None:
        self.index = index
        self.tokens = tokens
        self.max_tokens = max_tokens
        super().__init__(
            f"Text at index {index} has {tokens} tokens, more than the model's limit of "
            f"{max_tokens} (truncation = 'error'). Shorten it, or set truncation = 'truncate'."
        )


class ModelMismatchError(AkidbEmbedError, ValueError):
    """A request names a model other than the one the manager serves."""


class ProviderError(AkidbEmbedError, RuntimeError):
    """A provider failed while embedding."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"Provider {provider!r}: {message}")


class ProviderOutputError(ProviderError):
    """A provider returned an array of the wrong shape, dtype or with non-finite values."""


class ProviderClosedError(AkidbEmbedError, RuntimeError):
    """The manager or provider has been closed."""


class ProviderBusyError(AkidbEmbedError, TimeoutError):
    """No provider slot came free in time: every one of the provider's
    ``max_concurrency`` calls stayed busy for the whole wait."""


class ModelNotFoundError(AkidbEmbedError, FileNotFoundError):
    """A model could not be found locally and could not (or may not) be downloaded."""

    def __init__(self, model: str, searched: Sequence[str], hint: str | None = None) -> None:
        self.model = model
        self.searched = list(searched)
        msg = f"Model {model!r} was not found. Searched: " + "; ".join(self.searched) + "."
        if hint:
            msg += f" {hint}"
        super().__init__(msg)

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror)
        return str(self.args[0])


class ExecutionProviderError(AkidbEmbedError, RuntimeError):
    """A requested accelerator/execution provider is not available (no silent fallback)."""


# --- python-bridge ----------------------------------------------------------------------


class WorkerError(ProviderError):
    """The python-bridge worker process failed."""

    def __init__(self, provider: str, message: str, stderr_tail: str = "") -> None:
        self.stderr_tail = stderr_tail
        if stderr_tail:
            message = f"{message}\n--- worker stderr (tail) ---\n{stderr_tail}"
        super().__init__(provider, message)


class WorkerStartupError(WorkerError):
    """The worker could not be started (missing interpreter, package or model)."""


class WorkerCrashedError(WorkerError):
    """The worker died while serving a request."""


class WorkerTimeoutError(WorkerError, TimeoutError):
    """The worker did not answer within the request timeout; it was killed and replaced."""


class WorkerProtocolError(WorkerError):
    """The worker sent bytes that are not a valid frame of the bridge protocol."""


# --- index ------------------------------------------------------------------------------


class IndexCorruptedError(AkidbEmbedError, ValueError):
    """A saved index is truncated, corrupted, or of an unknown format version."""


class FingerprintMismatchError(AkidbEmbedError, ValueError):
    """Vectors from one embedding model were mixed with an index built by another."""


class IndexInputError(AkidbEmbedError, ValueError):
    """Bad input to a vector index or collection (wrong dimension, duplicate or invalid id,
    non-finite vector, metadata that is not JSON, a path that is not an index)."""


class UnknownIdError(IndexInputError, KeyError):
    """An id is not in the index."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class IndexBackendNotInstalledError(AkidbEmbedError, ImportError):
    """The HNSW backend was asked for but hnswlib is not installed."""


# --- corpora (embed-corpus, akidb-embed-ray) -------------------------------------------


class MissingDependencyError(AkidbEmbedError, ImportError):
    """A feature needs an optional dependency that is not installed (the message names
    the ``pip install`` command)."""


class CorpusInputError(AkidbEmbedError, ValueError):
    """A corpus to embed cannot be read: a missing or unreadable file, invalid JSON, a
    missing id or text field, a column of the wrong type, an unknown engine option."""


class BadRowError(CorpusInputError):
    """A row's text is missing, not a string or empty, and ``on_error`` is ``"raise"``."""

    def __init__(self, row_id: str, shard: int | None, reason: str) -> None:
        self.row_id = row_id
        self.shard = shard
        self.reason = reason
        where = f" (shard {shard})" if shard is not None else ""
        super().__init__(
            f"row {row_id!r}{where}: {reason}. Fix the input, or pass on_error='skip' "
            "(--on-error skip) to leave such rows out and list them in a rejects file"
        )


class CorpusChangedError(CorpusInputError):
    """The input or the settings differ from those an existing embedding output was
    written with: resuming would mix two corpora."""


class EmbeddingsOutputError(AkidbEmbedError, ValueError):
    """A folder is not an embedding output, or one that is incomplete, truncated,
    corrupted, or of an unknown format version."""
