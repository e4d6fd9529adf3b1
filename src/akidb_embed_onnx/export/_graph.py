"""The fp32 ONNX graph: the TorchScript export, onnxruntime's transformer optimizer, metadata.

The legacy TorchScript exporter (``dynamo=False``) with eager attention, because
onnxruntime's transformer optimizer recognises BERT's patterns only in that graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ._reference import TorchModel

__all__ = ["DEFAULT_OPSET", "add_metadata", "optimize_graph", "torch_export"]

DEFAULT_OPSET = 17
# Above this many bytes of weights the graph stores them next to it (protobuf's 2 GB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000


def torch_export(model: TorchModel, path: Path, opset: int) -> None:
    """Export *model*'s module to *path* with dynamic batch and sequence axes."""
    torch, module, names = model.torch, model.module, model.input_names
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
    ids = ids.clamp(max=model.transformer.config.vocab_size - 1)
    mask = (ids != 0).long()
    mask[:, 0] = 1
    inputs = (ids, mask, torch.zeros_like(ids))[: len(names)]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of dynamo, and tracing warns
        # about shape-dependent Python branches that are constant for a bidirectional encoder.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            external_data=params > _EXTERNAL_DATA_BYTES,
        )
    # Exporting put the module back in training mode (it restores the mode it found).
    module.eval()


def optimize_graph(
    config: Any, src: Path, dst: Path, *, approximate_gelu: bool = False
) -> dict[str, int]:
    """onnxruntime's transformer optimizer on *src*; returns the fused operator counts.

    *config* is the Hugging Face model config (heads, hidden size). *approximate_gelu*
    fuses the tanh approximation of GELU (``FastGelu``), for int8 only.
    """
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = "bert"
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    options = FusionOptions(model_type)
    # MultiHeadAttention keeps Q, K and V as three full-width MatMuls (which int8
    # quantizes) and beat both the plain graph and the fused Attention op on the CPU. A 2-D
    # mask works with either padding side (a 1-D "lengths" mask only with right padding).
    # SkipLayerNormalization runs slower on the CPU than LayerNormalization + Add, so it
    # stays unfused (benchmarks/EXPORT.md has the figures).
    options.enable_attention = True
    options.use_multi_head_attention = True
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    # int8 only: tanh-approximated GELU (FastGelu) is faster, and its error is far below
    # int8's; fp32 keeps the exact erf GELU.
    options.enable_gelu_approximation = approximate_gelu
    optimized = optimize_model(
        str(src),
        model_type=model_type,
        num_heads=heads,
        hidden_size=hidden,
        opt_level=0,
        optimization_options=options,
    )
    optimized.save_model_to_file(str(dst))
    stats = optimized.get_fused_operator_statistics()
    return {k: int(v) for k, v in stats.items() if v}


def add_metadata(onnx: Any, path: Path, values: dict[str, str]) -> None:
    """Set *values* in the graph's ``metadata_props`` (the provider reads the dtype there)."""
    model = onnx.load(str(path), load_external_data=False)
    present = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        entry = present.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
