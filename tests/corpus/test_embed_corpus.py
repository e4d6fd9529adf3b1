"""``embed-corpus`` with the local engine (no Ray): output, bad rows, resume, fingerprints,
and ``index build --from-embeddings``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager
from akidb_embed.cli import main
from akidb_embed.corpus import FINGERPRINT_KEY, embed_corpus, read_embeddings
from akidb_embed.errors import (
    BadRowError,
    CorpusChangedError,
    CorpusInputError,
    EmbeddingsOutputError,
    FingerprintMismatchError,
    MissingDependencyError,
)
from akidb_embed.index import Collection

MOCK = EmbeddingConfig(provider="mock")


def test_output_rows_columns_and_vectors_equal_the_managers(
    tmp_path: Path, write_corpus: Any, read_output: Any
) -> None:
    rows = write_corpus(tmp_path / "in")
    report = embed_corpus(tmp_path / "in", tmp_path / "out", config=MOCK, shard_size=16)
    assert (report.rows, report.rejected, report.shards) == (rows, 0, -(-rows // 16))
    table, vectors = read_output(tmp_path / "out")
    ids = table.column("id").to_pylist()
    # Input order: files sorted, rows in file order; blank lines are not rows.
    assert ids[:6] == ["a.txt:1", "a.txt:2", "a.txt:3", "a.txt:4", "a.txt:5", "a.txt:7"]
    assert ids[37] == "b.jsonl:1" and ids[66] == "c.parquet:0" and ids[-1] == "c.parquet:22"
    assert table.column_names == ["id", "text", "lang", "score", "year", "sha256"]
    assert table.column("year").to_pylist()[66:68] == [2000, 2001]
    assert table.column("lang").to_pylist()[37] == "en"
    with EmbeddingManager.from_config(MOCK) as manager:
        expected = manager.embed_documents(table.column("text").to_pylist())
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    # The fingerprint travels in every file's schema metadata, and in the manifest.
    first = pq.read_schema(tmp_path / "out" / "part-00000.parquet")
    assert json.loads(first.metadata[FINGERPRINT_KEY])["provider"] == "mock"
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == rows and manifest["blank_lines"] == 4


def test_bad_rows_raise_naming_row_and_shard_or_are_skipped_into_rejects(
    tmp_path: Path, read_output: Any, read_rejects: Any
) -> None:
    src = tmp_path / "in.jsonl"
    records = [{"id": f"d{i}", "text": f"text {i}"} for i in range(30)]
    records[3]["text"] = None
    records[17]["text"] = ""
    records[21]["text"] = 42
    del records[25]["text"]
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with pytest.raises(BadRowError, match=r"row 'd3' \(shard 0\): 'text' is null") as info:
        embed_corpus(src, tmp_path / "out1", config=MOCK, shard_size=10)
    assert (info.value.row_id, info.value.shard) == ("d3", 0)
    report = embed_corpus(src, tmp_path / "out2", config=MOCK, shard_size=10, on_error="skip")
    assert (report.rows, report.rejected) == (26, 4)
    found = read_rejects(tmp_path / "out2")
    assert [(r["id"], r["shard"], r["reason"]) for r in found] == [
        ("d3", 0, "'text' is null"),
        ("d17", 1, "the text is empty"),
        ("d21", 2, "'text' is int, not a string"),
        ("d25", 2, "no 'text' field"),
    ]
    table, _ = read_output(tmp_path / "out2")
    kept = set(table.column("id").to_pylist())
    assert kept | {r["id"] for r in found} == {r["id"] for r in records}  # nothing lost
    assert len(kept) == 26


def test_a_changed_input_or_model_is_refused_naming_both(tmp_path: Path, write_corpus: Any) -> None:
    write_corpus(tmp_path / "in")
    out = tmp_path / "out"
    embed_corpus(tmp_path / "in", out, config=MOCK, shard_size=16)
    other = EmbeddingConfig(provider="mock", options={"seed": 7})
    with pytest.raises(FingerprintMismatchError) as info:
        embed_corpus(tmp_path / "in", out, config=other, shard_size=16)
    assert "mock:mock@seed-0" in str(info.value) and "mock:mock@seed-7" in str(info.value)
    with pytest.raises(CorpusChangedError, match="shard_size = 16"):
        embed_corpus(tmp_path / "in", out, config=MOCK, shard_size=8)
    with (tmp_path / "in" / "b.jsonl").open("a") as fh:
        fh.write(json.dumps({"text": "one more"}) + "\n")
    with pytest.raises(CorpusChangedError, match="the input changed"):
        embed_corpus(tmp_path / "in", out, config=MOCK, shard_size=16)
    # Nothing was changed by the refused runs.
    assert read_embeddings(out).rows == 89


def test_resume_after_sigkill_equals_an_uninterrupted_run(
    tmp_path: Path, write_corpus: Any, read_output: Any
) -> None:
    rows = write_corpus(tmp_path / "in", n_txt=60, n_jsonl=40, n_parquet=20)
    embed_corpus(tmp_path / "in", tmp_path / "whole", config=MOCK, shard_size=10)
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "akidb_embed.cli",
        "embed-corpus",
        str(tmp_path / "in"),
        "--out",
        str(out),
        "--provider",
        "mock",
        "--option",
        "latency=0.05",
        "--batch-size",
        "4",
        "--shard-size",
        "10",
        "-q",
    ]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    manifest = out / "_manifest.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    written = len(json.loads(manifest.read_text())["shards"])
    assert 3 <= written < 12, written
    with pytest.raises(EmbeddingsOutputError, match="not complete"):
        read_embeddings(out)
    assert main([*argv[3:7], "--provider", "mock", "--shard-size", "10", "-q"]) == 0
    report = json.loads(manifest.read_text())
    assert report["complete"] and report["rows"] == rows
    resumed, resumed_vectors = read_output(out)
    whole, whole_vectors = read_output(tmp_path / "whole")
    assert resumed.equals(whole)  # same rows, same order, same columns
    np.testing.assert_array_equal(resumed_vectors, whole_vectors)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_index_build_from_embeddings_equals_embedding_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write_corpus: Any, read_output: Any
) -> None:
    write_corpus(tmp_path / "in")
    embed_corpus(tmp_path / "in", tmp_path / "out", config=MOCK, shard_size=16)
    code = main(
        ["index", "build", "--from-embeddings", str(tmp_path / "out"), "--out", str(tmp_path / "i")]
    )
    assert code == 0, capsys.readouterr().err
    assert "89 added" in capsys.readouterr().err
    code = main(["search", str(tmp_path / "i"), "bread 3 forty", "-k", "1", "--json"])
    hit = json.loads(capsys.readouterr().out)
    assert code == 0 and hit["id"] == "c.parquet:3" and hit["metadata"] == {"year": 2003}
    with EmbeddingManager.from_config(MOCK) as manager:
        built = Collection(manager, tmp_path / "i")
        table, _ = read_output(tmp_path / "out")
        fresh = Collection(manager)
        fresh.add(table.column("text").to_pylist(), ids=table.column("id").to_pylist())
        for id_ in ("a.txt:1", "b.jsonl:9", "c.parquet:22"):
            np.testing.assert_allclose(
                built.index.get(id_).vector, fresh.index.get(id_).vector, atol=1e-6
            )
        # Again: everything is already there.
        assert built.add_embeddings(tmp_path / "out").skipped == 89


def test_index_build_refuses_vectors_of_another_embedding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write_corpus: Any
) -> None:
    write_corpus(tmp_path / "in")
    embed_corpus(tmp_path / "in", tmp_path / "out", config=MOCK, shard_size=50)
    argv = ["index", "build", "--from-embeddings", str(tmp_path / "out"), "--out"]
    assert main([*argv, str(tmp_path / "i"), "--option", "seed=3"]) == 1
    err = capsys.readouterr().err
    assert "FingerprintMismatch" not in err and "mock:mock@seed-0" in err
    assert "mock:mock@seed-3" in err
    assert not (tmp_path / "i" / "CURRENT").exists()
    with (
        EmbeddingManager.from_config(provider="mock", options={"seed": 3}) as manager,
        pytest.raises(FingerprintMismatchError, match=r"seed-3.*seed-0"),
    ):
        Collection(manager).add_embeddings(tmp_path / "out")


def test_a_corrupted_or_unfinished_output_is_not_indexed(tmp_path: Path, write_corpus: Any) -> None:
    write_corpus(tmp_path / "in")
    embed_corpus(tmp_path / "in", tmp_path / "out", config=MOCK, shard_size=50)
    shard = tmp_path / "out" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with (
        EmbeddingManager.from_config(MOCK) as manager,
        pytest.raises(
            EmbeddingsOutputError, match=r"part-00001\.parquet is truncated or corrupted"
        ),
    ):
        Collection(manager).add_embeddings(tmp_path / "out")
    # Running embed-corpus again rewrites the damaged shard (its size is unchanged, so
    # only the checksum tells: remove it from the manifest's point of view by truncating).
    shard.write_bytes(bytes(data[:-10]))
    assert embed_corpus(tmp_path / "in", tmp_path / "out", config=MOCK, shard_size=50).resumed == 1
    assert read_embeddings(tmp_path / "out").rows == 89


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], write_corpus: Any) -> None:
    write_corpus(tmp_path / "in")
    assert main(["embed-corpus", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--engine",
                 "nope", "--provider", "mock"]) == 1  # fmt: skip
    assert "No such engine: 'nope'. Engines: local, ray" in capsys.readouterr().err
    assert main(["embed-corpus", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--concurrency", "2"]) == 2  # fmt: skip
    assert "--concurrency is an option of --engine ray" in capsys.readouterr().err
    assert main(["embed-corpus", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.md").write_text("mine")
    with pytest.raises(EmbeddingsOutputError, match="holds other files"):
        embed_corpus(tmp_path / "in", tmp_path / "busy", config=MOCK)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "sha256": "x"}\n')
    with pytest.raises(CorpusInputError, match="'sha256' has the name of a column"):
        embed_corpus(bad, tmp_path / "o2", config=MOCK)
    assert isinstance(MissingDependencyError("x"), ImportError)
