"""``VectorIndex``: string ids, vectors and metadata, searched exactly or with HNSW."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from .._version import __version__
from ..errors import (
    FingerprintMismatchError,
    IndexBackendNotInstalledError,
    IndexCorruptedError,
    IndexInputError,
    UnknownIdError,
)
from ._fingerprint import Fingerprint, as_fingerprint, check_fingerprint, describe
from ._lock import ReadWriteLock, SettingGate
from ._results import Item, SearchResult
from ._storage import SavedVersion, current_version_name, open_version, save_version

if TYPE_CHECKING:
    from .._types import ModelInfo

__all__ = ["SPACES", "VectorIndex"]

SPACES = ("cosine", "ip", "l2")
BACKENDS = ("auto", "hnsw", "exact")
_INSTALL_HINT = "pip install 'akidb-embed[index]'"
_VECTORS, _IDS, _METADATA, _GRAPH = "vectors.npy", "ids.json", "metadata.json", "hnsw.bin"
_MIN_CAPACITY = 64
# Scores of this many (query, item) pairs at most in one exact-search block (~64 MB).
_EXACT_BLOCK = 1 << 24


def hnswlib_available() -> bool:
    """Whether hnswlib can be imported (checked without importing it)."""
    return importlib.util.find_spec("hnswlib") is not None


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise IndexInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class VectorIndex:
    """Vectors under string ids, with optional JSON metadata, searched by similarity.

    Search is exact (numpy) while the index is small or when hnswlib is not installed,
    and approximate (HNSW, through hnswlib) above ``exact_threshold`` items; the API is
    the same either way. Any number of threads may search at once; writers (``add``,
    ``upsert``, ``delete``) wait for the searches in flight and run one at a time.

    Parameters
    ----------
    dimension:
        Length of every vector.
    space:
        ``"cosine"`` (vectors are stored unit-normalised), ``"ip"`` (inner product) or
        ``"l2"`` (squared Euclidean distance).
    fingerprint:
        The embedding the vectors come from (a :class:`~akidb_embed.ModelInfo` or its
        ``fingerprint()`` dict). When unset, the first ``add`` that passes one sets it.
    M, ef_construction:
        HNSW graph degree and build-time beam width.
    ef:
        Default search beam width; each search uses ``max(ef, k)``.
    backend:
        ``"auto"`` (exact below *exact_threshold* items, HNSW above when hnswlib is
        installed), ``"hnsw"`` (always, requires hnswlib) or ``"exact"`` (never HNSW).
    exact_threshold:
        Live item count from which ``"auto"`` builds the HNSW graph.
    seed:
        Random seed of the HNSW level generator (builds are reproducible when single-threaded).

    Examples
    --------
    >>> import numpy as np
    >>> index = VectorIndex(3)
    >>> index.add(["a", "b"], np.array([[1, 0, 0], [0, 1, 0]]), metadata=[{"n": 1}, None])
    >>> hit = index.search(np.array([1.0, 0.1, 0]), k=1)[0][0]
    >>> hit.id, round(hit.score, 3), hit.metadata
    ('a', 0.995, {'n': 1})
    """

    def __init__(
        self,
        dimension: int,
        space: str = "cosine",
        *,
        fingerprint: ModelInfo | Mapping[str, Any] | None = None,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 100,
        backend: str = "auto",
        exact_threshold: int = 10_000,
        seed: int = 100,
    ) -> None:
        self._dim = _positive_int("dimension", dimension)
        if space not in SPACES:
            raise IndexInputError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
        if backend not in BACKENDS:
            raise IndexInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "hnsw" and not hnswlib_available():
            raise IndexBackendNotInstalledError(
                f"backend='hnsw' needs hnswlib, which is not installed. Install it with: "
                f"{_INSTALL_HINT} (or use backend='exact')"
            )
        self._space = space
        self._backend = backend
        self._M = _positive_int("M", M, 2)
        self._ef_construction = _positive_int("ef_construction", ef_construction)
        self._ef = _positive_int("ef", ef)
        self._exact_threshold = _positive_int("exact_threshold", exact_threshold, 0)
        self._seed = _positive_int("seed", seed, 0)
        self._fingerprint = as_fingerprint(fingerprint)
        self.attributes: dict[str, Any] = {}
        """JSON-serialisable values saved in the manifest (for applications)."""
        self._lock = ReadWriteLock()
        self._vectors = np.zeros((_MIN_CAPACITY, self._dim), dtype=np.float32)
        self._live = np.zeros(_MIN_CAPACITY, dtype=bool)
        self._slots: list[str] = []  # label -> id, deleted ids included
        self._labels: dict[str, int] = {}  # id -> label, deleted ids included
        self._meta: list[str | None] = []  # label -> metadata as JSON text
        self._count = 0
        self._graph: Any = None
        self._gate = SettingGate(self._set_graph_ef)
        if backend == "hnsw":
            self._build_graph()

    # -- properties ----------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        return self._dim

    @property
    def space(self) -> str:
        return self._space

    @property
    def backend(self) -> str:
        """The configured backend: ``"auto"``, ``"hnsw"`` or ``"exact"``."""
        return self._backend

    @property
    def uses_hnsw(self) -> bool:
        """Whether searches currently go through the HNSW graph."""
        return self._graph is not None

    @property
    def fingerprint(self) -> Fingerprint | None:
        """The embedding fingerprint of the stored vectors (a copy), or ``None``."""
        return dict(self._fingerprint) if self._fingerprint is not None else None

    @property
    def params(self) -> dict[str, Any]:
        """HNSW and backend parameters."""
        return {
            "M": self._M,
            "ef_construction": self._ef_construction,
            "ef": self._ef,
            "backend": self._backend,
            "exact_threshold": self._exact_threshold,
            "seed": self._seed,
        }

    @property
    def ef(self) -> int:
        """Default search beam width (each search uses at least ``k``)."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        self._ef = _positive_int("ef", value)

    def __len__(self) -> int:
        with self._lock.read():
            return self._count

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str):
            return False
        # Under the lock: compact() replaces _labels and _live, and an old label could
        # index the new, shorter _live.
        with self._lock.read():
            label = self._labels.get(id)
            return label is not None and bool(self._live[label])

    def ids(self) -> list[str]:
        """The ids of the stored items, in insertion order."""
        with self._lock.read():
            return [self._slots[i] for i in np.flatnonzero(self._live[: len(self._slots)])]

    def __repr__(self) -> str:
        mode = "hnsw" if self._graph is not None else "exact"
        return (
            f"<VectorIndex dim={self._dim} space={self._space} count={self._count} search={mode}>"
        )

    # -- writing -------------------------------------------------------------------------

    def add(
        self,
        ids: str | Sequence[str],
        vectors: Any,
        metadata: Any = None,
        *,
        fingerprint: ModelInfo | Mapping[str, Any] | None = None,
        ignore_fingerprint: bool = False,
    ) -> None:
        """Add new items; an id that is already present is an error (see :meth:`upsert`).

        Everything is checked before the index changes: a call that fails changes nothing.

        Parameters
        ----------
        ids:
            One id or a sequence of unique ids.
        vectors:
            Array of shape ``(len(ids), dimension)`` (or ``(dimension,)`` for one id).
        metadata:
            ``None``, or one JSON-serialisable value per id (a bare value for one id).
        fingerprint:
            Where the vectors come from; refused when it differs from the index's
            unless *ignore_fingerprint* is true.

        Raises
        ------
        IndexInputError
            Wrong shape, non-finite values, bad or duplicate ids, metadata that is not JSON.
        FingerprintMismatchError
            The vectors come from another embedding than the index's.
        """
        self._write(ids, vectors, metadata, fingerprint, ignore_fingerprint, replace=False)

    def upsert(
        self,
        ids: str | Sequence[str],
        vectors: Any,
        metadata: Any = None,
        *,
        fingerprint: ModelInfo | Mapping[str, Any] | None = None,
        ignore_fingerprint: bool = False,
    ) -> None:
        """Add items, replacing the vector and metadata of ids already present.

        Same parameters as :meth:`add`. As there, the ids of one call must be unique
        (an id given twice is an :class:`~akidb_embed.errors.IndexInputError`, not
        "last one wins"), and a call that fails changes nothing.
        """
        self._write(ids, vectors, metadata, fingerprint, ignore_fingerprint, replace=True)

    def delete(self, ids: str | Sequence[str], *, missing_ok: bool = False) -> int:
        """Remove items; return how many were removed.

        An id given more than once is removed once. Either every id is removed or,
        on an error, none is.

        Raises
        ------
        UnknownIdError
            An id is not present (unless *missing_ok*).
        """
        # Each label must be marked deleted once: hnswlib refuses a second mark_deleted,
        # and the live count would drop twice.
        id_list = list(dict.fromkeys(self._check_ids(ids)))
        with self._lock.write():
            labels = []
            for id_ in id_list:
                label = self._labels.get(id_)
                if label is None or not self._live[label]:
                    if missing_ok:
                        continue
                    raise UnknownIdError(f"id {id_!r} is not in the index")
                labels.append(label)
            for label in labels:
                if self._graph is not None:
                    self._graph.mark_deleted(label)
                self._live[label] = False
                self._meta[label] = None
            self._count -= len(labels)
            return len(labels)

    def compact(self) -> None:
        """Drop the space deleted items still hold, rebuilding the HNSW graph if any."""
        with self._lock.write():
            keep = np.flatnonzero(self._live[: len(self._slots)])
            vectors = self._vectors[keep].copy()
            slots = [self._slots[i] for i in keep]
            meta = [self._meta[i] for i in keep]
            self._reset(vectors, slots, meta, np.ones(len(keep), dtype=bool))
            if self._graph is not None:
                self._graph = None
                self._build_graph()

    def _write(
        self,
        ids: str | Sequence[str],
        vectors: Any,
        metadata: Any,
        fingerprint: ModelInfo | Mapping[str, Any] | None,
        ignore_fingerprint: bool,
        *,
        replace: bool,
    ) -> None:
        single = isinstance(ids, str)
        id_list = self._check_ids(ids)
        if len(set(id_list)) != len(id_list):
            seen: set[str] = set()
            for id_ in id_list:
                if id_ in seen:
                    raise IndexInputError(f"id {id_!r} appears more than once in one call")
                seen.add(id_)
        matrix = self._check_vectors(vectors, len(id_list), "vectors")
        meta = self._check_metadata(metadata, id_list, single)
        fp = as_fingerprint(fingerprint)
        with self._lock.write():
            adopt = not ignore_fingerprint and fp is not None and self._fingerprint is None
            if adopt and self._count:
                assert fp is not None  # adopt implies it
                raise FingerprintMismatchError(
                    f"cannot add these vectors from {describe(fp)}: the index holds "
                    f"{self._count} vectors added without a fingerprint, of unknown origin. "
                    "Pass ignore_fingerprint=True if you know they are compatible."
                )
            if not adopt:
                check_fingerprint(
                    self._fingerprint, fp, "add these vectors", ignore=ignore_fingerprint
                )
            labels = np.empty(len(id_list), dtype=np.int64)
            fresh = 0
            for i, id_ in enumerate(id_list):
                label = self._labels.get(id_)
                if label is None:
                    labels[i] = len(self._slots) + fresh
                    fresh += 1
                elif self._live[label] and not replace:
                    raise IndexInputError(
                        f"id {id_!r} is already in the index (use upsert to replace it)"
                    )
                else:
                    labels[i] = label
            # Everything is checked: from here on the index changes.
            if adopt:
                self._fingerprint = fp
            self._grow(len(self._slots) + fresh)
            for id_ in id_list:
                if id_ not in self._labels:
                    self._labels[id_] = len(self._slots)
                    self._slots.append(id_)
                    self._meta.append(None)
            added = int(np.count_nonzero(~self._live[labels]))
            self._vectors[labels] = matrix
            self._live[labels] = True
            for label, value in zip(labels.tolist(), meta, strict=True):
                self._meta[label] = value
            self._count += added
            if self._graph is not None:
                self._graph.add_items(matrix, labels)
            elif (
                self._backend == "auto"
                and self._count >= self._exact_threshold
                and hnswlib_available()
            ):
                self._build_graph()

    # -- reading -------------------------------------------------------------------------

    @overload
    def get(self, ids: str) -> Item: ...  # type: ignore[overload-overlap]
    @overload
    def get(self, ids: Sequence[str]) -> list[Item]: ...
    def get(self, ids: str | Sequence[str]) -> Item | list[Item]:
        """The stored vector and metadata of one id (an :class:`Item`) or of several.

        Vectors of a ``"cosine"`` index come back unit-normalised, as stored.

        Raises
        ------
        UnknownIdError
            An id is not present.
        """
        id_list = self._check_ids(ids)
        with self._lock.read():
            items = []
            for id_ in id_list:
                label = self._labels.get(id_)
                if label is None or not self._live[label]:
                    raise UnknownIdError(f"id {id_!r} is not in the index")
                items.append(Item(id_, self._vectors[label].copy(), _load_meta(self._meta[label])))
        return items[0] if isinstance(ids, str) else items

    def search(
        self,
        vectors: Any,
        k: int = 10,
        *,
        ef: int | None = None,
        exact: bool = False,
        fingerprint: ModelInfo | Mapping[str, Any] | None = None,
        ignore_fingerprint: bool = False,
    ) -> SearchResult:
        """The *k* nearest items of each query vector, best first.

        Parameters
        ----------
        vectors:
            One query ``(dimension,)`` or a batch ``(n, dimension)``; the result always
            has one row per query.
        k:
            Hits per query (fewer when the index holds fewer items).
        ef:
            HNSW beam width for this search (default: the index's ``ef``); raised to
            ``k`` when smaller. Ignored by exact search.
        exact:
            Search exactly (numpy) even when an HNSW graph exists.
        fingerprint:
            Where the query vectors come from; refused when it differs from the index's
            unless *ignore_fingerprint* is true.
        """
        k = _positive_int("k", k)
        if ef is not None:
            ef = _positive_int("ef", ef)
        try:
            queries = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise IndexInputError(f"query vectors must be a numeric array: {exc}") from exc
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2:
            raise IndexInputError(
                f"query vectors must have shape (dimension,) or (n, dimension), got {queries.shape}"
            )
        queries = self._check_vectors(queries, queries.shape[0], "query vectors")
        fp = as_fingerprint(fingerprint)
        with self._lock.read():
            check_fingerprint(self._fingerprint, fp, "search", ignore=ignore_fingerprint)
            k = min(k, self._count)
            if k == 0:
                labels = np.zeros((len(queries), 0), dtype=np.int64)
                scores = np.zeros((len(queries), 0), dtype=np.float32)
            elif self._graph is None or exact:
                labels, scores = self._exact(queries, k)
            else:
                labels, scores = self._approximate(queries, k, max(ef or self._ef, k))
            ids = [[self._slots[j] for j in row] for row in labels.tolist()]
            meta = [[_load_meta(self._meta[j]) for j in row] for row in labels.tolist()]
        return SearchResult(ids, scores, meta, self._space)

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._slots)
        stored = self._vectors[:n]
        dead = ~self._live[:n]
        step = max(1, _EXACT_BLOCK // max(n, 1))
        labels = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        sq_norms = np.einsum("ij,ij->i", stored, stored) if self._space == "l2" else None
        for start in range(0, len(queries), step):
            block = queries[start : start + step]
            sim = block @ stored.T
            if sq_norms is not None:
                # Rank by -distance so that "largest first" works for every space.
                q_norms = np.einsum("ij,ij->i", block, block)[:, None]
                sim = 2 * sim - sq_norms[None, :] - q_norms
            sim[:, dead] = -np.inf
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < n else np.argsort(-sim)[:, :k]
            top_scores = np.take_along_axis(sim, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            labels[start : start + len(block)] = np.take_along_axis(top, order, axis=1)
            scores[start : start + len(block)] = np.take_along_axis(top_scores, order, axis=1)
        if self._space == "l2":
            scores = np.maximum(-scores, 0)
        return labels, scores

    def _approximate(self, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            with self._gate.use(ef):
                labels, distances = self._graph.knn_query(queries, k=k)
        except RuntimeError:
            # hnswlib could not find k live neighbours (many deletions cut the graph):
            # the exact answer is always available.
            return self._exact(queries, k)
        labels = labels.astype(np.int64)
        if self._space == "l2":
            return labels, distances.astype(np.float32)
        return labels, (1.0 - distances).astype(np.float32)

    # -- persistence ---------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save to the folder *path* atomically.

        A new version is written next to the current one, flushed to disk, and then
        made current by an atomic rename, so a crash or kill at any moment leaves the
        previous (or the new) version loadable. Searches may continue meanwhile;
        writers wait.
        """
        root = Path(path)
        with self._lock.read():
            n = len(self._slots)
            vectors = self._vectors[:n]
            ids_doc = {
                "ids": self._slots,
                "deleted": np.flatnonzero(~self._live[:n]).tolist(),
            }
            files = {
                _VECTORS: lambda p: _write_npy(p, vectors),
                _IDS: lambda p: p.write_bytes(json.dumps(ids_doc, ensure_ascii=False).encode()),
                _METADATA: lambda p: p.write_bytes(
                    ("[" + ",".join(m or "null" for m in self._meta) + "]").encode()
                ),
            }
            if self._graph is not None:
                graph = self._graph
                files[_GRAPH] = lambda p: graph.save_index(str(p))
            manifest = {
                "dimension": self._dim,
                "space": self._space,
                "count": self._count,
                "slots": n,
                "fingerprint": self._fingerprint,
                "params": self.params,
                "hnsw": self._graph is not None,
                "attributes": self.attributes,
                "library_version": __version__,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            save_version(root, files, manifest)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, backend: str | None = None) -> VectorIndex:
        """Load an index saved with :meth:`save`.

        Parameters
        ----------
        backend:
            Override the saved backend (``"exact"`` loads without hnswlib).

        Raises
        ------
        IndexInputError
            *path* holds no index.
        IndexCorruptedError
            A file is truncated, corrupted, missing or of an unknown format version.
        """
        root = Path(path)
        for _attempt in range(5):
            before = current_version_name(root)
            try:
                return cls._from_version(open_version(root), backend)
            except (FileNotFoundError, IndexCorruptedError) as exc:
                # A concurrent save may have replaced this version and deleted its files.
                if current_version_name(root) != before:
                    continue
                if isinstance(exc, FileNotFoundError):
                    raise IndexCorruptedError(
                        f"index at {root}: {Path(exc.filename or '?').name} is missing "
                        f"from version {before}"
                    ) from exc
                raise
        raise IndexCorruptedError(f"index at {root} kept changing while it was being loaded")

    @classmethod
    def _from_version(cls, version: SavedVersion, backend: str | None) -> VectorIndex:
        m = version.manifest
        where = f"index at {version.root}"
        try:
            params = dict(m["params"])
            dim, space, count, slots = m["dimension"], m["space"], m["count"], m["slots"]
            if not all(isinstance(v, int) for v in (dim, count, slots)):
                raise TypeError("dimension, count and slots must be integers")
            chosen = backend if backend is not None else params["backend"]
            # Built as "exact" so that no empty graph is made; the graph comes below.
            index = cls(
                dim,
                space,
                fingerprint=m.get("fingerprint"),
                **{k: params[k] for k in ("M", "ef_construction", "ef", "exact_threshold", "seed")},
                backend="exact",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptedError(f"{where}: invalid manifest ({exc})") from exc
        if chosen not in BACKENDS:
            raise IndexInputError(f"backend must be one of {', '.join(BACKENDS)}, got {chosen!r}")
        if chosen == "hnsw" and not hnswlib_available():
            raise IndexBackendNotInstalledError(
                f"{where} was saved with backend='hnsw', which needs hnswlib. Install it "
                f"with: {_INSTALL_HINT}, or load it with backend='exact'"
            )
        index._backend = chosen
        index.attributes = dict(m.get("attributes") or {})
        try:
            ids_doc = json.loads(version.read_bytes(_IDS))
            id_list, deleted = ids_doc["ids"], ids_doc["deleted"]
            meta_doc = json.loads(version.read_bytes(_METADATA))
            vectors = np.load(io.BytesIO(version.read_bytes(_VECTORS)), allow_pickle=False)
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptedError(f"{where}: unreadable data ({exc})") from exc
        live = np.ones(len(id_list), dtype=bool)
        try:
            live[np.asarray(deleted, dtype=np.int64)] = False
        except (IndexError, ValueError) as exc:
            raise IndexCorruptedError(f"{where}: invalid deleted list") from exc
        problems = []
        if not isinstance(id_list, list) or not all(isinstance(i, str) and i for i in id_list):
            raise IndexCorruptedError(f"{where}: ids are not a list of non-empty strings")
        if vectors.dtype != np.float32 or vectors.shape != (slots, dim):
            problems.append(f"vectors are {vectors.dtype} {vectors.shape}, expected {(slots, dim)}")
        if len(id_list) != slots or len(set(id_list)) != slots:
            problems.append("ids are not one unique id per slot")
        if not isinstance(meta_doc, list) or len(meta_doc) != slots:
            problems.append("metadata is not one entry per slot")
        if int(live.sum()) != count:
            problems.append(f"{int(live.sum())} live ids, the manifest says {count}")
        if problems:
            raise IndexCorruptedError(f"{where}: {'; '.join(problems)}")
        meta = [_dump_meta(v) if ok else None for v, ok in zip(meta_doc, live, strict=True)]
        index._reset(vectors, list(id_list), meta, live)
        want_graph = chosen == "hnsw" or (chosen == "auto" and count >= index._exact_threshold)
        if want_graph and hnswlib_available():
            if m.get("hnsw") and version.has(_GRAPH):
                index._load_graph(version.checked_path(_GRAPH), where)
            else:
                index._build_graph()
        return index

    # -- internals -----------------------------------------------------------------------

    def _reset(
        self, vectors: np.ndarray, slots: list[str], meta: list[str | None], live: np.ndarray
    ) -> None:
        n = len(slots)
        capacity = max(_MIN_CAPACITY, n)
        self._vectors = np.zeros((capacity, self._dim), dtype=np.float32)
        self._vectors[:n] = vectors
        self._live = np.zeros(capacity, dtype=bool)
        self._live[:n] = live
        self._slots = slots
        self._labels = {id_: i for i, id_ in enumerate(slots)}
        self._meta = meta
        self._count = int(live.sum())

    def _grow(self, needed: int) -> None:
        capacity = len(self._live)
        if needed <= capacity:
            return
        new = max(needed, 2 * capacity)
        vectors = np.zeros((new, self._dim), dtype=np.float32)
        vectors[:capacity] = self._vectors
        live = np.zeros(new, dtype=bool)
        live[:capacity] = self._live
        self._vectors, self._live = vectors, live
        if self._graph is not None:
            self._graph.resize_index(new)

    def _new_graph(self) -> Any:
        import hnswlib

        # Cosine vectors are stored normalised, so inner product ranks them the same.
        return hnswlib.Index(space="l2" if self._space == "l2" else "ip", dim=self._dim)

    def _build_graph(self) -> None:
        graph = self._new_graph()
        graph.init_index(
            max_elements=len(self._live),
            M=self._M,
            ef_construction=self._ef_construction,
            random_seed=self._seed,
        )
        n = len(self._slots)
        if n:
            graph.add_items(self._vectors[:n], np.arange(n))
            for label in np.flatnonzero(~self._live[:n]):
                graph.mark_deleted(int(label))
        self._graph = graph
        self._gate.forget()

    def _load_graph(self, path: Path, where: str) -> None:
        graph = self._new_graph()
        try:
            graph.load_index(str(path), max_elements=len(self._live))
        except (RuntimeError, ValueError) as exc:
            raise IndexCorruptedError(f"{where}: hnswlib cannot read the graph ({exc})") from exc
        if graph.element_count != len(self._slots) or graph.M != self._M:
            raise IndexCorruptedError(
                f"{where}: the graph holds {graph.element_count} items, expected {len(self._slots)}"
            )
        self._graph = graph
        self._gate.forget()

    def _set_graph_ef(self, ef: int) -> None:
        self._graph.set_ef(ef)

    def _check_ids(self, ids: str | Sequence[str]) -> list[str]:
        if isinstance(ids, str):
            id_list = [ids]
        elif isinstance(ids, (Sequence, np.ndarray)):
            id_list = list(ids)
        else:
            raise IndexInputError(
                f"ids must be a str or a sequence of str, got {type(ids).__name__}"
            )
        for i, id_ in enumerate(id_list):
            if not isinstance(id_, str) or not id_:
                raise IndexInputError(
                    f"ids[{i}] must be a non-empty str, got {type(id_).__name__} {id_!r:.60}"
                )
        return id_list

    def _check_vectors(self, vectors: Any, n: int, what: str) -> np.ndarray:
        try:
            matrix = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise IndexInputError(f"{what} must be a numeric array: {exc}") from exc
        if matrix.ndim == 1 and n == 1:
            matrix = matrix[None, :]
        if matrix.shape != (n, self._dim):
            raise IndexInputError(
                f"{what} have shape {matrix.shape}, expected {(n, self._dim)} "
                f"(the index's dimension is {self._dim})"
            )
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            raise IndexInputError(
                f"{what}: row {int(np.flatnonzero(~finite)[0])} has a NaN or infinite value"
            )
        matrix = np.ascontiguousarray(matrix)
        if self._space == "cosine":
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            if not (norms > 0).all():
                raise IndexInputError(
                    f"{what}: row {int(np.flatnonzero(norms[:, 0] <= 0)[0])} is all zeros, "
                    "which has no cosine similarity"
                )
            matrix = matrix / norms
        return matrix

    def _check_metadata(self, metadata: Any, ids: list[str], single: bool) -> list[str | None]:
        if metadata is None:
            return [None] * len(ids)
        if single:
            values = [metadata]
        elif isinstance(metadata, Sequence) and not isinstance(metadata, (str, bytes)):
            values = list(metadata)
        else:
            raise IndexInputError(
                f"metadata must be a sequence with one value per id, got {type(metadata).__name__}"
            )
        if len(values) != len(ids):
            raise IndexInputError(f"{len(values)} metadata values for {len(ids)} ids")
        out: list[str | None] = []
        for id_, value in zip(ids, values, strict=True):
            try:
                out.append(_dump_meta(value))
            except (TypeError, ValueError) as exc:
                raise IndexInputError(
                    f"metadata of id {id_!r} is not JSON-serialisable: {exc}"
                ) from exc
        return out


def _dump_meta(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _load_meta(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:
        np.save(fh, array, allow_pickle=False)
