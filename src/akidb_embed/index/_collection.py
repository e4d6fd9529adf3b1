"""``Collection``: texts embedded by an :class:`EmbeddingManager`, indexed and kept."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from .._manager import validate_texts
from ..errors import IndexInputError
from ..fingerprint import (
    check_fingerprint,
    embedding_identity,
    manager_fingerprint,
    recorded_identity,
)
from ._results import Record
from ._storage import POINTER, check_new_folder
from ._vector_index import VectorIndex

if TYPE_CHECKING:
    from .._manager import EmbeddingManager
    from ..corpus import EmbeddingsOutput

__all__ = ["AddReport", "Collection", "embedding_identity"]

COLLECTION_FORMAT = 1
_PROGRESS_FROM = 1000


@dataclass(frozen=True)
class AddReport:
    """What :meth:`Collection.add` did: texts newly ``added``, ``updated`` (text or
    metadata changed) and ``skipped`` (already indexed, unchanged)."""

    added: int
    updated: int
    skipped: int


def content_hash(text: str) -> str:
    """sha256 of the UTF-8 text, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Collection:
    """Texts, their embeddings and metadata, searchable by meaning.

    Parameters
    ----------
    manager:
        Embeds the texts and the queries; its provider is whatever the config selects.
    path:
        Folder the collection is saved to. When it holds a saved collection, that is
        loaded (and its fingerprint must match *manager*'s); every ``add`` and
        ``delete`` is saved, so an interrupted run resumes where it stopped.
        A folder without one must be missing or empty (leftovers of an interrupted
        first save are fine).
    space:
        Similarity of a new collection (``"cosine"``, ``"ip"`` or ``"l2"``).
    checkpoint_every:
        With a *path*, texts embedded between two saves during a long ``add``.
    index_options:
        Passed to :class:`VectorIndex` for a new collection (``M``, ``ef``, ``backend``...);
        a loaded collection keeps its build parameters and takes ``ef`` and ``backend``.

    Examples
    --------
    >>> from akidb_embed import EmbeddingManager
    >>> manager = EmbeddingManager.from_config(provider="mock")
    >>> docs = Collection(manager)
    >>> docs.add(["the cat sat on the mat", "stock markets fell"], metadata=[{"n": 1}, None])
    AddReport(added=2, updated=0, skipped=0)
    >>> [r.text for r in docs.search("where did the cat sit?", k=1)]
    ['the cat sat on the mat']
    """

    def __init__(
        self,
        manager: EmbeddingManager,
        path: str | os.PathLike[str] | None = None,
        *,
        space: str = "cosine",
        checkpoint_every: int = 2048,
        **index_options: Any,
    ) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
            raise IndexInputError(f"checkpoint_every must be an int, got {checkpoint_every!r}")
        if checkpoint_every < 1:
            raise IndexInputError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        self._manager = manager
        self._fingerprint = manager_fingerprint(manager)
        self._path = Path(path) if path is not None else None
        self._checkpoint_every = checkpoint_every
        if self._path is not None and (self._path / POINTER).exists():
            index = VectorIndex.load(self._path, backend=index_options.get("backend"))
            if "ef" in index_options:
                index.ef = index_options["ef"]
            kind = index.attributes.get("collection")
            if not isinstance(kind, dict) or kind.get("format") != COLLECTION_FORMAT:
                raise IndexInputError(
                    f"{self._path} holds a vector index, not a collection (open it with "
                    "VectorIndex.load)"
                )
            check_fingerprint(index.fingerprint, self._fingerprint, f"open {self._path}")
            self._index = index
        else:
            if self._path is not None:
                # Never start afresh over versions that lost their pointer: the first
                # save would delete them as stale.
                check_new_folder(self._path, "start a new collection in")
            self._index = VectorIndex(
                manager.dimension, space, fingerprint=self._fingerprint, **index_options
            )
            self._index.attributes["collection"] = {"format": COLLECTION_FORMAT}
        # Enough to rebuild the manager from the saved folder (``akidb-embed search``).
        self._index.attributes["embedding_config"] = recorded_identity(manager)

    # -- properties ----------------------------------------------------------------------

    @property
    def index(self) -> VectorIndex:
        """The underlying :class:`VectorIndex` (payload: ``text``, ``sha256``, ``metadata``)."""
        return self._index

    @property
    def manager(self) -> EmbeddingManager:
        return self._manager

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, id: object) -> bool:
        return id in self._index

    def __repr__(self) -> str:
        where = f" at {self._path}" if self._path else ""
        info = self._manager.info
        return f"<Collection {len(self)} texts, {info.provider}:{info.model}{where}>"

    # -- writing -------------------------------------------------------------------------

    def add(
        self,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        metadata: Sequence[Any] | None = None,
        *,
        progress: bool | None = None,
    ) -> AddReport:
        """Embed and index *texts*, skipping those already indexed unchanged.

        Texts are embedded as documents (``manager.embed_documents``: the model's
        ``document`` prompt, if it has one), queries in :meth:`search` as queries.

        Parameters
        ----------
        texts:
            The texts.
        ids:
            One id per text; by default the first 16 hex digits of the text's sha256,
            so the same text is stored once.
        metadata:
            One JSON-serialisable value per text, or ``None``.
        progress:
            Show a progress bar; by default when more than 1000 texts need embedding.

        Returns
        -------
        AddReport
            Counts of texts added, updated and skipped.

        Raises
        ------
        IndexInputError
            Lengths differ, an id repeats, or two different texts have the same default id.
        """
        items = validate_texts(texts)
        hashes = [content_hash(t) for t in items]
        if ids is None:
            id_list = [h[:16] for h in hashes]
        else:
            id_list = self._index._check_ids(ids)
            if len(id_list) != len(items):
                raise IndexInputError(f"{len(id_list)} ids for {len(items)} texts")
        if metadata is not None and (
            isinstance(metadata, (str, bytes)) or not isinstance(metadata, Sequence)
        ):
            raise IndexInputError("metadata must be a sequence with one value per text")
        metas = list(metadata) if metadata is not None else [None] * len(items)
        if len(metas) != len(items):
            raise IndexInputError(f"{len(metas)} metadata values for {len(items)} texts")

        embed: list[int] = []
        relabel: list[int] = []
        seen: dict[str, int] = {}
        added = updated = skipped = 0
        for i, (id_, digest) in enumerate(zip(id_list, hashes, strict=True)):
            if id_ in seen:
                if ids is None and hashes[seen[id_]] == digest:
                    skipped += 1  # the same text twice in one call is stored once
                    continue
                what = "ids" if ids is not None else "default ids (text hash prefixes)"
                raise IndexInputError(f"{what}: {id_!r} appears more than once")
            seen[id_] = i
            stored = self._index.get(id_).metadata if id_ in self._index else None
            if stored is None:
                embed.append(i)
                added += 1
            elif stored.get("sha256") != digest:
                if ids is None:
                    raise IndexInputError(
                        f"two different texts share the default id {id_!r}; pass explicit ids"
                    )
                embed.append(i)
                updated += 1
            elif stored.get("metadata") != metas[i]:
                relabel.append(i)
                updated += 1
            else:
                skipped += 1

        def payload(i: int) -> dict[str, Any]:
            return {"text": items[i], "sha256": hashes[i], "metadata": metas[i]}

        if relabel:
            self._index.upsert(
                [id_list[i] for i in relabel],
                [self._index.get(id_list[i]).vector for i in relabel],
                [payload(i) for i in relabel],
                fingerprint=self._fingerprint,
            )
        show = progress if progress is not None else len(embed) > _PROGRESS_FROM
        with _progress(len(embed), show) as advance:
            step = self._checkpoint_every if self._path is not None else max(len(embed), 1)
            for start in range(0, len(embed), step):
                chunk = embed[start : start + step]
                vectors = self._embed_documents([items[i] for i in chunk], show, advance)
                self._index.upsert(
                    [id_list[i] for i in chunk],
                    vectors,
                    [payload(i) for i in chunk],
                    fingerprint=self._fingerprint,
                )
                if self._path is not None:
                    self._index.save(self._path)
        if self._path is not None and relabel and not embed:
            self._index.save(self._path)
        return AddReport(added, updated, skipped)

    def add_embeddings(
        self, source: str | os.PathLike[str] | EmbeddingsOutput, *, progress: bool | None = None
    ) -> AddReport:
        """Index vectors embedded earlier, without embedding again.

        *source* is an ``akidb-embed embed-corpus`` output folder (or Parquet files with
        an embedding fingerprint in their schema metadata, as ``embed_dataset`` writes
        them), or what :func:`akidb_embed.corpus.read_embeddings` returned. Its
        ``id`` column gives the ids, the text column the texts, ``sha256`` their hashes
        and the other columns (but the vectors) each row's metadata. As in :meth:`add`,
        rows already indexed unchanged are skipped, and with a *path* the collection is
        saved after each file, so an interrupted build resumes.

        Raises
        ------
        FingerprintMismatchError
            The vectors come from another embedding than this collection's (the
            message names both).
        EmbeddingsOutputError
            *source* is not a complete, intact embeddings folder.
        IndexInputError
            An id appears twice.
        """
        from ..corpus import EmbeddingsOutput, read_embeddings

        output = source if isinstance(source, EmbeddingsOutput) else read_embeddings(source)
        check_fingerprint(
            self._fingerprint, output.fingerprint, f"index the embeddings in {output.root}"
        )
        added = updated = skipped = 0
        seen: set[str] = set()
        show = progress if progress is not None else output.rows > _PROGRESS_FROM
        with _progress(output.rows if show else 0, show) as advance:
            for table in output.tables():
                report = self._add_table(table, output.output_column, output.text_field, seen)
                added, updated, skipped = (
                    added + report.added,
                    updated + report.updated,
                    skipped + report.skipped,
                )
                if self._path is not None and (report.added or report.updated):
                    self._index.save(self._path)
                advance(table.num_rows)
        return AddReport(added, updated, skipped)

    def _add_table(
        self, table: Any, vector_column: str, text_field: str | None, seen: set[str]
    ) -> AddReport:
        names = table.column_names
        text_field = text_field or "text"
        for needed in ("id", text_field, vector_column):
            if needed not in names:
                raise IndexInputError(f"the embeddings have no {needed!r} column")
        ids = [str(i) for i in table.column("id").to_pylist()]
        texts = table.column(text_field).to_pylist()
        hashes = (
            table.column("sha256").to_pylist()
            if "sha256" in names
            else [content_hash(t) for t in texts]
        )
        column = table.column(vector_column).combine_chunks()
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
        others = [n for n in names if n not in ("id", text_field, "sha256", vector_column)]
        # A null is a field the row does not have (rows of different files share columns).
        rows = [
            {k: v for k, v in row.items() if v is not None} or None
            for row in (table.select(others).to_pylist() if others else [{}] * len(ids))
        ]
        take: list[int] = []
        added = updated = skipped = 0
        for i, id_ in enumerate(ids):
            if id_ in seen:
                raise IndexInputError(f"the embeddings hold id {id_!r} more than once")
            seen.add(id_)
            stored = self._index.get(id_).metadata if id_ in self._index else None
            if stored is None:
                added += 1
            elif stored.get("sha256") != hashes[i] or stored.get("metadata") != rows[i]:
                updated += 1
            else:
                skipped += 1
                continue
            take.append(i)
        if take:
            self._index.upsert(
                [ids[i] for i in take],
                vectors[take],
                [{"text": texts[i], "sha256": hashes[i], "metadata": rows[i]} for i in take],
                fingerprint=self._fingerprint,
            )
        return AddReport(added, updated, skipped)

    def _embed_documents(
        self, texts: list[str], show: bool, advance: Callable[[int], None]
    ) -> np.ndarray:
        done = 0

        def report(total: int) -> None:
            nonlocal done
            advance(total - done)
            done = total

        return self._manager.embed_documents(texts, progress=report if show else False)

    def delete(self, ids: str | Sequence[str], *, missing_ok: bool = False) -> int:
        """Remove texts by id; return how many were removed (saved when there is a path)."""
        removed = self._index.delete(ids, missing_ok=missing_ok)
        if removed and self._path is not None:
            self._index.save(self._path)
        return removed

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Save to *path* (default: the collection's own path) atomically."""
        target = Path(path) if path is not None else self._path
        if target is None:
            raise IndexInputError("this collection has no path: pass one to save()")
        self._index.save(target)

    # -- reading -------------------------------------------------------------------------

    def get(self, id: str) -> Record:
        """The stored text and metadata of *id* (score ``nan``)."""
        item = self._index.get(id)
        return Record(id, float("nan"), item.metadata["text"], item.metadata["metadata"])

    @overload
    def search(  # type: ignore[overload-overlap]
        self, query: str, k: int = 10, *, ef: int | None = None
    ) -> list[Record]: ...
    @overload
    def search(
        self, query: Sequence[str], k: int = 10, *, ef: int | None = None
    ) -> list[list[Record]]: ...
    def search(
        self, query: str | Sequence[str], k: int = 10, *, ef: int | None = None
    ) -> list[Record] | list[list[Record]]:
        """The *k* texts closest in meaning to *query*, best first.

        Parameters
        ----------
        query:
            One query (returns a list of :class:`Record`) or a list of queries (returns
            one list per query), embedded as ``manager.embed_query`` does (the model's
            ``query`` prompt, if it has one).
        k:
            Hits per query.
        ef:
            HNSW beam width for this search.
        """
        single = isinstance(query, str)
        if isinstance(query, str):
            vectors = self._manager.embed_query(query)[None, :]
        else:
            vectors = self._manager.embed_queries(validate_texts(query))
        result = self._index.search(vectors, k, ef=ef, fingerprint=self._fingerprint)
        records = [
            [Record(h.id, h.score, h.metadata["text"], h.metadata["metadata"]) for h in hits]
            for hits in result
        ]
        return records[0] if single else records

    def texts(self) -> Iterator[tuple[str, str]]:
        """``(id, text)`` of every stored text, in insertion order."""
        for id_ in self._index.ids():
            yield id_, self._index.get(id_).metadata["text"]


@contextmanager
def _progress(total: int, show: bool) -> Iterator[Callable[[int], None]]:
    if not show or total == 0:
        yield lambda n: None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the index extra; without it, a plain counter
        done = [0]

        def plain(n: int) -> None:
            done[0] += n
            sys.stderr.write(f"\rindexing: {done[0]}/{total} texts")
            sys.stderr.flush()

        try:
            yield plain
        finally:
            sys.stderr.write("\n")
        return
    bar = tqdm(total=total, unit="text", desc="indexing")
    try:
        yield bar.update
    finally:
        bar.close()
