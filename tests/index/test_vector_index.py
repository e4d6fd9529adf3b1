"""VectorIndex: ids, metadata, search in every space, exact vs HNSW, fingerprints, threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import ModelInfo
from akidb_embed.errors import (
    FingerprintMismatchError,
    IndexBackendNotInstalledError,
    IndexCorruptedError,
    IndexInputError,
    UnknownIdError,
)
from akidb_embed.index import VectorIndex
from akidb_embed.index import _vector_index as vector_index_module

BACKENDS = ["exact", "hnsw"]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a real condition (no fixed sleeps: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)


def in_lock_or_done(thread: threading.Thread) -> bool:
    """Whether *thread* has finished or is inside ``ReadWriteLock.read`` (waiting on it)."""
    if not thread.is_alive():
        return True
    frame = sys._current_frames().get(thread.ident)  # type: ignore[arg-type]
    while frame is not None:
        code = frame.f_code
        if code.co_name == "read" and code.co_filename.endswith("_lock.py"):
            return True
        frame = frame.f_back
    return False


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(data: np.ndarray, queries: np.ndarray, k: int, space: str) -> np.ndarray:
    if space == "l2":
        d = ((queries[:, None, :] - data[None, :, :]) ** 2).sum(-1)
        return np.argsort(d, axis=1, kind="stable")[:, :k]
    if space == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("space", ["cosine", "ip", "l2"])
def test_search_matches_brute_force(backend: str, space: str) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(400, 24)).astype(np.float32)
    queries = rng.normal(size=(7, 24)).astype(np.float32)
    index = VectorIndex(24, space, backend=backend, ef=400)
    index.add([f"d{i}" for i in range(400)], data, metadata=[{"i": i} for i in range(400)])
    assert index.uses_hnsw is (backend == "hnsw")
    result = index.search(queries, k=5)
    truth = brute_force(data, queries, 5, space)
    assert result.ids == [[f"d{j}" for j in row] for row in truth]
    assert result.metadata == [[{"i": int(j)} for j in row] for row in truth]
    assert result.scores.shape == (7, 5) and result.scores.dtype == np.float32
    # Scores mean what the docs say: similarity (cosine, ip) or squared distance (l2).
    best = data[truth[:, 0]]
    if space == "l2":
        want = ((queries - best) ** 2).sum(1)
        assert np.all(np.diff(result.scores, axis=1) >= -1e-4)
    elif space == "ip":
        want = (queries * best).sum(1)
        assert np.all(np.diff(result.scores, axis=1) <= 1e-4)
    else:
        want = (queries * best).sum(1) / np.linalg.norm(queries, axis=1)
        want /= np.linalg.norm(best, axis=1)
    np.testing.assert_allclose(result.scores[:, 0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_upsert_delete_get(backend: str) -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 10, 8)
    index = VectorIndex(8, backend=backend)
    index.add([f"i{i}" for i in range(10)], x, metadata=[{"n": i} for i in range(10)])
    assert len(index) == 10 and "i3" in index and "nope" not in index
    with pytest.raises(IndexInputError, match="already in the index"):
        index.add("i3", x[0])
    index.upsert("i3", x[0], {"n": "replaced"})
    item = index.get("i3")
    np.testing.assert_allclose(item.vector, x[0], atol=1e-6)
    assert item.metadata == {"n": "replaced"}
    assert len(index) == 10
    hits = index.search(x[0], k=2)[0]
    assert {h.id for h in hits} == {"i0", "i3"}

    assert index.delete(["i0", "i3"]) == 2
    assert len(index) == 8 and "i0" not in index
    assert all(h.id not in ("i0", "i3") for h in index.search(x[0], k=8)[0])
    with pytest.raises(UnknownIdError, match="'i0' is not in the index"):
        index.delete("i0")
    assert index.delete(["i0", "i1"], missing_ok=True) == 1
    with pytest.raises(KeyError):  # UnknownIdError is a KeyError too
        index.get("i1")
    # A deleted id can come back, with a new vector.
    index.add("i0", x[5], {"back": True})
    assert index.search(x[5], k=2).ids[0][:2] in (["i0", "i5"], ["i5", "i0"])
    assert index.ids() == [f"i{i}" for i in (0, 2, 4, 5, 6, 7, 8, 9)]
    index.compact()
    assert sorted(index.ids()) == sorted(f"i{i}" for i in (0, 2, 4, 5, 6, 7, 8, 9))
    assert index.get("i0").metadata == {"back": True}
    assert index.search(x[9], k=1).ids == [["i9"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_delete_with_a_repeated_id_removes_it_once(backend: str, tmp_path: Path) -> None:
    x = np.eye(4, dtype=np.float32)[:3]
    index = VectorIndex(4, backend=backend)
    index.add(["a", "b", "c"], x)
    assert index.delete(["a", "a"]) == 1
    assert len(index) == 2 and "a" not in index
    hits = index.search(x[0], k=3)
    assert sorted(hits.ids[0]) == ["b", "c"]  # the deleted item is never returned
    assert index.delete(["b", "zzz", "b"], missing_ok=True) == 1
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.ids() == ["c"] and len(loaded) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_multi_id_writes_change_nothing(backend: str, tmp_path: Path) -> None:
    x = np.eye(4, dtype=np.float32)
    index = VectorIndex(4, backend=backend)
    index.add(["a", "b"], x[:2], metadata=[{"n": 0}, {"n": 1}])
    with pytest.raises(UnknownIdError, match="'zzz'"):
        index.delete(["a", "zzz"])
    with pytest.raises(IndexInputError, match="'new' appears more than once"):
        index.add(["new", "new"], x[2:4])
    with pytest.raises(IndexInputError, match="'a' appears more than once"):
        index.upsert(["a", "a"], x[2:4], metadata=[{"n": 2}, {"n": 3}])
    with pytest.raises(IndexInputError, match="'b' is already in the index"):
        index.add(["new", "b"], x[2:4])
    assert index.ids() == ["a", "b"] and len(index) == 2
    assert [it.metadata for it in index.get(["a", "b"])] == [{"n": 0}, {"n": 1}]
    assert index.search(x[0], k=4).ids == [["a", "b"]]
    index.save(tmp_path)
    assert VectorIndex.load(tmp_path).ids() == ["a", "b"]


def test_a_save_with_a_wrong_count_is_refused_on_load(tmp_path: Path) -> None:
    # What the double-counting delete used to write: caught, never read as an answer.
    index = VectorIndex(4, backend="exact")
    index.add(["a", "b", "c"], np.eye(4)[:3])
    index._count -= 1
    index.save(tmp_path)
    with pytest.raises(IndexCorruptedError, match="3 live ids, the manifest says 2"):
        VectorIndex.load(tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_len_and_contains_wait_for_a_writer(backend: str) -> None:
    rng = np.random.default_rng(7)
    index = VectorIndex(8, backend=backend)
    index.add([f"i{i}" for i in range(100)], unit(rng, 100, 8))
    index.delete([f"i{i}" for i in range(90)])
    answers: dict[str, object] = {}

    def ask(name: str, question: Callable[[], object]) -> threading.Thread:
        def run() -> None:
            try:
                answers[name] = question()
            except BaseException as exc:
                answers[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    with index._lock.write():
        # The state compact() passes through (a shorter _live, _labels not yet rebuilt),
        # and a count no reader may ever see.
        live, count = index._live, index._count
        index._live, index._count = live[:10].copy(), -1
        readers = [ask("contains", lambda: "i95" in index), ask("len", lambda: len(index))]
        for thread in readers:
            wait_for(lambda t=thread: in_lock_or_done(t), "the reader reaches the lock")
        assert answers == {}, answers  # nobody read the half-changed state
        index._live, index._count = live, count
    for thread in readers:
        thread.join(30)
    assert answers == {"contains": True, "len": 10}


@pytest.mark.parametrize("backend", BACKENDS)
def test_capacity_grows(backend: str) -> None:
    rng = np.random.default_rng(3)
    index = VectorIndex(16, backend=backend)
    for batch in range(12):
        x = unit(rng, 50, 16)
        index.add([f"b{batch}-{i}" for i in range(50)], x)
    assert len(index) == 600
    assert index.search(x, k=1).ids == [[f"b11-{i}"] for i in range(50)]


def test_auto_switches_to_hnsw_above_threshold() -> None:
    rng = np.random.default_rng(4)
    index = VectorIndex(16, exact_threshold=100)
    index.add([f"a{i}" for i in range(99)], unit(rng, 99, 16))
    assert not index.uses_hnsw
    x = unit(rng, 5, 16)
    index.add([f"b{i}" for i in range(5)], x)
    assert index.uses_hnsw
    assert index.search(x, k=1).ids == [[f"b{i}"] for i in range(5)]


def test_hnsw_recall_and_ef_never_below_k() -> None:
    rng = np.random.default_rng(5)
    centers = unit(rng, 30, 32)
    data = centers[rng.integers(0, 30, 3000)] + 0.3 * unit(rng, 3000, 32)
    queries = centers[rng.integers(0, 30, 50)] + 0.3 * unit(rng, 50, 32)
    index = VectorIndex(32, backend="hnsw")
    index.add([str(i) for i in range(3000)], data)
    exact = index.search(queries, k=10, exact=True).ids
    approx = index.search(queries, k=10).ids
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95
    # ef=1 is raised to k: still k hits, and the graph really searched with ef=k.
    result = index.search(queries, k=50, ef=1)
    assert result.scores.shape == (50, 50)
    assert index._graph.ef == 50


def test_k_larger_than_count_and_empty_index() -> None:
    index = VectorIndex(4)
    empty = index.search(np.ones(4), k=3)
    assert empty.ids == [[]] and empty.scores.shape == (1, 0)
    index.add(["a", "b"], np.eye(4)[:2])
    assert index.search(np.ones((2, 4)), k=10).scores.shape == (2, 2)


def test_bad_input_is_refused_clearly() -> None:
    index = VectorIndex(4)
    with pytest.raises(IndexInputError, match=r"shape \(2, 3\), expected \(2, 4\)"):
        index.add(["a", "b"], np.ones((2, 3)))
    with pytest.raises(IndexInputError, match="NaN or infinite"):
        index.add(["a"], np.array([[1, np.nan, 0, 0]]))
    with pytest.raises(IndexInputError, match="all zeros"):
        index.add("a", np.zeros(4))
    with pytest.raises(IndexInputError, match="more than once"):
        index.add(["a", "a"], np.ones((2, 4)))
    with pytest.raises(IndexInputError, match="non-empty str"):
        index.add([1], np.ones((1, 4)))  # type: ignore[list-item]
    with pytest.raises(IndexInputError, match="not JSON-serialisable"):
        index.add("a", np.ones(4), {"when": object()})
    with pytest.raises(IndexInputError, match="not JSON-serialisable"):
        index.add("a", np.ones(4), {"x": float("nan")})
    with pytest.raises(IndexInputError, match="1 metadata values for 2 ids"):
        index.add(["a", "b"], np.ones((2, 4)), [{}])
    with pytest.raises(IndexInputError, match="space must be one of"):
        VectorIndex(4, "dot")
    with pytest.raises(IndexInputError, match="k must be an integer >= 1"):
        index.search(np.ones(4), k=0)
    with pytest.raises(IndexInputError, match="numeric array"):
        index.search("hello")
    assert len(index) == 0  # nothing half-written by the failed calls


def test_metadata_is_copied_in_and_out() -> None:
    index = VectorIndex(2)
    meta = {"tags": ["a"]}
    index.add("x", np.array([1.0, 0.0]), meta)
    meta["tags"].append("changed outside")
    got = index.get("x").metadata
    assert got == {"tags": ["a"]}
    got["tags"].append("changed result")
    assert index.search(np.array([1.0, 0.0]), k=1).metadata == [[{"tags": ["a"]}]]


def test_fingerprint_mismatch_is_refused_naming_both() -> None:
    a = ModelInfo(provider="onnx", model="all-MiniLM-L6-v2", dimension=3, pooling="mean")
    b = ModelInfo(provider="onnx", model="all-MiniLM-L6-v2", dimension=3, pooling="cls")
    index = VectorIndex(3)
    index.add("x", np.ones(3), fingerprint=a)  # adopted by the empty index
    assert index.fingerprint == a.fingerprint()
    with pytest.raises(FingerprintMismatchError) as err:
        index.add("y", np.ones(3), fingerprint=b)
    message = str(err.value)
    assert "pooling: 'mean' vs 'cls'" in message and message.count("all-MiniLM-L6-v2") == 2
    with pytest.raises(FingerprintMismatchError, match="cannot search"):
        index.search(np.ones(3), fingerprint=b.fingerprint())
    index.add("y", np.ones(3), fingerprint=b, ignore_fingerprint=True)
    assert index.search(np.ones(3), k=2, fingerprint=b, ignore_fingerprint=True).ids
    assert index.search(np.ones(3), k=1, fingerprint=a).ids  # same fingerprint: fine

    unknown = VectorIndex(3)
    unknown.add("x", np.ones(3))
    with pytest.raises(FingerprintMismatchError, match="without a fingerprint"):
        unknown.add("y", np.ones(3), fingerprint=a)


def test_explicit_hnsw_without_hnswlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index_module, "hnswlib_available", lambda: False)
    with pytest.raises(IndexBackendNotInstalledError, match=r"akidb-embed\[index\]"):
        VectorIndex(4, backend="hnsw")
    # "auto" keeps searching exactly, whatever the size.
    index = VectorIndex(4, exact_threshold=1)
    index.add(["a", "b"], np.eye(4)[:2])
    assert not index.uses_hnsw and index.search(np.eye(4)[0], k=1).ids == [["a"]]


def test_imports_stay_lazy() -> None:
    code = (
        "import sys, numpy as np\n"
        "import akidb_embed\n"
        "assert 'akidb_embed.index' not in sys.modules\n"
        "from akidb_embed.index import VectorIndex, Collection\n"
        "index = VectorIndex(4)\n"
        "index.add(['a'], np.ones((1, 4)))\n"
        "index.search(np.ones(4))\n"
        "assert 'hnswlib' not in sys.modules, 'imported before a graph was built'\n"
        "VectorIndex(4, backend='hnsw')\n"
        "assert 'hnswlib' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_searches_with_a_writer(backend: str) -> None:
    rng = np.random.default_rng(6)
    base = unit(rng, 500, 16)
    index = VectorIndex(16, backend=backend)
    index.add([f"base{i}" for i in range(500)], base)
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                pick = local.integers(0, 500, 8)
                ef = int(local.choice([10, 50, 200]))
                result = index.search(base[pick], k=3, ef=ef)
                assert [row[0] for row in result.ids] == [f"base{i}" for i in pick]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    try:
        for batch in range(30):  # grows the index (resize) while searches run
            index.add([f"new{batch}-{i}" for i in range(40)], -unit(rng, 40, 16))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]
    assert len(index) == 500 + 30 * 40
