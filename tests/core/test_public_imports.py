"""Backends and plugins import only the core's public API.

A backend distribution (``src/akidb_embed_*/``, the example plugin) may import
``akidb_embed``, ``akidb_embed.backend``, ``akidb_embed.errors``, ``akidb_embed.testing``...
but never a private module (``akidb_embed._config``, ``akidb_embed.backend._resolve``):
those change without notice, and a third-party provider could not rely on them either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = "akidb_embed"


def _backend_folders() -> list[Path]:
    folders = sorted(p for p in (ROOT / "src").glob(f"{CORE}_*") if p.is_dir())
    # The framework integrations (their packages, not their tests).
    integrations = sorted(
        p
        for p in (ROOT / "integrations").glob("*/*")
        if p.is_dir() and p.name != "tests" and not p.name.startswith(("_", "."))
    )
    return [*folders, ROOT / "examples" / "plugin" / "src", *integrations]


def _is_private_name(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == CORE and any(_is_private_name(part) for part in parts[1:])


def private_imports(source: str, filename: str) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for each import of a private core module in *source*."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _private(alias.name):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _private(node.module):
                yield node.lineno, node.module
            elif node.module.split(".")[0] == CORE:
                for alias in node.names:  # from akidb_embed import _config
                    if _is_private_name(alias.name):
                        yield node.lineno, f"{node.module}.{alias.name}"


def test_the_check_finds_every_form() -> None:
    source = (
        "import akidb_embed._config\n"
        "from akidb_embed._types import ModelInfo\n"
        "from akidb_embed.backend._resolve import resolve_model\n"
        "from akidb_embed import _manager\n"
        "def f():\n"
        "    from akidb_embed.bridge import _client\n"
        "import akidb_embed, akidb_embed.errors\n"
        "from akidb_embed import EmbeddingConfig, __version__\n"
        "from akidb_embed.backend import pool\n"
        "from . import _provider\n"
        "from akidb_embed_onnx._provider import OnnxEmbeddingProvider\n"
    )
    assert sorted(line for line, _ in private_imports(source, "example.py")) == [1, 2, 3, 4, 6]


def test_backends_import_only_the_public_api() -> None:
    files = [f for folder in _backend_folders() for f in sorted(folder.rglob("*.py"))]
    if not files:
        pytest.fail("no backend source files found under src/akidb_embed_*/")
    offenders = [
        f"{file.relative_to(ROOT)}:{line}: imports {module}"
        for file in files
        for line, module in private_imports(file.read_text(encoding="utf-8"), str(file))
    ]
    assert not offenders, "private core modules imported:\n" + "\n".join(offenders)
