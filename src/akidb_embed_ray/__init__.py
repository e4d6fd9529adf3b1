"""akidb-embed-ray: embed datasets and corpora with akidb-embed on Ray Data.

:func:`embed_dataset` adds a vector column to any ``ray.data.Dataset``, with one
:class:`~akidb_embed.EmbeddingManager` per actor (the model loaded once per actor);
:func:`run_corpus_job` is the ``ray`` engine of ``akidb-embed embed-corpus`` (entry
point group ``akidb_embed.corpus_engines``). The same code runs on a laptop
(``ray.init()``) and on a cluster (``ray job submit``). Ray is imported when they are
called, not with this package. Only the core's public API is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._dataset import embed_dataset
    from ._engine import run_corpus_job

__all__ = ["__version__", "embed_dataset", "run_corpus_job"]


def __getattr__(name: str) -> Any:
    # pyarrow (and ray, when called) load with the first use, not with the package.
    if name == "embed_dataset":
        from ._dataset import embed_dataset

        return embed_dataset
    if name == "run_corpus_job":
        from ._engine import run_corpus_job

        return run_corpus_job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
