"""pyarrow, imported once, with the install command when it is missing."""

from __future__ import annotations

from ..errors import MissingDependencyError

INSTALL = "pip install 'akidb-embed[corpus]'"

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as exc:  # the corpus extra is optional: say how to get it
    raise MissingDependencyError(
        f"embedding corpora to Parquet needs pyarrow, which is not installed. "
        f"Install it with: {INSTALL}"
    ) from exc

__all__ = ["INSTALL", "pa", "pc", "pq"]
