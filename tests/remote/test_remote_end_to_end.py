"""provider = "remote" end to end: a Collection and the ``akidb-embed embed`` CLI using a
running server; the documented options are the accepted ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager
from akidb_embed.remote import REMOTE_OPTIONS

if TYPE_CHECKING:  # the class behind the server fixtures of conftest.py
    from conftest import Served

DOCS = Path(__file__).resolve().parents[2] / "docs" / "remote.md"


def test_collection_over_a_remote_server(mock_server: Served, tmp_path: Path) -> None:
    from akidb_embed.index import Collection

    config = EmbeddingConfig(provider="remote", options={"url": mock_server.url})
    texts = ["the cat sat on the mat", "stock markets fell sharply", "a recipe for bread"]
    with EmbeddingManager.from_config(config) as manager:
        docs = Collection(manager, tmp_path / "docs")
        report = docs.add(texts, ids=["cat", "stocks", "bread"])
        assert report.added == 3
        assert docs.search("where did the cat sit?", k=1)[0].id == "cat"
    # Reopened through the same server: same fingerprint, same answers.
    with EmbeddingManager.from_config(config) as manager:
        again = Collection(manager, tmp_path / "docs")
        assert len(again) == 3 and again.search("markets", k=1)[0].id == "stocks"
    # The same model in-process gives vectors this collection accepts.
    with EmbeddingManager.from_config(provider="mock") as local:
        assert local.info.fingerprint() == manager.info.fingerprint()
        Collection(local, tmp_path / "docs")


def test_embed_cli_with_provider_remote(mock_server: Served, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
    env["AKIDB_REMOTE_API_KEY"] = "not-needed-but-sent"
    out = tmp_path / "vectors.npy"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "akidb_embed.cli",
            "embed",
            "--provider",
            "remote",
            "--option",
            f"url={mock_server.url}",
            "--option",
            "api=openai",
            "-q",
            "-o",
            str(out),
            "hello world",
            "second text",
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    got = np.load(out)
    with EmbeddingManager.from_config(provider="mock") as local:
        np.testing.assert_allclose(got, local.embed(["hello world", "second text"]), atol=1e-6)


def test_embed_cli_reports_an_unreachable_server_as_a_typed_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
    env["AKIDB_EMBEDDING_PROVIDER"] = "remote"
    env["AKIDB_EMBEDDING_OPTIONS"] = json.dumps({"url": "http://127.0.0.1:9", "max_retries": 0})
    result = subprocess.run(
        [sys.executable, "-m", "akidb_embed.cli", "embed", "-q", "hello"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cannot reach http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_docs_list_every_option() -> None:
    """docs/remote.md documents exactly the options the provider accepts."""
    section = DOCS.read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert sorted(documented) == sorted(REMOTE_OPTIONS)


def test_docs_list_every_error() -> None:
    import akidb_embed.remote as remote

    section = DOCS.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(Remote\w*Error)`", section))
    exported = {n for n in remote.__all__ if n.startswith("Remote") and n.endswith("Error")}
    assert documented == exported


def test_docs_python_example_runs(mock_server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1
    # The guide's server address, pointed at this test's server.
    code = blocks[0].replace("http://127.0.0.1:8080", mock_server.url)
    exec(compile(code, "docs/remote.md", "exec"), {})
    assert capsys.readouterr().out == "the cat sat on the mat\n"
