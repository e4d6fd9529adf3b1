"""Semantic search with Chroma over akidb-embed.

    pip install "akidb-embed[chroma,onnx]"
    AKIDB_EMBEDDING_MODEL=.cache/models/all-MiniLM-L6-v2-onnx python examples/chroma_search.py
    python examples/chroma_search.py --path .cache/chroma "why is my bread so dense"

The provider and model come from akidb-embed's configuration (``akidb.toml``,
``AKIDB_EMBEDDING_*``); ``bash scripts/demo.sh`` exports all-MiniLM-L6-v2 to the folder
above. The collection is kept in ``--path`` and reused by the next run; run it with
another model and it is refused (``FingerprintMismatchError``) instead of mixing vectors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import chromadb
from akidb_embed_chroma import AkidbEmbeddingFunction
from chromadb.config import Settings

CORPUS = Path(__file__).resolve().parent / "sample_corpus.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="*", default=["what happens when the moon blocks the sun"])
    parser.add_argument("--path", default=".cache/chroma-demo", help="where Chroma keeps its data")
    args = parser.parse_args()

    client = chromadb.PersistentClient(args.path, settings=Settings(anonymized_telemetry=False))
    with AkidbEmbeddingFunction() as ef:  # the provider and model akidb-embed is configured with
        docs = ef.get_or_create_collection(client, "sample-corpus")  # checks the fingerprint
        if docs.count() == 0:
            lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line]
            docs.add(ids=[f"line-{i + 1}" for i in range(len(lines))], documents=lines)
            print(f"added {docs.count()} documents, {ef.info.model} ({ef.dimension}-d)")
        else:
            print(f"reused {docs.count()} documents, {ef.info.model} ({ef.dimension}-d)")
        found = docs.query(query_texts=args.queries, n_results=1)
        for query, ids, texts in zip(
            args.queries, found["ids"], found["documents"] or [], strict=True
        ):
            print(f"{query}\n  -> {ids[0]}: {texts[0]}")


if __name__ == "__main__":
    main()
