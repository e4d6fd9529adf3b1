"""Retrieval through LangChain's own vector store with the real model, and the example."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from langchain_akidb_embed import AkidbEmbeddings
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore


def test_in_memory_vector_store_finds_the_answer_with_the_real_model(
    minilm_onnx_dir: Path, corpus: list[str], paraphrases: dict[str, str], no_network: list[object]
) -> None:
    with AkidbEmbeddings(provider="onnx", model=str(minilm_onnx_dir)) as embeddings:
        store = InMemoryVectorStore(embedding=embeddings)
        ids = store.add_documents(
            [Document(text, metadata={"line": i}) for i, text in enumerate(corpus)]
        )
        assert len(ids) == len(corpus)
        for question, answer in paraphrases.items():
            (best,) = store.similarity_search(question, k=1)
            assert best.page_content.startswith(answer), (question, best.page_content)
        # The async path: the same store, queried through the retriever interface.
        retriever = store.as_retriever(search_kwargs={"k": 1})
        question, answer = next(iter(paraphrases.items()))
        (best,) = asyncio.run(retriever.ainvoke(question))
        assert best.page_content.startswith(answer)


def test_in_memory_vector_store_with_the_mock_provider() -> None:
    texts = ["the cat sat on the mat", "stock prices fell sharply", "a recipe for tomato soup"]
    with AkidbEmbeddings(provider="mock") as embeddings:
        store = InMemoryVectorStore.from_texts(texts, embeddings)
        (best,) = store.similarity_search("which cat sat on a mat", k=1)
        assert best.page_content == "the cat sat on the mat"


def test_the_example_runs_as_a_user_would(
    minilm_onnx_dir: Path, paraphrases: dict[str, str], run_example: Callable[..., str]
) -> None:
    env = {"AKIDB_EMBEDDING_PROVIDER": "onnx", "AKIDB_EMBEDDING_MODEL": str(minilm_onnx_dir)}
    out = run_example("langchain_search.py", *paraphrases, env=env)
    assert "273 documents" in out and "(384-d)" in out
    for question, answer in paraphrases.items():
        assert f"{question}\n  -> line " in out and answer in out.split(question, 1)[1], out
