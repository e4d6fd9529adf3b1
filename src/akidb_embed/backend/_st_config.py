"""Reading a model folder the way sentence-transformers does.

``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json`` and
``config_sentence_transformers.json``; a folder without ``modules.json`` reads as a plain
Hugging Face model (Transformer + mean pooling).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigValueError
from ._pooling import POOLING_ALIASES, POOLING_MODES

__all__ = ["SentenceTransformerSpec", "read_sentence_transformers_config"]

_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class SentenceTransformerSpec:
    """How sentence-transformers would run the model in a folder.

    Attributes
    ----------
    pooling_modes:
        Pooling modes, concatenated in this order (usually one).
    max_seq_length:
        Token limit (``sentence_bert_config.json``, else the tokenizer's limit capped at
        ``max_position_embeddings``); ``None`` when nothing says.
    max_positions:
        The most tokens the model itself takes (the tokenizer's ``model_max_length``
        capped at ``max_position_embeddings``): the ceiling for a ``max_length`` setting,
        as sentence-transformers allows ``max_seq_length`` up to it. ``None`` when
        nothing says.
    do_lower_case:
        Lower-case texts before tokenizing.
    normalize:
        The pipeline ends with a ``Normalize`` module.
    prompts, default_prompt_name:
        From ``config_sentence_transformers.json``.
    dimension:
        Length of the pooled vector, ``None`` when unknown.
    include_prompt:
        Whether prompt tokens take part in pooling.
    padding_side:
        ``"right"`` or ``"left"`` (``tokenizer_config.json``).
    transformer_dir:
        Sub-folder of the Transformer module (``""`` for the model root).
    modules:
        Module types of ``modules.json`` (short names: ``Transformer``, ``Pooling``...).
    unsupported_modules:
        Modules other than Transformer, Pooling and Normalize (``Dense``...), which a
        backend must refuse rather than silently skip.
    """

    pooling_modes: tuple[str, ...] = ("mean",)
    max_seq_length: int | None = None
    max_positions: int | None = None
    do_lower_case: bool = False
    normalize: bool = False
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dimension: int | None = None
    include_prompt: bool = True
    padding_side: str = "right"
    transformer_dir: str = ""
    similarity_fn_name: str | None = None
    modules: tuple[str, ...] = ()
    unsupported_modules: tuple[str, ...] = ()

    @property
    def pooling(self) -> str:
        """The pooling modes as one string (``"mean"``, ``"cls+mean"``)."""
        return "+".join(self.pooling_modes)


def read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigValueError("model", f"cannot read {path}: {exc}", str(path)) from exc


def _pooling_modes(cfg: Mapping[str, Any], source: str) -> tuple[str, ...]:
    raw = cfg.get("pooling_mode")
    if raw is None:
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if cfg.get(key))
        return modes or ("mean",)
    items = [raw] if isinstance(raw, str) else list(raw)
    modes = tuple(POOLING_ALIASES.get(str(m), str(m)) for m in items)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ConfigValueError(
                "pooling_mode",
                f"unknown pooling mode {mode!r}; known: {', '.join(POOLING_MODES)}",
                source,
            )
    return modes


def read_sentence_transformers_config(path: str | os.PathLike[str]) -> SentenceTransformerSpec:
    """Read the sentence-transformers configuration of the model folder *path*.

    A folder without ``modules.json`` is read as sentence-transformers reads a plain
    Hugging Face model: a Transformer followed by mean pooling, not normalized.
    """
    root = Path(path)
    modules_cfg = read_json(root / "modules.json")
    modules: list[tuple[str, str]] = []  # (short type, folder)
    if isinstance(modules_cfg, list):
        for entry in modules_cfg:
            full = str(entry.get("type", ""))
            modules.append((full.rsplit(".", 1)[-1], str(entry.get("path", ""))))
    else:
        modules = [("Transformer", ""), ("Pooling", "")]

    transformer_dir = next((p for t, p in modules if t == "Transformer"), "")
    pooling_dir = next((p for t, p in modules if t == "Pooling"), None)
    tdir = root / transformer_dir

    sbert = read_json(tdir / "sentence_bert_config.json") or {}
    hf_config = read_json(tdir / "config.json") or {}
    tok_config = read_json(tdir / "tokenizer_config.json") or {}
    st_config = read_json(root / "config_sentence_transformers.json") or {}

    candidates = [
        int(v)
        for v in (tok_config.get("model_max_length"), hf_config.get("max_position_embeddings"))
        if isinstance(v, (int, float)) and 0 < v < 1_000_000
    ]
    max_positions = min(candidates) if candidates else None
    max_len = sbert.get("max_seq_length")
    if max_len is None:
        max_len = max_positions

    pool_cfg: Mapping[str, Any] = {}
    if pooling_dir is not None:
        pool_cfg = read_json(root / pooling_dir / "config.json") or {}
    modes = _pooling_modes(pool_cfg, str(root / (pooling_dir or "") / "config.json"))
    width = pool_cfg.get("embedding_dimension", pool_cfg.get("word_embedding_dimension"))
    if width is None:
        width = hf_config.get("hidden_size", hf_config.get("d_model"))
    dimension = int(width) * len(modes) if width else None

    prompts = st_config.get("prompts") or {}
    return SentenceTransformerSpec(
        pooling_modes=modes,
        max_seq_length=int(max_len) if max_len is not None else None,
        max_positions=max_positions,
        do_lower_case=bool(sbert.get("do_lower_case", False)),
        normalize=any(t == "Normalize" for t, _ in modules),
        prompts={str(k): str(v) for k, v in prompts.items() if v is not None},
        default_prompt_name=st_config.get("default_prompt_name") or None,
        dimension=dimension,
        include_prompt=bool(pool_cfg.get("include_prompt", True)),
        padding_side=str(tok_config.get("padding_side", "right")).lower(),
        transformer_dir=transformer_dir,
        similarity_fn_name=st_config.get("similarity_fn_name"),
        modules=tuple(t for t, _ in modules),
        unsupported_modules=tuple(t for t, _ in modules if t not in _SUPPORTED_MODULES),
    )
