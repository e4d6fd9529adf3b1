"""The per-request pipeline the manager runs: prepare each request, embed the texts of
many requests in shared provider calls, finish each request on its own.

A request that fails (bad input, a text over the limit, a provider error on its texts)
fails alone: the others of the same call get exactly the vectors they would have got
on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import AkidbEmbedError, EmbeddingInputError, InvalidRequestError, ProviderOutputError

__all__ = [
    "EmbeddingRequest",
    "Job",
    "Key",
    "check_output",
    "progress_bar",
    "validate_texts",
    "validate_token_ids",
]

TRUNCATION_MODES = ("truncate", "error")

#: What the pipeline embeds and caches: a text, or one text's token ids.
Key = str | tuple[int, ...]


def validate_texts(texts: object) -> list[str]:
    """Return *texts* as a list, or raise :class:`EmbeddingInputError` saying what is wrong."""
    if texts is None:
        raise EmbeddingInputError("texts must be a sequence of str, got None")
    if isinstance(texts, (str, bytes)):
        raise EmbeddingInputError(
            f"texts must be a sequence of str, got a single {type(texts).__name__}; "
            "wrap it in a list, or use embed_query() for one text"
        )
    if not isinstance(texts, Sequence):
        raise EmbeddingInputError(
            f"texts must be a sequence of str (list or tuple), got {type(texts).__name__}"
        )
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise EmbeddingInputError(
                f"texts[{i}] must be str, got {type(text).__name__} ({text!r:.60})"
            )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                # Lone surrogates (from a bad decode upstream) have no UTF-8 form and no
                # tokens: refuse them here rather than as a tokenizer failure.
                raise EmbeddingInputError(
                    f"texts[{i}] is not valid Unicode: {exc.reason} at position {exc.start} "
                    f"({text[max(0, exc.start - 10) : exc.start + 10]!r})"
                ) from None
    return out


def _id_row(index: int, row: object) -> tuple[int, ...]:
    if isinstance(row, np.ndarray):
        if row.ndim != 1 or not np.issubdtype(row.dtype, np.integer):
            raise EmbeddingInputError(
                f"token_ids[{index}] must be a 1-d array of ints, got {row.ndim}-d {row.dtype}"
            )
        row = row.tolist()
    if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
        raise EmbeddingInputError(
            f"token_ids[{index}] must be a sequence of ints, got {type(row).__name__}"
        )
    if not row:
        raise EmbeddingInputError(f"token_ids[{index}] is empty: a text has at least one token")
    # JSON and tokenizers give plain ints: check those in one pass, others one by one.
    if not all(type(v) is int for v in row):
        for v in row:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise EmbeddingInputError(
                    f"token_ids[{index}] must hold ints, got {type(v).__name__} ({v!r:.40})"
                )
    out = tuple(int(v) for v in row)
    low = min(out)
    if low < 0:
        raise EmbeddingInputError(f"token_ids[{index}] holds a negative token id ({low})")
    return out


def validate_token_ids(ids: object) -> tuple[tuple[int, ...], ...]:
    """Return *ids* (one sequence of token ids per text) as tuples of ints, or raise
    :class:`EmbeddingInputError` naming the first bad row.

    A 2-d integer numpy array counts as one row per text. Whether an id is in the
    model's vocabulary only the provider knows; it checks that.
    """
    if isinstance(ids, np.ndarray):
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise EmbeddingInputError(
                f"token_ids must be a 2-d array of ints, got {ids.ndim}-d {ids.dtype}"
            )
        ids = ids.tolist()
    if ids is None or isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise EmbeddingInputError(
            "token_ids must be a sequence of sequences of ints (one per text), "
            f"got {type(ids).__name__}"
        )
    return tuple(_id_row(i, row) for i, row in enumerate(ids))


@dataclass(frozen=True)
class EmbeddingRequest:
    """One independent request for :meth:`EmbeddingManager.embed_many`.

    Give either *texts* or *token_ids*.

    Parameters
    ----------
    texts:
        The texts to embed.
    normalize:
        Unit-norm rows; ``None`` takes the manager config's ``normalize``.
    prompt_name:
        A model prompt to prepend (``"query"``, ``"document"``); ``None`` takes the
        model's ``default_prompt_name``; ``""`` prepends nothing.
    truncation:
        ``"truncate"`` or ``"error"`` for texts over the model's token limit; ``None``
        takes the config's. ``"error"`` needs a provider that counts tokens, or one
        configured with ``truncation = "error"`` itself.
    model:
        The model the caller expects; a mismatch fails the request with
        :class:`~akidb_embed.errors.ModelMismatchError`. ``None`` accepts any.
    token_ids:
        Instead of *texts*: one list of token ids per text, special tokens included (as
        the model's tokenizer gives them), embedded as given, with no prompt. Each
        counts ``len(ids)`` tokens; over the model's limit, ``"truncate"`` keeps the
        first ``max_tokens`` ids and ``"error"`` fails the request. Needs a provider with
        ``capabilities.token_input``; others fail the request with
        :class:`~akidb_embed.errors.InvalidRequestError`. Checked here (ints, none
        negative, no empty list; :class:`~akidb_embed.errors.EmbeddingInputError`
        otherwise) and stored as tuples; the provider checks the vocabulary.
    """

    texts: Sequence[str] = ()
    normalize: bool | None = None
    prompt_name: str | None = None
    truncation: str | None = None
    model: str | None = None
    token_ids: Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        if self.token_ids is not None:
            if self.texts is not None and (
                not isinstance(self.texts, Sequence) or len(self.texts) > 0
            ):
                raise InvalidRequestError("give texts or token_ids, not both")
            if self.prompt_name:
                raise InvalidRequestError(
                    "token ids are embedded as given: a prompt cannot be prepended to them "
                    f"(prompt_name={self.prompt_name!r}); tokenize the prompt with the text"
                )
            # Frozen: validated once, so the batcher and the manager can rely on len(ids).
            object.__setattr__(self, "token_ids", validate_token_ids(self.token_ids))
        if self.truncation is not None and self.truncation not in TRUNCATION_MODES:
            raise InvalidRequestError(
                f"truncation must be one of {', '.join(map(repr, TRUNCATION_MODES))} or None, "
                f"got {self.truncation!r}"
            )
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise InvalidRequestError(f"normalize must be a bool or None, got {self.normalize!r}")


@dataclass(eq=False)
class Job:
    """A request on its way through the pipeline (internal)."""

    index: int
    items: list[Key] = field(default_factory=list)
    normalize: bool = True
    truncation: str = "truncate"
    out: np.ndarray | None = None
    tokens: list[int | None] = field(default_factory=list)
    pending: dict[Key, list[int]] = field(default_factory=dict)
    # Token-id requests: items are id tuples (cut to the limit when truncating), and
    # lengths the ids each row came with, which are its token counts.
    token_input: bool = False
    lengths: list[int] = field(default_factory=list)
    cache_hits: int = 0
    prompt_tokens: int = 0
    truncated: int = 0
    error: AkidbEmbedError | None = None

    def fail(self, error: AkidbEmbedError) -> None:
        if self.error is None:
            self.error = error


def check_output(provider: str, result: object, n: int, dimension: int) -> np.ndarray:
    if not isinstance(result, np.ndarray):
        raise ProviderOutputError(
            provider, f"returned {type(result).__name__}, expected numpy.ndarray"
        )
    if result.shape != (n, dimension):
        raise ProviderOutputError(
            provider, f"returned shape {result.shape} for {n} texts, expected {(n, dimension)}"
        )
    if not np.issubdtype(result.dtype, np.floating):
        raise ProviderOutputError(provider, f"returned dtype {result.dtype}, expected float32")
    out = np.array(result, dtype=np.float32, copy=True)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ProviderOutputError(
            provider, f"returned a non-finite value (NaN or inf) for text {bad} of the batch"
        )
    return out


def progress_bar(
    total: int, progress: bool | Callable[[int], None]
) -> Callable[[int | None], None]:
    """A callable fed with the texts done per step, and ``None`` at the end."""
    if callable(progress):
        done = 0

        def report(step: int | None) -> None:
            nonlocal done
            if step is not None:
                done += step
                progress(done)

        return report
    if not progress or total == 0:
        return lambda step: None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: a plain counter on stderr instead
        import sys

        done = 0

        def plain(step: int | None) -> None:
            nonlocal done
            if step is None:
                sys.stderr.write("\n")
                return
            done += step
            sys.stderr.write(f"\rembedding: {done}/{total} texts")
            sys.stderr.flush()

        return plain
    bar = tqdm(total=total, unit="text", desc="embedding")

    def update(step: int | None) -> None:
        if step is None:
            bar.close()
        else:
            bar.update(step)

    return update
