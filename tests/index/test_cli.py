"""`akidb-embed index build` and `akidb-embed search`, with the mock provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from akidb_embed.cli import main

LINES = [
    "the cat sat on the warm mat",
    "",
    "dogs bark loudly at the mailman",
    "stock markets fell sharply on friday",
    "bake the bread for forty minutes",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_and_search_a_text_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out_dir = tmp_path / "idx"
    code, _, err = run(
        capsys, "index", "build", str(corpus), "--out", str(out_dir), "--provider", "mock"
    )
    assert code == 0, err
    assert "4 added, 0 updated, 0 unchanged; 4 in the index" in err
    assert "indexing" in err  # the progress bar

    code, out, err = run(capsys, "search", str(out_dir), "stock markets fell", "-k", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "query: stock markets fell"
    assert lines[1].endswith("stock markets fell sharply on friday") and lines[
        1
    ].strip().startswith("1.")
    assert len(lines) == 3

    code, out, _ = run(capsys, "search", str(out_dir), "bread", "cat mat", "-k", "1", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["query"], r["text"]) for r in rows] == [
        ("bread", LINES[4]),
        ("cat mat", LINES[0]),
    ]
    assert rows[0]["metadata"] == {"source": "corpus.txt", "line": 5}

    # Building again skips what is already there.
    code, _, err = run(
        capsys, "index", "build", str(corpus), "--out", str(out_dir), "--provider", "mock", "-q"
    )
    assert code == 0 and err == ""
    code, _, err = run(
        capsys, "index", "build", str(corpus), "--out", str(out_dir), "--provider", "mock"
    )
    assert "0 added, 0 updated, 4 unchanged" in err


def test_build_a_folder_of_txt_and_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "docs"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a whole document about sourdough bread\nwith two lines\n")
    (src / "sub" / "b.txt").write_text("interest rates and the central bank")
    (src / "records.jsonl").write_text(
        json.dumps({"text": "dogs bark at night", "lang": "en"})
        + "\n"
        + json.dumps({"text": "cats purr", "metadata": {"k": 1}})
        + "\n"
    )
    (src / "ignored.md").write_text("not indexed")
    code, _, err = run(
        capsys, "index", "build", str(src), "--out", str(tmp_path / "i"), "--provider", "mock", "-q"
    )
    assert code == 0, err
    code, out, _ = run(
        capsys, "search", str(tmp_path / "i"), "sourdough bread", "-k", "4", "--json"
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4
    assert rows[0]["text"] == "a whole document about sourdough bread\nwith two lines"
    assert rows[0]["metadata"] == {"source": "a.txt"}
    by_text = {r["text"]: r["metadata"] for r in rows}
    assert by_text["dogs bark at night"] == {"lang": "en"}
    assert by_text["cats purr"] == {"k": 1}
    assert by_text["interest rates and the central bank"] == {"source": "sub/b.txt"}


def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "index",
        "build",
        str(tmp_path / "missing.txt"),
        "--out",
        str(tmp_path / "o"),
        "--provider",
        "mock",
    )
    assert code == 1 and "error: input not found" in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    code, _, err = run(
        capsys, "index", "build", str(bad), "--out", str(tmp_path / "o"), "--provider", "mock"
    )
    assert code == 1 and "bad.jsonl, line 2: not valid JSON" in err

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a", "id": "1"}\n{"text": "b"}\n')
    code, _, err = run(
        capsys, "index", "build", str(mixed), "--out", str(tmp_path / "o"), "--provider", "mock"
    )
    assert code == 1 and "some records have an id" in err
    assert not (tmp_path / "o").exists()  # nothing half-written

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run(
        capsys, "index", "build", str(empty), "--out", str(tmp_path / "o"), "--provider", "mock"
    )
    assert code == 1 and "no texts found" in err

    code, _, err = run(capsys, "search", str(tmp_path / "nowhere"), "query")
    assert code == 1 and "no index at" in err

    code, _, err = run(capsys, "index")
    assert code == 2 and "required" in err


def test_search_with_another_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("one text\nanother text\n")
    run(
        capsys,
        "index",
        "build",
        str(corpus),
        "--out",
        str(tmp_path / "i"),
        "--provider",
        "mock",
        "-q",
    )
    code, _, err = run(capsys, "search", str(tmp_path / "i"), "text", "--option", "seed=7")
    assert code == 1 and "seed-0" in err and "seed-7" in err


def test_real_process_end_to_end(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "akidb_embed.cli"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(LINES))
    env = {**os.environ, "AKIDB_EMBEDDING_PROVIDER": "mock"}
    build = subprocess.run(
        [*cli, "index", "build", str(corpus), "--out", str(tmp_path / "i")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    # No provider in the environment now: search uses the one recorded in the index.
    env.pop("AKIDB_EMBEDDING_PROVIDER")
    found = subprocess.run(
        [*cli, "search", str(tmp_path / "i"), "dogs bark", "-k", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[1].endswith("dogs bark loudly at the mailman")


def test_search_never_runs_or_leaks_what_an_index_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from akidb_embed.index import VectorIndex

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(LINES))
    index_dir = tmp_path / "i"
    build = ["index", "build", str(corpus), "--out", str(index_dir), "-q"]
    bridge = ["--provider", "python-bridge", "--option", "target=mock"]
    secret = ["--option", 'env={"HF_TOKEN": "hf_SECRET_never_saved"}']
    code, _, err = run(capsys, *build, *bridge, *secret)
    assert code == 0, err
    # Secrets and machine-specific settings never reach the folder.
    saved = b"".join(p.read_bytes() for p in index_dir.rglob("*") if p.is_file())
    assert b"hf_SECRET_never_saved" not in saved and b"python_path" not in saved
    index = VectorIndex.load(index_dir)
    assert index.attributes["embedding_config"] == {
        "provider": "python-bridge",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "max_length": None,
        "normalize": True,
        "truncation": "truncate",
        "options": {"target": "mock"},
    }

    # A shared index whose manifest asks for code to run: an interpreter script, a
    # module to import in the worker, an environment to run it in.
    ran = tmp_path / "ran"
    script = tmp_path / "python.sh"
    script.write_text(f'#!/bin/sh\necho script >> "{ran}"\nexec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "akidb_probe_evil.py").write_text(
        f"with open({str(ran)!r}, 'a') as f:\n    f.write('import\\n')\n"
    )
    index.attributes["embedding_config"] = {
        **index.attributes["embedding_config"],
        "python_path": str(script),
        "cache_dir": str(tmp_path / "elsewhere"),
        "options": {
            "target": "mock",
            "imports": ["akidb_probe_evil"],
            "env": {"PYTHONPATH": str(modules)},
            "unknown": "x",
        },
    }
    index.save(index_dir)
    code, out, err = run(capsys, "search", str(index_dir), "dogs bark", "-k", "1")
    assert not ran.exists(), f"the index ran code: {ran.read_text()}"
    assert code == 0, err
    assert out.splitlines()[1].endswith("dogs bark loudly at the mailman")


def test_search_takes_settings_from_the_users_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from akidb_embed.index._cli import search_config

    recorded = {"provider": "mock", "model": "mock", "max_length": 64, "options": {"seed": 3}}
    toml = tmp_path / "akidb.toml"
    toml.write_text(
        '[embedding]\nprovider = "mock"\nmax_length = 32\nbatch_size = 7\n'
        'cache_dir = "/srv/mine"\n[embedding.options]\nlatency = 0.0\n'
    )
    config = search_config(recorded, {}, str(toml))
    # The recorded identity wins over the file; the user's own settings come from it.
    assert (config.provider, config.model, config.max_length) == ("mock", "mock", 64)
    assert (config.batch_size, config.cache_dir) == (7, "/srv/mine")
    assert config.options == {"latency": 0.0, "seed": 3}
    # The command line wins over both.
    config = search_config(recorded, {"max_length": 16, "options": {"seed": 4}}, str(toml))
    assert config.max_length == 16 and config.options == {"latency": 0.0, "seed": 4}
    # Options of the file's provider do not follow a switch to another provider.
    config = search_config({**recorded, "provider": "python-bridge"}, {}, str(toml))
    assert config.provider == "python-bridge" and config.options == {"seed": 3}

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(LINES))
    code, _, err = run(
        capsys, "index", "build", str(corpus), "--out", str(tmp_path / "i"), "--provider", "mock"
    )
    assert code == 0, err
    # --config is accepted; its max_length = 32 would not match the index (512 tokens),
    # but the recorded identity wins.
    code, out, err = run(capsys, "search", str(tmp_path / "i"), "bread", "--config", str(toml))
    assert code == 0, err
    assert out.splitlines()[1].endswith(LINES[4])
