"""Qwen3 decoder (as used by Qwen3-Embedding) in MLX, returning the last hidden states.

Parameter names follow Hugging Face's ``Qwen3Model``; a ``model.`` prefix (``Qwen3ForCausalLM``
and mlx-lm checkpoints) is stripped when loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from akidb_embed.errors import ProviderError

__all__ = ["MODEL_TYPES", "QWEN3_QUERY_INSTRUCTION", "Qwen3Decoder", "rename", "sanitize"]

MODEL_TYPES = ("qwen3",)
# The task Qwen3-Embedding's own sentence-transformers config uses for queries.
QWEN3_QUERY_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)


def _rope_theta(cfg: Mapping[str, Any]) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ProviderError("mlx", f"unsupported rope scaling {kind!r} for Qwen3")
    return float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)


class _Attention(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads") or self.heads
        self.head_dim = cfg.get("head_dim") or hidden // self.heads
        bias = bool(cfg.get("attention_bias", False))
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=eps)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array) -> mx.array:
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, n, self.heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).reshape(b, n, self.kv_heads, self.head_dim))
        v = self.v_proj(x).reshape(b, n, self.kv_heads, self.head_dim)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


def _rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotary embedding in the "rotate half" layout Hugging Face's Qwen3 uses."""
    half = x.shape[-1] // 2
    rotated = mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


class _MLP(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        hidden, inner = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.self_attn = _Attention(cfg)
        self.mlp = _MLP(cfg)
        self.input_layernorm = nn.RMSNorm(cfg["hidden_size"], eps=eps)
        self.post_attention_layernorm = nn.RMSNorm(cfg["hidden_size"], eps=eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Decoder(nn.Module):
    """Qwen3 transformer (no LM head): token ids -> final-norm hidden states.

    Position ids count the real tokens of each row, so left and right padding give the
    same states for the real tokens.
    """

    causal = True

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        if cfg.get("use_sliding_window"):
            raise ProviderError("mlx", "Qwen3 with use_sliding_window=true is not supported")
        self.hidden_size = int(cfg["hidden_size"])
        self.max_positions = int(cfg.get("max_position_embeddings", 32768))
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = [_Layer(cfg) for _ in range(cfg["num_hidden_layers"])]
        self.norm = nn.RMSNorm(cfg["hidden_size"], eps=cfg.get("rms_norm_eps", 1e-6))
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        theta = _rope_theta(cfg)
        self._inv_freq = theta ** (-mx.arange(0, head_dim, 2, dtype=mx.float32) / head_dim)

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        """Hidden states ``(batch, tokens, hidden)`` for token *ids* and 0/1 *mask*."""
        m = mask.astype(mx.int32)
        positions = mx.maximum(mx.cumsum(m, axis=1) - 1, 0).astype(mx.float32)
        angles = positions[:, None, :, None] * self._inv_freq
        angles = mx.concatenate([angles, angles], axis=-1)
        cos, sin = mx.cos(angles), mx.sin(angles)

        n = ids.shape[1]
        idx = mx.arange(n)
        causal = idx[:, None] >= idx[None, :]
        # Each query sees earlier real tokens; a padding query also sees itself, so no row
        # of the softmax is empty (an all-masked row would be NaN).
        keep = (causal[None] & (m[:, None, :] > 0)) | (idx[:, None] == idx[None, :])[None]
        keep = keep[:, None, :, :]

        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, keep)
        return self.norm(x)


def rename(name: str) -> str:
    """Checkpoint tensor name (or mlx-lm layer path) -> :class:`Qwen3Decoder` name."""
    return name[len("model.") :] if name.startswith("model.") else name


def sanitize(weights: Mapping[str, mx.array], model_type: str) -> dict[str, mx.array]:
    """Checkpoint tensor names -> :class:`Qwen3Decoder` parameter names; the LM head and
    rotary buffers are dropped."""
    out: dict[str, mx.array] = {}
    for name, w in weights.items():
        if name.startswith("lm_head.") or "rotary_emb" in name:
            continue
        out[rename(name)] = w
    return out
