"""save/load: round trips, the manifest, and corrupted, truncated or foreign files."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import ModelInfo
from akidb_embed.errors import IndexBackendNotInstalledError, IndexCorruptedError, IndexInputError
from akidb_embed.index import VectorIndex
from akidb_embed.index import _vector_index as vector_index_module

INFO = ModelInfo(provider="mock", model="m", dimension=12, pooling="mean", revision="r1")


def build(backend: str, n: int = 300, seed: int = 0) -> tuple[VectorIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype(np.float32)
    index = VectorIndex(12, backend=backend, M=12, ef_construction=100, ef=64)
    index.add(
        [f"id{i}" for i in range(n)], x, [{"i": i, "s": "é"} for i in range(n)], fingerprint=INFO
    )
    index.delete([f"id{i}" for i in range(0, n, 7)])
    index.attributes["note"] = {"built": "test"}
    return index, x


def version_folder(root: Path) -> Path:
    return root / json.loads((root / "CURRENT").read_text())["version"]


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_round_trip(tmp_path: Path, backend: str) -> None:
    index, x = build(backend)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert len(loaded) == len(index) and loaded.ids() == index.ids()
    assert loaded.fingerprint == INFO.fingerprint() and loaded.params == index.params
    assert loaded.attributes == {"note": {"built": "test"}} and loaded.uses_hnsw == index.uses_hnsw
    before, after = index.search(x[:40], k=5), loaded.search(x[:40], k=5)
    assert after.ids == before.ids and after.metadata == before.metadata
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)
    assert "id0" not in loaded and loaded.get("id1").metadata == {"i": 1, "s": "é"}
    # The loaded index keeps working: grows, deletes and re-adds.
    loaded.add([f"more{i}" for i in range(200)], x[:200])
    loaded.add("id0", x[0])
    assert len(loaded) == len(index) + 201
    assert loaded.search(x[0], k=2).ids[0][0] in ("id0", "more0")


def test_manifest_records_format_and_fingerprint(tmp_path: Path) -> None:
    index, _ = build("hnsw")
    index.save(tmp_path)
    folder = version_folder(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert (manifest["dimension"], manifest["space"], manifest["count"]) == (12, "cosine", 257)
    assert set(manifest["fingerprint"]) >= {
        "provider", "model", "revision", "pooling", "normalized", "max_tokens", "dimension",
    }  # fmt: skip
    assert set(manifest["files"]) == {"vectors.npy", "ids.json", "metadata.json", "hnsw.bin"}
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_saving_again_keeps_one_version_and_no_leftovers(tmp_path: Path) -> None:
    index, x = build("exact")
    for _ in range(3):
        index.save(tmp_path)
    index.add("new", x[0])
    index.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == ".lock" and names[1] == "CURRENT" and len(names) == 3
    assert names[2].startswith("v000004-")
    assert "new" in VectorIndex.load(tmp_path)


@pytest.mark.parametrize(
    "name", ["vectors.npy", "ids.json", "metadata.json", "hnsw.bin", "manifest.json"]
)
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_files_are_reported(tmp_path: Path, name: str, damage: str) -> None:
    index, _ = build("hnsw")
    index.save(tmp_path)
    path = version_folder(tmp_path) / name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptedError, match=r"truncated|corrupted"):
        VectorIndex.load(tmp_path)


def test_damaged_or_missing_pointer(tmp_path: Path) -> None:
    index, _ = build("exact")
    index.save(tmp_path)
    (tmp_path / "CURRENT").write_text('{"version": "v0000')
    with pytest.raises(IndexCorruptedError, match="CURRENT is corrupted"):
        VectorIndex.load(tmp_path)
    (tmp_path / "CURRENT").unlink()
    with pytest.raises(IndexCorruptedError, match="no CURRENT file"):
        VectorIndex.load(tmp_path)


def test_missing_data_file(tmp_path: Path) -> None:
    index, _ = build("exact")
    index.save(tmp_path)
    (version_folder(tmp_path) / "ids.json").unlink()
    with pytest.raises(IndexCorruptedError, match=r"ids\.json is missing"):
        VectorIndex.load(tmp_path)


def rewrite(root: Path, name: str, data: bytes, **manifest_changes: object) -> None:
    """Replace a file and re-sign the manifest, as a careless or hostile tool would."""
    folder = version_folder(root)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / name).write_bytes(data)
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest.update(manifest_changes)
    body = json.dumps(manifest).encode()
    (folder / "manifest.json").write_bytes(body)
    pointer = {"version": folder.name, "manifest_sha256": hashlib.sha256(body).hexdigest()}
    (root / "CURRENT").write_text(json.dumps(pointer))


def test_consistent_but_invalid_content_is_refused(tmp_path: Path) -> None:
    index, _ = build("exact")
    index.save(tmp_path)
    buf = io.BytesIO()
    np.save(buf, np.array([{"pickled": True}], dtype=object), allow_pickle=True)
    rewrite(tmp_path, "vectors.npy", buf.getvalue())
    with pytest.raises(IndexCorruptedError, match="unreadable data"):  # never unpickled
        VectorIndex.load(tmp_path)

    index.save(tmp_path)
    buf = io.BytesIO()
    np.save(buf, np.zeros((5, 12), dtype=np.float32))
    rewrite(tmp_path, "vectors.npy", buf.getvalue())
    with pytest.raises(IndexCorruptedError, match=r"expected \(300, 12\)"):
        VectorIndex.load(tmp_path)

    index.save(tmp_path)
    ids = json.loads((version_folder(tmp_path) / "ids.json").read_text())
    rewrite(tmp_path, "ids.json", json.dumps(ids).encode(), count=3)
    with pytest.raises(IndexCorruptedError, match="the manifest says 3"):
        VectorIndex.load(tmp_path)

    index.save(tmp_path)
    rewrite(tmp_path, "ids.json", json.dumps(ids).encode(), format_version=99)
    with pytest.raises(IndexCorruptedError, match="format version 99"):
        VectorIndex.load(tmp_path)


def test_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(IndexInputError, match="does not exist"):
        VectorIndex.load(tmp_path / "nothing")
    with pytest.raises(IndexInputError, match="holds no CURRENT"):
        VectorIndex.load(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    index, _ = build("exact", n=5)
    with pytest.raises(IndexInputError, match=r"holds other files \(notes.txt\)"):
        index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.txt"]
    with pytest.raises(IndexInputError, match="not a folder"):
        index.save(tmp_path / "notes.txt")


def test_failed_save_keeps_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, x = build("hnsw")
    index.save(tmp_path)
    index.add("extra", x[1])

    def disk_full(path: Path, array: np.ndarray) -> None:
        path.write_bytes(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vector_index_module, "_write_npy", disk_full)
    with pytest.raises(OSError, match="No space left"):
        index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == [".lock", "CURRENT"]
    assert len(list(tmp_path.iterdir())) == 3  # no half-written version left behind
    loaded = VectorIndex.load(tmp_path)
    assert "extra" not in loaded and len(loaded) == 257


def test_load_without_hnswlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index, x = build("hnsw")
    index.save(tmp_path)
    exact = VectorIndex.load(tmp_path, backend="exact")
    assert not exact.uses_hnsw
    assert exact.search(x[:5], k=3).ids == index.search(x[:5], k=3, exact=True).ids
    monkeypatch.setattr(vector_index_module, "hnswlib_available", lambda: False)
    with pytest.raises(IndexBackendNotInstalledError, match="backend='exact'"):
        VectorIndex.load(tmp_path)
    assert not VectorIndex.load(tmp_path, backend="exact").uses_hnsw


def test_loads_while_another_thread_saves(tmp_path: Path) -> None:
    index, x = build("exact", n=200)
    index.save(tmp_path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def saver() -> None:
        try:
            n = 0
            while not stop.is_set():
                index.upsert("moving", x[n % 200], {"n": n})
                index.save(tmp_path)
                n += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=saver)
    thread.start()
    try:
        for _ in range(30):
            loaded = VectorIndex.load(tmp_path)
            assert len(loaded) in (171, 172)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
