"""BERT-family encoders (BERT, MiniLM, BGE/E5/GTE-style BERTs, RoBERTa, XLM-RoBERTa) in MLX.

Module and parameter names follow Hugging Face's ``BertModel`` so that a checkpoint's
tensor names load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from akidb_embed.errors import ProviderError

__all__ = ["MODEL_TYPES", "BertEncoder", "sanitize"]

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
# Checkpoint heads and buffers an encoder never uses.
_DROP_PREFIXES = ("pooler.", "cls.", "lm_head.", "classifier.")
_DROP_SUFFIXES = ("position_ids", "token_type_ids")


def _activation(name: str) -> Callable[[mx.array], mx.array]:
    table: dict[str, Callable[[mx.array], mx.array]] = {
        "gelu": nn.gelu,
        "gelu_new": nn.gelu_approx,
        "gelu_pytorch_tanh": nn.gelu_approx,
        "relu": nn.relu,
        "silu": nn.silu,
        "swish": nn.silu,
    }
    if name not in table:
        raise ProviderError("mlx", f"unsupported hidden_act {name!r} for a BERT encoder")
    return table[name]


class _Embeddings(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=cfg.get("layer_norm_eps", 1e-12))

    def __call__(self, ids: mx.array, positions: mx.array) -> mx.array:
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        # Single-segment input: token type 0 everywhere.
        # (Called, not indexed: the table may be a QuantizedEmbedding.)
        x = x + self.token_type_embeddings(mx.zeros((1,), dtype=mx.int32))
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _DenseNorm(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        if hidden % self.heads:
            raise ProviderError("mlx", "hidden_size is not a multiple of num_attention_heads")
        self.self = _SelfAttention(hidden)
        self.output = _DenseNorm(hidden, hidden, cfg.get("layer_norm_eps", 1e-12))

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, n, d = x.shape
        h = self.heads

        def split(t: mx.array) -> mx.array:
            return t.reshape(b, n, h, d // h).transpose(0, 2, 1, 3)

        q = split(self.self.query(x))
        k = split(self.self.key(x))
        v = split(self.self.value(x))
        out = mx.fast.scaled_dot_product_attention(
            q, k, v, scale=1.0 / math.sqrt(d // h), mask=mask
        )
        out = out.transpose(0, 2, 1, 3).reshape(b, n, d)
        return self.output(out, x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.act = _activation(cfg.get("hidden_act", "gelu"))

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(
            cfg["intermediate_size"], cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        )

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.layer = [_Layer(cfg) for _ in range(cfg["num_hidden_layers"])]


class BertEncoder(nn.Module):
    """A BERT-style bidirectional encoder returning the last hidden states.

    Parameters
    ----------
    cfg:
        The model's ``config.json`` (``model_type`` ``bert``, ``roberta`` or ``xlm-roberta``
        with absolute position embeddings).
    """

    causal = False

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        kind = cfg.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ProviderError("mlx", f"unsupported position_embedding_type {kind!r}")
        self.model_type = cfg.get("model_type", "bert")
        # RoBERTa numbers positions from padding_idx + 1 and gives padding padding_idx.
        self._position_offset = (
            int(cfg.get("pad_token_id", 1)) if self.model_type != "bert" else None
        )
        reserved = 0 if self._position_offset is None else self._position_offset + 1
        self.max_positions = int(cfg["max_position_embeddings"]) - reserved
        self.hidden_size = int(cfg["hidden_size"])
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        """Hidden states ``(batch, tokens, hidden)`` for token *ids* and 0/1 *mask*."""
        n = ids.shape[1]
        if self._position_offset is None:
            positions = mx.broadcast_to(mx.arange(n)[None, :], ids.shape)
        else:
            m = mask.astype(mx.int32)
            positions = mx.cumsum(m, axis=1) * m + self._position_offset
        x = self.embeddings(ids, positions)
        # Padding is hidden from every query as a key; padded queries are ignored by pooling.
        keep = (mask > 0)[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x


def sanitize(weights: Mapping[str, mx.array], model_type: str) -> dict[str, mx.array]:
    """Checkpoint tensor names -> :class:`BertEncoder` parameter names."""
    prefixes = ("bert.", "roberta.", "model.", "0.auto_model.")
    out: dict[str, mx.array] = {}
    for name, w in weights.items():
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if name.startswith(_DROP_PREFIXES) or name.endswith(_DROP_SUFFIXES):
            continue
        # Checkpoints from TF-era conversions call LayerNorm parameters gamma/beta.
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        out[name] = w
    return out
