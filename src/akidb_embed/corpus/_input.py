"""Reading a corpus: files found, cut into shards of rows, each shard re-readable alone.

Planning reads the whole input once, in order, and cuts it into shards of
``shard_size`` rows. Each :class:`ShardPlan` records the sha256 of its rows and where
they are (:class:`Piece`: a file, its first row and, for text files, the byte offset of
that row), so that any process that can open the files (a Ray worker, a resumed run)
reads that shard alone with :func:`read_shard`, without reading what comes before it.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CorpusInputError
from ._arrow import pa, pq

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "ERROR_COLUMN",
    "RESERVED_COLUMNS",
    "ROW_COLUMN",
    "SHARD_COLUMN",
    "CorpusPlan",
    "InputSpec",
    "Piece",
    "ShardPlan",
    "find_files",
    "plan_corpus",
    "read_shard",
]

SUFFIXES = (".txt", ".jsonl", ".parquet")
#: Internal columns of a shard as read: the global row number, the shard, and why a
#: row is bad (or null). They never reach the output files.
ROW_COLUMN, SHARD_COLUMN, ERROR_COLUMN = "_akidb_row", "_akidb_shard", "_akidb_error"
#: Columns the output adds, which an input column may not be called.
RESERVED_COLUMNS = ("id", "sha256", "embedding")


@dataclass(frozen=True)
class InputSpec:
    """How rows are taken from the files: which field is the text, which the id, and
    the types of the other fields (kept as columns)."""

    text_field: str = "text"
    id_field: str | None = None
    extra: tuple[tuple[str, str], ...] = ()  # (name, arrow type as text), in output order

    def extra_schema(self) -> pyarrow.Schema:
        return pa.schema([pa.field(name, _parse_type(t)) for name, t in self.extra])

    def to_dict(self) -> dict[str, Any]:
        return {"text_field": self.text_field, "id_field": self.id_field, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        extra = tuple((str(n), str(t)) for n, t in data.get("extra") or ())
        return cls(data["text_field"], data.get("id_field"), extra)


@dataclass(frozen=True)
class Piece:
    """Rows ``start .. start + count`` of one file (0-based, counting rows, not lines)."""

    path: str
    name: str  # the file's name in ids: relative to the folder or glob base
    kind: str  # "txt", "jsonl" or "parquet"
    start: int
    count: int
    offset: int = 0  # txt / jsonl: byte offset of the piece's first line
    line: int = 1  # txt / jsonl: its line number (1-based)


@dataclass(frozen=True)
class ShardPlan:
    """One shard: ``rows`` rows from row ``first_row`` of the corpus on, and their hash."""

    index: int
    first_row: int
    rows: int
    input_sha256: str
    pieces: tuple[Piece, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardPlan:
        pieces = tuple(Piece(**p) for p in data["pieces"])
        return cls(data["index"], data["first_row"], data["rows"], data["input_sha256"], pieces)


@dataclass(frozen=True)
class CorpusPlan:
    """Every file of the input, cut into shards."""

    source: str
    files: tuple[str, ...]
    spec: InputSpec
    shard_size: int
    shards: tuple[ShardPlan, ...]
    rows: int
    blank_lines: int

    @property
    def input_sha256(self) -> str:
        """Hash of the whole input (of the shard hashes, in order)."""
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(shard.input_sha256.encode())
        return digest.hexdigest()


# --- finding files ------------------------------------------------------------------------


def find_files(source: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """``(path, name)`` of every input file, in order: a file, a folder (searched
    recursively for .txt, .jsonl and .parquet files) or a glob pattern."""
    text = str(source)
    if any(ch in text for ch in "*?["):
        base = Path(text.split("*")[0].split("?")[0].split("[")[0])
        base = base if text.endswith("/") or base.is_dir() else base.parent
        matches = sorted(Path(p) for p in globlib.glob(text, recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix in SUFFIXES]
        if not files:
            raise CorpusInputError(f"no .txt, .jsonl or .parquet files match {text}")
        return [(p, _relative(p, base)) for p in files]
    path = Path(text)
    if not path.exists():
        raise CorpusInputError(f"input not found: {path}")
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith((".", "_"))
        )
        if not found:
            raise CorpusInputError(f"no .txt, .jsonl or .parquet files in folder {path}")
        return [(p, p.relative_to(path).as_posix()) for p in found]
    if path.suffix not in SUFFIXES:
        raise CorpusInputError(
            f"{path}: unknown input type {path.suffix or '(no suffix)'!r}; "
            "expected .txt (one text a line), .jsonl or .parquet"
        )
    return [(path, path.name)]


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


# --- planning -----------------------------------------------------------------------------


@dataclass
class _Row:
    id: str
    digest: bytes  # what identifies the row's content (raw line, or the row as JSON)
    path: str
    name: str
    kind: str
    index: int  # row number within the file
    offset: int
    line: int


def plan_corpus(
    source: str | os.PathLike[str],
    *,
    shard_size: int = 10_000,
    text_field: str = "text",
    id_field: str | None = None,
) -> CorpusPlan:
    """Read the whole input once and cut it into shards of *shard_size* rows.

    Blank lines of .txt and .jsonl files are not rows (they are counted). The ids of
    rows are the *id_field* values (by default the ``id`` field where the input has
    one), else ``NAME:LINE`` (1-based line of a .txt or .jsonl file) or ``NAME:ROW``
    (0-based row of a .parquet file).

    Raises
    ------
    CorpusInputError
        A file is missing, unreadable, not UTF-8, not valid JSON lines; a record lacks
        the id field; a field is named like an output column; types conflict.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise CorpusInputError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    files = find_files(source)
    kinds = {p.suffix for p, _ in files}
    explicit_id = id_field is not None
    if id_field is None and _has_id_field(files):
        id_field = "id"
    if ".txt" in kinds and explicit_id and kinds == {".txt"}:
        raise CorpusInputError(
            f"--id-field {id_field} needs .jsonl or .parquet input: the lines of a .txt file "
            "have no fields (their ids are FILE:LINE)"
        )
    extras = _ExtraTypes(text_field, id_field)
    shards: list[ShardPlan] = []
    pieces: list[Piece] = []
    digest = hashlib.sha256()
    current: _Row | None = None  # first row of the open piece
    piece_rows = 0
    shard_first = 0
    rows = 0
    blank = 0

    def close_piece() -> None:
        nonlocal current, piece_rows
        if current is not None and piece_rows:
            pieces.append(
                Piece(
                    current.path,
                    current.name,
                    current.kind,
                    current.index,
                    piece_rows,
                    current.offset,
                    current.line,
                )
            )
        current, piece_rows = None, 0

    def close_shard() -> None:
        nonlocal digest, shard_first, pieces
        close_piece()
        count = rows - shard_first
        if count:
            shards.append(
                ShardPlan(len(shards), shard_first, count, digest.hexdigest(), tuple(pieces))
            )
        digest, shard_first, pieces = hashlib.sha256(), rows, []

    for path, name in files:
        close_piece()
        counter = _Blank()
        for row in _scan(path, name, text_field, id_field, extras, counter):
            if current is None:
                current = row
            digest.update(row.id.encode("utf-8") + b"\x00" + row.digest + b"\x00")
            rows += 1
            piece_rows += 1
            if rows - shard_first == shard_size:
                close_shard()
        blank += counter.count
    close_shard()
    spec = InputSpec(text_field, id_field, extras.columns())
    return CorpusPlan(
        str(source),
        tuple(str(p) for p, _ in files),
        spec,
        shard_size,
        tuple(shards),
        rows,
        blank,
    )


class _Blank:
    count = 0


def _has_id_field(files: Sequence[tuple[Path, str]]) -> bool:
    """Whether the first .jsonl record or the first .parquet schema has an ``id``."""
    for path, _ in files:
        if path.suffix == ".parquet":
            return "id" in _parquet_file(path).schema_arrow.names
        if path.suffix == ".jsonl":
            for number, raw in enumerate(_lines(path), 1):
                if raw.strip():
                    record = _json_record(path, number, raw)
                    return "id" in record
    return False


def _scan(
    path: Path,
    name: str,
    text_field: str,
    id_field: str | None,
    extras: _ExtraTypes,
    blank: _Blank,
) -> Iterator[_Row]:
    kind = path.suffix[1:]
    if kind == "parquet":
        yield from _scan_parquet(path, name, text_field, id_field, extras)
        return
    offset = 0
    index = 0
    for number, raw in enumerate(_lines(path), 1):
        start = offset
        offset += len(raw)
        if kind == "txt":
            line = _decode(path, number, raw).rstrip("\r\n")
            if not line.strip():
                blank.count += 1
                continue
            yield _Row(f"{name}:{number}", raw, str(path), name, kind, index, start, number)
        else:
            if not raw.strip():
                blank.count += 1
                continue
            record = _json_record(path, number, raw)
            id_ = _record_id(record, id_field, f"{path}, line {number}", f"{name}:{number}")
            extras.see(record, f"{path}, line {number}")
            yield _Row(id_, raw, str(path), name, kind, index, start, number)
        index += 1


def _scan_parquet(
    path: Path, name: str, text_field: str, id_field: str | None, extras: _ExtraTypes
) -> Iterator[_Row]:
    pf = _parquet_file(path)
    schema = pf.schema_arrow
    _check_parquet_schema(path, schema, text_field, id_field)
    extras.see_schema(schema, str(path))
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                where = f"{path}, row {index}"
                id_ = _record_id(record, id_field, where, f"{name}:{index}")
                payload = json.dumps(record, sort_keys=True, default=str, ensure_ascii=False)
                yield _Row(id_, payload.encode("utf-8"), str(path), name, "parquet", index, 0, 0)
                index += 1
    except (OSError, pa.ArrowException) as exc:
        raise CorpusInputError(f"cannot read {path}: {exc}") from exc


def _check_parquet_schema(
    path: Path, schema: pyarrow.Schema, text_field: str, id_field: str | None
) -> None:
    if text_field not in schema.names:
        raise CorpusInputError(
            f"{path} has no column {text_field!r} (columns: {', '.join(schema.names)}); "
            "name the text column with --text-field"
        )
    text_type = schema.field(text_field).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise CorpusInputError(f"{path}: column {text_field!r} is {text_type}, not a string")
    if id_field is not None and id_field not in schema.names:
        raise CorpusInputError(f"{path} has no id column {id_field!r}")


def _record_id(record: dict[str, Any], id_field: str | None, where: str, default: str) -> str:
    if id_field is None:
        return default
    if id_field not in record or record[id_field] is None:
        raise CorpusInputError(f"{where}: no {id_field!r} field (the id field)")
    value = record[id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise CorpusInputError(
            f"{where}: the id field {id_field!r} must be a non-empty string or an integer, "
            f"got {type(value).__name__} {value!r:.60}"
        )
    return str(value)


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as fh:
            yield from fh
    except OSError as exc:
        raise CorpusInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _decode(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusInputError(f"{path}, line {number}: not UTF-8 text ({exc.reason})") from exc


def _json_record(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(_decode(path, number, raw))
    except json.JSONDecodeError as exc:
        raise CorpusInputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise CorpusInputError(f"{path}, line {number}: expected a JSON object")
    return record


def _parquet_file(path: Path) -> Any:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusInputError(f"cannot read {path} as Parquet: {exc}") from exc


# --- the types of the other fields --------------------------------------------------------


class _ExtraTypes:
    """The arrow type of each field other than the text and the id, over the whole input
    (a field whose values are not all of one JSON scalar kind is kept as JSON text)."""

    def __init__(self, text_field: str, id_field: str | None) -> None:
        self._skip = {text_field, id_field}
        self._text_field = text_field
        self._kinds: dict[str, set[str]] = {}
        self._arrow: dict[str, pyarrow.DataType] = {}
        self._order: dict[str, None] = {}  # first seen first

    def _check_name(self, name: str, where: str) -> None:
        if name in RESERVED_COLUMNS or name.startswith("_akidb_"):
            raise CorpusInputError(
                f"{where}: field {name!r} has the name of a column the output adds "
                f"({', '.join(RESERVED_COLUMNS)}); rename it, or make it the id with "
                f"--id-field {name}"
                if name == "id"
                else f"{where}: field {name!r} has the name of a column the output adds "
                f"({', '.join(RESERVED_COLUMNS)}); rename it"
            )

    def see(self, record: dict[str, Any], where: str) -> None:
        for key, value in record.items():
            if key in self._skip:
                continue
            if key not in self._kinds:
                self._check_name(key, where)
                self._kinds[key] = set()
                self._order[key] = None
            self._kinds[key].add(_kind(value))

    def see_schema(self, schema: pyarrow.Schema, where: str) -> None:
        for f in schema:
            if f.name in self._skip:
                continue
            if f.name not in self._arrow and f.name not in self._kinds:
                self._check_name(f.name, where)
                self._order[f.name] = None
            old = self._arrow.get(f.name)
            if old is None:
                self._arrow[f.name] = f.type
            elif old != f.type:
                try:
                    unified = pa.unify_schemas(
                        [pa.schema([pa.field(f.name, old)]), pa.schema([f])],
                        promote_options="permissive",
                    )
                except (pa.ArrowException, TypeError) as exc:
                    raise CorpusInputError(
                        f"{where}: column {f.name!r} is {f.type} here, {old} in an earlier file"
                    ) from exc
                self._arrow[f.name] = unified.field(f.name).type

    def columns(self) -> tuple[tuple[str, str], ...]:
        out: dict[str, pyarrow.DataType] = dict(self._arrow)
        for name, kinds in self._kinds.items():
            json_type = _json_type(kinds - {"null"})
            old = out.get(name)
            if old is not None and old != json_type:
                out[name] = pa.string() if "json" in kinds else old
            else:
                out[name] = json_type
        return tuple((name, _type_text(out[name])) for name in self._order)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def _json_type(kinds: set[str]) -> pyarrow.DataType:
    if not kinds or kinds == {"str"}:
        return pa.string()
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds <= {"int", "float"}:
        return pa.float64()
    return pa.string()  # mixed kinds, objects and lists: kept as JSON text


_TYPES = {
    "string": pa.string,
    "large_string": pa.large_string,
    "bool": pa.bool_,
    "int64": pa.int64,
    "double": pa.float64,
}


def _parse_type(text: str) -> pyarrow.DataType:
    if text in _TYPES:
        return _TYPES[text]()
    # Parquet columns may have any type: round-trip it through a schema's IPC form.
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(text))).field(0).type


def _type_text(t: pyarrow.DataType) -> str:
    text = str(t)
    if text in _TYPES:
        return text
    return pa.schema([pa.field("x", t)]).serialize().to_pybytes().hex()


# --- reading one shard --------------------------------------------------------------------


def read_shard(shard: ShardPlan, spec: InputSpec) -> pyarrow.Table:
    """The rows of *shard*: columns ``id``, the text field, the other fields, and the
    internal ``_akidb_row``, ``_akidb_shard`` and ``_akidb_error`` (why a row is bad)."""
    ids: list[str] = []
    texts: list[str | None] = []
    errors: list[str | None] = []
    extra_names = [name for name, _ in spec.extra]
    extras: dict[str, list[Any]] = {name: [] for name in extra_names}
    for piece in shard.pieces:
        for id_, text, error, record in _read_piece(piece, spec):
            ids.append(id_)
            texts.append(text)
            errors.append(error)
            for name in extra_names:
                extras[name].append(record.get(name))
    if len(ids) != shard.rows:
        raise CorpusInputError(
            f"shard {shard.index}: read {len(ids)} rows, planned {shard.rows} "
            "(the input changed while it was being embedded)"
        )
    schema = spec.extra_schema()
    columns: dict[str, Any] = {
        "id": pa.array(ids, pa.string()),
        spec.text_field: pa.array(texts, pa.string()),
    }
    for f in schema:
        columns[f.name] = _column(extras[f.name], f.type, f.name)
    columns[ROW_COLUMN] = pa.array(range(shard.first_row, shard.first_row + shard.rows), pa.int64())
    columns[SHARD_COLUMN] = pa.array([shard.index] * shard.rows, pa.int32())
    columns[ERROR_COLUMN] = pa.array(errors, pa.string())
    return pa.table(columns)


def _column(values: list[Any], type_: pyarrow.DataType, name: str) -> Any:
    if pa.types.is_string(type_):
        values = [
            v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for v in values
        ]
    try:
        return pa.array(values, type_)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise CorpusInputError(f"column {name!r}: values do not fit {type_} ({exc})") from exc


def _read_piece(
    piece: Piece, spec: InputSpec
) -> Iterator[tuple[str, str | None, str | None, dict[str, Any]]]:
    path = Path(piece.path)
    if piece.kind == "parquet":
        yield from _read_parquet_piece(piece, spec)
        return
    done = 0
    number = piece.line
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise CorpusInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        fh.seek(piece.offset)
        for raw in fh:
            if done == piece.count:
                break
            if piece.kind == "txt":
                line = _decode(path, number, raw).rstrip("\r\n")
                if line.strip():
                    yield f"{piece.name}:{number}", line, None, {}
                    done += 1
            elif raw.strip():
                record = _json_record(path, number, raw)
                where = f"{path}, line {number}"
                id_ = _record_id(record, spec.id_field, where, f"{piece.name}:{number}")
                text, error = _text_of(record, spec.text_field)
                yield id_, text, error, record
                done += 1
            number += 1


def _text_of(record: dict[str, Any], field_: str) -> tuple[str | None, str | None]:
    if field_ not in record:
        return None, f"no {field_!r} field"
    value = record[field_]
    if value is None:
        return None, f"{field_!r} is null"
    if not isinstance(value, str):
        return None, f"{field_!r} is {type(value).__name__}, not a string"
    return value, None


def _read_parquet_piece(
    piece: Piece, spec: InputSpec
) -> Iterator[tuple[str, str | None, str | None, dict[str, Any]]]:
    pf = _parquet_file(Path(piece.path))
    # Only the row groups that overlap the piece.
    groups, first, seen = [], None, 0
    stop = piece.start + piece.count
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if seen + n > piece.start and seen < stop:
            groups.append(i)
            if first is None:
                first = seen
        seen += n
    table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
    table = table.slice(piece.start - (first or 0), piece.count)
    for offset, record in enumerate(table.to_pylist()):
        index = piece.start + offset
        id_ = _record_id(
            record, spec.id_field, f"{piece.path}, row {index}", f"{piece.name}:{index}"
        )
        text, error = _text_of(record, spec.text_field)
        yield id_, text, error, record
