"""akidb-embed-openvino: the ``openvino`` embedding provider.

Importing this package is cheap: openvino, tokenizers and huggingface_hub are imported
when a provider is built.
"""

from __future__ import annotations

from ._provider import PRECISIONS, OpenVINOEmbeddingProvider

__all__ = ["PRECISIONS", "OpenVINOEmbeddingProvider"]
__version__ = "0.1.0"
