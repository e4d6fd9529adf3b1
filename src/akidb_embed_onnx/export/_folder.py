"""The output folder: built whole next to its destination, then renamed into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._errors import ExportError

__all__ = [
    "EXPORT_INFO_FILE",
    "check_destination",
    "copy_configs",
    "install",
    "read_export_info",
    "staging",
    "write_export_info",
]

EXPORT_INFO_FILE = "akidb_export.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ot", ".onnx")
_SKIP_DIRS = {"onnx", "openvino", ".git", ".cache"}


def read_export_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``akidb_export.json`` of an exported folder, ``None`` when absent."""
    file = Path(path) / EXPORT_INFO_FILE
    if not file.is_file():
        return None
    with file.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def write_export_info(folder: Path, info: dict[str, Any]) -> None:
    (folder / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def check_destination(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """*out* as an absolute path; an existing non-empty one needs *overwrite*."""
    dest = Path(out).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not overwrite:
        raise ExportError(f"{dest} exists and is not empty; pass overwrite=True (--force)")
    return dest


@contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A new folder next to *dest*, removed if the block fails; :func:`install` moves it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def install(work: Path, dest: Path) -> None:
    """Move the finished folder into place, replacing *dest* only once it is complete."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        work.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(dest)


def copy_configs(src: Path, dst: Path) -> None:
    """Everything but weights: tokenizer, configs, pooling folders, README."""
    for file in sorted(src.rglob("*")):
        rel = file.relative_to(src)
        if not file.is_file() or rel.parts[0] in _SKIP_DIRS or rel.name.startswith("."):
            continue
        if file.name.endswith(_WEIGHT_SUFFIXES) or file.name.endswith(".index.json"):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
