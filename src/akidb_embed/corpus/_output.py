"""The output folder: Parquet shards, committed one by one through an atomic manifest.

Layout of ``OUT``::

    OUT/_manifest.json            what is done: fingerprint, settings, one entry per shard
    OUT/part-00000.parquet        id, text, other columns, sha256, embedding
    OUT/_rejects/part-00003.jsonl rows left out by on_error="skip" (only where there are some)
    OUT/_lock                     held by the run writing OUT

Names starting with ``_`` or ``.`` are skipped by Parquet dataset readers
(``pyarrow.dataset``, ``ray.data.read_parquet``, DuckDB, Spark), so ``OUT`` reads as a
plain Parquet dataset.

A shard is committed in three steps, each atomic (temporary file, fsync, rename): its
rejects file, its Parquet file, then the manifest listing it with its sha256. A process
killed at any moment leaves a manifest that lists only complete shards; a shard file
the manifest does not list is an unfinished one, written again on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..atomic import atomic_write
from ..errors import CorpusChangedError, EmbeddingsOutputError
from ..fingerprint import Fingerprint, as_fingerprint, check_fingerprint, describe
from ._arrow import pa, pc, pq
from ._batch import CONFIG_KEY, FINGERPRINT_KEY, with_fingerprint
from ._input import ERROR_COLUMN, ROW_COLUMN, SHARD_COLUMN, CorpusPlan, ShardPlan

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "EmbeddingsOutput",
    "OutputWriter",
    "read_embeddings",
]

FORMAT = "akidb-embed.embeddings"
FORMAT_VERSION = 1
MANIFEST = "_manifest.json"
REJECTS = "_rejects"
LOCK = "_lock"
_SETTINGS = ("shard_size", "text_field", "id_field", "output_column")
_RESUME_ADVICE = "embed with the same model and options, or write to a new --out folder."


def shard_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _is_ours(name: str) -> bool:
    return (
        name in (MANIFEST, REJECTS, LOCK)
        or (name.startswith("part-") and name.endswith(".parquet"))
        or (name.startswith(".") and name.endswith(".tmp"))
    )


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """One writer per output folder, across processes (POSIX; elsewhere a no-op)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs on one folder must coordinate themselves
        yield
        return
    with (root / LOCK).open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise EmbeddingsOutputError(
                f"{root} is being written by another run (it holds {root / LOCK})"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        raw = (root / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EmbeddingsOutputError(f"{root / MANIFEST} is not valid JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EmbeddingsOutputError(f"{root / MANIFEST} is not an akidb-embed embeddings manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EmbeddingsOutputError(
            f"{root} has format version {manifest.get('format_version')!r}; this akidb-embed "
            f"reads version {FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("shards"), dict):
        raise EmbeddingsOutputError(f"{root / MANIFEST} lists no shards")
    return manifest


@dataclass(frozen=True)
class ResumeReport:
    """What an existing output already held for this run."""

    done: int
    redo: int


class OutputWriter:
    """Writes the shards of one run into *root*, resuming what an earlier run left.

    Opening it locks *root*, checks an existing manifest against this run (the
    fingerprint, the settings, the hash of every finished shard's input) and removes
    unfinished leftovers. :attr:`pending` are the shards still to embed;
    :meth:`commit` writes one; :meth:`finish` marks the output complete.

    Raises
    ------
    FingerprintMismatchError
        The output holds vectors of another embedding (names both).
    CorpusChangedError
        The input or the settings changed since the output was written.
    EmbeddingsOutputError
        The folder holds other files, or another run is writing it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        plan: CorpusPlan,
        *,
        fingerprint: Fingerprint,
        identity: Mapping[str, Any],
        output_column: str = "embedding",
        on_error: str = "raise",
    ) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise EmbeddingsOutputError(f"{self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.plan = plan
        self.fingerprint = as_fingerprint(fingerprint) or {}
        self._lock: contextlib.AbstractContextManager[None] | None = _exclusive(self.root)
        self._lock.__enter__()
        try:
            self._open(identity, output_column, on_error)
        except BaseException:
            self.close()
            raise

    def _open(self, identity: Mapping[str, Any], output_column: str, on_error: str) -> None:
        settings = {
            "shard_size": self.plan.shard_size,
            "text_field": self.plan.spec.text_field,
            "id_field": self.plan.spec.id_field,
            "output_column": output_column,
        }
        manifest = _read_manifest(self.root)
        if manifest is None:
            strangers = sorted(p.name for p in self.root.iterdir() if not _is_ours(p.name))
            if strangers:
                raise EmbeddingsOutputError(
                    f"cannot write embeddings to {self.root}: the folder holds other files "
                    f"({', '.join(strangers[:5])}); choose an empty or new folder"
                )
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "embedding_config": dict(identity),
                **settings,
                "spec": self.plan.spec.to_dict(),
                "shards": {},
                "complete": False,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        else:
            check_fingerprint(
                manifest.get("fingerprint"),
                self.fingerprint,
                f"resume the embeddings in {self.root}",
                holder="the output",
                advice=_RESUME_ADVICE,
            )
            for key, value in settings.items():
                if manifest.get(key) != value:
                    raise CorpusChangedError(
                        f"{self.root} was written with {key} = {manifest.get(key)!r}, this run "
                        f"has {value!r}; run with the same settings, or write to a new --out"
                    )
        self._manifest = manifest
        self.resumed = 0
        done: dict[str, Any] = {}
        planned = {str(s.index): s for s in self.plan.shards}
        for key, entry in manifest["shards"].items():
            shard = planned.get(key)
            if shard is None or entry.get("input_sha256") != shard.input_sha256:
                where = (
                    f"shard {key} (rows {shard.first_row}-{shard.first_row + shard.rows - 1})"
                    if shard is not None
                    else f"shard {key}, which the input no longer has"
                )
                raise CorpusChangedError(
                    f"the input changed since {self.root} was written: {where} differs from "
                    f"what was embedded ({self.plan.rows} rows in {len(self.plan.shards)} "
                    "shards now). Embed it into a new --out folder; outputs of two inputs "
                    "are never mixed"
                )
            path = self.root / entry["file"]
            if path.is_file() and path.stat().st_size == entry.get("size"):
                done[key] = entry
        manifest["shards"] = done
        manifest["planned_shards"] = len(planned)
        manifest["planned_rows"] = self.plan.rows
        self.resumed = len(done)
        self._clean(done)
        if len(done) != len(planned):
            manifest["complete"] = False
        self._write_manifest()

    def _clean(self, done: Mapping[str, Any]) -> None:
        """Remove shards and rejects no manifest entry lists, and temporary files."""
        keep = {entry["file"] for entry in done.values()}
        keep |= {entry["rejects"] for entry in done.values() if entry.get("rejects")}
        for path in [*self.root.iterdir(), *(self.root / REJECTS).glob("*")]:
            rel = path.relative_to(self.root).as_posix()
            if path.name in (MANIFEST, LOCK, REJECTS) or rel in keep:
                continue
            if path.name.startswith("part-") or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)

    @property
    def pending(self) -> list[ShardPlan]:
        """The shards not yet written, in order."""
        done = self._manifest["shards"]
        return [s for s in self.plan.shards if str(s.index) not in done]

    def commit(self, shard: ShardPlan, table: pyarrow.Table, rejects: list[dict[str, Any]]) -> None:
        """Write *shard*'s rows (any order; sorted back into input order) and rejects.

        Every planned row must be there exactly once, as an embedded row or a reject.
        """
        if table.num_rows + len(rejects) != shard.rows:
            raise EmbeddingsOutputError(
                f"shard {shard.index}: got {table.num_rows} rows and {len(rejects)} rejects "
                f"for {shard.rows} planned rows"
            )
        if ROW_COLUMN in table.column_names:
            rows = table.column(ROW_COLUMN)
            order = pc.sort_indices(rows)
            table = table.take(order)
            unique = pc.count_distinct(rows).as_py()
            if unique != table.num_rows:
                raise EmbeddingsOutputError(
                    f"shard {shard.index}: {table.num_rows - unique} rows appear twice"
                )
        if table.num_rows:
            self._check_fingerprint(table.schema, f"shard {shard.index}")
        table = table.drop_columns(
            [c for c in (ROW_COLUMN, SHARD_COLUMN, ERROR_COLUMN) if c in table.column_names]
        )
        table = table.replace_schema_metadata(
            with_fingerprint(
                table.schema, self.fingerprint, self._manifest["embedding_config"]
            ).metadata
        )
        entry: dict[str, Any] = {
            "file": shard_file(shard.index),
            "rows": table.num_rows,
            "rejected": len(rejects),
            "input_sha256": shard.input_sha256,
            "first_row": shard.first_row,
        }
        if rejects:
            name = f"{REJECTS}/part-{shard.index:05d}.jsonl"
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
            atomic_write(self.root / name, lambda fh: fh.write(body.encode("utf-8")))
            entry["rejects"] = name
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        data = buffer.getvalue()
        atomic_write(self.root / entry["file"], lambda fh: fh.write(data))
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["size"] = len(data)
        self._manifest["shards"][str(shard.index)] = entry
        self._write_manifest()

    def _check_fingerprint(self, schema: pyarrow.Schema, what: str) -> None:
        raw = (schema.metadata or {}).get(FINGERPRINT_KEY)
        got = json.loads(raw) if raw else None
        check_fingerprint(
            self.fingerprint,
            got,
            f"write {what} to {self.root}",
            holder="this run",
            advice="every worker must load the same model (check the model folder, "
            "revision and provider version on every node).",
        )

    def finish(self) -> dict[str, Any]:
        """Mark the output complete (every shard written); return the manifest."""
        missing = [s.index for s in self.pending]
        if missing:
            raise EmbeddingsOutputError(
                f"{len(missing)} shards of {self.root} are not written (first: {missing[0]})"
            )
        shards = self._manifest["shards"].values()
        self._manifest.update(
            complete=True,
            rows=sum(e["rows"] for e in shards),
            rejected=sum(e["rejected"] for e in shards),
            input_rows=self.plan.rows,
            blank_lines=self.plan.blank_lines,
            input_sha256=self.plan.input_sha256,
            completed_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            library_version=__version__,
        )
        self._write_manifest()
        return dict(self._manifest)

    def _write_manifest(self) -> None:
        body = json.dumps(self._manifest, indent=1, sort_keys=True).encode("utf-8")
        atomic_write(self.root / MANIFEST, lambda fh: fh.write(body))

    def close(self) -> None:
        """Release the folder's lock."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- reading ------------------------------------------------------------------------------


class EmbeddingsOutput:
    """A folder of embeddings, checked: ``embed-corpus`` output (with a manifest), or
    Parquet files that carry a fingerprint in their schema metadata (``embed_dataset``
    written with ``write_parquet``)."""

    def __init__(
        self,
        root: Path,
        files: list[Path],
        fingerprint: Fingerprint,
        embedding_config: dict[str, Any] | None,
        manifest: dict[str, Any] | None,
        output_column: str,
        text_field: str | None,
    ) -> None:
        self.root = root
        self.files = files
        self.fingerprint = fingerprint
        self.embedding_config = embedding_config
        self.manifest = manifest
        self.output_column = output_column
        self.text_field = text_field

    @property
    def rows(self) -> int:
        """Embedded rows, from the Parquet footers."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files)

    def tables(self) -> Iterator[pyarrow.Table]:
        """Each file's table, in order; its fingerprint checked against the folder's."""
        entries = (self.manifest or {}).get("shards", {})
        by_file = {e["file"]: e for e in entries.values()}
        for path in self.files:
            entry = by_file.get(path.name)
            try:
                data = path.read_bytes()
            except FileNotFoundError as exc:
                raise EmbeddingsOutputError(f"{path} is missing") from exc
            if entry is not None and (
                len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]
            ):
                raise EmbeddingsOutputError(
                    f"{path} is truncated or corrupted (its sha256 or size differs from "
                    f"{MANIFEST}); run embed-corpus again to rewrite it"
                )
            try:
                table = pq.read_table(io.BytesIO(data))
            except (OSError, pa.ArrowException) as exc:
                raise EmbeddingsOutputError(f"{path} is not a readable Parquet file") from exc
            check_fingerprint(
                self.fingerprint,
                _fingerprint_of(table.schema, path),
                f"read {path.name}",
                holder=f"the folder {self.root}",
                advice="one folder must hold one embedding's vectors; move the other files away.",
            )
            yield table

    def __repr__(self) -> str:
        return f"<EmbeddingsOutput {len(self.files)} files from {describe(self.fingerprint)}>"


def _fingerprint_of(schema: pyarrow.Schema, where: Path) -> Fingerprint:
    raw = (schema.metadata or {}).get(FINGERPRINT_KEY)
    if not raw:
        raise EmbeddingsOutputError(
            f"{where} carries no embedding fingerprint in its schema metadata "
            f"({FINGERPRINT_KEY.decode()}); it was not written by akidb-embed"
        )
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise EmbeddingsOutputError(f"{where}: the fingerprint metadata is not JSON") from exc
    if not isinstance(value, dict):
        raise EmbeddingsOutputError(f"{where}: the fingerprint metadata is not an object")
    return value


def read_embeddings(
    path: str | os.PathLike[str], *, allow_incomplete: bool = False
) -> EmbeddingsOutput:
    """Open a folder of embeddings for reading (files are checked as they are read).

    Raises
    ------
    EmbeddingsOutputError
        Not such a folder; an ``embed-corpus`` output that is not complete (unless
        *allow_incomplete*); files whose fingerprints differ, or without one.
    """
    root = Path(path)
    if not root.is_dir():
        raise EmbeddingsOutputError(f"no embeddings at {root}: not a folder")
    manifest = _read_manifest(root)
    if manifest is not None:
        if not manifest.get("complete") and not allow_incomplete:
            planned = manifest.get("planned_shards", "?")
            raise EmbeddingsOutputError(
                f"the embeddings in {root} are not complete ({len(manifest['shards'])} shards "
                f"written, {planned} planned): run the same embed-corpus command again to "
                "finish them"
            )
        entries = sorted(manifest["shards"].items(), key=lambda kv: int(kv[0]))
        files = [root / e["file"] for _, e in entries]
        return EmbeddingsOutput(
            root,
            files,
            manifest["fingerprint"],
            manifest.get("embedding_config"),
            manifest,
            manifest.get("output_column", "embedding"),
            manifest.get("text_field"),
        )
    files = sorted(
        p
        for p in root.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
    )
    if not files:
        raise EmbeddingsOutputError(f"no embeddings at {root}: no {MANIFEST} and no .parquet files")
    schema = pq.ParquetFile(files[0]).schema_arrow
    fingerprint = _fingerprint_of(schema, files[0])
    raw_config = (schema.metadata or {}).get(CONFIG_KEY)
    config = json.loads(raw_config) if raw_config else None
    vector_columns = [
        f.name
        for f in schema
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_float32(f.type.value_type)
    ]
    if len(vector_columns) != 1:
        raise EmbeddingsOutputError(
            f"{files[0]}: expected one fixed-size float32 list column of vectors, found "
            f"{vector_columns or 'none'}"
        )
    return EmbeddingsOutput(root, files, fingerprint, config, None, vector_columns[0], None)
