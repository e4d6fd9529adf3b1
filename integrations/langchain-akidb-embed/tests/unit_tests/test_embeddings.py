"""AkidbEmbeddings beyond the standard tests: how it is built, prompts, real async,
typed errors, and where LangChain's contract meets ours (empty inputs, None)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from langchain_akidb_embed import AkidbEmbeddings
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from akidb_embed import EmbeddingConfig, EmbeddingManager, MockEmbeddingProvider, ModelInfo
from akidb_embed.errors import (
    ConfigError,
    ConfigValueError,
    EmbeddingInputError,
    ProviderClosedError,
    ProviderError,
    TruncationError,
    UnknownProviderError,
)


class PromptedMock(MockEmbeddingProvider):
    """The mock, declaring sentence-transformers-style query / document prompts."""

    def info(self) -> ModelInfo:
        prompts = {"query": "query: ", "document": "passage: "}
        return dataclasses.replace(super().info(), prompts=prompts)


def test_is_a_langchain_embeddings() -> None:
    with AkidbEmbeddings(provider="mock") as embeddings:
        assert isinstance(embeddings, Embeddings)
        assert embeddings.dimension == 384
        assert embeddings.info.provider == "mock"


def test_built_from_keyword_arguments_reports_the_resolved_config() -> None:
    with AkidbEmbeddings(provider="mock", batch_size=8, options={"dimension": 16}) as emb:
        assert (emb.provider, emb.batch_size, emb.options) == ("mock", 8, {"dimension": 16})
        assert emb.truncation == "truncate" and emb.normalize is True  # defaults, resolved
        assert emb.embedding_manager.config.batch_size == 8
        assert len(emb.embed_query("x")) == 16


def test_built_from_an_embedding_config_with_overrides() -> None:
    config = EmbeddingConfig(provider="mock", options={"dimension": 24})
    with AkidbEmbeddings(config=config, batch_size=4) as emb:
        assert emb.embedding_manager.config.batch_size == 4
        assert len(emb.embed_documents(["a"])[0]) == 24


def test_built_from_the_config_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "akidb.toml"
    toml.write_text(
        '[embedding]\nprovider = "mock"\nbatch_size = 5\n[embedding.options]\ndimension = 12\n'
    )
    with AkidbEmbeddings(config_file=str(toml)) as emb:
        assert (emb.batch_size, emb.dimension) == (5, 12)
    monkeypatch.setenv("AKIDB_CONFIG", str(toml))
    monkeypatch.setenv("AKIDB_EMBEDDING_BATCH_SIZE", "9")
    with AkidbEmbeddings() as emb:  # file, then environment, then arguments
        assert (emb.provider, emb.batch_size, emb.dimension) == ("mock", 9, 12)
        assert emb.embedding_manager.config.source("batch_size") == "env:AKIDB_EMBEDDING_BATCH_SIZE"
    with AkidbEmbeddings(batch_size=3) as emb:
        assert emb.batch_size == 3


def test_around_an_existing_manager_which_it_leaves_open(
    embedding_manager: EmbeddingManager,
) -> None:
    emb = AkidbEmbeddings(manager=embedding_manager)
    assert emb.embedding_manager is embedding_manager
    assert emb.provider == "mock"
    expected = embedding_manager.embed_documents(["the cat sat"])
    np.testing.assert_array_equal(
        np.asarray(emb.embed_documents(["the cat sat"]), np.float32), expected
    )
    emb.close()
    assert not embedding_manager.closed
    with pytest.raises(ConfigError, match="not both"):
        AkidbEmbeddings(manager=embedding_manager, batch_size=4)


def test_close_closes_a_manager_it_built() -> None:
    emb = AkidbEmbeddings(provider="mock")
    emb.close()
    assert emb.embedding_manager.closed
    with pytest.raises(ProviderClosedError):
        emb.embed_query("after close")


def test_query_and_document_prompts_where_the_model_has_them() -> None:
    provider = PromptedMock()
    with EmbeddingManager(provider) as manager:
        emb = AkidbEmbeddings(manager=manager)
        emb.embed_query("where is the cat")
        emb.embed_documents(["the cat sat"])
        asyncio.run(emb.aembed_query("async query"))
        asyncio.run(emb.aembed_documents(["async doc"]))
    assert provider.texts == [
        "query: where is the cat",
        "passage: the cat sat",
        "query: async query",
        "passage: async doc",
    ]


def test_vectors_are_the_managers_own() -> None:
    with AkidbEmbeddings(provider="mock") as emb:
        docs = ["cats purr", "dogs bark", ""]
        got = emb.embed_documents(docs)
        assert all(type(x) is float for x in got[0])
        np.testing.assert_array_equal(
            np.asarray(got, np.float32), emb.embedding_manager.embed(docs)
        )
        assert asyncio.run(emb.aembed_documents(docs)) == got
        assert asyncio.run(emb.aembed_query("cats purr")) == emb.embed_query("cats purr")


class ThreadRecorder:
    def __init__(self) -> None:
        self.threads: list[str] = []

    def on_provider_call(self, event: object) -> None:
        self.threads.append(threading.current_thread().name)

    def on_request(self, event: object) -> None:
        pass


def test_async_runs_on_the_managers_threads_and_never_blocks_the_loop() -> None:
    recorder = ThreadRecorder()
    with EmbeddingManager(MockEmbeddingProvider(latency=0.2, max_concurrency=1)) as manager:
        manager.add_observer(recorder)
        emb = AkidbEmbeddings(manager=manager)

        async def main() -> tuple[int, list[list[float]], list[float]]:
            ticks = 0
            done = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            docs, query = await asyncio.gather(emb.aembed_documents(["a b"]), emb.aembed_query("c"))
            done.set()
            await task
            return ticks, docs, query

        start = time.perf_counter()
        ticks, docs, query = asyncio.run(main())
        elapsed = time.perf_counter() - start
    # Two 0.2 s provider calls, one at a time (max_concurrency=1); a blocked loop would tick
    # once or twice in that time (every 10 ms otherwise).
    assert elapsed >= 0.4 and ticks >= 5, (elapsed, ticks)
    assert len(docs) == 1 and len(query) == 384
    # The manager's own workers, not the loop's default executor (run_in_executor).
    assert recorder.threads and all(t.startswith("akidb-embed") for t in recorder.threads)


def test_errors_reach_the_caller_typed_and_unwrapped() -> None:
    with pytest.raises(UnknownProviderError):
        AkidbEmbeddings(provider="no-such-provider")
    with pytest.raises(ConfigValueError):  # not pydantic's ValidationError
        AkidbEmbeddings(provider="mock", truncation="sometimes")
    provider = MockEmbeddingProvider(fail_on={"poison"}, max_tokens=4)
    with EmbeddingManager(
        provider, EmbeddingConfig(provider="mock", truncation="error")
    ) as manager:
        emb = AkidbEmbeddings(manager=manager)
        with pytest.raises(ProviderError):
            emb.embed_documents(["fine", "poison"])
        with pytest.raises(ProviderError):
            asyncio.run(emb.aembed_documents(["poison"]))
        with pytest.raises(TruncationError) as info:
            emb.embed_documents(["short", "one two three four five six"])
        assert info.value.index == 1
        with pytest.raises(TruncationError):
            asyncio.run(emb.aembed_query("one two three four five six"))
        # Through a LangChain vector store, unchanged.
        store = InMemoryVectorStore(embedding=emb)
        with pytest.raises(ProviderError):
            store.add_texts(["fine", "poison"])
        with pytest.raises(ProviderError):
            asyncio.run(store.aadd_texts(["poison"]))


def test_where_langchains_contract_meets_ours() -> None:
    with AkidbEmbeddings(provider="mock") as emb:
        assert emb.embed_documents([]) == []  # an empty list is no work, not an error
        assert asyncio.run(emb.aembed_documents([])) == []
        assert len(emb.embed_query("")) == 384  # the empty string has a vector (the model's)
        assert len(emb.embed_documents([""])[0]) == 384
        with pytest.raises(EmbeddingInputError):
            emb.embed_query(None)  # type: ignore[arg-type]
        with pytest.raises(EmbeddingInputError):
            emb.embed_documents(["ok", None])  # type: ignore[list-item]
        with pytest.raises(EmbeddingInputError, match="single str"):
            emb.embed_documents("not a list")  # type: ignore[arg-type]


def test_fingerprint_matches_akidb_embeds_index() -> None:
    from akidb_embed.index import manager_fingerprint

    with AkidbEmbeddings(provider="mock", options={"seed": 3}) as emb:
        assert emb.fingerprint == manager_fingerprint(emb.embedding_manager)
        assert emb.fingerprint["revision"] == "seed-3"
        assert emb.fingerprint["dimension"] == 384
