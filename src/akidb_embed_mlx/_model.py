"""Architecture table: ``config.json`` -> an MLX module with the checkpoint's weights loaded."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from akidb_embed.errors import ModelNotFoundError, ProviderError

from ._weights import apply_checkpoint_quantization, load_into, quantization_of, read_safetensors

if TYPE_CHECKING:
    import mlx.core as mx
    import mlx.nn as nn

__all__ = ["ARCHITECTURES", "LoadedModel", "architecture_of", "load_model", "read_config"]

# model_type -> (module, class, default pooling). Modules import mlx, so they load on demand.
ARCHITECTURES: Mapping[str, tuple[str, str, str]] = {
    "bert": ("akidb_embed_mlx._bert", "BertEncoder", "mean"),
    "roberta": ("akidb_embed_mlx._bert", "BertEncoder", "mean"),
    "xlm-roberta": ("akidb_embed_mlx._bert", "BertEncoder", "mean"),
    "qwen3": ("akidb_embed_mlx._qwen3", "Qwen3Decoder", "lasttoken"),
}


@dataclass
class LoadedModel:
    """An MLX module ready to run, and what was read to build it."""

    module: nn.Module
    config: dict[str, Any]
    model_type: str
    default_pooling: str
    quantization: dict[str, Any] | None
    hidden_size: int
    max_positions: int
    causal: bool


def read_config(folder: Path, model: str) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(model, [str(path)], "A model folder needs a config.json.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProviderError("mlx", f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ProviderError("mlx", f"{path} is not a JSON object")
    return config


def architecture_of(config: Mapping[str, Any]) -> str:
    """The ``model_type`` of *config*, checked against :data:`ARCHITECTURES`."""
    model_type = str(config.get("model_type", "")).lower().replace("_", "-")
    if model_type not in ARCHITECTURES:
        raise ProviderError(
            "mlx",
            f"unsupported model_type {config.get('model_type')!r}; the MLX provider runs "
            f"{', '.join(sorted(ARCHITECTURES))}",
        )
    return model_type


def load_model(folder: Path, model: str, dtype: mx.Dtype) -> LoadedModel:
    """Build the module *folder*'s ``config.json`` describes and load its safetensors weights
    (full precision or MLX-quantized) in *dtype*."""
    config = read_config(folder, model)
    model_type = architecture_of(config)
    module_name, class_name, pooling = ARCHITECTURES[model_type]
    arch = importlib.import_module(module_name)
    try:
        module = getattr(arch, class_name)(config)
    except KeyError as exc:
        raise ProviderError("mlx", f"{folder / 'config.json'} lacks the key {exc}") from exc
    weights = arch.sanitize(read_safetensors(folder, model), model_type)
    quantization = quantization_of(config)
    if quantization is not None:
        apply_checkpoint_quantization(
            module, quantization, weights, rename=getattr(arch, "rename", None)
        )
    load_into(module, weights, dtype, str(folder))
    module.eval()
    return LoadedModel(
        module=module,
        config=config,
        model_type=model_type,
        default_pooling=pooling,
        quantization=quantization,
        hidden_size=module.hidden_size,
        max_positions=module.max_positions,
        causal=module.causal,
    )
