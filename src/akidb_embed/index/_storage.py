"""Crash-safe folder format: immutable version folders behind an atomically replaced pointer.

Layout of a saved index folder ``DIR``::

    DIR/CURRENT              {"version": "v000003-1a2b3c4d", "manifest_sha256": "..."}
    DIR/v000003-1a2b3c4d/    manifest.json (format, sizes and sha256 of every data file)
                             vectors.npy, ids.json, metadata.json, [hnsw.bin]

A save writes a complete new version folder under a temporary name, fsyncs every file
and the folder, renames it into place, then replaces ``CURRENT`` with ``os.replace``
(atomic on POSIX and Windows) and only afterwards deletes older versions. Whenever a
process dies, ``CURRENT`` names a complete version: the old one or the new one.
``os.rename`` cannot replace a non-empty folder, which is why the swap happens on a
pointer file rather than on ``DIR`` itself.

Loading checks the chain ``CURRENT`` -> manifest -> data files by sha256 before parsing
anything, so a truncated or corrupted file is reported, never read as a wrong answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..atomic import fsync_dir, fsync_file, write_synced
from ..errors import IndexCorruptedError, IndexInputError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SavedVersion",
    "check_new_folder",
    "open_version",
    "save_version",
]

FORMAT = "akidb-embed.vector-index"
FORMAT_VERSION = 1
POINTER = "CURRENT"
MANIFEST = "manifest.json"
LOCK = ".lock"
_VERSION_RE = re.compile(r"^v(\d{6,})-[0-9a-f]{8}$")
_TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Serialise savers of one folder across processes (POSIX; elsewhere a no-op)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent savers must coordinate themselves
        yield
        return
    with (root / LOCK).open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_ours(name: str) -> bool:
    return (
        name in (POINTER, LOCK)
        or name.startswith(_TMP_PREFIX)
        or name.startswith(f".{POINTER}.")
        or bool(_VERSION_RE.match(name))
    )


def _read_pointer(root: Path) -> dict[str, str] | None:
    try:
        raw = (root / POINTER).read_bytes()
    except FileNotFoundError:
        return None
    try:
        pointer = json.loads(raw)
        if not isinstance(pointer, dict):
            raise TypeError("not an object")
        version, digest = pointer["version"], pointer["manifest_sha256"]
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise ValueError(f"bad version name {version!r}")
        if not isinstance(digest, str):
            raise TypeError("manifest_sha256 is not a string")
    except (ValueError, TypeError, KeyError) as exc:
        raise IndexCorruptedError(
            f"index at {root}: {POINTER} is corrupted ({type(exc).__name__}: {exc})"
        ) from exc
    return {"version": version, "manifest_sha256": digest}


def save_version(
    root: Path,
    files: Mapping[str, Callable[[Path], None]],
    manifest: Mapping[str, Any],
) -> Path:
    """Write a new version of the index at *root* and make it the current one.

    *files* maps file names to functions that write that file at the path they get.
    The manifest gets ``format``, ``format_version`` and the sha256 and size of every
    file added. Returns the new version folder.
    """
    if root.exists() and not root.is_dir():
        raise IndexInputError(f"cannot save an index to {root}: it exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root):
        current = _read_pointer(root)
        if current is None:
            check_new_folder(root, "save an index to")
            seq = 1
        else:
            match = _VERSION_RE.match(current["version"])
            seq = int(match.group(1)) + 1 if match else 1
        if current is not None:
            # Under the lock, a temporary folder can only be left by a saver that died.
            _remove_stale(root, keep=current["version"])
        name = f"v{seq:06d}-{secrets.token_hex(4)}"
        tmp = root / f"{_TMP_PREFIX}{name}"
        final = root / name
        tmp.mkdir()
        try:
            entries: dict[str, dict[str, Any]] = {}
            for filename, write in files.items():
                path = tmp / filename
                write(path)
                fsync_file(path)
                digest, size = _sha256_file(path)
                entries[filename] = {"sha256": digest, "size": size}
            body = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **manifest,
                "files": entries,
            }
            manifest_bytes = json.dumps(body, indent=2, sort_keys=True).encode("utf-8")
            write_synced(tmp / MANIFEST, manifest_bytes)
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(root)
            pointer = {
                "version": name,
                "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            }
            pointer_tmp = root / f".{POINTER}.{secrets.token_hex(4)}.tmp"
            write_synced(pointer_tmp, json.dumps(pointer).encode("utf-8"))
            try:
                os.replace(pointer_tmp, root / POINTER)
            except BaseException:
                pointer_tmp.unlink(missing_ok=True)
                raise
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if _read_pointer_quietly(root) != name:
                shutil.rmtree(final, ignore_errors=True)
            raise
        _remove_stale(root, keep=name)
    return final


def check_new_folder(root: Path, action: str) -> None:
    """Raise unless *root*, which has no ``CURRENT``, may receive a first version.

    Only a missing folder, an empty one, or one holding nothing but leftovers of a first
    save that never completed qualifies. Complete version folders without ``CURRENT``
    may be the only copy of someone's data: the next save would delete them as stale.

    Raises
    ------
    IndexCorruptedError
        The folder holds version folders but no ``CURRENT``.
    IndexInputError
        The folder is not a folder, or holds files of its own.
    """
    if not root.exists():
        return
    if not root.is_dir():
        raise IndexInputError(f"cannot {action} {root}: it exists and is not a folder")
    names = sorted(p.name for p in root.iterdir())
    versions = [n for n in names if _VERSION_RE.match(n)]
    if versions:
        raise IndexCorruptedError(
            f"index at {root} has no {POINTER} file but holds saved versions "
            f"({', '.join(versions[:3])}); refusing to {action} it, which would delete them. "
            f"Restore {POINTER} from a backup, or move the folder away to start over"
        )
    strangers = [n for n in names if not _is_ours(n)]
    if strangers:
        raise IndexInputError(
            f"cannot {action} {root}: the folder holds other files "
            f"({', '.join(strangers[:5])}); choose an empty or new folder"
        )


def _read_pointer_quietly(root: Path) -> str | None:
    try:
        pointer = _read_pointer(root)
    except IndexCorruptedError:
        return None
    return pointer["version"] if pointer else None


def _remove_stale(root: Path, keep: str) -> None:
    """Delete older versions and leftovers of interrupted saves (best effort)."""
    for entry in root.iterdir():
        name = entry.name
        if name == keep or name in (POINTER, LOCK) or not _is_ours(name):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


class SavedVersion:
    """One verified version of a saved index: its manifest and checked file access."""

    def __init__(self, root: Path, folder: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.folder = folder
        self.manifest = manifest

    def _entry(self, name: str) -> dict[str, Any]:
        entry = self.manifest["files"].get(name)
        if not isinstance(entry, dict) or not {"sha256", "size"} <= entry.keys():
            raise IndexCorruptedError(
                f"index at {self.root}: the manifest does not list file {name!r}"
            )
        return entry

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def read_bytes(self, name: str) -> bytes:
        """The file's content, after checking its size and sha256."""
        entry = self._entry(name)
        data = (self.folder / name).read_bytes()
        self._check(name, entry, hashlib.sha256(data).hexdigest(), len(data))
        return data

    def checked_path(self, name: str) -> Path:
        """The file's path, after checking its size and sha256 (for readers that need
        a path, like hnswlib)."""
        entry = self._entry(name)
        path = self.folder / name
        digest, size = _sha256_file(path)
        self._check(name, entry, digest, size)
        return path

    def _check(self, name: str, entry: Mapping[str, Any], digest: str, size: int) -> None:
        if size != entry["size"]:
            raise IndexCorruptedError(
                f"index at {self.root}: {self.folder.name}/{name} has {size} bytes, "
                f"the manifest says {entry['size']} (truncated or overwritten)"
            )
        if digest != entry["sha256"]:
            raise IndexCorruptedError(
                f"index at {self.root}: {self.folder.name}/{name} is corrupted "
                f"(sha256 {digest[:16]}..., the manifest says {entry['sha256'][:16]}...)"
            )


def open_version(root: Path) -> SavedVersion:
    """The current version of the index at *root*, with its manifest verified."""
    if not root.exists():
        raise IndexInputError(f"no index at {root}: the folder does not exist")
    if not root.is_dir():
        raise IndexInputError(f"no index at {root}: it is not a folder")
    pointer = _read_pointer(root)
    if pointer is None:
        if any(_VERSION_RE.match(p.name) or p.name.startswith(_TMP_PREFIX) for p in root.iterdir()):
            raise IndexCorruptedError(
                f"index at {root} has no {POINTER} file (its first save did not complete, "
                "or the file was removed)"
            )
        raise IndexInputError(f"no index at {root}: it holds no {POINTER} file")
    folder = root / pointer["version"]
    try:
        manifest_bytes = (folder / MANIFEST).read_bytes()
    except FileNotFoundError as exc:
        raise IndexCorruptedError(
            f"index at {root}: {POINTER} names version {pointer['version']}, "
            "whose manifest is missing"
        ) from exc
    if hashlib.sha256(manifest_bytes).hexdigest() != pointer["manifest_sha256"]:
        raise IndexCorruptedError(
            f"index at {root}: {pointer['version']}/{MANIFEST} does not match the checksum "
            f"recorded in {POINTER} (truncated or corrupted)"
        )
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexCorruptedError(f"index at {root}: the manifest is not valid JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptedError(f"index at {root}: the manifest is not an akidb-embed index")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexCorruptedError(
            f"index at {root} has format version {version!r}; this akidb-embed reads "
            f"version {FORMAT_VERSION} (upgrade akidb-embed, or rebuild the index)"
        )
    if not isinstance(manifest.get("files"), dict):
        raise IndexCorruptedError(f"index at {root}: the manifest lists no files")
    return SavedVersion(root, folder, manifest)


def current_version_name(root: Path) -> str | None:
    """Name of the version ``CURRENT`` points to, or ``None``."""
    return _read_pointer_quietly(root)
