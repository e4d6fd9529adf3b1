"""Each integration depends on akidb-embed and its framework's core package only, and its
code imports nothing else (the standard library aside)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import tomllib

HERE = Path(__file__).resolve().parent

# distribution -> (its package folder, the framework's core distribution, import names)
INTEGRATIONS = {
    "langchain-akidb-embed": (
        "langchain_akidb_embed",
        "langchain-core",
        # pydantic: langchain-core's own dependency, and its models' public API.
        {"langchain_core", "pydantic"},
    ),
    "llama-index-embeddings-akidb-embed": (
        "llama_index/embeddings/akidb_embed",
        "llama-index-core",
        {"llama_index"},
    ),
    "akidb-embed-chroma": ("akidb_embed_chroma", "chromadb", {"chromadb"}),
}


def test_every_integration_folder_is_listed() -> None:
    folders = {p.name for p in HERE.iterdir() if (p / "pyproject.toml").is_file()}
    assert folders == set(INTEGRATIONS)


@pytest.mark.parametrize("dist", sorted(INTEGRATIONS))
def test_declared_dependencies(dist: str) -> None:
    package, framework, _ = INTEGRATIONS[dist]
    project = tomllib.loads((HERE / dist / "pyproject.toml").read_text())["project"]
    assert project["name"] == dist
    names = sorted(req.split(">")[0].split("=")[0].split("<")[0] for req in project["dependencies"])
    assert names == sorted(["akidb-embed", framework])
    assert "akidb-embed==0.1.0" in project["dependencies"]  # released together
    assert (HERE / dist / package / "py.typed").is_file()


@pytest.mark.parametrize("dist", sorted(INTEGRATIONS))
def test_code_imports_only_its_dependencies(dist: str) -> None:
    package, _, allowed = INTEGRATIONS[dist]
    allowed = allowed | {"akidb_embed", package.split("/")[0]}
    found: dict[str, str] = {}
    for file in sorted((HERE / dist / package).rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found[name.split(".")[0]] = file.name
    others = {
        top: file
        for top, file in found.items()
        if top not in allowed and top not in sys.stdlib_module_names and top != "__future__"
    }
    assert not others, f"{dist} imports undeclared packages: {others}"
