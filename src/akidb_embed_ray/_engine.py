"""The ``ray`` engine of ``embed-corpus``: shards read by Ray tasks, embedded by actors,
committed by the driver.

Each pending shard is one item of a small dataset of shard plans; a task reads that
shard from the input files (any node that sees the files can), the actors embed it, and
the driver gathers each shard's rows as they stream back and commits the shard once all
its rows are there. The driver is the only writer of the output and its manifest, so a
shard is committed once, whole, whatever Ray retried on the way: an actor that died
mid-batch has its batch run again, and a batch's output reaches the driver only once.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from akidb_embed.corpus import (
    ERROR_COLUMN,
    ROW_COLUMN,
    SHARD_COLUMN,
    CorpusJob,
    InputSpec,
    ShardPlan,
    read_shard,
)
from akidb_embed.errors import (
    BadRowError,
    CorpusInputError,
    EmbeddingsOutputError,
    MissingDependencyError,
)

from ._dataset import DEFAULT_BATCH_SIZE, embed_dataset

if TYPE_CHECKING:
    import pyarrow

__all__ = ["run_corpus_job"]

_OPTIONS = ("address", "concurrency", "num_cpus", "num_gpus", "batch_size", "ray_remote_args")


def _read_shards(batch: pyarrow.Table, spec: dict[str, Any]) -> pyarrow.Table:
    import pyarrow as pa

    input_spec = InputSpec.from_dict(spec)
    tables = [
        read_shard(ShardPlan.from_dict(json.loads(plan)), input_spec)
        for plan in batch.column("shard").to_pylist()
    ]
    return pa.concat_tables(tables)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # ray does not import its data library itself
    except ImportError as exc:  # akidb-embed-ray is installed without its dependency
        raise MissingDependencyError(
            "the ray engine needs ray[data]. Install it with: pip install 'akidb-embed[ray]'"
        ) from exc
    return ray


def run_corpus_job(job: CorpusJob) -> dict[str, Any]:
    """Embed ``job.pending`` on Ray and commit every shard through ``job.commit``.

    Options (``job.options``): ``address`` (a Ray cluster; default ``RAY_ADDRESS``, else a
    local Ray started for this job and stopped after it), ``concurrency`` (actors,
    default 1), ``num_cpus`` (per actor, default 1), ``num_gpus``, ``batch_size`` (rows
    per actor call), ``ray_remote_args``. Returns timings: ``ray_init_s`` (joining or
    starting Ray), ``first_rows_s`` and ``first_rows`` (when the first embedded rows came
    back, and how many: actors started and models loaded), ``last_rows_s`` and
    ``arrivals`` (``(seconds, rows so far)`` as batches came back), all from the
    engine's start, as ``seconds`` (the whole run).
    """
    unknown = set(job.options) - set(_OPTIONS)
    if unknown:
        raise CorpusInputError(
            f"the ray engine takes no option {sorted(unknown)[0]!r} "
            f"(options: {', '.join(_OPTIONS)})"
        )
    ray = _import_ray()
    import pyarrow.compute as pc

    options = job.options
    job.release_manager()
    start = time.perf_counter()
    started_here = False
    if not ray.is_initialized():
        ray.init(
            address=options.get("address"),
            include_dashboard=False,
            log_to_driver=True,
        )
        started_here = True
    ray_init_s = time.perf_counter() - start
    first_rows_s: float | None = None
    first_rows = 0
    last_rows_s = 0.0
    arrivals: list[tuple[float, int]] = []  # (seconds, rows so far): a throughput curve
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = job.progress
        plans = [{"shard": json.dumps(s.to_dict())} for s in job.pending]
        shards = ray.data.from_items(plans, override_num_blocks=len(plans))
        # num_cpus=0: reading is light, and the actors may hold every CPU of the node.
        rows = shards.map_batches(
            _read_shards,
            fn_kwargs={"spec": job.plan.spec.to_dict()},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=0,
        )
        embedded = embed_dataset(
            rows,
            job.plan.spec.text_field,
            config=job.config,
            output_column=job.output_column,
            batch_size=options.get("batch_size") or DEFAULT_BATCH_SIZE,
            concurrency=options.get("concurrency") or 1,
            num_cpus=options.get("num_cpus") or 1,
            num_gpus=options.get("num_gpus"),
            # Rows come back rejected, not raised: a Ray worker's exception reaches the
            # driver wrapped in Ray's, while the driver raises the typed BadRowError.
            on_error="skip",
            id_column="id",
            _keep_rejected=True,
            **(options.get("ray_remote_args") or {}),
        )
        waiting = {s.index: s for s in job.pending}
        parts: dict[int, list[pyarrow.Table]] = defaultdict(list)
        counts: dict[int, int] = defaultdict(int)
        batch: Any
        for batch in embedded.iter_batches(batch_size=None, batch_format="pyarrow"):
            last_rows_s = time.perf_counter() - start
            if first_rows_s is None:
                first_rows_s, first_rows = last_rows_s, batch.num_rows
            arrivals.append((last_rows_s, (arrivals[-1][1] if arrivals else 0) + batch.num_rows))
            if job.on_error == "raise":
                _raise_first_reject(batch)
            for index in pc.unique(batch.column(SHARD_COLUMN)).to_pylist():
                part = batch.filter(pc.equal(batch.column(SHARD_COLUMN), index))
                shard = waiting.get(index)
                if shard is None:
                    raise EmbeddingsOutputError(f"rows of shard {index} came back twice")
                parts[index].append(part)
                counts[index] += part.num_rows
                if counts[index] > shard.rows:
                    raise EmbeddingsOutputError(
                        f"shard {index}: {counts[index]} rows came back for {shard.rows}"
                    )
                if counts[index] == shard.rows:
                    _commit(job, shard, parts.pop(index))
                    del waiting[index]
        if waiting:
            raise EmbeddingsOutputError(
                f"{len(waiting)} shards did not come back whole from Ray (first: {min(waiting)})"
            )
    finally:
        if started_here:
            ray.shutdown()
    return {
        "engine": "ray",
        "ray_init_s": ray_init_s,
        "first_rows_s": first_rows_s,
        "first_rows": first_rows,
        "last_rows_s": last_rows_s,
        "arrivals": arrivals,
        "seconds": time.perf_counter() - start,
    }


def _raise_first_reject(batch: pyarrow.Table) -> None:
    import pyarrow.compute as pc

    bad = batch.filter(pc.is_valid(batch.column(ERROR_COLUMN)))
    if bad.num_rows:
        row = bad.sort_by(ROW_COLUMN).slice(0, 1).to_pylist()[0]
        raise BadRowError(row["id"], row[SHARD_COLUMN], row[ERROR_COLUMN])


def _commit(job: CorpusJob, shard: ShardPlan, parts: list[pyarrow.Table]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.concat_tables(parts, promote_options="default")
    failed = pc.is_valid(table.column(ERROR_COLUMN))
    bad = table.filter(failed)
    good = table.filter(pc.invert(failed))
    rejects = [
        {
            "id": row["id"],
            "shard": shard.index,
            "reason": row[ERROR_COLUMN],
            "text": row[job.plan.spec.text_field],
            "row": row[ROW_COLUMN],
        }
        for row in bad.select(
            ["id", ERROR_COLUMN, job.plan.spec.text_field, ROW_COLUMN]
        ).to_pylist()
    ]
    rejects.sort(key=lambda r: r["row"])
    job.commit(shard, good, rejects)
