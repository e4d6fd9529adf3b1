"""Running an encoder graph on token id rows: token-sorted runs, padding, inputs, outputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..errors import ProviderError

__all__ = [
    "ENCODER_INPUTS",
    "check_encoder_inputs",
    "encoder_feed",
    "pad_rows",
    "pick_output",
    "run_sorted",
    "sorted_runs",
]

#: Graph inputs :func:`encoder_feed` knows how to fill.
ENCODER_INPUTS: frozenset[str] = frozenset(
    {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
)
#: Output names of the token states, in order of preference.
_STATE_OUTPUTS = ("last_hidden_state", "token_embeddings")


def sorted_runs(
    rows: Sequence[Sequence[int]], size: int, tokens: int | None = None
) -> list[list[int]]:
    """Indices of *rows* sorted by length, cut into runs of at most *size* rows and, with
    *tokens*, at most *tokens* padded tokens (rows x the run's longest; a row longer
    than that runs alone).

    Texts of similar length share a run, so padding stays small.
    """
    n = len(rows)
    order = sorted(range(n), key=lambda i: len(rows[i])) if n > 1 else list(range(n))
    if tokens is None:
        return [order[start : start + size] for start in range(0, n, size)]
    runs: list[list[int]] = []
    run: list[int] = []
    for i in order:  # ascending: row i is the longest of its run so far
        if run and (len(run) == size or (len(run) + 1) * len(rows[i]) > tokens):
            runs.append(run)
            run = []
        run.append(i)
    if run:
        runs.append(run)
    return runs


def pad_rows(
    rows: Sequence[Sequence[int]],
    pad_id: int,
    *,
    left: bool = False,
    multiple: int = 1,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad token id rows to the longest: ``(input_ids, attention_mask)``, int64.

    *multiple* rounds the width up (at most to *limit*), so runs of similar length share
    one shape: backends that prepare each new input shape (OpenVINO) skip that work.
    """
    batch, width = len(rows), max(len(r) for r in rows)
    if multiple > 1:
        rounded = -(-width // multiple) * multiple
        width = max(width, min(rounded, limit)) if limit is not None else rounded
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for row, tokens in enumerate(rows):
        length = len(tokens)
        cols = slice(width - length, width) if left else slice(0, length)
        ids[row, cols] = tokens
        mask[row, cols] = 1
    return ids, mask


def encoder_feed(
    inputs: Iterable[tuple[str, type[np.integer]]], ids: np.ndarray, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """The arrays for a BERT-style graph's inputs, by name, in each input's dtype.

    ``token_type_ids`` are zeros; ``position_ids`` count real tokens only, so left
    padding works. Check the names with :data:`ENCODER_INPUTS` when the graph is loaded.
    """
    feed: dict[str, np.ndarray] = {}
    for name, dtype in inputs:
        if name == "input_ids":
            value = ids
        elif name == "attention_mask":
            value = mask
        elif name == "token_type_ids":
            value = np.zeros_like(ids)
        elif name == "position_ids":
            value = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        else:
            raise ValueError(f"no value for encoder input {name!r}")
        feed[name] = value if value.dtype == dtype else value.astype(dtype)
    return feed


def check_encoder_inputs(names: Iterable[str], provider: str, source: object) -> None:
    """Refuse a graph with inputs :func:`encoder_feed` cannot fill.

    Raises
    ------
    ProviderError
        It names the input and the file.
    """
    for name in names:
        if name not in ENCODER_INPUTS:
            raise ProviderError(
                provider,
                f"{source} has an input {name!r} this provider cannot feed "
                f"(it feeds {', '.join(sorted(ENCODER_INPUTS))})",
            )


def pick_output(outputs: Sequence[tuple[str, int]]) -> tuple[str, bool]:
    """Choose the output to pool from ``(name, rank)`` pairs: ``(name, already_pooled)``.

    Token states (``last_hidden_state``, ``token_embeddings``, else the first rank-3
    output) are preferred; a model that only gives ``sentence_embedding`` (rank 2) is
    used as it is.
    """
    ranks = dict(outputs)
    name = next((n for n in _STATE_OUTPUTS if n in ranks), None)
    if name is None:
        name = next((n for n, rank in outputs if rank == 3), None)
    if name is None:
        name = "sentence_embedding" if "sentence_embedding" in ranks else outputs[0][0]
    return name, ranks[name] == 2


def run_sorted(
    rows: Sequence[Sequence[int]],
    size: int,
    forward: Callable[[list[Sequence[int]]], np.ndarray],
    *,
    dimension: int,
    map_runs: Callable[..., Iterable[np.ndarray]] = map,
    tokens: int | None = None,
) -> np.ndarray:
    """Vectors of token id *rows*: sorted by length, run in runs of at most *size* rows
    (and *tokens* padded tokens, see :func:`sorted_runs`), restored.

    Parameters
    ----------
    forward:
        ``rows -> (len(rows), dimension)`` float vectors of one run.
    dimension:
        The width of the result when *rows* is empty.
    map_runs:
        How runs are executed (``map``, or an executor's ``map`` to run several at once).

    Returns
    -------
    numpy.ndarray
        float32 ``(len(rows), dimension)``, in the order of *rows* (not normalized).
    """
    if not rows:
        return np.zeros((0, dimension), dtype=np.float32)
    chunks = sorted_runs(rows, size, tokens)
    results = list(map_runs(lambda chunk: forward([rows[i] for i in chunk]), chunks))
    out = np.empty((len(rows), results[0].shape[1]), dtype=np.float32)
    for chunk, vectors in zip(chunks, results, strict=True):
        out[chunk] = vectors
    return out
