"""Vector index and collections: embed texts, index them, search them, save them safely.

Needs the ``index`` extra for HNSW (``pip install 'akidb-embed[index]'``); without
hnswlib every search is exact. hnswlib is imported only when a graph is built.

>>> from akidb_embed import EmbeddingManager
>>> from akidb_embed.index import Collection
>>> collection = Collection(EmbeddingManager.from_config(provider="mock"))
>>> collection.add(["cats purr", "dogs bark", "stocks fell"])
AddReport(added=3, updated=0, skipped=0)
>>> collection.search("why do cats purr?", k=1)[0].text
'cats purr'
"""

from __future__ import annotations

from ._collection import AddReport, Collection
from ._fingerprint import manager_fingerprint
from ._results import Hit, Item, Record, SearchResult
from ._vector_index import SPACES, VectorIndex, hnswlib_available

__all__ = [
    "SPACES",
    "AddReport",
    "Collection",
    "Hit",
    "Item",
    "Record",
    "SearchResult",
    "VectorIndex",
    "hnswlib_available",
    "manager_fingerprint",
]
