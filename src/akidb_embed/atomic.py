"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

Used by the vector index's saves, ``akidb-embed embed`` and ``embed-corpus``'s shards and
manifest; public so that other distributions (``akidb-embed-ray``) write the same way.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir", "fsync_file", "write_synced"]


def fsync_file(path: Path) -> None:
    """Flush *path*'s content to disk."""
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make the entries of folder *path* (renames, new files) durable."""
    # Directory entries are only durable once the directory is fsynced; Windows cannot
    # open a directory for that and orders metadata itself.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    """Write *data* to *path* and flush it to disk (not atomic by itself)."""
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write *path* through a temporary file in the same folder, then rename it over *path*.

    *write* gets the open binary file. The file is flushed to disk before the rename,
    and the folder after it, so a crash at any moment leaves either the previous
    content of *path* (or no file) or the complete new one. A failure removes the
    temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are private (0600); this one gets the umask's permissions.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with tmp.open("xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
