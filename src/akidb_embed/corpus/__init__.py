"""Embed whole corpora into resumable, sharded Parquet datasets, then index them.

Needs pyarrow: ``pip install 'akidb-embed[corpus]'`` (the ``ray`` extra brings it too).
:func:`embed_corpus` (and ``akidb-embed embed-corpus``) plans the input into shards,
skips those an earlier run already wrote, and hands the rest to an engine: ``local``
(this process) or ``ray`` (``akidb-embed-ray``). The same shard reader, batch step and
writer serve both engines, so their outputs are the same.

The fingerprint of the vectors travels in every Parquet file's schema metadata
(:data:`FINGERPRINT_KEY`) and in the manifest; :func:`read_embeddings` checks it, and
``Collection.add_embeddings`` / ``akidb-embed index build --from-embeddings`` refuse
vectors of another embedding.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._batch import (
        CONFIG_KEY,
        FINGERPRINT_KEY,
        ON_ERROR,
        bad_text,
        embed_table,
        embedding_type,
        manager_for_corpus,
        with_fingerprint,
    )
    from ._input import (
        ERROR_COLUMN,
        ROW_COLUMN,
        SHARD_COLUMN,
        CorpusPlan,
        InputSpec,
        Piece,
        ShardPlan,
        find_files,
        plan_corpus,
        read_shard,
    )
    from ._output import FORMAT, MANIFEST, EmbeddingsOutput, OutputWriter, read_embeddings
    from ._run import ENGINE_GROUP, CorpusJob, CorpusReport, embed_corpus, engines, get_engine

# pyarrow is imported with the first name used, so that registering the command (and
# `akidb-embed --help`) stays cheap and works without it.
_WHERE = {
    **dict.fromkeys(
        (
            "CONFIG_KEY",
            "FINGERPRINT_KEY",
            "ON_ERROR",
            "bad_text",
            "embed_table",
            "embedding_type",
            "manager_for_corpus",
            "with_fingerprint",
        ),
        "._batch",
    ),
    **dict.fromkeys(
        (
            "ERROR_COLUMN",
            "ROW_COLUMN",
            "SHARD_COLUMN",
            "CorpusPlan",
            "InputSpec",
            "Piece",
            "ShardPlan",
            "find_files",
            "plan_corpus",
            "read_shard",
        ),
        "._input",
    ),
    **dict.fromkeys(
        ("FORMAT", "MANIFEST", "EmbeddingsOutput", "OutputWriter", "read_embeddings"), "._output"
    ),
    **dict.fromkeys(
        ("ENGINE_GROUP", "CorpusJob", "CorpusReport", "embed_corpus", "engines", "get_engine"),
        "._run",
    ),
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


__all__ = [
    "CONFIG_KEY",
    "ENGINE_GROUP",
    "ERROR_COLUMN",
    "FINGERPRINT_KEY",
    "FORMAT",
    "MANIFEST",
    "ON_ERROR",
    "ROW_COLUMN",
    "SHARD_COLUMN",
    "CorpusJob",
    "CorpusPlan",
    "CorpusReport",
    "EmbeddingsOutput",
    "InputSpec",
    "OutputWriter",
    "Piece",
    "ShardPlan",
    "bad_text",
    "embed_corpus",
    "embed_table",
    "embedding_type",
    "engines",
    "find_files",
    "get_engine",
    "manager_for_corpus",
    "plan_corpus",
    "read_embeddings",
    "read_shard",
    "with_fingerprint",
]
