"""``EncoderProvider``: the provider contract of a local encoder on a :class:`TextEncoder`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._types import ModelInfo
from ._resolve import ResolvedModel
from ._st_config import SentenceTransformerSpec
from ._texts import TextEncoder

__all__ = ["EncoderProvider"]


class EncoderProvider:
    """Base class for providers that run an exported sentence-transformers encoder on token
    id rows (the ``onnx`` and ``openvino`` providers).

    It implements the text side of the provider contract once: :meth:`embed_batch`,
    :meth:`embed_batch_with_usage`, :meth:`embed_token_ids`, :meth:`count_tokens`,
    :meth:`text_lengths`, :meth:`info` and the model paths. A subclass sets ``_info``,
    ``_resolved``, ``_spec``, ``_onnx_path`` and ``_texts`` while it loads, and implements
    :meth:`_live` (raise :class:`~akidb_embed.errors.ProviderClosedError` once closed) and
    :meth:`_run_ids` (vectors for unpadded token id rows, in their order, normalised where
    the model says so).
    """

    _info: ModelInfo
    _resolved: ResolvedModel
    _spec: SentenceTransformerSpec
    _onnx_path: Path
    _texts: TextEncoder

    def info(self) -> ModelInfo:
        """Model id, dimension, token limit, pooling, dtype, prompts."""
        return self._info

    @property
    def model_path(self) -> Path:
        """Folder the model was loaded from (local folder or cache snapshot)."""
        return self._resolved.path

    @property
    def onnx_path(self) -> Path:
        """The ONNX file the model was loaded from."""
        return self._onnx_path

    @property
    def spec(self) -> SentenceTransformerSpec:
        """The sentence-transformers configuration read from the model folder."""
        return self._spec

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed *texts*; float32 of shape ``(len(texts), dimension)``, in their order.

        Texts are sorted by token count and run in padded sub-batches.
        """
        return self.embed_batch_with_usage(texts)[0]

    def embed_batch_with_usage(self, texts: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        """Like :meth:`embed_batch`, plus ``{"prompt_tokens": n, "truncated": n}``.

        Raises
        ------
        TruncationError
            A text is longer than the limit and ``truncation = "error"``.
        """
        self._live()
        rows, tokens, truncated = self._texts.rows(texts)
        return self._run_ids(rows), {"prompt_tokens": tokens, "truncated": truncated}

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation (what the model will process)."""
        return self._texts.text_lengths(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text before truncation, special tokens included."""
        # The encodings are kept for the embed call that follows (tokenized once).
        return self._texts.count_tokens(texts)

    def embed_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed texts given as token ids (``tokenizer.encode(text).ids``, special tokens
        included); the same vectors as the texts themselves.

        Raises
        ------
        EmbeddingInputError
            Not lists of ints, an empty list, or an id outside the vocabulary.
        TruncationError
            A list is longer than the token limit (token ids are never cut).
        """
        self._live()
        return self._run_ids(self._texts.check_ids(ids))

    def _live(self) -> Any:
        """The loaded model; raises ``ProviderClosedError`` once the provider is closed."""
        raise NotImplementedError

    def _run_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Vectors for unpadded token id rows, in their order."""
        raise NotImplementedError
