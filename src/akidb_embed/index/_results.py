"""What searches return."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Hit", "Item", "Record", "SearchResult"]


class Hit(NamedTuple):
    """One search hit of a :class:`VectorIndex`: ``(id, score, metadata)``."""

    id: str
    score: float
    metadata: Any


class Record(NamedTuple):
    """One search hit of a :class:`Collection`: ``(id, score, text, metadata)``."""

    id: str
    score: float
    text: str
    metadata: Any


class Item(NamedTuple):
    """A stored entry: ``(id, vector, metadata)``."""

    id: str
    vector: np.ndarray
    metadata: Any


@dataclass(frozen=True)
class SearchResult:
    """Results of a batch of queries, best first in each row.

    Attributes
    ----------
    ids:
        ``ids[i][j]`` is the id of the *j*-th hit of query *i*.
    scores:
        float32 array of shape ``(n_queries, k)``. For ``"cosine"`` and ``"ip"`` a
        similarity (higher is closer); for ``"l2"`` the squared Euclidean distance
        (lower is closer). ``k`` is smaller than asked when the index holds fewer items.
    metadata:
        ``metadata[i][j]`` is the metadata of that hit (``None`` when it has none).
    space:
        The index's space, which says how to read ``scores``.
    """

    ids: list[list[str]]
    scores: np.ndarray
    metadata: list[list[Any]]
    space: str

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, query: int) -> list[Hit]:
        """The hits of one query as :class:`Hit` tuples."""
        return [
            Hit(id_, float(score), meta)
            for id_, score, meta in zip(
                self.ids[query], self.scores[query], self.metadata[query], strict=True
            )
        ]

    def __iter__(self) -> Iterator[list[Hit]]:
        for i in range(len(self.ids)):
            yield self[i]
