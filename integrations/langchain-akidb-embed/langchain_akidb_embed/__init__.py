"""LangChain integration for akidb-embed: ``AkidbEmbeddings``.

>>> from langchain_akidb_embed import AkidbEmbeddings
>>> with AkidbEmbeddings(provider="mock") as embeddings:
...     len(embeddings.embed_query("hello"))
384
"""

from langchain_akidb_embed.embeddings import AkidbEmbeddings

__all__ = ["AkidbEmbeddings"]
__version__ = "0.1.0"
