"""The first steps of every local backend: find the model, read it, refuse what it can't run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ModelNotFoundError
from ._checks import check_modules
from ._resolve import SENTENCE_TRANSFORMERS_FILES, ResolvedModel, resolve_model
from ._st_config import SentenceTransformerSpec, read_sentence_transformers_config

if TYPE_CHECKING:
    from .._config import EmbeddingConfig

__all__ = ["open_model"]


def open_model(
    config: EmbeddingConfig,
    provider: str,
    *,
    revision: str | None = None,
    files: Sequence[str] = (),
    required: Sequence[str | Sequence[str]] = (),
    missing_hint: str | None = None,
) -> tuple[ResolvedModel, SentenceTransformerSpec]:
    """Resolve ``config.model``, read its sentence-transformers configuration, check it.

    :func:`resolve_model` with the config's ``cache_dir`` and ``offline``, then
    :func:`read_sentence_transformers_config`, then :func:`check_modules`.

    Parameters
    ----------
    config:
        The provider's configuration.
    provider:
        Provider name, for error messages.
    revision:
        Branch, tag or commit (usually the provider's ``revision`` option).
    files:
        Patterns to download besides :data:`SENTENCE_TRANSFORMERS_FILES` (the weights).
    required:
        Files the model folder must hold, as :func:`resolve_model` takes them.
    missing_hint:
        What to tell the user when the model is found but lacks a required file.

    Returns
    -------
    tuple of ResolvedModel and SentenceTransformerSpec
        Where the files are, and how sentence-transformers would run them.

    Raises
    ------
    ModelNotFoundError
        Not found, or found without a required file.
    ProviderError
        The pipeline has modules the backend does not run (:func:`check_modules`).
    """
    try:
        resolved = resolve_model(
            config.model,
            revision=revision,
            cache_dir=config.cache_dir,
            offline=config.offline,
            allow_patterns=[*SENTENCE_TRANSFORMERS_FILES, *files],
            required=required,
        )
    except ModelNotFoundError as exc:
        if missing_hint is None or not any("missing:" in place for place in exc.searched):
            raise
        raise ModelNotFoundError(config.model, exc.searched, missing_hint) from exc
    spec = read_sentence_transformers_config(resolved.path)
    check_modules(spec, provider, config.model)
    return resolved, spec
