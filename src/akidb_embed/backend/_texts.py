"""Texts to token id rows for an encoder: the tokenizer, the truncation policy, counting.

``tokenizers`` is imported only when a :class:`TextEncoder` is built.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._checks import check_token_ids
from ._tokenizer import TokenCounter, check_truncation, load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

__all__ = ["TextEncoder"]

# Encodings count_tokens keeps for the embed call that follows it (each at most
# max_length ids: uncut texts only).
_HANDOFF_LIMIT = 4096


class TextEncoder:
    """Turns texts into unpadded token id rows the way every local encoder backend does.

    Loads ``tokenizer.json`` with :func:`load_tokenizer` (truncation at *max_length*),
    remembers the model's pad id and side, then switches padding off: backends pad each
    run themselves (:func:`pad_rows`). A shipped ``tokenizer.json`` with fixed-length
    padding would otherwise feed pad tokens as real ones.

    Parameters
    ----------
    folder:
        The folder holding ``tokenizer.json``.
    max_length:
        Token limit (texts are cut there; token ids longer than it are refused).
    do_lower_case:
        Lower-case first (``sentence_bert_config.json``).
    truncation:
        ``"truncate"`` (cut texts are counted) or ``"error"`` (``EmbeddingConfig.truncation``).

    Attributes
    ----------
    tokenizer:
        The configured ``tokenizers.Tokenizer`` (truncating, not padding).
    pad_id, left_pad:
        The model's pad token id, and whether it pads on the left.
    vocab_size:
        Size of the vocabulary, added tokens included.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        max_length: int,
        *,
        do_lower_case: bool = False,
        truncation: str = "truncate",
    ) -> None:
        tokenizer = load_tokenizer(folder, max_length, do_lower_case=do_lower_case)
        padding = tokenizer.padding or {}
        self.pad_id = int(padding.get("pad_id", 0))
        self.left_pad = str(padding.get("direction", "right")).lower() == "left"
        tokenizer.no_padding()
        self.tokenizer: Tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = truncation
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._counter = TokenCounter(tokenizer)
        self._handoff: dict[str, Encoding] = {}
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        """Encodings of *texts*, truncated at the limit, unpadded."""
        if len(texts) == 1:
            # encode() skips the thread pool hand-off that encode_batch() pays.
            return [self.tokenizer.encode(texts[0])]
        return self.tokenizer.encode_batch(list(texts))

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation (what the model will process)."""
        return [len(e.ids) for e in self.encode(texts)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text before truncation, special tokens included.

        The manager counts right before it embeds the same texts, so the encodings are
        kept for :meth:`rows` (bounded; cut texts are left out, they carry the overflow).
        """
        encodings = self.encode(texts)
        kept = [(t, e) for t, e in zip(texts, encodings, strict=True) if not e.overflowing]
        if len(kept) <= _HANDOFF_LIMIT:
            with self._lock:
                if len(self._handoff) + len(kept) > _HANDOFF_LIMIT:
                    self._handoff.clear()
                self._handoff.update(kept)
        cut = [i for i, e in enumerate(encodings) if e.overflowing]
        counts = [len(e.ids) for e in encodings]
        for i, n in zip(cut, self._counter.count([texts[i] for i in cut]), strict=True):
            counts[i] = n
        return counts

    def rows(self, texts: Sequence[str]) -> tuple[list[list[int]], int, int]:
        """Token id rows of *texts*, the tokens in them, and how many texts were cut.

        Raises
        ------
        TruncationError
            A text is longer than the limit and ``truncation = "error"``.
        """
        if not texts:
            return [], 0, 0
        encodings = self._handed_over(texts)
        truncated = check_truncation(
            encodings,
            texts,
            truncation=self.truncation,
            max_tokens=self.max_length,
            counter=self._counter,
        )
        rows = [e.ids for e in encodings]
        return rows, sum(len(r) for r in rows), truncated

    def check_ids(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """*ids* checked against the vocabulary and the limit (:func:`check_token_ids`)."""
        return check_token_ids(ids, vocab_size=self.vocab_size, max_tokens=self.max_length)

    def clear(self) -> None:
        """Drop the encodings kept by :meth:`count_tokens`."""
        with self._lock:
            self._handoff.clear()

    def _handed_over(self, texts: Sequence[str]) -> list[Encoding]:
        if not self._handoff:
            return self.encode(texts)
        with self._lock:
            found = [self._handoff.pop(t, None) for t in texts]
        missing = [i for i, e in enumerate(found) if e is None]
        if missing:
            for i, encoding in zip(missing, self.encode([texts[i] for i in missing]), strict=True):
                found[i] = encoding
        return found  # type: ignore[return-value]
