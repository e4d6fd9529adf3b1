"""Semantic search with LangChain over akidb-embed (``pip install "akidb-embed[langchain,onnx]"``).

    AKIDB_EMBEDDING_MODEL=.cache/models/all-MiniLM-L6-v2-onnx python examples/langchain_search.py
    python examples/langchain_search.py "why is my bread so dense" "saving money tips"

The provider and model come from akidb-embed's configuration (``akidb.toml``,
``AKIDB_EMBEDDING_*``): ``bash scripts/demo.sh`` exports all-MiniLM-L6-v2 to the folder
above. Nothing is downloaded when the model is a local folder.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from langchain_akidb_embed import AkidbEmbeddings
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

CORPUS = Path(__file__).resolve().parent / "sample_corpus.txt"


async def main(queries: list[str]) -> None:
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line]
    with AkidbEmbeddings() as embeddings:  # the provider and model akidb-embed is configured with
        store = InMemoryVectorStore(embedding=embeddings)
        await store.aadd_documents(
            [Document(text, metadata={"line": i + 1}) for i, text in enumerate(lines)]
        )
        retriever = store.as_retriever(search_kwargs={"k": 1})
        print(f"{len(lines)} documents, {embeddings.info.model} ({embeddings.dimension}-d)")
        for query in queries:
            (best,) = await retriever.ainvoke(query)
            print(f"{query}\n  -> line {best.metadata['line']}: {best.page_content}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["what happens when the moon blocks the sun"]))
