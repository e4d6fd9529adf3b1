"""int8, step 1: give each feed-forward block's few outlier channels their own fp32 path.

In BERT-style FFNs one or two of the intermediate channels (after GELU) reach values several
times those of all the others on a few tokens: one per-tensor int8 scale for the FFN output
Linear's input then rounds most of its values to a handful of levels. Channels whose
calibration max exceeds ``ratio`` times the median channel's (at most 1% of them) are cut out
of both FFN Linears into separate ``outlier`` Linears that stay fp32 (rank-k, nearly free);
the rest is quantized as before. An exact re-association in fp32: no Slice or copy is added
to the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._reference import TorchModel

__all__ = ["OUTLIER_RATIO", "split_outlier_channels"]

#: An FFN channel is an outlier when its calibration max exceeds this times the median.
OUTLIER_RATIO = 6.0


def split_outlier_channels(
    model: TorchModel, texts: Sequence[str], ratio: float = OUTLIER_RATIO
) -> dict[str, list[int]]:
    """Rewrite *model* in place; returns ``{ffn output Linear name: [channel, ...]}``."""
    blocks = _ffn_blocks(model)
    if not blocks:
        return {}
    amax = _intermediate_maxima(model, blocks, texts)
    torch = model.torch
    split_in, split_out = _split_modules(torch)
    split: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, inter, out in blocks:
            m = amax.get(name)
            if m is None:
                continue
            limit = max(1, m.numel() // 100)
            ranked = torch.argsort(m, descending=True)[:limit]
            chosen = sorted(int(i) for i in ranked if m[i] > ratio * m.median())
            if not chosen:
                continue
            keep = torch.tensor([i for i in range(m.numel()) if i not in set(chosen)])
            outl = torch.tensor(chosen)
            every_in = torch.arange(inter.dense.in_features)
            every_out = torch.arange(out.dense.out_features)
            layer = model.transformer.get_submodule(name)
            layer.intermediate = split_in(
                _part(torch, inter.dense, keep, every_in, True),
                _part(torch, inter.dense, outl, every_in, True),
                inter.intermediate_act_fn,
            )
            layer.output.dense = split_out(
                _part(torch, out.dense, every_out, keep, True),
                _part(torch, out.dense, every_out, outl, False),
            )
            split[f"{name}.output.dense"] = chosen
    return split


def _ffn_blocks(model: TorchModel) -> list[tuple[str, Any, Any]]:
    """(layer name, intermediate, output) of every BERT-style feed-forward block."""
    linear = model.torch.nn.Linear
    blocks = []
    for name, module in model.transformer.named_modules():
        inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
        dense_in, dense_out = getattr(inter, "dense", None), getattr(out, "dense", None)
        if (
            isinstance(dense_in, linear)
            and isinstance(dense_out, linear)
            and getattr(inter, "intermediate_act_fn", None) is not None
            and dense_out.in_features == dense_in.out_features
        ):
            blocks.append((name, inter, out))
    return blocks


def _intermediate_maxima(
    model: TorchModel, blocks: list[tuple[str, Any, Any]], texts: Sequence[str]
) -> dict[str, Any]:
    """Per-channel max |activation| at each FFN output Linear's input, over *texts*."""
    torch = model.torch
    amax: dict[str, Any] = {}

    def record(key: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            amax[key] = torch.maximum(amax[key], m) if key in amax else m

        return hook

    hooks = [out.dense.register_forward_pre_hook(record(name)) for name, _, out in blocks]
    try:
        with torch.inference_mode():
            model.forward(texts)
    finally:
        for hook in hooks:
            hook.remove()
    return amax


def _split_modules(torch: Any) -> tuple[type, type]:
    """The two modules a split FFN is made of (classes of a lazily imported torch)."""

    class SplitIntermediate(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self, main: Any, outlier: Any, act: Any) -> None:
            super().__init__()
            self.main, self.outlier, self.act = main, outlier, act

        def forward(self, x: Any) -> Any:
            return self.act(self.main(x)), self.act(self.outlier(x))

    class SplitOutput(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self, main: Any, outlier: Any) -> None:
            super().__init__()
            self.main, self.outlier = main, outlier

        def forward(self, pair: tuple[Any, Any]) -> Any:
            return self.main(pair[0]) + self.outlier(pair[1])

    return SplitIntermediate, SplitOutput


def _part(torch: Any, linear: Any, rows: Any, cols: Any, bias: bool) -> Any:
    """A new Linear holding *rows* x *cols* of *linear*'s weight (and its bias rows)."""
    weight = linear.weight.detach()[rows][:, cols]
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    new.weight.data.copy_(weight)
    if bias and linear.bias is not None:
        new.bias.data.copy_(linear.bias.detach()[rows])
    elif new.bias is not None:
        new.bias.data.zero_()
    return new
