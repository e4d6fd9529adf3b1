"""Semantic search with LlamaIndex over akidb-embed.

    pip install "akidb-embed[llamaindex,onnx]"

    AKIDB_EMBEDDING_MODEL=.cache/models/all-MiniLM-L6-v2-onnx python examples/llamaindex_search.py
    python examples/llamaindex_search.py "why is my bread so dense" "saving money tips"

The provider and model come from akidb-embed's configuration (``akidb.toml``,
``AKIDB_EMBEDDING_*``); ``bash scripts/demo.sh`` exports all-MiniLM-L6-v2 to the folder
above. Retrieval only: no LLM is needed, and nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llama_index.core import Document, VectorStoreIndex
from llama_index.embeddings.akidb_embed import AkidbEmbedding

CORPUS = Path(__file__).resolve().parent / "sample_corpus.txt"


def main(queries: list[str]) -> None:
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line]
    # The line number is for the reader, not part of the text to embed.
    documents = [
        Document(text=text, metadata={"line": i + 1}, excluded_embed_metadata_keys=["line"])
        for i, text in enumerate(lines)
    ]
    with AkidbEmbedding() as embed_model:  # the provider and model akidb-embed is configured with
        index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)
        retriever = index.as_retriever(similarity_top_k=1)
        print(f"{len(documents)} documents, {embed_model.model_name} ({embed_model.dimension}-d)")
        for query in queries:
            (hit,) = retriever.retrieve(query)
            line, score = hit.node.metadata["line"], hit.score or 0.0
            print(f"{query}\n  -> line {line} ({score:.2f}): {hit.node.get_content()}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["what happens when the moon blocks the sun"])
