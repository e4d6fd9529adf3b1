"""The tokenizer: loading it with explicit limits, and counting tokens before truncation.

``tokenizers`` is imported only inside the functions and methods that need it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigValueError, ModelNotFoundError, TruncationError
from ._st_config import read_json

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

__all__ = ["TokenCounter", "check_truncation", "load_tokenizer"]


def _pad_token(folder: Path, shipped: Mapping[str, Any] | None) -> tuple[int, str]:
    if shipped:
        return int(shipped["pad_id"]), str(shipped["pad_token"])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = read_json(folder / name) or {}
        token = cfg.get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            return -1, token
    return 0, ""


def load_tokenizer(
    path: str | os.PathLike[str],
    max_length: int,
    *,
    do_lower_case: bool = False,
    padding: bool = True,
    padding_side: str | None = None,
) -> Tokenizer:
    """Load ``tokenizer.json`` from the folder *path*, configured explicitly.

    Whatever truncation and padding the file ships with is replaced: texts are cut at
    *max_length* tokens (special tokens included), and padded to the longest text of
    each ``encode_batch`` call when *padding* (never to a fixed length), with the
    model's pad token. ``tokenizer.padding`` then holds ``pad_id`` and ``direction``
    (a caller that pads by itself reads them, then calls ``no_padding()``);
    ``tokenizer.truncation`` shows the limit.

    Parameters
    ----------
    max_length:
        Token limit, at least 2 (room for the special tokens).
    do_lower_case:
        Lower-case before the model's own normalizer (``sentence_bert_config.json``).
    padding:
        Pad each batch to its longest text; ``False`` leaves encodings unpadded.
    padding_side:
        ``"right"`` or ``"left"``; defaults to ``tokenizer_config.json``'s, else right.
    """
    from tokenizers import Tokenizer, normalizers

    folder = Path(path)
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise ModelNotFoundError(str(folder), [f"{file} (no such file)"], "No tokenizer.json.")
    if max_length < 2:
        raise ConfigValueError("max_length", f"must be >= 2, got {max_length}", str(folder))
    tokenizer = Tokenizer.from_file(str(file))
    shipped = tokenizer.padding
    pad_id, pad_token = _pad_token(folder, shipped)
    if pad_id < 0:
        found = tokenizer.token_to_id(pad_token)
        pad_id = 0 if found is None else found
    if padding_side is None:
        cfg = read_json(folder / "tokenizer_config.json") or {}
        padding_side = str(cfg.get("padding_side", "right"))
    side = padding_side.lower()
    if side not in ("left", "right"):
        raise ConfigValueError("padding_side", f"must be 'left' or 'right', got {side!r}", "")

    if do_lower_case:
        current = tokenizer.normalizer
        parts = [normalizers.Lowercase()] + ([current] if current is not None else [])
        tokenizer.normalizer = normalizers.Sequence(parts)
    tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
    # Pad to the longest text of each batch (length=None), never to a fixed length.
    tokenizer.enable_padding(direction=side, pad_id=pad_id, pad_token=pad_token or "[PAD]")
    if not padding:
        tokenizer.no_padding()
    return tokenizer


class TokenCounter:
    """Counts the tokens of texts *before* truncation, special tokens included.

    A provider's tokenizer truncates (and may pad), so its encodings cannot say how long a
    text really was. This keeps a second, untruncated and unpadded copy of it, made on
    the first count (configure *tokenizer* fully before then), and safe to use from
    several threads at once.

    Parameters
    ----------
    tokenizer:
        The provider's ``tokenizers.Tokenizer``; it is copied, never changed.

    Examples
    --------
    >>> counter = TokenCounter(tokenizer)  # doctest: +SKIP
    >>> counter.count(["hello world", "word " * 300])  # doctest: +SKIP
    [4, 302]
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._source = tokenizer
        self._copy: Tokenizer | None = None
        self._lock = threading.Lock()

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each of *texts*, untruncated, special tokens included.

        Parameters
        ----------
        texts:
            The texts, as the provider would tokenize them (prompts already prepended).

        Returns
        -------
        list of int
            One count per text, in order.
        """
        counter = self._tokenizer()
        if len(texts) == 1:
            # encode() skips the thread pool hand-off that encode_batch() pays.
            return [len(counter.encode(texts[0]).ids)]
        return [len(e.ids) for e in counter.encode_batch(list(texts))]

    def _tokenizer(self) -> Tokenizer:
        with self._lock:
            if self._copy is None:
                from tokenizers import Tokenizer

                copy = Tokenizer.from_str(self._source.to_str())
                copy.no_truncation()
                copy.no_padding()
                self._copy = copy
            return self._copy


def check_truncation(
    encodings: Sequence[Encoding],
    texts: Sequence[str],
    *,
    truncation: str,
    max_tokens: int,
    counter: TokenCounter,
) -> int:
    """Apply the truncation policy to *encodings* of *texts* from a truncating tokenizer.

    Parameters
    ----------
    encodings:
        ``tokenizers.Encoding`` of each text, from a tokenizer that truncates at
        *max_tokens* (a cut text has ``overflowing`` tokens).
    texts:
        The texts encoded, in the same order.
    truncation:
        ``"truncate"`` (cut texts are only counted) or ``"error"``
        (``EmbeddingConfig.truncation``).
    max_tokens:
        The token limit the tokenizer cuts at.
    counter:
        Counts the full length of the first cut text, for the error.

    Returns
    -------
    int
        How many texts were cut.

    Raises
    ------
    TruncationError
        A text was cut and *truncation* is ``"error"``; it names the first such text's
        index and full token count.
    """
    cut = [i for i, encoding in enumerate(encodings) if encoding.overflowing]
    if cut and truncation == "error":
        first = cut[0]
        raise TruncationError(first, counter.count([texts[first]])[0], max_tokens)
    return len(cut)
