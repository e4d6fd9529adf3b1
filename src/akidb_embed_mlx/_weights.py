"""Reading safetensors checkpoints (full precision or MLX-quantized) into MLX modules."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from akidb_embed.errors import ConfigValueError, ModelNotFoundError, ProviderError

if TYPE_CHECKING:
    import mlx.core as mx
    import mlx.nn as nn

__all__ = [
    "DTYPES",
    "apply_checkpoint_quantization",
    "load_into",
    "mlx_dtype",
    "quantization_of",
    "read_safetensors",
]

DTYPES = ("float32", "float16", "bfloat16")
_INDEX = "model.safetensors.index.json"


def mlx_dtype(name: str) -> mx.Dtype:
    """The ``mlx.core`` dtype called *name* (one of :data:`DTYPES`)."""
    import mlx.core as mx

    if name not in DTYPES:
        raise ConfigValueError(
            "options.dtype", f"must be one of {', '.join(map(repr, DTYPES))}, got {name!r}", "mlx"
        )
    return getattr(mx, name)  # type: ignore[no-any-return]


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: the index's shards, or ``*.safetensors``."""
    index = folder / _INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    return sorted(folder.glob("*.safetensors"))


def read_safetensors(folder: Path, model: str) -> dict[str, mx.array]:
    """Every tensor of the checkpoint in *folder*, read by MLX itself (no torch)."""
    import mlx.core as mx

    files = safetensors_files(folder)
    if not files:
        raise ModelNotFoundError(
            model,
            [str(folder / "model.safetensors"), str(folder / _INDEX)],
            "The MLX provider reads safetensors weights only; save the model with "
            "save_pretrained(..., safe_serialization=True).",
        )
    weights: dict[str, mx.array] = {}
    for file in files:
        if not file.is_file():
            raise ModelNotFoundError(model, [str(file)], f"{_INDEX} names a missing shard.")
        try:
            loaded = mx.load(str(file))
        except Exception as exc:  # mlx raises bare RuntimeError/ValueError on bad files
            raise ProviderError("mlx", f"cannot read weights {file}: {exc}") from exc
        weights.update(loaded)  # type: ignore[arg-type]
    return weights


def quantization_of(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The MLX quantization table of a ``config.json`` (``bits``, ``group_size``, ``mode``,
    per-layer overrides), ``None`` for a full-precision checkpoint.

    Other quantization formats (GPTQ, AWQ, bitsandbytes, ...) are refused: MLX cannot run them.
    """
    table = config.get("quantization")
    if table is None:
        table = config.get("quantization_config")
    if not table:
        return None
    # mlx-lm writes no quant_method; transformers' formats (gptq, awq, bitsandbytes) always do.
    if (
        not isinstance(table, Mapping)
        or "quant_method" in table
        or "bits" not in table
        or "group_size" not in table
    ):
        method = table.get("quant_method", "?") if isinstance(table, Mapping) else table
        raise ProviderError(
            "mlx",
            f"unsupported quantization {method!r} in config.json: the MLX provider reads "
            "MLX-quantized checkpoints (a 'quantization' table with 'bits' and 'group_size') "
            "or full-precision ones",
        )
    return dict(table)


def apply_checkpoint_quantization(
    model: nn.Module,
    table: Mapping[str, Any],
    weights: Mapping[str, mx.array],
    rename: Any = None,
) -> None:
    """Turn the layers the checkpoint stores quantized into ``QuantizedLinear`` /
    ``QuantizedEmbedding``, exactly as mlx-lm decides: a layer is quantized when its
    ``scales`` are in the checkpoint, with per-layer overrides from *table*."""
    import mlx.nn as nn

    defaults = {
        "group_size": int(table["group_size"]),
        "bits": int(table["bits"]),
        "mode": str(table.get("mode", "affine")),
    }
    overrides: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("group_size", "bits", "mode"):
            continue
        if isinstance(value, (bool, Mapping)):
            overrides[rename(key) if rename else key] = value

    def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
            return False
        override = overrides.get(path, True)
        if override is False:
            return False
        if isinstance(override, Mapping):
            return {**defaults, **override}
        return dict(defaults)

    nn.quantize(model, class_predicate=predicate)


def load_into(
    model: nn.Module, weights: Mapping[str, mx.array], dtype: mx.Dtype, source: str
) -> None:
    """Load *weights* into *model* strictly (a missing or unexpected tensor is an error),
    casting floating tensors to *dtype*; packed quantized integers stay as they are."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    cast = {
        name: (w.astype(dtype) if mx.issubdtype(w.dtype, mx.floating) else w)
        for name, w in weights.items()
    }
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(cast))
    unexpected = sorted(set(cast) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:3])}"
            )
        raise ProviderError("mlx", f"checkpoint {source} does not fit: " + "; ".join(parts))
    for name, w in cast.items():
        if tuple(w.shape) != tuple(expected[name].shape):
            raise ProviderError(
                "mlx",
                f"checkpoint {source}: tensor {name} has shape {tuple(w.shape)}, "
                f"the config implies {tuple(expected[name].shape)}",
            )
    model.load_weights(list(cast.items()), strict=True)
    mx.eval(model.parameters())
