"""``akidb-embed index build`` and ``akidb-embed search``.

Entry points ``index`` and ``search`` of group ``akidb_embed.commands`` name
:func:`register_index` and :func:`register_search`; importing this module is cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IndexInputError

if TYPE_CHECKING:
    from .._config import EmbeddingConfig

__all__ = ["read_corpus", "register", "register_index", "register_search", "search_config"]


def register(subparsers: Any) -> None:
    """Add the ``index`` (with ``build``) and ``search`` subcommands."""
    register_index(subparsers)
    register_search(subparsers)


def register_index(subparsers: Any) -> None:
    """Add the ``index`` command (with its ``build`` subcommand)."""
    from ..cli import add_config_arguments

    index = subparsers.add_parser("index", help="build vector indexes of texts")
    commands = index.add_subparsers(dest="index_command", metavar="COMMAND", required=True)
    build = commands.add_parser(
        "build",
        help="embed texts and index them into a folder",
        description=(
            "Embed and index texts. SOURCE is a file with one text per line, a .jsonl file "
            'of {"text": ..., "id": ..., "metadata": ...} records, or a folder whose .txt '
            "files are one text each and whose .jsonl files hold records. Re-running on the "
            "same folder skips texts already indexed, so an interrupted build resumes."
        ),
    )
    build.add_argument("source", nargs="?", help="file or folder of texts")
    build.add_argument(
        "--from-embeddings",
        metavar="OUT",
        help="index the vectors of an `akidb-embed embed-corpus` output instead of "
        "embedding SOURCE (the model is the one OUT records; its fingerprint is checked)",
    )
    build.add_argument("--out", required=True, metavar="DIR", help="index folder to write")
    build.add_argument("--space", choices=["cosine", "ip", "l2"], default="cosine")
    build.add_argument(
        "--checkpoint-every",
        type=int,
        default=2048,
        metavar="N",
        help="save after every N embedded texts (default 2048)",
    )
    build.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    add_config_arguments(build)
    build.set_defaults(func=_cmd_build)


def register_search(subparsers: Any) -> None:
    """Add the ``search`` command."""
    from ..cli import add_config_arguments

    search = subparsers.add_parser(
        "search",
        help="search an index folder by meaning",
        description=(
            "Embed QUERY with the embedding the index was built with and print the closest "
            "texts. The index records only what identifies that embedding (provider, model, "
            "max length, normalisation, truncation, model-shaping options such as "
            "onnx_file or revision); everything else (python_path, cache_dir, threads, "
            "the python-bridge's env and imports...) comes from your configuration file and "
            "AKIDB_EMBEDDING_* environment, never from the index. The options below "
            "override both."
        ),
    )
    search.add_argument("index_dir", metavar="DIR", help="index folder made by `index build`")
    search.add_argument("query", nargs="+", help="query text (several: one search each)")
    search.add_argument("-k", type=int, default=5, help="hits per query (default 5)")
    search.add_argument("--ef", type=int, help="HNSW beam width for this search")
    search.add_argument("--json", action="store_true", help="print JSON lines")
    add_config_arguments(search)
    search.set_defaults(func=_cmd_search)


# --- build --------------------------------------------------------------------------------


def _cmd_build(args: argparse.Namespace) -> int:
    from .._manager import EmbeddingManager
    from ..cli import UsageError, _load_config
    from ._collection import Collection

    if (args.source is None) == (args.from_embeddings is None):
        raise UsageError("index build takes SOURCE or --from-embeddings OUT (one of them)")
    if args.from_embeddings is not None:
        return _build_from_embeddings(args)
    source = Path(args.source)
    records = list(read_corpus(source))
    if not records:
        raise IndexInputError(f"no texts found in {source}")
    config = _load_config(args)
    model = Path(config.model)
    if not model.is_absolute() and model.exists():
        # Recorded in the index for `search`, which may run from another directory.
        config = config.replace(model=str(model.resolve()))
    start = time.perf_counter()
    with EmbeddingManager.from_config(config) as manager:
        collection = Collection(
            manager, args.out, space=args.space, checkpoint_every=args.checkpoint_every
        )
        report = collection.add(
            [r["text"] for r in records],
            ids=_ids(records),
            metadata=[r["metadata"] for r in records],
            progress=not args.quiet,
        )
        total = len(collection)
    if not args.quiet:
        print(
            f"indexed {len(records)} texts into {args.out} in {time.perf_counter() - start:.1f} s: "
            f"{report.added} added, {report.updated} updated, {report.skipped} unchanged; "
            f"{total} in the index",
            file=sys.stderr,
        )
    return 0


def _build_from_embeddings(args: argparse.Namespace) -> int:
    from .._manager import EmbeddingManager
    from ..corpus import read_embeddings
    from ._collection import Collection

    start = time.perf_counter()
    output = read_embeddings(args.from_embeddings)
    config = search_config(
        output.embedding_config or {}, _overrides(args), getattr(args, "config", None)
    )
    with EmbeddingManager.from_config(config) as manager:
        collection = Collection(
            manager, args.out, space=args.space, checkpoint_every=args.checkpoint_every
        )
        report = collection.add_embeddings(output, progress=not args.quiet)
        total = len(collection)
    if not args.quiet:
        print(
            f"indexed the embeddings of {args.from_embeddings} into {args.out} in "
            f"{time.perf_counter() - start:.1f} s: {report.added} added, {report.updated} "
            f"updated, {report.skipped} unchanged; {total} in the index",
            file=sys.stderr,
        )
    return 0


def _ids(records: list[dict[str, Any]]) -> list[str] | None:
    given = [r["id"] for r in records]
    if all(i is None for i in given):
        return None
    if any(i is None for i in given):
        raise IndexInputError(
            "some records have an id and others do not: give every record an id, or none"
        )
    return given


def read_corpus(source: Path) -> Iterator[dict[str, Any]]:
    """Records ``{"text", "id", "metadata"}`` from a file or a folder (see ``index build``)."""
    if not source.exists():
        raise IndexInputError(f"input not found: {source}")
    if source.is_dir():
        files = sorted(
            p for p in source.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl")
        )
        if not files:
            raise IndexInputError(f"no .txt or .jsonl files in folder {source}")
        for path in files:
            rel = path.relative_to(source).as_posix()
            if path.suffix == ".jsonl":
                yield from _read_jsonl(path, rel)
            else:
                text = _read_text(path).strip()
                if text:
                    yield {"text": text, "id": None, "metadata": {"source": rel}}
    elif source.suffix == ".jsonl":
        yield from _read_jsonl(source, source.name)
    else:
        for number, line in enumerate(_read_text(source).splitlines(), 1):
            if line.strip():
                yield {
                    "text": line,
                    "id": None,
                    "metadata": {"source": source.name, "line": number},
                }


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IndexInputError(f"{path} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise IndexInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_jsonl(path: Path, name: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IndexInputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise IndexInputError(f'{path}, line {number}: expected an object with a "text" string')
        id_ = record.get("id")
        if id_ is not None and not isinstance(id_, (str, int)):
            raise IndexInputError(f'{path}, line {number}: "id" must be a string or an integer')
        if "metadata" in record:
            meta = record["metadata"]
        else:
            meta = {k: v for k, v in record.items() if k not in ("text", "id")} or None
        yield {"text": record["text"], "id": None if id_ is None else str(id_), "metadata": meta}


# --- search -------------------------------------------------------------------------------


def _cmd_search(args: argparse.Namespace) -> int:
    from .._manager import EmbeddingManager
    from ._collection import Collection
    from ._storage import open_version

    folder = Path(args.index_dir)
    stored = (open_version(folder).manifest.get("attributes") or {}).get("embedding_config")
    if not isinstance(stored, dict):
        raise IndexInputError(
            f"{folder} holds a vector index without a recorded embedding configuration "
            "(not built by `index build` or Collection); search it from Python"
        )
    config = search_config(stored, _overrides(args), getattr(args, "config", None))
    with EmbeddingManager.from_config(config) as manager:
        collection = Collection(manager, folder)
        results = collection.search(args.query, k=args.k, ef=args.ef)
    for query, hits in zip(args.query, results, strict=True):
        if args.json:
            for rank, hit in enumerate(hits, 1):
                row = {"query": query, "rank": rank, **hit._asdict()}
                print(json.dumps(row, ensure_ascii=False))
            continue
        print(f"query: {query}")
        for rank, hit in enumerate(hits, 1):
            text = hit.text if len(hit.text) <= 100 else hit.text[:99] + "\u2026"
            print(f"  {rank:>2}. {hit.score:.4f}  {text}")
    return 0


def search_config(
    stored: dict[str, Any], overrides: dict[str, Any], config_file: str | None = None
) -> EmbeddingConfig:
    """The configuration ``search`` embeds queries with.

    Precedence: *overrides* (the command line) > the embedding identity recorded in the
    index (see :func:`~akidb_embed.fingerprint.embedding_identity`; nothing else
    of *stored* is read) > the user's environment and configuration file > defaults.
    Options from the file or environment apply only when they are for the provider
    that ends up chosen.
    """
    from .._config import EmbeddingConfig
    from ..fingerprint import embedding_identity

    identity = embedding_identity(stored)
    recorded_options = identity.pop("options")
    overrides = dict(overrides)
    given_options = overrides.pop("options", {})
    user = EmbeddingConfig.load(config_file)
    provider = overrides.get("provider", identity.get("provider", user.provider))
    user_options = dict(user.options) if user.provider == provider else {}
    options = {**user_options, **recorded_options, **given_options}
    return user.replace(**{**identity, **overrides}, options=options)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ..cli import config_overrides

    return config_overrides(args)
