"""Hashed character n-gram embeddings: an example akidb-embed provider plugin."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from akidb_embed import EmbeddingConfig, ModelInfo

__all__ = ["NgramProvider"]


class NgramProvider:
    """Character n-grams hashed into a fixed number of signed buckets.

    Options (``[embedding.options]``): ``dimension`` (default 256), ``n`` (default 3).
    """

    requires: tuple[str, ...] = ("numpy",)
    thread_safe = True

    def __init__(self, config: EmbeddingConfig) -> None:
        self.dimension = int(config.option("dimension", 256))
        self.n = int(config.option("n", 3))
        if self.dimension < 1 or self.n < 1:
            raise ValueError("ngram options 'dimension' and 'n' must be >= 1")

    def info(self) -> ModelInfo:
        return ModelInfo(
            provider="ngram",
            model=f"char-{self.n}gram-{self.dimension}",
            dimension=self.dimension,
            max_tokens=None,
            pooling="sum",
            normalized=True,
        )

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f" {text.lower()} "
            for i in range(max(1, len(padded) - self.n + 1)):
                digest = hashlib.blake2b(padded[i : i + self.n].encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dimension] += 1.0 if value >> 63 else -1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out

    def close(self) -> None:
        pass
