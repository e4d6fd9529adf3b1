"""``embed_dataset``: a vector column for a ``ray.data.Dataset``, one manager per actor."""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from akidb_embed import EmbeddingConfig, EmbeddingManager
from akidb_embed.atomic import atomic_write
from akidb_embed.corpus import ON_ERROR, embed_table, manager_for_corpus
from akidb_embed.errors import CorpusInputError
from akidb_embed.fingerprint import manager_fingerprint

if TYPE_CHECKING:
    import pyarrow
    import ray.data

__all__ = ["DEFAULT_BATCH_SIZE", "embed_dataset"]

#: Rows per actor call: enough for the manager to sort by length and fill its batches,
#: small enough that a retried call after an actor's death repeats little work.
DEFAULT_BATCH_SIZE = 256


class _Embedder:
    """The actor: builds its manager once, then embeds each batch (a pyarrow Table)."""

    def __init__(
        self,
        config: EmbeddingConfig | None,
        manager_factory: Callable[[], EmbeddingManager] | None,
        threads: int,
        column: str,
        output_column: str,
        id_column: str | None,
        on_error: str,
        rejects_path: str | None,
        keep_rejected: bool,
    ) -> None:
        if manager_factory is not None:
            self._manager = manager_factory()
        else:
            assert config is not None
            self._manager = manager_for_corpus(config, threads)
        self._fingerprint = manager_fingerprint(self._manager)
        self._column = column
        self._output_column = output_column
        self._id_column = id_column
        self._on_error = on_error
        self._rejects = Path(rejects_path) if rejects_path is not None else None
        self._keep_rejected = keep_rejected

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        table, rejects = embed_table(
            self._manager,
            batch,
            text_column=self._column,
            output_column=self._output_column,
            id_column=self._id_column,
            on_error=self._on_error,
            fingerprint=self._fingerprint,
            keep_rejected=self._keep_rejected,
        )
        if rejects and self._rejects is not None:
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
            # One file per batch: actors never append to a shared file, and a retried
            # batch whose first attempt died never wrote (the write is atomic).
            name = f"rejects-{os.getpid()}-{secrets.token_hex(6)}.jsonl"
            atomic_write(self._rejects / name, lambda fh: fh.write(body.encode("utf-8")))
        return table


def embed_dataset(
    ds: ray.data.Dataset,
    column: str = "text",
    *,
    config: EmbeddingConfig | Mapping[str, Any] | None = None,
    output_column: str = "embedding",
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
    num_gpus: float | None = None,
    on_error: str = "raise",
    rejects_path: str | os.PathLike[str] | None = None,
    id_column: str | None = None,
    preserve_order: bool = False,
    manager_factory: Callable[[], EmbeddingManager] | None = None,
    _keep_rejected: bool = False,
    **ray_remote_args: Any,
) -> ray.data.Dataset:
    """Embed the texts of *column*; return the dataset with ``sha256`` and *output_column*.

    Built on ``ds.map_batches`` with a callable class: each actor builds one
    :class:`~akidb_embed.EmbeddingManager` (the model is loaded once per actor, with
    ``cache_size=0``, and the provider's threads set from *num_cpus*, so actors sharing
    a node do not oversubscribe it). The vectors are a fixed-size list of float32
    (``pyarrow.list_(pa.float32(), dimension)``); the schema metadata of every block
    carries the embedding fingerprint (``akidb_embed.fingerprint``), which
    ``write_parquet`` keeps in each file, so the output can be indexed with
    ``Collection.add_embeddings``.

    Parameters
    ----------
    column:
        The column of texts.
    config:
        An :class:`~akidb_embed.EmbeddingConfig` (or its keys), resolved here on the
        driver so that every actor embeds with the same one; default
        :meth:`EmbeddingConfig.load`.
    batch_size:
        Rows per actor call (the manager cuts provider calls by ``config.batch_size``).
    concurrency:
        Actors (or ``(min, max)`` for an autoscaling pool).
    num_cpus, num_gpus:
        Per actor. The provider's ``threads`` option is set to ``ceil(num_cpus)`` unless
        the config sets it. With *num_gpus*, choose the accelerator in the config
        (onnx: ``options.execution_providers = ["cuda"]``; mlx: ``device = "gpu"``).
    on_error:
        ``"raise"``: a null, non-string, empty or whitespace-only text fails the job
        (:class:`~akidb_embed.errors.BadRowError` names the row by *id_column*);
        ``"skip"``: such rows are left out and written as JSON lines to files under
        *rejects_path*, which is then required (nothing is dropped silently).
    preserve_order:
        Keep the input order (sets ``preserve_order`` on the dataset's execution
        options; slower when batches take unequal time).
    manager_factory:
        A picklable callable that returns the manager, called once in each actor,
        instead of building one from *config* (providers registered at run time,
        observers, ...).
    ray_remote_args:
        Passed to ``map_batches`` (``memory``, ``runtime_env``, ``max_task_retries``...).
        Ray Data's defaults restart an actor that died and run its batch again, with no
        limit: a text that kills the process every time is retried forever unless
        ``max_task_retries`` bounds it.

    Raises
    ------
    CorpusInputError
        Bad arguments (an unknown *on_error*, ``"skip"`` without *rejects_path*).
    """
    if on_error not in ON_ERROR:
        raise CorpusInputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_error == "skip" and rejects_path is None and not _keep_rejected:
        raise CorpusInputError(
            "on_error='skip' needs rejects_path: a folder for the rows left out, so that "
            "none is dropped silently"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CorpusInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not num_cpus or num_cpus < 0:
        raise CorpusInputError(f"num_cpus must be > 0, got {num_cpus!r}")
    resolved: EmbeddingConfig | None = None
    if manager_factory is None:
        if isinstance(config, EmbeddingConfig):
            resolved = config
        else:
            resolved = EmbeddingConfig.load(**dict(config or {}))
    elif config is not None:
        raise CorpusInputError("give config or manager_factory, not both")
    if rejects_path is not None:
        Path(rejects_path).mkdir(parents=True, exist_ok=True)
    if num_gpus:
        ray_remote_args["num_gpus"] = num_gpus
    import ray.data

    if isinstance(concurrency, tuple):
        pool = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        pool = ray.data.ActorPoolStrategy(size=concurrency)
    out = ds.map_batches(
        _Embedder,
        fn_constructor_args=(
            resolved,
            manager_factory,
            max(1, math.ceil(num_cpus)),
            column,
            output_column,
            id_column,
            on_error,
            None if rejects_path is None else str(rejects_path),
            _keep_rejected,
        ),
        batch_size=batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=pool,
        num_cpus=num_cpus,
        **ray_remote_args,
    )
    if preserve_order:
        out.context.execution_options.preserve_order = True
    return out
