"""Token states to vectors, as sentence-transformers' ``Pooling`` and ``Normalize`` do."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import ConfigValueError

__all__ = ["POOLING_MODES", "normalize_rows", "pool"]

#: Pooling modes, in the order sentence-transformers concatenates them.
POOLING_MODES: tuple[str, ...] = (
    "cls",
    "max",
    "mean",
    "mean_sqrt_len_tokens",
    "weightedmean",
    "lasttoken",
)
#: Other spellings of the modes, as older configs and callers write them.
POOLING_ALIASES = {"last_token": "lasttoken", "last-token": "lasttoken", "cls_token": "cls"}


def pool(
    token_embeddings: np.ndarray,
    attention_mask: np.ndarray,
    mode: str | Iterable[str] = "mean",
) -> np.ndarray:
    """Pool ``(batch, seq, dim)`` token states into ``(batch, dim * modes)`` vectors.

    Matches sentence-transformers' ``Pooling`` (padded path), with left or right padding.

    Parameters
    ----------
    token_embeddings:
        ``(batch, seq, dim)`` token states.
    attention_mask:
        ``(batch, seq)``, 1 for real tokens, 0 for padding.
    mode:
        One of :data:`POOLING_MODES` (``mean``, ``cls``, ``max``, ``mean_sqrt_len_tokens``,
        ``weightedmean``, ``lasttoken``), or several, concatenated in the order given.

    Returns
    -------
    numpy.ndarray
        C-contiguous float32 of shape ``(batch, dim * number of modes)``.

    Raises
    ------
    ConfigValueError
        An unknown mode.
    """
    modes = [mode] if isinstance(mode, str) else list(mode)
    emb = np.asarray(token_embeddings)
    if emb.dtype != np.float32:
        emb = emb.astype(np.float32)
    mask = np.asarray(attention_mask)
    batch, seq, _ = emb.shape
    maskf = mask.astype(np.float32)
    out: list[np.ndarray] = []
    for raw in modes:
        m = POOLING_ALIASES.get(raw, raw)
        if m in ("mean", "mean_sqrt_len_tokens"):
            # (b,1,s) @ (b,s,d): one batched GEMM instead of a masked (b,s,d) temporary.
            summed = np.matmul(maskf[:, None, :], emb)[:, 0, :]
            count = np.maximum(maskf.sum(axis=1, keepdims=True), 1e-9)
            out.append(summed / (count if m == "mean" else np.sqrt(count)))
        elif m == "cls":
            first = mask.argmax(axis=1)
            out.append(emb[np.arange(batch), first])
        elif m == "max":
            masked = np.where(mask[:, :, None] > 0, emb, np.float32(-np.inf))
            out.append(masked.max(axis=1))
        elif m == "weightedmean":
            start = mask.argmax(axis=1)
            weights = np.arange(1, seq + 1, dtype=np.float32)[None, :] - start[:, None]
            w = maskf * weights
            summed = np.matmul(w[:, None, :], emb)[:, 0, :]
            out.append(summed / np.maximum(w.sum(axis=1, keepdims=True), 1e-9))
        elif m == "lasttoken":
            flipped = mask[:, ::-1]
            values = flipped.max(axis=1)
            idx = np.where(values == 0, seq - 1, flipped.argmax(axis=1))
            last = seq - idx - 1
            out.append(emb[np.arange(batch), last] * maskf[np.arange(batch), last][:, None])
        else:
            raise ConfigValueError(
                "pooling_mode",
                f"unknown pooling mode {raw!r}; known: {', '.join(POOLING_MODES)}",
                "pool()",
            )
    result = out[0] if len(out) == 1 else np.concatenate(out, axis=1)
    return np.ascontiguousarray(result, dtype=np.float32)


def normalize_rows(array: np.ndarray) -> np.ndarray:
    """Scale each row of the float array *array* to unit L2 norm, in place.

    A row of zeros stays zeros (never NaN), as sentence-transformers' ``Normalize`` leaves
    it (up to its epsilon).

    Parameters
    ----------
    array:
        ``(rows, dim)`` float array, changed in place.

    Returns
    -------
    numpy.ndarray
        *array* itself, for chaining.
    """
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    np.divide(array, norms, out=array, where=norms > 0)
    return array
