"""Collection: embed and index texts, search them, keep them, resume interrupted runs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager, MockEmbeddingProvider, ModelInfo
from akidb_embed.errors import (
    FingerprintMismatchError,
    IndexCorruptedError,
    IndexInputError,
    ProviderError,
)
from akidb_embed.index import AddReport, Collection, Record, VectorIndex

DOCS = [
    "the cat sat on the warm mat",
    "dogs bark loudly at the mailman",
    "stock markets fell sharply on friday",
    "the central bank raised interest rates",
    "bake the bread for forty minutes",
    "whisk eggs and sugar for the cake",
]

MakeManager = Callable[..., EmbeddingManager]


def manager_for(provider: MockEmbeddingProvider) -> EmbeddingManager:
    return EmbeddingManager(provider, EmbeddingConfig(provider="mock", model="mock", batch_size=8))


def test_add_and_search(make_embedding_manager: MakeManager) -> None:
    collection = Collection(make_embedding_manager())
    report = collection.add(DOCS, metadata=[{"n": i} for i in range(len(DOCS))])
    assert report == AddReport(added=6, updated=0, skipped=0) and len(collection) == 6
    hits = collection.search("stock markets on friday", k=2)
    assert isinstance(hits[0], Record)
    assert hits[0].text == "stock markets fell sharply on friday" and hits[0].metadata == {"n": 2}
    id_, score, text, _meta = hits[0]  # records unpack as tuples
    assert score > hits[1].score
    batch = collection.search(["bread in the oven", "a cat on a mat"], k=1)
    assert [b[0].text for b in batch] == [DOCS[4], DOCS[0]]
    assert dict(collection.texts())[id_] == text
    assert collection.get(id_).text == text


def test_unchanged_texts_are_skipped(mock_provider: MockEmbeddingProvider) -> None:
    collection = Collection(manager_for(mock_provider))
    collection.add(DOCS[:4])
    mock_provider.reset()
    report = collection.add(DOCS)  # the same four again, plus two new
    assert report == AddReport(added=2, updated=0, skipped=4)
    assert mock_provider.texts == DOCS[4:]  # only the new texts were embedded
    assert collection.add([DOCS[0], DOCS[0]]) == AddReport(0, 0, 2)


def test_explicit_ids_update_changed_texts_and_metadata(
    mock_provider: MockEmbeddingProvider,
) -> None:
    collection = Collection(manager_for(mock_provider))
    collection.add(DOCS[:3], ids=["a", "b", "c"], metadata=[{"v": 1}] * 3)
    mock_provider.reset()
    report = collection.add(
        ["the cat slept on the sofa", DOCS[1], DOCS[2]],
        ids=["a", "b", "c"],
        metadata=[{"v": 1}, {"v": 2}, {"v": 1}],
    )
    assert report == AddReport(added=0, updated=2, skipped=1)
    assert mock_provider.texts == ["the cat slept on the sofa"]  # metadata alone: no embedding
    assert collection.get("a").text == "the cat slept on the sofa"
    assert collection.get("b").metadata == {"v": 2}
    assert collection.search("cat on the sofa", k=1)[0].id == "a"
    with pytest.raises(IndexInputError, match="'x' appears more than once"):
        collection.add(["one", "two"], ids=["x", "x"])
    with pytest.raises(IndexInputError, match="2 ids for 1 texts"):
        collection.add(["one"], ids=["x", "y"])
    assert collection.delete("a") == 1 and "a" not in collection


def test_persisted_collection_reopens(make_embedding_manager: MakeManager, tmp_path: Path) -> None:
    path = tmp_path / "docs"
    Collection(make_embedding_manager(), path).add(DOCS, metadata=[{"n": i} for i in range(6)])
    again = Collection(make_embedding_manager(), path)
    assert len(again) == 6
    assert again.search("interest rates", k=1)[0].metadata == {"n": 3}
    assert again.index.attributes["embedding_config"]["provider"] == "mock"


def test_interrupted_add_resumes_without_redoing_work(tmp_path: Path) -> None:
    texts = [f"document number {i} about topic {i % 17}" for i in range(100)]
    path = tmp_path / "docs"
    failing = MockEmbeddingProvider(fail_on={texts[70]})
    with pytest.raises(ProviderError, match="injected failure"):
        Collection(manager_for(failing), path, checkpoint_every=25).add(texts)
    partial = Collection(manager_for(MockEmbeddingProvider()), path)
    done = len(partial)
    assert done in (50, 75)  # the checkpoints saved before the failure

    provider = MockEmbeddingProvider()
    resumed = Collection(manager_for(provider), path, checkpoint_every=25)
    report = resumed.add(texts)
    assert report == AddReport(added=100 - done, updated=0, skipped=done)
    assert len(provider.texts) == 100 - done
    assert len(Collection(manager_for(MockEmbeddingProvider()), path)) == 100


def test_other_model_is_refused(make_embedding_manager: MakeManager, tmp_path: Path) -> None:
    path = tmp_path / "docs"
    Collection(make_embedding_manager(), path).add(DOCS)
    with pytest.raises(FingerprintMismatchError, match="revision: 'seed-0' vs 'seed-1'"):
        Collection(make_embedding_manager(options={"seed": 1}), path)
    with pytest.raises(FingerprintMismatchError, match="max_tokens: 512 vs 64"):
        Collection(make_embedding_manager(max_length=64), path)


def test_a_plain_index_is_not_a_collection(
    make_embedding_manager: MakeManager, tmp_path: Path
) -> None:
    import numpy as np

    from akidb_embed.index import VectorIndex

    index = VectorIndex(384)
    index.add("x", np.ones(384))
    index.save(tmp_path)
    with pytest.raises(IndexInputError, match="not a collection"):
        Collection(make_embedding_manager(), tmp_path)


def test_progress_bar_on_large_adds(
    make_embedding_manager: MakeManager, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [f"text {i}" for i in range(1200)]
    Collection(make_embedding_manager()).add(texts[:10])
    assert "indexing" not in capsys.readouterr().err
    Collection(make_embedding_manager()).add(texts)
    err = capsys.readouterr().err
    assert "indexing" in err and "1200/1200" in err


class PromptedProvider(MockEmbeddingProvider):
    """A model with query and document prompts and no default prompt (like E5 or BGE)."""

    def info(self) -> ModelInfo:
        return dataclasses.replace(
            super().info(), prompts={"query": "query: ", "document": "passage: "}
        )


def test_texts_are_embedded_as_documents_and_queries_as_queries() -> None:
    provider = PromptedProvider()
    manager = manager_for(provider)
    collection = Collection(manager)
    collection.add(DOCS[:3], ids=["a", "b", "c"])
    # The manager sorts a call's texts by token count, so compare as sets.
    assert sorted(provider.texts) == sorted(f"passage: {t}" for t in DOCS[:3])
    np.testing.assert_allclose(
        collection.index.get("b").vector, manager.embed_documents([DOCS[1]])[0], atol=1e-6
    )
    provider.reset()
    hits = collection.search("dogs and the mailman", k=3)
    assert provider.texts == ["query: dogs and the mailman"]
    want = collection.index.search(manager.embed_query("dogs and the mailman"), k=3)[0]
    assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in want]
    # Several queries at once: one batch, the same vectors as embed_query.
    queries = ["a cat on a mat", "markets on friday"]
    batch = collection.search(queries, k=3)
    for query, got in zip(queries, batch, strict=True):
        want = collection.index.search(manager.embed_query(query), k=3)[0]
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-6)


def test_a_large_add_with_a_progress_bar_embeds_everything_as_documents(
    capsys: pytest.CaptureFixture[str],
) -> None:
    provider = PromptedProvider()
    texts = [f"text number {i}" for i in range(1100)]
    collection = Collection(manager_for(provider))
    assert collection.add(texts, progress=True) == AddReport(1100, 0, 0)
    assert sorted(provider.texts) == sorted(f"passage: {t}" for t in texts)
    assert "1100/1100" in capsys.readouterr().err
    assert collection.search("text number 1042", k=1)[0].text == "text number 1042"


def test_a_folder_that_lost_its_pointer_is_never_wiped(
    make_embedding_manager: MakeManager, tmp_path: Path
) -> None:
    path = tmp_path / "docs"
    Collection(make_embedding_manager(), path).add(DOCS)
    (path / "CURRENT").unlink()
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    with pytest.raises(IndexCorruptedError, match="no CURRENT file but holds saved versions"):
        Collection(make_embedding_manager(), path)
    with pytest.raises(IndexCorruptedError, match="no CURRENT file but holds saved versions"):
        VectorIndex(384).save(path)
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before  # nothing deleted

    # Only what an interrupted first save leaves (a temporary folder, the lock) is fine.
    fresh = tmp_path / "fresh"
    version = next(p for p in path.iterdir() if p.name.startswith("v0"))
    shutil.copytree(version, fresh / f".tmp-{version.name}")
    (fresh / ".lock").touch()
    collection = Collection(make_embedding_manager(), fresh)
    collection.add(DOCS[:2])
    assert len(Collection(make_embedding_manager(), fresh)) == 2
    assert not any(p.name.startswith(".tmp-") for p in fresh.iterdir())

    # A folder of other files is refused before anything is embedded.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(IndexInputError, match=r"holds other files \(notes.txt\)"):
        Collection(make_embedding_manager(), mine)


def test_only_the_embedding_identity_is_recorded(tmp_path: Path) -> None:
    config = EmbeddingConfig(
        provider="mock",
        model="mock",
        python_path="/opt/secret-place/python",
        cache_dir="/home/someone/.cache/models",
        max_length=128,
        options={
            "seed": 2,
            "env": {"HF_TOKEN": "hf_SECRET"},
            "imports": ["some_module"],
            "api_key": "sk-SECRET",
            "dtype": {"not": "a scalar"},
        },
    )
    path = tmp_path / "docs"
    with EmbeddingManager.from_config(config) as manager:
        Collection(manager, path).add(DOCS[:2])
    recorded = VectorIndex.load(path).attributes["embedding_config"]
    assert recorded == {
        "provider": "mock",
        "model": "mock",
        "max_length": 128,
        "normalize": True,
        "truncation": "truncate",
        "options": {"seed": 2},
    }
    saved = b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())
    for leak in (b"SECRET", b"secret-place", b"someone", b"some_module"):
        assert leak not in saved
    manifest = json.loads(next(path.glob("v*/manifest.json")).read_text())
    assert manifest["attributes"]["embedding_config"] == recorded
