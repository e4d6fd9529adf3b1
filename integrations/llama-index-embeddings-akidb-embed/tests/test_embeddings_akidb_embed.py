"""AkidbEmbedding: LlamaIndex's own checks, retrieval through VectorStoreIndex with the
real model (sync and async), batching, prompts, async, typed errors, contract edges."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.embeddings.akidb_embed import AkidbEmbedding

from akidb_embed import EmbeddingConfig, EmbeddingManager, MockEmbeddingProvider, ModelInfo
from akidb_embed.errors import (
    ConfigError,
    ConfigValueError,
    EmbeddingInputError,
    ProviderError,
    TruncationError,
    UnknownProviderError,
)


class PromptedMock(MockEmbeddingProvider):
    """The mock, declaring sentence-transformers-style query / document prompts."""

    def info(self) -> ModelInfo:
        prompts = {"query": "query: ", "document": "passage: "}
        return dataclasses.replace(super().info(), prompts=prompts)


def test_class() -> None:
    # The check every llama-index-embeddings-* package ships.
    names_of_base_classes = [b.__name__ for b in AkidbEmbedding.__mro__]
    assert BaseEmbedding.__name__ in names_of_base_classes


def test_reports_model_name_dimension_and_batch_size() -> None:
    with AkidbEmbedding(provider="mock", options={"dimension": 48}) as embed:
        assert embed.model_name == "mock"  # the model the provider serves
        assert embed.dimension == 48 and embed.info.dimension == 48
        assert embed.embed_batch_size == 32  # akidb-embed's batch_size, not LlamaIndex's 10
        assert embed.to_payload()["dimension"] == 48
        assert embed.fingerprint["dimension"] == 48
        assert len(embed.get_text_embedding("x")) == 48


def test_built_from_config_file_environment_config_and_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedding_manager: EmbeddingManager
) -> None:
    toml = tmp_path / "akidb.toml"
    toml.write_text('[embedding]\nprovider = "mock"\nbatch_size = 6\n')
    monkeypatch.setenv("AKIDB_CONFIG", str(toml))
    monkeypatch.setenv("AKIDB_EMBEDDING_OPTIONS", '{"dimension": 20}')
    with AkidbEmbedding() as embed:
        assert (embed.provider, embed.embed_batch_size, embed.dimension) == ("mock", 6, 20)
    with AkidbEmbedding(config=EmbeddingConfig(provider="mock"), embed_batch_size=3) as embed:
        assert embed.embedding_manager.config.batch_size == 3
    embed = AkidbEmbedding(manager=embedding_manager)
    assert embed.embedding_manager is embedding_manager
    assert embed.embed_batch_size == embedding_manager.config.batch_size
    embed.close()
    assert not embedding_manager.closed
    with pytest.raises(ConfigError, match="not both"):
        AkidbEmbedding(manager=embedding_manager, model_name="other")


def test_embed_batch_size_is_the_provider_call_size() -> None:
    provider = MockEmbeddingProvider()
    config = EmbeddingConfig(provider="mock", batch_size=4, cache_size=0)
    with EmbeddingManager(provider, config) as manager:
        embed = AkidbEmbedding(manager=manager)
        texts = [f"text number {i}" for i in range(10)]
        vectors = embed.get_text_embedding_batch(texts)
        assert [len(c) for c in provider.calls] == [4, 4, 2]
        np.testing.assert_array_equal(np.asarray(vectors, np.float32), manager.embed(texts))
        provider.reset()
        asyncio.run(embed.aget_text_embedding_batch(texts))
        assert sorted(len(c) for c in provider.calls) == [2, 4, 4]
    with AkidbEmbedding(provider="mock", embed_batch_size=3, cache_size=0) as embed:
        mock = embed.embedding_manager.provider
        embed.get_text_embedding_batch(["a", "b", "c", "d"])
        assert [len(c) for c in mock.calls] == [3, 1]  # type: ignore[attr-defined]


def test_query_and_text_prompts_where_the_model_has_them() -> None:
    provider = PromptedMock()
    with EmbeddingManager(provider) as manager:
        embed = AkidbEmbedding(manager=manager)
        embed.get_query_embedding("q1")
        embed.get_text_embedding("t1")
        asyncio.run(embed.aget_query_embedding("q2"))
        asyncio.run(embed.aget_text_embedding_batch(["t2"]))
    assert provider.texts == ["query: q1", "passage: t1", "query: q2", "passage: t2"]


def test_async_runs_on_the_managers_threads_and_never_blocks_the_loop() -> None:
    threads: list[str] = []

    class Recorder:
        def on_provider_call(self, event: object) -> None:
            threads.append(threading.current_thread().name)

        def on_request(self, event: object) -> None:
            pass

    with EmbeddingManager(MockEmbeddingProvider(latency=0.2, max_concurrency=1)) as manager:
        manager.add_observer(Recorder())
        embed = AkidbEmbedding(manager=manager)

        async def main() -> int:
            ticks = 0
            work = asyncio.gather(embed.aget_query_embedding("a"), embed.aget_text_embedding("b"))
            while not work.done():
                ticks += 1
                await asyncio.sleep(0.01)
            await work
            return ticks

        start = time.perf_counter()
        ticks = asyncio.run(main())
    assert time.perf_counter() - start >= 0.4 and ticks >= 5
    assert threads and all(t.startswith("akidb-embed") for t in threads)


def test_vector_store_index_retrieves_the_right_node_with_the_real_model(
    minilm_onnx_dir: Path,
    corpus: list[str],
    paraphrases: dict[str, str],
    no_network: list[object],
) -> None:
    documents = [
        Document(text=text, metadata={"line": i + 1}, excluded_embed_metadata_keys=["line"])
        for i, text in enumerate(corpus)
    ]
    with AkidbEmbedding(provider="onnx", model_name=str(minilm_onnx_dir)) as embed:
        index = VectorStoreIndex.from_documents(documents, embed_model=embed)
        retriever = index.as_retriever(similarity_top_k=1)  # no LLM: retrieval only
        for question, answer in paraphrases.items():
            (hit,) = retriever.retrieve(question)
            assert hit.node.get_content().startswith(answer), (question, hit.node.get_content())
            assert hit.score is not None and hit.score > 0.4

        async def build_and_ask() -> list[str]:
            # use_async embeds the nodes through aget_text_embedding_batch.
            built = VectorStoreIndex.from_documents(documents, embed_model=embed, use_async=True)
            ask = built.as_retriever(similarity_top_k=1)
            hits = await asyncio.gather(*(ask.aretrieve(q) for q in paraphrases))
            return [h[0].node.get_content() for h in hits]

        for got, answer in zip(asyncio.run(build_and_ask()), paraphrases.values(), strict=True):
            assert got.startswith(answer)
    assert Settings._llm is None  # nothing asked for an LLM


def test_errors_reach_the_caller_typed_and_unwrapped() -> None:
    with pytest.raises(UnknownProviderError):
        AkidbEmbedding(provider="no-such-provider")
    with pytest.raises(ConfigValueError):  # not pydantic's ValidationError
        AkidbEmbedding(provider="mock", truncation="sometimes")
    provider = MockEmbeddingProvider(fail_on={"poison"}, max_tokens=4)
    with EmbeddingManager(
        provider, EmbeddingConfig(provider="mock", truncation="error")
    ) as manager:
        embed = AkidbEmbedding(manager=manager)
        with pytest.raises(ProviderError):
            VectorStoreIndex.from_documents([Document(text="poison")], embed_model=embed)
        with pytest.raises(ProviderError):
            asyncio.run(embed.aget_text_embedding_batch(["fine", "poison"]))
        with pytest.raises(TruncationError):
            embed.get_query_embedding("one two three four five six")
        with pytest.raises(TruncationError):
            asyncio.run(embed.aget_query_embedding("one two three four five six"))


def test_where_llamaindexs_contract_meets_ours() -> None:
    with AkidbEmbedding(provider="mock") as embed:
        assert embed.get_text_embedding_batch([]) == []
        assert asyncio.run(embed.aget_text_embedding_batch([])) == []
        assert len(embed.get_text_embedding("")) == 384
        assert len(embed.get_query_embedding("")) == 384
        with pytest.raises(EmbeddingInputError):
            embed.get_query_embedding(None)  # type: ignore[arg-type]
        with pytest.raises(EmbeddingInputError):
            embed.get_text_embedding_batch(["ok", None])  # type: ignore[list-item]


def test_the_example_runs_as_a_user_would(
    minilm_onnx_dir: Path, paraphrases: dict[str, str], run_example: Callable[..., str]
) -> None:
    env = {"AKIDB_EMBEDDING_PROVIDER": "onnx", "AKIDB_EMBEDDING_MODEL": str(minilm_onnx_dir)}
    out = run_example("llamaindex_search.py", *paraphrases, env=env)
    assert "273 documents" in out and "(384-d)" in out
    for question, answer in paraphrases.items():
        assert answer in out.split(question, 1)[1].split("\n")[1], out
