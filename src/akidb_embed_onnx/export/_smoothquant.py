"""int8, step 2: SmoothQuant, and the ranking of the Linears by how badly int8 suits them.

Activations are quantized per tensor, so a few outlier input channels cost the other
channels their resolution. :func:`calibrate` measures every encoder Linear's input on the
calibration texts; :func:`smooth` moves the outliers of the Linears that read a LayerNorm's
output (Q/K/V, FFN input, as in the SmoothQuant paper) into their weights: input scaled by
``1/s`` per channel, weight rows by ``s``, with ``s = max|x|**alpha / max|w|**(1 - alpha)``.
Smoothing the other Linears too measured worse and costs a ``Mul`` each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ExportError
from ._reference import TorchModel

__all__ = ["calibrate", "smooth"]


def calibrate(
    model: TorchModel, texts: Sequence[str], alpha: float | None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Measure every encoder Linear's input on *texts*.

    Returns the SmoothQuant scales of the input channels of the Linears that read a
    LayerNorm's output (none when *alpha* is ``None``; Linears reading the same tensor share
    one), and every Linear ranked by how heavy-tailed its (smoothed) input stays: the first
    ones lose most to per-tensor int8.
    """
    torch = model.torch
    linears = {
        name: module
        for name, module in model.transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith("pooler")
    }
    stats = _InputStats(torch)
    normed: list[Any] = []

    def keep_output(module: Any, args: tuple[Any, ...], output: Any) -> None:
        normed.append(output)

    hooks = [module.register_forward_pre_hook(stats.hook(name)) for name, module in linears.items()]
    hooks += [
        module.register_forward_hook(keep_output)
        for module in model.transformer.modules()
        if isinstance(module, torch.nn.LayerNorm)
    ]
    try:
        with torch.inference_mode():
            # A first tiny pass keeps every Linear input alive (so no two share an address
            # by reuse): Linears reading the same tensor (query, key, value) then share one
            # scale, and the graph quantizes that input once.
            model.forward(["grouping pass"])
            groups: dict[int, list[str]] = {}
            for name in linears:
                if name in stats.seen:
                    groups.setdefault(stats.seen[name].data_ptr(), []).append(name)
            after_norm = {out.data_ptr() for out in normed if hasattr(out, "data_ptr")}
            smoothed = {n for ptr, ns in groups.items() if ptr in after_norm for n in ns}
            stats.clear()
            normed.clear()
            model.forward(texts)
    finally:
        for hook in hooks:
            hook.remove()

    tail: dict[str, float] = {}
    scales: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for members in groups.values():
            act = torch.stack([stats.amax[n] for n in members]).amax(dim=0).clamp(min=1e-5)
            scale = torch.ones_like(act)
            if alpha is not None and members[0] in smoothed:
                weight = torch.stack(
                    [linears[n].weight.abs().amax(dim=0).float() for n in members]
                ).amax(dim=0)
                scale = (act**alpha / weight.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            for name in members:
                msq, rows = stats.msq[name], stats.rows[name]
                rms = torch.sqrt((msq / rows / scale**2).mean()).item()
                tail[name] = (stats.amax[name] / scale).max().item() / max(rms, 1e-12)
                if alpha is not None and name in smoothed:
                    scales[name] = scale.numpy().astype(np.float32)
    ranking = sorted(tail, key=tail.__getitem__, reverse=True)
    return scales, ranking


class _InputStats:
    """Per-channel max |x|, sum of x**2 and row count of each Linear's input."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.amax: dict[str, Any] = {}
        self.msq: dict[str, Any] = {}
        self.rows: dict[str, int] = {}
        self.seen: dict[str, Any] = {}

    def clear(self) -> None:
        for table in (self.amax, self.msq, self.rows, self.seen):
            table.clear()

    def hook(self, name: str) -> Callable[..., None]:
        def record(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            self.seen.setdefault(name, x)
            flat = x.reshape(-1, x.shape[-1]).float()
            m, sq = flat.abs().amax(dim=0), flat.pow(2).sum(dim=0)
            amax, msq = self.amax, self.msq
            amax[name] = self.torch.maximum(amax[name], m) if name in amax else m
            msq[name] = msq[name] + sq if name in msq else sq
            self.rows[name] = self.rows.get(name, 0) + flat.shape[0]

        return record


def smooth(onnx: Any, src: Path, dst: Path, scales: dict[str, np.ndarray]) -> None:
    """SmoothQuant on the ONNX graph: for each Linear with a scale ``s``, multiply the rows
    of its MatMul weight by ``s`` and its input by ``1/s`` (one ``Mul`` per input tensor,
    shared by the Linears reading it). An identity in exact arithmetic.

    Done after the transformer optimizer, so the ``Mul`` cannot block its fusions."""
    from onnx import numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    by_path = {
        node.name.strip("/").replace("/", "."): node
        for node in graph.node
        if node.op_type == "MatMul"
    }
    groups: dict[str, list[tuple[Any, np.ndarray]]] = {}
    for name, scale in scales.items():
        node = by_path.get(f"inner.{name}.MatMul")
        if node is None or node.input[1] not in weights:
            continue
        groups.setdefault(node.input[0], []).append((node, scale))
    extra_nodes = []
    for index, (tensor, members) in enumerate(groups.items()):
        if any(not np.array_equal(scale, members[0][1]) for _, scale in members):
            raise ExportError(f"Linears reading {tensor} were calibrated with different scales")
        inverse = numpy_helper.from_array(
            (1.0 / members[0][1]).astype(np.float32), f"akidb_smooth_{index}"
        )
        graph.initializer.append(inverse)
        output = f"{tensor}_akidb_smoothed"
        extra_nodes.append(
            onnx.helper.make_node(
                "Mul", [tensor, inverse.name], [output], name=f"/akidb/smooth_{index}/Mul"
            )
        )
        for node, scale in members:
            init = weights[node.input[1]]
            value = numpy_helper.to_array(init).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value * scale[:, None], init.name))
            node.input[0] = output
    # Keep the graph topologically sorted: each Mul goes right before its first reader.
    nodes = list(graph.node)
    for mul in extra_nodes:
        first = next(i for i, n in enumerate(nodes) if mul.output[0] in n.input)
        nodes.insert(first, mul)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
