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

__all__ = ["EmbeddingRequest", "Job", "check_output", "progress_bar", "validate_texts"]

TRUNCATION_MODES = ("truncate", "error")


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


@dataclass(frozen=True)
class EmbeddingRequest:
    """One independent request for :meth:`EmbeddingManager.embed_many`.

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
    """

    texts: Sequence[str]
    normalize: bool | None = None
    prompt_name: str | None = None
    truncation: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
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
    items: list[str] = field(default_factory=list)
    normalize: bool = True
    truncation: str = "truncate"
    out: np.ndarray | None = None
    tokens: list[int | None] = field(default_factory=list)
    pending: dict[str, list[int]] = field(default_factory=dict)
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
