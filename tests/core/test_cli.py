from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import MockEmbeddingProvider
from akidb_embed.cli import main


def run(*args: str, stdin: str | None = None, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "akidb_embed.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_providers_table() -> None:
    result = run("providers")
    assert result.returncode == 0
    assert "mock" in result.stdout and "NAME" in result.stdout
    data = json.loads(run("providers", "--json").stdout)
    assert data["mock"]["loadable"] is True


def test_config_shows_sources(tmp_path: Path) -> None:
    cfg = tmp_path / "akidb.toml"
    cfg.write_text('[embedding]\nprovider = "mock"\n')
    result = run("config", "--config", str(cfg), "--json", env={"AKIDB_EMBEDDING_BATCH_SIZE": "9"})
    data = json.loads(result.stdout)
    assert data["provider"] == {"value": "mock", "source": f"file:{cfg.resolve()}"}
    assert data["batch_size"] == {"value": 9, "source": "env:AKIDB_EMBEDDING_BATCH_SIZE"}
    assert data["model"]["source"] == "default"


def test_embed_arguments_to_json() -> None:
    result = run("embed", "--provider", "mock", "hello world", "second")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dimension"] == 384 and [d["text"] for d in doc["data"]] == ["hello world", "second"]
    expected = MockEmbeddingProvider().embed_batch(["hello world"])[0]
    np.testing.assert_allclose(doc["data"][0]["embedding"], expected, atol=1e-6)


def test_embed_stdin_to_npy(tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"
    result = run("embed", "--provider", "mock", "-o", str(out), stdin="one\ntwo\n\nthree\n")
    assert result.returncode == 0, result.stderr
    vectors = np.load(out)
    assert vectors.shape == (4, 384)  # the empty line is a valid (empty) text
    assert "wrote 4 vectors" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]


def test_embed_file_skip_empty_and_progress(tmp_path: Path) -> None:
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(f"line {i}" if i % 3 else "" for i in range(600)))
    out = tmp_path / "v.npy"
    result = run("embed", "--provider", "mock", "--file", str(src), "--skip-empty", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert np.load(out).shape == (400, 384)
    assert "400/400" in result.stderr  # the progress bar


def test_embed_query_mode() -> None:
    doc = json.loads(run("embed", "--provider", "mock", "--query", "a question").stdout)
    assert len(doc["data"]) == 1


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("embed", "--provider", "mokc", "x"), 1, "Did you mean 'mock'?"),
        (("embed", "--provider", "mock", "--batch-size", "0", "x"), 2, "batch_size"),
        (("embed", "--provider", "mock", "--file", "/nonexistent/file.txt"), 1, "not found"),
        (("embed", "--provider", "mock", "--format", "npy", "x"), 2, "needs --output"),
        (("embed", "--provider", "mock", "--option", "novalue", "x"), 2, "KEY=VALUE"),
        (("nonsense",), 2, "invalid choice"),
        (("config", "--config", "/nonexistent.toml"), 2, "no such file"),
    ],
)
def test_errors_are_one_line(args, code, fragment) -> None:
    result = run(*args)
    assert result.returncode == code
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_debug_shows_traceback() -> None:
    result = run("--debug", "embed", "--provider", "mokc", "x")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_failed_npy_write_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    out.write_bytes(b"previous content")
    result = run("embed", "--provider", "mokc", "-o", str(out), "x")
    assert result.returncode == 1
    assert out.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_console_script_installed() -> None:
    exe = Path(sys.executable).with_name("akidb-embed")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "akidb-embed 0.1.0" in result.stdout
