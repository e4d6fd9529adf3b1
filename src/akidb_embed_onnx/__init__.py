"""akidb-embed-onnx: the ``onnx`` embedding provider (ONNX Runtime).

Importing this package is cheap: onnxruntime, tokenizers and huggingface_hub are
imported when a provider is built, and torch only by :mod:`akidb_embed_onnx.export`.
"""

from __future__ import annotations

from ._provider import DEFAULT_ONNX_FILES, EXECUTION_PROVIDER_ALIASES, OnnxEmbeddingProvider

__all__ = ["DEFAULT_ONNX_FILES", "EXECUTION_PROVIDER_ALIASES", "OnnxEmbeddingProvider"]
__version__ = "0.1.0"
