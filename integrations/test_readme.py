"""The README's "Use with LangChain / LlamaIndex / Chroma" table runs as written (its three
lines per framework, with the exported model of the test session as MODEL)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXTS = ["The cat sat on the mat.", "Stocks fell sharply.", "A recipe for tomato soup."]


def rows() -> dict[str, list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use with LangChain / LlamaIndex / Chroma") :]
    section = section[: section.index("\n## ", 1)]
    found = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`from "):
            found[cells[0]] = [c.strip("`") for c in cells[2].split("<br>")]
            assert cells[1].startswith('`pip install "akidb-embed[')
    return found


def test_the_table_has_three_lines_per_framework() -> None:
    table = rows()
    assert sorted(table) == ["Chroma", "LangChain", "LlamaIndex"]
    assert all(len(lines) == 3 for lines in table.values())


@pytest.mark.parametrize("framework", ["LangChain", "LlamaIndex", "Chroma"])
def test_the_lines_run(
    framework: str, minilm_onnx_dir: Path, tmp_path: Path, no_network: list[object]
) -> None:
    import chromadb
    from chromadb.config import Settings
    from langchain_core.vectorstores import InMemoryVectorStore
    from llama_index.core import Document, VectorStoreIndex

    client = chromadb.PersistentClient(str(tmp_path), settings=Settings(anonymized_telemetry=False))
    namespace: dict[str, Any] = {
        "MODEL": str(minilm_onnx_dir),
        "texts": TEXTS,
        "docs": [Document(text=t) for t in TEXTS],
        "ids": ["a", "b", "c"],
        "client": client,
        "InMemoryVectorStore": InMemoryVectorStore,
        "VectorStoreIndex": VectorStoreIndex,
    }
    *setup, last = rows()[framework]
    *statements, expression = re.split(r";\s*", last)
    exec("\n".join([*setup, *statements]), namespace)
    result = eval(expression, namespace)
    if framework == "Chroma":
        result = result["documents"][0]
    assert len(result) == 3
