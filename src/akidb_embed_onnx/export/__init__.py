"""Export a Hugging Face (safetensors) model to a folder the ``onnx`` provider loads.

``akidb-embed export MODEL --out DIR [--optimize] [--quantize int8]`` and
:func:`export_model` write ``DIR/onnx/model.onnx`` next to the tokenizer and the
sentence-transformers configuration files, the same layout as Hugging Face repos that
ship ONNX weights, then check the result against the fp32 PyTorch model on a built-in
text set: the :class:`ParityReport`, also saved in ``DIR/akidb_export.json``. Its ONNX
side is the ``onnx`` provider itself, loaded on the exported folder.

Only the export needs PyTorch (and ``transformers``, ``onnx``); the provider does not.

* ``--optimize`` (implied by ``--quantize``) runs onnxruntime's transformer optimizer:
  GELU with its bias, LayerNorm, and attention as ``MultiHeadAttention``; not
  SkipLayerNormalization, which is slower on the CPU than LayerNorm + Add.
* ``--quantize int8`` is dynamic quantization with per-channel int8 weights, after two
  exact rewrites of the fp32 model that keep per-tensor activation scales from hurting
  short texts (FFN outlier channels on their own fp32 path, SmoothQuant on the inputs of
  the Linears that read a LayerNorm), and with the tanh approximation of GELU.

``benchmarks/EXPORT.md`` has the measurements behind each choice.
"""

from __future__ import annotations

from ._errors import ExportDependencyError, ExportError
from ._export import QUANTIZE_MODES, export_model
from ._folder import EXPORT_INFO_FILE, read_export_info
from ._graph import DEFAULT_OPSET
from ._int8 import DEFAULT_INT8_TARGET, DEFAULT_SMOOTH_ALPHA
from ._parity import DEFAULT_MIN_COSINE, ParityReport
from ._texts import CALIBRATION_TEXTS, PARITY_TEXTS

__all__ = [
    "CALIBRATION_TEXTS",
    "DEFAULT_INT8_TARGET",
    "DEFAULT_MIN_COSINE",
    "DEFAULT_OPSET",
    "DEFAULT_SMOOTH_ALPHA",
    "EXPORT_INFO_FILE",
    "PARITY_TEXTS",
    "QUANTIZE_MODES",
    "ExportDependencyError",
    "ExportError",
    "ParityReport",
    "export_model",
    "read_export_info",
]
