"""The first steps of every local backend: find the model, read it, refuse what it can't run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelNotFoundError
from ._checks import check_modules
from ._resolve import SENTENCE_TRANSFORMERS_FILES, ResolvedModel, resolve_model
from ._st_config import SentenceTransformerSpec, read_sentence_transformers_config

if TYPE_CHECKING:
    from .._config import EmbeddingConfig

__all__ = ["DEFAULT_ONNX_FILES", "open_model", "open_onnx_model"]

#: Where an ONNX file is looked for when a provider's ``onnx_file`` option names none.
DEFAULT_ONNX_FILES: tuple[str, ...] = ("onnx/model.onnx", "model.onnx")
_EXPORT_HINT = "akidb-embed export {model} --out DIR"


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


def open_onnx_model(
    config: EmbeddingConfig,
    provider: str,
    *,
    onnx_file: str | None = None,
    revision: str | None = None,
) -> tuple[ResolvedModel, SentenceTransformerSpec, Path]:
    """:func:`open_model` for a folder with an ONNX export (as ``akidb-embed export`` writes).

    Parameters
    ----------
    onnx_file:
        The ONNX file in the folder (``model_O2.onnx`` is also looked for under ``onnx/``);
        default :data:`DEFAULT_ONNX_FILES`.
    revision:
        Branch, tag or commit.

    Returns
    -------
    tuple of ResolvedModel, SentenceTransformerSpec and Path
        As :func:`open_model`, plus the ONNX file found.

    Raises
    ------
    ModelNotFoundError
        Not found, or without the ONNX file (the message says how to export one) or
        ``tokenizer.json``.
    ProviderError
        The pipeline has modules the backend does not run.
    """
    candidates = (onnx_file, f"onnx/{onnx_file}") if onnx_file else DEFAULT_ONNX_FILES
    resolved, spec = open_model(
        config,
        provider,
        revision=revision,
        # "*" also takes external weights (model.onnx_data, model.onnx.data).
        files=["vocab.txt", *(c + "*" for c in candidates)],
        required=[tuple(candidates), ("tokenizer.json", "*/tokenizer.json")],
        missing_hint=(
            f"It has no ONNX file ({' or '.join(candidates)}): set options.onnx_file to "
            "the one it ships, or make an ONNX folder from a safetensors model with: "
            + _EXPORT_HINT.format(model=config.model)
            + "."
        ),
    )
    root = resolved.path
    path = next(root / c for c in candidates if (root / c).is_file())
    return resolved, spec, path
