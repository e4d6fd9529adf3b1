"""Chroma integration for akidb-embed: ``AkidbEmbeddingFunction``.

Importing this package registers the function with Chroma under the name ``akidb_embed``,
so a collection created with it can be opened again without passing it.
"""

from akidb_embed_chroma._function import (
    FINGERPRINT_KEY,
    NAME,
    AkidbEmbeddingFunction,
    recorded_fingerprint,
)

__all__ = ["FINGERPRINT_KEY", "NAME", "AkidbEmbeddingFunction", "recorded_fingerprint"]
__version__ = "0.1.0"
