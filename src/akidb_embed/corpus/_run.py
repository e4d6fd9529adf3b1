"""``embed_corpus``: plan, resume, hand the pending shards to an engine, commit them.

Engines come from a small table: ``local`` (this process) is built in; others arrive
through the entry point group ``akidb_embed.corpus_engines`` (``ray`` from
``akidb-embed-ray``), imported only when asked for. An engine is a callable
``run(job: CorpusJob) -> dict`` that embeds ``job.pending`` and passes every shard to
``job.commit`` (in any order); what it returns is reported as ``CorpusReport.engine``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._config import EmbeddingConfig
from ..errors import CorpusInputError, MissingDependencyError
from ..fingerprint import Fingerprint, manager_fingerprint, recorded_identity
from ._batch import ON_ERROR, embed_table, manager_for_corpus
from ._input import CorpusPlan, ShardPlan, plan_corpus, read_shard
from ._output import OutputWriter

if TYPE_CHECKING:
    import pyarrow

    from .._manager import EmbeddingManager

__all__ = ["ENGINE_GROUP", "CorpusJob", "CorpusReport", "embed_corpus", "engines", "get_engine"]

ENGINE_GROUP = "akidb_embed.corpus_engines"
# Engines of distributions that are not installed by default: how to get them.
_INSTALL_HINTS = {"ray": "pip install 'akidb-embed[ray]'"}

Engine = Callable[["CorpusJob"], dict[str, Any]]


@dataclass
class CorpusJob:
    """What an engine gets: the shards to embed and where to hand each one back.

    ``commit(shard, table, rejects)`` takes a shard's embedded rows (as
    :func:`embed_table` returns them, in any order) and rejects; it must be called from
    the thread that runs the engine. ``manager`` is this process's manager (built to
    learn the fingerprint); an engine that embeds elsewhere calls
    :meth:`release_manager` first.
    """

    plan: CorpusPlan
    pending: list[ShardPlan]
    config: EmbeddingConfig
    fingerprint: Fingerprint
    commit: Callable[[ShardPlan, pyarrow.Table, list[dict[str, Any]]], None]
    on_error: str
    output_column: str
    progress: bool
    options: dict[str, Any] = field(default_factory=dict)
    manager: EmbeddingManager | None = None

    def release_manager(self) -> None:
        """Close this process's manager (its model and threads) before embedding elsewhere."""
        if self.manager is not None:
            self.manager.close()
            self.manager = None


@dataclass(frozen=True)
class CorpusReport:
    """What :func:`embed_corpus` did."""

    out: Path
    rows: int
    rejected: int
    shards: int
    resumed: int
    seconds: float
    fingerprint: Fingerprint
    engine: dict[str, Any]


def engines() -> list[str]:
    """Names of the engines: built in, installed, and known but not installed."""
    from .._registry import _read_group

    return sorted({"local", *_read_group(ENGINE_GROUP), *_INSTALL_HINTS})


def get_engine(name: str) -> Engine:
    """The engine called *name*.

    Raises
    ------
    CorpusInputError
        No engine has that name (the message lists those that exist), or two
        distributions claim it.
    MissingDependencyError
        It is known but not installed (the message names the ``pip install`` command).
    """
    if name == "local":
        return run_local
    from .._registry import _ep_label, _read_group

    found = _read_group(ENGINE_GROUP).get(name)
    if not found:
        if name in _INSTALL_HINTS:
            raise MissingDependencyError(
                f"engine {name!r} is not installed. Install it with: {_INSTALL_HINTS[name]}"
            )
        raise CorpusInputError(f"No such engine: {name!r}. Engines: {', '.join(engines())}")
    if len(found) > 1:
        raise CorpusInputError(
            f"engine {name!r} is claimed by both {_ep_label(found[0])} and {_ep_label(found[1])}"
        )
    try:
        engine = found[0].load()
    # The engine's distribution is there but a dependency of it is not.
    except ImportError as exc:
        dist = found[0].dist.name if found[0].dist is not None else name
        hint = _INSTALL_HINTS.get(name, f"pip install --upgrade {dist}")
        raise MissingDependencyError(
            f"engine {name!r} cannot be loaded ({exc}). Install it with: {hint}"
        ) from exc
    return engine  # type: ignore[no-any-return]


def embed_corpus(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: EmbeddingConfig | None = None,
    engine: str = "local",
    text_field: str = "text",
    id_field: str | None = None,
    shard_size: int = 10_000,
    on_error: str = "raise",
    output_column: str = "embedding",
    progress: bool = False,
    **engine_options: Any,
) -> CorpusReport:
    """Embed a corpus into a resumable Parquet dataset at *out*.

    *source* is a .txt file (one text a line), a .jsonl or .parquet file, a folder of
    them, or a glob. *out* gets one Parquet file per shard of *shard_size* rows (id,
    text, the other fields, sha256 of the text, *output_column*) and a manifest. Run
    again after a crash or a kill, it embeds only the shards not yet written, and the
    result equals an uninterrupted run's.

    Parameters
    ----------
    config:
        The embedding configuration (default: :meth:`EmbeddingConfig.load`).
    engine:
        ``"local"`` (this process) or ``"ray"`` (``pip install 'akidb-embed[ray]'``).
    on_error:
        ``"raise"``: a row whose text is null, not a string or empty stops the run
        (:class:`~akidb_embed.errors.BadRowError` names it and its shard);
        ``"skip"``: such rows are left out and listed in ``_rejects/``.
    engine_options:
        Passed to the engine (``ray``: ``address``, ``concurrency``, ``num_cpus``,
        ``num_gpus``, ``batch_size``); the local engine takes ``threads``.

    Raises
    ------
    FingerprintMismatchError
        *out* holds vectors of another embedding.
    CorpusChangedError
        The input or the settings changed since *out* was written.
    """
    if on_error not in ON_ERROR:
        raise CorpusInputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    run = get_engine(engine)
    start = time.perf_counter()
    plan = plan_corpus(source, shard_size=shard_size, text_field=text_field, id_field=id_field)
    config = config if config is not None else EmbeddingConfig.load()
    model = Path(config.model)
    if not model.is_absolute() and model.exists():
        # Recorded in the manifest for `index build`, which may run from elsewhere.
        config = config.replace(model=str(model.resolve()))
    threads = engine_options.get("threads") if engine == "local" else None
    manager = manager_for_corpus(config, threads)
    try:
        fingerprint = manager_fingerprint(manager)
        identity = recorded_identity(manager)
        with OutputWriter(
            out,
            plan,
            fingerprint=fingerprint,
            identity=identity,
            output_column=output_column,
            on_error=on_error,
        ) as writer:
            job = CorpusJob(
                plan,
                writer.pending,
                config,
                fingerprint,
                writer.commit,
                on_error,
                output_column,
                progress,
                dict(engine_options),
                manager,
            )
            stats = run(job) if job.pending else {}
            manifest = writer.finish()
            resumed = writer.resumed
    finally:
        if manager is not None and not manager.closed:
            manager.close()
    return CorpusReport(
        Path(out),
        manifest["rows"],
        manifest["rejected"],
        len(plan.shards),
        resumed,
        time.perf_counter() - start,
        fingerprint,
        stats,
    )


def run_local(job: CorpusJob) -> dict[str, Any]:
    """The ``local`` engine: every pending shard, in order, in this process."""
    unknown = set(job.options) - {"threads"}
    if unknown:
        raise CorpusInputError(
            f"the local engine takes no option {sorted(unknown)[0]!r} (only threads)"
        )
    manager = job.manager
    assert manager is not None
    total = sum(s.rows for s in job.pending)
    bar = _progress(total, job.progress)
    try:
        for shard in job.pending:
            table = read_shard(shard, job.plan.spec)
            done = 0

            def advance(n: int) -> None:
                nonlocal done
                bar(n - done)
                done = n

            embedded, rejects = embed_table(
                manager,
                table,
                text_column=job.plan.spec.text_field,
                output_column=job.output_column,
                on_error=job.on_error,
                fingerprint=job.fingerprint,
                progress=advance,
            )
            bar(len(rejects))
            job.commit(shard, embedded, rejects)
    finally:
        bar(None)
    return {"engine": "local"}


def _progress(total: int, show: bool) -> Callable[[int | None], None]:
    if not show or total == 0:
        return lambda n: None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the corpus extra; without it, no bar
        return lambda n: None
    bar = tqdm(total=total, unit="text", desc="embedding")

    def update(n: int | None) -> None:
        if n is None:
            bar.close()
        elif n:
            bar.update(n)

    return update
