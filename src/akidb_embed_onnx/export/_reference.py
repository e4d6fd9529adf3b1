"""The fp32 PyTorch model the export starts from, run the way sentence-transformers runs it.

It gives the parity report its reference vectors, the int8 recipe its activations (through
forward hooks on :attr:`TorchModel.transformer`), and the ONNX exporter its module.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akidb_embed.backend import load_tokenizer, pool

__all__ = ["TorchModel"]


@dataclass(frozen=True)
class TorchModel:
    """A Hugging Face encoder wrapped for export, with its (padding) tokenizer.

    Attributes
    ----------
    torch:
        The ``torch`` module (imported by the caller, which reports it when missing).
    module:
        Takes positional ``(input_ids, attention_mask[, token_type_ids])`` and returns the
        token states: the exporter needs positional inputs with fixed names.
    input_names:
        Those inputs' names, in order.
    tokenizer:
        From :func:`~akidb_embed.backend.load_tokenizer`, padding each batch.
    """

    torch: Any
    module: Any
    input_names: list[str]
    tokenizer: Any

    @classmethod
    def load(
        cls, torch: Any, transformers: Any, folder: Path, max_length: int, do_lower_case: bool
    ) -> TorchModel:
        """Load the transformer in *folder* in fp32 with eager attention (the graph
        onnxruntime's transformer optimizer recognises)."""
        model = transformers.AutoModel.from_pretrained(
            str(folder), attn_implementation="eager", dtype=torch.float32
        ).eval()
        tokenizer = load_tokenizer(folder, max_length, do_lower_case=do_lower_case)
        return cls.wrap(torch, model, tokenizer)

    @classmethod
    def wrap(cls, torch: Any, model: Any, tokenizer: Any) -> TorchModel:
        """Wrap the Hugging Face *model* (token type ids only when it has a type vocabulary)."""
        accepts = inspect.signature(model.forward).parameters
        names = ["input_ids", "attention_mask"]
        type_vocab: int = getattr(model.config, "type_vocab_size", None) or 0
        if "token_type_ids" in accepts and type_vocab > 0:
            names.append("token_type_ids")

        class TokenStates(torch.nn.Module):  # type: ignore[misc, name-defined]
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *inputs: Any) -> Any:
                kwargs = dict(zip(names, inputs, strict=True))
                return self.inner(**kwargs).last_hidden_state

        return cls(torch, TokenStates(model).eval(), names, tokenizer)

    @property
    def transformer(self) -> Any:
        """The Hugging Face model inside :attr:`module` (what hooks and rewrites act on)."""
        return self.module.inner

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask of *texts*, padded to the longest."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def inputs(self, ids: np.ndarray, mask: np.ndarray) -> list[Any]:
        """The tensors :attr:`module` takes for *ids* and *mask*."""
        torch = self.torch
        tensors = [
            torch.from_numpy(ids),
            torch.from_numpy(mask),
            torch.zeros_like(torch.from_numpy(ids)),
        ]
        return tensors[: len(self.input_names)]

    def forward(self, texts: Sequence[str]) -> tuple[Any, np.ndarray]:
        """Run on *texts* as one padded batch: (token states tensor, attention mask)."""
        ids, mask = self.encode(texts)
        return self.module(*self.inputs(ids, mask)), mask

    def vectors(
        self, texts: Sequence[str], pooling_modes: Sequence[str], batch_size: int = 16
    ) -> np.ndarray:
        """Pooled (not normalized) float32 vectors of *texts*, in batches sorted by length."""
        lengths = [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out: np.ndarray | None = None
        with self.torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                states, mask = self.forward([texts[i] for i in rows])
                vectors = pool(states.float().numpy(), mask, pooling_modes)
                if out is None:
                    out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
                out[rows] = vectors
        assert out is not None, "no texts"
        return out
