"""The parity report: the exported folder run by the ``onnx`` provider, against PyTorch.

The ONNX side is :class:`~akidb_embed_onnx.OnnxEmbeddingProvider` loaded on the exported
folder, so the report measures what users run: the provider's tokenization, sorting,
batching, session settings and pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from akidb_embed import EmbeddingConfig
from akidb_embed.backend import normalize_rows
from akidb_embed_onnx import OnnxEmbeddingProvider

__all__ = ["DEFAULT_MIN_COSINE", "ParityReport", "cosines", "parity", "provider_vectors"]

#: Parity threshold when none is given, by quantization.
DEFAULT_MIN_COSINE: dict[str | None, float] = {None: 0.9999, "int8": 0.98}


@dataclass(frozen=True)
class ParityReport:
    """Cosine similarity of the export's vectors to the fp32 PyTorch model's."""

    texts: int
    min_cosine: float
    mean_cosine: float
    threshold: float
    worst_text: str

    @property
    def ok(self) -> bool:
        return self.min_cosine >= self.threshold

    def format(self) -> str:
        """A short table for the terminal."""
        worst = self.worst_text if len(self.worst_text) <= 40 else self.worst_text[:37] + "..."
        return (
            f"parity vs fp32 PyTorch on {self.texts} built-in texts: "
            f"min cosine {self.min_cosine:.6f}, mean {self.mean_cosine:.6f} "
            f"(threshold {self.threshold}); worst: {worst!r}"
        )


def provider_vectors(folder: Path, onnx_file: Path, texts: Sequence[str]) -> np.ndarray:
    """*texts* embedded by the ``onnx`` provider loaded on *folder*, running *onnx_file*."""
    config = EmbeddingConfig(
        provider="onnx",
        model=str(folder),
        offline=True,
        options={"onnx_file": onnx_file.relative_to(folder).as_posix()},
    )
    provider = OnnxEmbeddingProvider(config)
    try:
        return provider.embed_batch(texts)
    finally:
        provider.close()


def cosines(reference: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, in float64."""
    a = normalize_rows(reference.astype(np.float64))
    b = normalize_rows(vectors.astype(np.float64))
    return np.sum(a * b, axis=1)


def parity(
    reference: np.ndarray, vectors: np.ndarray, texts: Sequence[str], threshold: float
) -> ParityReport:
    """The report for *vectors* against the PyTorch *reference*, one row per text."""
    cos = cosines(reference, vectors)
    worst = int(np.argmin(cos))
    return ParityReport(
        texts=len(texts),
        min_cosine=round(float(cos.min()), 6),
        mean_cosine=round(float(cos.mean()), 6),
        threshold=threshold,
        worst_text=texts[worst],
    )
