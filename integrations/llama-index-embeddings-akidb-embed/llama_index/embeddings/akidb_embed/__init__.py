"""LlamaIndex integration for akidb-embed: ``AkidbEmbedding``."""

from llama_index.embeddings.akidb_embed.base import AkidbEmbedding

__all__ = ["AkidbEmbedding"]
__version__ = "0.1.0"
