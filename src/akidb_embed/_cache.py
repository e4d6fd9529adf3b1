"""The manager's in-memory LRU cache of vectors (and their token counts)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple

import numpy as np

__all__ = ["CacheEntry", "VectorCache"]


class CacheEntry(NamedTuple):
    vector: np.ndarray  # read-only, not normalised by the manager
    tokens: int | None  # tokens before truncation, when the provider counts them


class VectorCache:
    """A thread-safe LRU of at most *size* entries; ``size=0`` disables it.

    Keys are texts, or tuples of token ids (a text given as ids): the two never collide.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> CacheEntry | None:
        if not self.size:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: CacheEntry) -> None:
        if not self.size:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
