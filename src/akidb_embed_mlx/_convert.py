"""Writing MLX-quantized checkpoints in the layout mlx-community publishes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

from akidb_embed.errors import ConfigValueError, ProviderError

from ._model import load_model
from ._weights import mlx_dtype

__all__ = ["QUANTIZATION_MODES", "quantize_checkpoint"]

QUANTIZATION_MODES = ("affine", "mxfp4", "mxfp8", "nvfp4")
# Weight files of the source that the quantized copy replaces (or has no use for).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".ot")
_SKIP = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}
_SKIP_DIRS = {".git", "onnx", "openvino", ".cache"}
# mlx-lm wraps decoder LMs in a top-level ``model`` module, so their tensors carry this prefix.
_PREFIX = {"qwen3": "model."}


def quantize_checkpoint(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    bits: int = 4,
    group_size: int = 64,
    mode: str = "affine",
    dtype: str = "float16",
    overwrite: bool = False,
) -> Path:
    """Quantize a full-precision checkpoint folder with MLX and save it as mlx-community does.

    The output holds ``model.safetensors`` (``QuantizedLinear``/``QuantizedEmbedding`` weights
    with their ``scales`` and ``biases``, tensor names as mlx-lm writes them), ``config.json``
    with a ``quantization`` table (``bits``, ``group_size``, ``mode``), and every tokenizer and
    sentence-transformers file of the source. It is written to a temporary folder next to
    *out* and renamed into place, so a failure leaves nothing half-written.

    Parameters
    ----------
    source:
        A local model folder (``config.json`` + safetensors weights).
    out:
        Folder to create.
    bits, group_size, mode:
        Passed to :func:`mlx.core.quantize`. Layers whose input width is not a multiple of
        *group_size* stay in full precision (as in mlx-lm).
    dtype:
        Precision of the scales, biases and unquantized tensors.
    overwrite:
        Replace *out* if it exists.

    Returns
    -------
    pathlib.Path
        *out*.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    src = Path(source)
    dst = Path(out)
    if mode not in QUANTIZATION_MODES:
        raise ConfigValueError("mode", f"must be one of {QUANTIZATION_MODES}, got {mode!r}", "mlx")
    if dst.exists() and not overwrite:
        raise ConfigValueError(
            "out", f"{dst} already exists; pass overwrite=True to replace it", "mlx"
        )
    loaded = load_model(src, str(src), mlx_dtype(dtype))
    if loaded.quantization is not None:
        raise ProviderError("mlx", f"{src} is already quantized ({loaded.quantization})")

    def predicate(path: str, module: nn.Module) -> bool:
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0

    try:
        nn.quantize(
            loaded.module, group_size=group_size, bits=bits, mode=mode, class_predicate=predicate
        )
    except ValueError as exc:  # mlx rejects unsupported bits / group sizes this way
        raise ConfigValueError("bits", f"MLX cannot quantize this way: {exc}", "mlx") from exc
    prefix = _PREFIX.get(loaded.model_type, "")
    flat = cast("list[tuple[str, Any]]", tree_flatten(loaded.module.parameters()))
    weights = {prefix + k: v for k, v in flat}
    table = {"group_size": group_size, "bits": bits, "mode": mode}
    config = {**loaded.config, "quantization": table, "quantization_config": table}

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for item in src.iterdir():
            if item.is_dir():
                if item.name not in _SKIP_DIRS:
                    shutil.copytree(item, tmp / item.name)
            elif item.name not in _SKIP and not item.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(item, tmp / item.name)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
