"""akidb-embed-mlx: the ``mlx`` embedding provider.

Runs BERT-family encoders and Qwen3-Embedding (full precision or MLX-quantized) on Apple's
MLX: Metal on Apple silicon, the CUDA build, or the CPU build on Linux. Importing this
package is cheap; MLX is imported when a provider is built or a checkpoint is quantized.
"""

from __future__ import annotations

from ._convert import quantize_checkpoint
from ._provider import MLXEmbeddingProvider
from ._version import __version__

__all__ = ["MLXEmbeddingProvider", "__version__", "quantize_checkpoint"]
