"""The int8 recipe: dynamic quantization, per-channel weights, ``reduce_range=False``.

Activations are still quantized per tensor, and BERT's outlier channels make short texts
suffer, so before quantizing the recipe rewrites the fp32 model twice, both exactly:

1. :func:`~._outliers.split_outlier_channels` gives the FFN outlier channels their own
   rank-k fp32 Linears (torch side, before the ONNX export);
2. :func:`~._smoothquant.smooth` moves the remaining activation outliers of the Linears
   that read a LayerNorm into their weights (ONNX side, after the optimizer).

Then :func:`quantize` keeps the most heavy-tailed Linears in fp32 only while the int8
model misses :attr:`Int8Recipe.target` on the calibration texts (usually none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._outliers import OUTLIER_RATIO, split_outlier_channels
from ._parity import cosines
from ._reference import TorchModel
from ._smoothquant import calibrate, smooth
from ._texts import CALIBRATION_TEXTS

__all__ = [
    "DEFAULT_INT8_TARGET",
    "DEFAULT_SMOOTH_ALPHA",
    "Int8Plan",
    "Int8Recipe",
    "prepare",
    "quantize",
]

DEFAULT_SMOOTH_ALPHA = 0.75
DEFAULT_INT8_TARGET = 0.992


@dataclass(frozen=True)
class Int8Recipe:
    """The int8 recipe's settings.

    Attributes
    ----------
    smooth_alpha:
        SmoothQuant migration strength (``None`` disables smoothing).
    target:
        Min cosine the int8 model must reach on :attr:`texts`; while it does not, the
        Linear whose input is most heavy-tailed stays fp32 (at most a quarter of them).
    outlier_ratio:
        An FFN channel is an outlier above this times the median channel's max.
    texts:
        The calibration texts.
    """

    smooth_alpha: float | None = DEFAULT_SMOOTH_ALPHA
    target: float = DEFAULT_INT8_TARGET
    outlier_ratio: float = OUTLIER_RATIO
    texts: tuple[str, ...] = CALIBRATION_TEXTS


@dataclass(frozen=True)
class Int8Plan:
    """What calibration measured: reference vectors, split channels, scales, ranking.

    Attributes
    ----------
    reference:
        The fp32 model's vectors of the calibration texts (before any rewrite).
    outlier_channels:
        ``{ffn output Linear name: [channel, ...]}`` now on their own fp32 path.
    scales:
        SmoothQuant scale of each smoothed Linear's input channels.
    ranking:
        Every encoder Linear, the most heavy-tailed input (worst for int8) first.
    """

    reference: np.ndarray
    outlier_channels: dict[str, list[int]]
    scales: dict[str, np.ndarray]
    ranking: list[str]


def prepare(
    model: TorchModel,
    recipe: Int8Recipe,
    pooling_modes: Sequence[str],
    say: Callable[[str], None],
) -> Int8Plan:
    """Embed the calibration texts, split the outlier channels of *model* (in place), then
    calibrate the smoothing."""
    reference = model.vectors(recipe.texts, pooling_modes)
    split = split_outlier_channels(model, recipe.texts, recipe.outlier_ratio)
    if split:
        say(
            "keeping FFN outlier channels in fp32: "
            + ", ".join(f"{name} {len(idx)}" for name, idx in split.items())
        )
    say(f"calibrating int8 on {len(recipe.texts)} texts (alpha {recipe.smooth_alpha})")
    scales, ranking = calibrate(model, recipe.texts, recipe.smooth_alpha)
    return Int8Plan(reference, split, scales, ranking)


def quantize(
    onnx: Any,
    src: Path,
    dst: Path,
    plan: Int8Plan,
    recipe: Int8Recipe,
    embed: Callable[[Path, Sequence[str]], np.ndarray],
    say: Callable[[str], None],
) -> list[str]:
    """Smooth the optimized fp32 graph *src*, then quantize it to *dst*.

    *embed* runs a candidate int8 file on texts, as users will. While the candidate's min
    cosine to :attr:`Int8Plan.reference` stays below :attr:`Int8Recipe.target`, the next
    most heavy-tailed Linear stays fp32 (at most a quarter): per-tensor activation scales
    hurt most where a few tokens carry huge activations, and keeping those few MatMuls in
    fp32 costs far less speed than dropping int8 altogether. Returns the Linears kept fp32.
    """
    source = src
    if plan.scales:
        source = dst.with_name("model_smooth.onnx")
        smooth(onnx, src, source, plan.scales)
    say("quantizing to int8 (dynamic, per-channel, reduce_range=False)")
    nodes = _matmul_nodes(onnx, source)
    # The outlier-channel Linears are rank-k: keeping them fp32 is free.
    excluded = [n for n, path in nodes.items() if ".outlier." in f"{path}."]
    kept: list[str] = []
    last = len(plan.ranking) // 4
    for step in range(last + 1):
        _quantize_dynamic(onnx, source, dst, excluded)
        worst = float(cosines(plan.reference, embed(dst, recipe.texts)).min())
        if worst >= recipe.target or step == last:
            break
        name = plan.ranking[step]
        matched = [n for n, path in nodes.items() if path.startswith(f"inner.{name}.")]
        say(f"  calibration min cosine {worst:.4f} < {recipe.target}: keeping {name} in fp32")
        excluded += matched
        kept.append(name)
    say(f"  calibration min cosine {worst:.4f} with {len(kept)} Linear(s) kept in fp32")
    if source != src:
        source.unlink()
    return kept


def _quantize_dynamic(onnx: Any, src: Path, dst: Path, exclude: Sequence[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        # Per-tensor weights, or reduce_range=True, lose far more (benchmarks/EXPORT.md).
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        extra_options={
            # Fused Attention/SkipLayerNorm outputs have no type info the quantizer knows.
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            # Leave activation x activation products (Q.K^T, P.V) in fp32.
            "MatMulConstBOnly": True,
        },
    )


def _matmul_nodes(onnx: Any, path: Path) -> dict[str, str]:
    """ONNX MatMul node name -> its module path with dots (``inner.encoder.layer.0...``)."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        node.name: node.name.strip("/").replace("/", ".")
        for node in model.graph.node
        if node.op_type == "MatMul"
    }
