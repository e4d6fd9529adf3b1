"""Checks every local backend applies the same way: options, modules, limits, token ids."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import (
    ConfigTypeError,
    ConfigValueError,
    EmbeddingInputError,
    ProviderError,
    TruncationError,
    UnknownConfigKeyError,
)
from ._st_config import SentenceTransformerSpec

__all__ = [
    "check_max_length",
    "check_modules",
    "check_options",
    "check_token_ids",
    "int_option",
    "str_option",
]


def check_options(
    options: Mapping[str, Any], allowed: Collection[str], provider: str
) -> dict[str, Any]:
    """Check the keys of a provider's ``options`` table.

    Parameters
    ----------
    options:
        ``EmbeddingConfig.options``.
    allowed:
        The keys *provider* takes.
    provider:
        Provider name, for the message.

    Returns
    -------
    dict
        A copy of *options*.

    Raises
    ------
    UnknownConfigKeyError
        A key *provider* does not take (the message suggests the closest valid key).
    """
    for key in options:
        if key not in allowed:
            raise UnknownConfigKeyError(
                key, f"[embedding.options] of the {provider} provider", allowed
            )
    return dict(options)


def int_option(options: Mapping[str, Any], key: str, *, minimum: int = 1) -> int | None:
    """``options[key]`` as an int of at least *minimum*, ``None`` when unset.

    Raises
    ------
    ConfigTypeError
        The value is not an int (``bool`` does not count).
    ConfigValueError
        The value is below *minimum*.
    """
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(f"options.{key}", "an integer", value, "options")
    if value < minimum:
        raise ConfigValueError(f"options.{key}", f"must be >= {minimum}, got {value}", "options")
    return value


def str_option(
    options: Mapping[str, Any], key: str, *, choices: Collection[str] | None = None
) -> str | None:
    """``options[key]`` as a non-empty string, ``None`` when unset.

    Raises
    ------
    ConfigTypeError
        The value is not a string, or is empty.
    ConfigValueError
        *choices* is given and the value is not one of them.
    """
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigTypeError(f"options.{key}", "a non-empty string", value, "options")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigValueError(
            f"options.{key}", f"must be one of {allowed} or unset, got {value!r}", "options"
        )
    return value


def check_modules(spec: SentenceTransformerSpec, provider: str, model: str) -> None:
    """Refuse a model whose sentence-transformers pipeline a backend cannot run exactly.

    Modules other than Transformer, Pooling and Normalize (``Dense``, ...) and pooling that
    leaves out the prompt tokens (``include_prompt = false``) would change the vectors;
    running without them silently would give vectors sentence-transformers never makes.

    Raises
    ------
    ProviderError
        The pipeline has such a module, or pools without the prompt tokens.
    """
    if spec.unsupported_modules:
        raise ProviderError(
            provider,
            f"model {model!r} has sentence-transformers modules this provider does not run: "
            f"{', '.join(spec.unsupported_modules)} (only Transformer, Pooling, Normalize)",
        )
    if not spec.include_prompt:
        raise ProviderError(
            provider,
            f"model {model!r} pools without its prompt tokens (include_prompt = false), "
            "which this provider does not support",
        )


def check_max_length(
    requested: int | None,
    model_limit: int,
    *,
    default: int | None = None,
    source: str = "argument",
) -> int:
    """The token limit to run with.

    Parameters
    ----------
    requested:
        ``EmbeddingConfig.max_length``; ``None`` for the model's own.
    model_limit:
        The most tokens the model takes.
    default:
        The limit when *requested* is unset (``max_seq_length`` of the sentence-transformers
        config), capped at *model_limit*; *model_limit* itself when ``None``.
    source:
        Where *requested* came from (``EmbeddingConfig.source("max_length")``).

    Raises
    ------
    ConfigValueError
        *requested* is above *model_limit*; the message names the limit. Cutting it
        silently would hide a wrong configuration.
    """
    if requested is None:
        return min(default, model_limit) if default else model_limit
    if requested > model_limit:
        raise ConfigValueError(
            "max_length",
            f"{requested} is more than the model's limit of {model_limit} tokens",
            source,
        )
    return requested


def check_token_ids(
    ids: Sequence[Sequence[int]], *, vocab_size: int, max_tokens: int
) -> list[list[int]]:
    """Check texts given as token ids, before a backend feeds them to its model.

    Parameters
    ----------
    ids:
        One sequence of token ids per text, special tokens included (as
        ``tokenizer.encode(text).ids`` gives them).
    vocab_size:
        Ids must be in ``range(vocab_size)``.
    max_tokens:
        The model's token limit; token ids are never truncated.

    Returns
    -------
    list of list of int
        The ids as plain ints.

    Raises
    ------
    EmbeddingInputError
        *ids* is not a sequence of sequences of ints, a sequence is empty, or an id is
        outside the vocabulary.
    TruncationError
        A sequence is longer than *max_tokens*.
    """
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence | np.ndarray):
        raise EmbeddingInputError(
            f"token ids must be a sequence of sequences of ints, got {type(ids).__name__}"
        )
    out: list[list[int]] = []
    for index, row in enumerate(ids):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence | np.ndarray):
            raise EmbeddingInputError(
                f"token ids at index {index} must be a sequence of ints, got {type(row).__name__}"
            )
        values = list(row)
        if not values:
            raise EmbeddingInputError(f"token ids at index {index} are empty")
        for value in values:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise EmbeddingInputError(
                    f"token ids at index {index} must be ints, got {type(value).__name__} {value!r}"
                )
        low, high = min(values), max(values)
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise EmbeddingInputError(
                f"token id {int(bad)} at index {index} is outside the vocabulary "
                f"(0 to {vocab_size - 1})"
            )
        if len(values) > max_tokens:
            raise TruncationError(index, len(values), max_tokens)
        out.append([int(v) for v in values])
    return out
