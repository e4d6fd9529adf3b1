"""One Arrow table of rows in, the same rows with their vectors out: the step every
engine runs (in this process, or in a Ray actor)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .._config import EmbeddingConfig
from .._manager import EmbeddingManager
from ..errors import BadRowError, CorpusInputError, UnknownConfigKeyError
from ..fingerprint import Fingerprint
from ._arrow import pa
from ._input import ERROR_COLUMN, ROW_COLUMN, SHARD_COLUMN

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "FINGERPRINT_KEY",
    "ON_ERROR",
    "embed_table",
    "embedding_type",
    "manager_for_corpus",
    "with_fingerprint",
]

ON_ERROR = ("raise", "skip")
#: Schema metadata keys of every table and Parquet file of vectors.
FINGERPRINT_KEY = b"akidb_embed.fingerprint"
CONFIG_KEY = b"akidb_embed.embedding_config"


def manager_for_corpus(config: EmbeddingConfig, threads: int | None = None) -> EmbeddingManager:
    """An :class:`EmbeddingManager` for one pass over a corpus: no cache (every text is
    new), and the provider's ``threads`` option set to *threads* unless the config sets
    it, for a provider that takes one (onnx does; one that does not keeps its default).
    """
    config = config.replace(cache_size=0)
    if threads is not None and "threads" not in config.options:
        try:
            return EmbeddingManager.from_config(
                config.replace(options={**config.options, "threads": int(threads)})
            )
        # This provider has no threads option: it sizes itself (Ray sets OMP_NUM_THREADS).
        except UnknownConfigKeyError as exc:
            if exc.key != "threads":
                raise
    return EmbeddingManager.from_config(config)


def embedding_type(dimension: int) -> pyarrow.DataType:
    """The Arrow type of a vector column: a fixed-size list of float32."""
    return pa.list_(pa.float32(), dimension)


def with_fingerprint(
    schema: pyarrow.Schema, fingerprint: Fingerprint, identity: Mapping[str, Any] | None = None
) -> pyarrow.Schema:
    """*schema* with the fingerprint (and the embedding configuration) in its metadata."""
    metadata = dict(schema.metadata or {})
    metadata[FINGERPRINT_KEY] = json.dumps(fingerprint, sort_keys=True).encode()
    if identity is not None:
        metadata[CONFIG_KEY] = json.dumps(dict(identity), sort_keys=True).encode()
    return schema.with_metadata(metadata)


def bad_text(value: Any) -> str | None:
    """Why *value* cannot be embedded as a text, or ``None`` when it can."""
    if value is None:
        return "the text is null"
    if not isinstance(value, str):
        return f"the text is {type(value).__name__}, not a string"
    if not value.strip():
        return "the text is empty" if not value else "the text is only whitespace"
    return None


def embed_table(
    manager: EmbeddingManager,
    table: pyarrow.Table,
    *,
    text_column: str = "text",
    output_column: str = "embedding",
    id_column: str | None = "id",
    on_error: str = "raise",
    fingerprint: Fingerprint | None = None,
    progress: Callable[[int], None] | None = None,
    keep_rejected: bool = False,
) -> tuple[pyarrow.Table, list[dict[str, Any]]]:
    """Embed the texts of *table*; return the good rows with two more columns,
    ``sha256`` (of the text) and *output_column* (float32 vectors), and the rejects.

    A row is bad when its text is null, not a string, empty or only whitespace (or the
    reader marked it in ``_akidb_error``). With ``on_error="raise"`` the first bad row
    raises :class:`BadRowError` naming its id and shard; with ``"skip"`` bad rows are
    left out and returned as rejects ``{"id", "shard", "reason", "text"}``.
    The schema's metadata carries *fingerprint* (default: the manager's); *progress*
    receives the count of texts embedded so far, after each provider call. With
    *keep_rejected* (for engines that collect rows elsewhere) the rejected rows stay in
    the table too, with null ``sha256`` and vector and the reason in ``_akidb_error``.
    """
    from ..fingerprint import manager_fingerprint

    if on_error not in ON_ERROR:
        raise CorpusInputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if text_column not in table.column_names:
        raise CorpusInputError(
            f"no column {text_column!r} to embed (columns: {', '.join(table.column_names)})"
        )
    for name in (output_column, "sha256"):
        if name in table.column_names:
            raise CorpusInputError(f"the input already has a column {name!r}")
    column = table.column(text_column)
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise CorpusInputError(f"column {text_column!r} is {column.type}, not a string")
    texts = column.to_pylist()
    marked = (
        table.column(ERROR_COLUMN).to_pylist()
        if ERROR_COLUMN in table.column_names
        else [None] * len(texts)
    )
    good: list[int] = []
    bad: list[int] = []
    rejects: list[dict[str, Any]] = []
    ids = table.column(id_column).to_pylist() if id_column in table.column_names else None
    shards = table.column(SHARD_COLUMN).to_pylist() if SHARD_COLUMN in table.column_names else None
    rows = table.column(ROW_COLUMN).to_pylist() if ROW_COLUMN in table.column_names else None
    for i, (text, mark) in enumerate(zip(texts, marked, strict=True)):
        reason = mark or bad_text(text)
        if reason is None:
            good.append(i)
            continue
        row_id = str(ids[i]) if ids is not None else f"row {i} of the batch"
        shard = shards[i] if shards is not None else None
        if on_error == "raise":
            raise BadRowError(row_id, shard, reason)
        bad.append(i)
        reject = {"id": row_id, "shard": shard, "reason": reason, "text": text}
        if rows is not None:
            reject["row"] = rows[i]
        rejects.append(reject)
    kept = table if len(good) == len(texts) else table.take(pa.array(good, pa.int64()))
    good_texts = [texts[i] for i in good]
    vectors = (
        manager.embed_documents(good_texts, progress=progress or False)
        if good_texts
        else np.zeros((0, manager.dimension), dtype=np.float32)
    )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    embedding = pa.FixedSizeListArray.from_arrays(flat, manager.dimension)
    digests = pa.array(
        [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in good_texts], pa.string()
    )
    out = kept.append_column("sha256", digests).append_column(output_column, embedding)
    if keep_rejected:
        out = _set_column(out, ERROR_COLUMN, pa.nulls(out.num_rows, pa.string()))
        if bad:
            left = table.take(pa.array(bad, pa.int64()))
            left = left.append_column("sha256", pa.nulls(len(bad), pa.string()))
            left = left.append_column(output_column, pa.nulls(len(bad), embedding.type))
            reasons = pa.array([r["reason"] for r in rejects], pa.string())
            left = _set_column(left, ERROR_COLUMN, reasons)
            out = pa.concat_tables([out, left.cast(out.schema)])
    fp = fingerprint if fingerprint is not None else manager_fingerprint(manager)
    return out.replace_schema_metadata(with_fingerprint(out.schema, fp).metadata), rejects


def _set_column(table: pyarrow.Table, name: str, values: pyarrow.Array) -> pyarrow.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)
