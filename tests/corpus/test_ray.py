"""The Ray engine and ``embed_dataset`` on a local Ray of 2 CPUs, one Ray for the module.

Ray starts in seconds, so these tests are few; the cluster this module starts is shut
down at its end, and no process of it may outlive the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import ray
import ray.data

import akidb_embed_ray
from akidb_embed import EmbeddingConfig, EmbeddingManager, MockEmbeddingProvider
from akidb_embed.cli import main
from akidb_embed.corpus import embed_corpus, read_embeddings
from akidb_embed.errors import BadRowError, FingerprintMismatchError
from akidb_embed.index import Collection
from akidb_embed_ray import embed_dataset

MOCK = EmbeddingConfig(provider="mock")


def _ray_processes() -> set[int]:
    me = psutil.Process()
    return {p.pid for p in me.children(recursive=True)}


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One local Ray (2 CPUs, no dashboard) for the whole module; nothing of it remains."""
    before = _ray_processes()
    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield context.address_info["gcs_address"]
    finally:
        started = _ray_processes() - before
        ray.shutdown()
        left = psutil.wait_procs([psutil.Process(p) for p in started if psutil.pid_exists(p)], 30)[
            1
        ]
        for proc in left:
            proc.kill()
        assert not left, f"Ray processes left after shutdown: {[p.pid for p in left]}"


def _vectors(ds_rows: list[dict[str, Any]]) -> np.ndarray:
    return np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in ds_rows])


def test_embed_dataset_and_engine_equal_in_process_in_order_mock_and_onnx(
    ray_address: str,
    minilm_onnx_dir: Path,
    varied_texts: list[str],
    tmp_path: Path,
    read_output: Any,
) -> None:
    texts = [t for t in varied_texts if t.strip()][:120]
    ids = [f"t{i}" for i in range(len(texts))]
    onnx = EmbeddingConfig(provider="onnx", model=str(minilm_onnx_dir))
    for config in (MOCK, onnx):
        items = [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
        # Blocks made up front: an all-to-all step (repartition) would wait forever for a
        # CPU that the two actors hold.
        ds = ray.data.from_items(items, override_num_blocks=6)
        out = embed_dataset(
            ds,
            config=config,
            batch_size=16,
            concurrency=2,
            num_cpus=1,
            id_column="id",
            preserve_order=True,
        )
        rows = out.take_all()
        assert [r["id"] for r in rows] == ids  # input order kept
        with EmbeddingManager.from_config(config) as manager:
            expected = manager.embed_documents(texts)
        np.testing.assert_allclose(_vectors(rows), expected, atol=1e-6)
        schema = out.schema().base_schema
        assert json.loads(schema.metadata[b"akidb_embed.fingerprint"])["provider"] == (
            config.provider
        )
    # embed-corpus --engine ray with the real model: the in-process manager's vectors.
    corpus = tmp_path / "in.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    report = embed_corpus(
        corpus, tmp_path / "out", config=onnx, engine="ray", shard_size=50, concurrency=2
    )
    assert report.rows == len(texts)
    table, vectors = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [str(i) for i in range(len(texts))]
    with EmbeddingManager.from_config(onnx) as manager:
        np.testing.assert_allclose(vectors, manager.embed_documents(texts), atol=1e-6)

    ds = ray.data.from_items([{"id": "a", "text": "fine"}, {"id": "b", "text": ""}])
    # Ray wraps what an actor raises (RayTaskError); the message carries the typed error.
    with pytest.raises(ray.exceptions.RayTaskError, match=r"BadRowError: row 'b': the text is"):
        embed_dataset(ds, config=MOCK, id_column="id").take_all()


# --- an actor that dies once ---------------------------------------------------------------


def crashing_manager(marker: str) -> EmbeddingManager:
    """A mock whose process exits (os._exit, no cleanup) on the batch holding "CRASH ME",
    the first time only: the marker file, created atomically, says it happened."""

    def crash_once(text: str) -> bool:
        if text == "CRASH ME":
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)
        return False

    provider = MockEmbeddingProvider(fail_on=crash_once)
    return EmbeddingManager(provider, EmbeddingConfig(provider="mock", cache_size=0))


def test_an_actor_that_dies_mid_job_is_retried_and_every_row_comes_once(
    ray_address: str, tmp_path: Path
) -> None:
    import functools

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    texts = [f"document number {i} about cats" for i in range(200)]
    texts[137] = "CRASH ME"
    marker = tmp_path / "crashed"
    items = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    out = embed_dataset(
        ray.data.from_items(items, override_num_blocks=10),
        manager_factory=functools.partial(crashing_manager, str(marker)),
        batch_size=20,
        concurrency=2,
        id_column="id",
    )
    rows = out.take_all()
    assert marker.exists(), "the provider never crashed"
    got = sorted(int(r["id"]) for r in rows)
    assert got == list(range(200))  # every row, exactly once
    with EmbeddingManager.from_config(MOCK) as manager:
        expected = manager.embed_documents(texts)
    by_id = {int(r["id"]): np.asarray(r["embedding"]) for r in rows}
    np.testing.assert_allclose(np.stack([by_id[i] for i in range(200)]), expected, atol=1e-6)


# --- embed-corpus --engine ray -------------------------------------------------------------


def test_engine_ray_equals_local_and_resumes_after_the_driver_is_killed(
    ray_address: str, tmp_path: Path, write_corpus: Any, read_output: Any, read_rejects: Any
) -> None:
    write_corpus(tmp_path / "in", n_txt=40, n_jsonl=30, n_parquet=20)
    with (tmp_path / "in" / "b.jsonl").open("a") as fh:
        fh.write(json.dumps({"text": None}) + "\n")
    common = dict(config=MOCK, shard_size=10, on_error="skip")
    embed_corpus(tmp_path / "in", tmp_path / "local", **common)
    local, local_vectors = read_output(tmp_path / "local")

    # In this process (it joins the module's Ray): the same output as the local engine.
    report = embed_corpus(
        tmp_path / "in", tmp_path / "ray", engine="ray", concurrency=2, batch_size=8, **common
    )
    assert report.engine["engine"] == "ray" and report.rows == 90 and report.rejected == 1
    table, vectors = read_output(tmp_path / "ray")
    assert table.equals(local)
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-6)
    assert read_rejects(tmp_path / "ray") == read_rejects(tmp_path / "local")
    with pytest.raises(BadRowError, match=r"row 'b.jsonl:31' \(shard 7\): 'text' is null"):
        embed_corpus(tmp_path / "in", tmp_path / "raised", engine="ray", config=MOCK, shard_size=10)

    # A driver process joins the same Ray, is SIGKILLed mid-job, and is run again.
    out = tmp_path / "killed"
    argv = [
        sys.executable,
        "-m",
        "akidb_embed.cli",
        "embed-corpus",
        str(tmp_path / "in"),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--ray-address",
        ray_address,
        "--concurrency",
        "2",
        "--ray-batch-size",
        "5",
        "--shard-size",
        "10",
        "--on-error",
        "skip",
        "--provider",
        "mock",
        "-q",
    ]
    slow = [*argv, "--option", "latency=0.2", "--batch-size", "2"]
    proc = subprocess.Popen(slow, stderr=subprocess.DEVNULL)
    manifest = out / "_manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    written = len(json.loads(manifest.read_text())["shards"])
    assert 2 <= written < 10, written
    # The latency option is not part of the fingerprint: the re-run may drop it.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(manifest.read_text())
    assert state["complete"] and state["rows"] == 90 and state["rejected"] == 1
    table, vectors = read_output(out)
    assert table.equals(local)  # no row lost, none twice, same order
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-6)
    assert read_embeddings(out).fingerprint == read_embeddings(tmp_path / "local").fingerprint

    # The CLI in this process: Ray's progress, summary on stderr.
    assert main([*argv[3:-1]]) == 0  # resumes a complete output: nothing to do
    assert akidb_embed_ray.__version__


def test_embed_dataset_output_written_by_ray_is_indexed_with_its_fingerprint(
    ray_address: str, tmp_path: Path
) -> None:
    items = [{"id": f"x{i}", "text": f"text {i} about cats"} for i in range(40)]
    items[7]["text"] = "   "
    ds = ray.data.from_items(items, override_num_blocks=2)
    out = embed_dataset(
        ds, config=MOCK, id_column="id", on_error="skip", rejects_path=tmp_path / "rejects"
    )
    out.write_parquet(str(tmp_path / "vectors"))
    rejected = [
        json.loads(line)
        for path in (tmp_path / "rejects").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert [(r["id"], r["reason"]) for r in rejected] == [("x7", "the text is only whitespace")]
    with EmbeddingManager.from_config(MOCK) as manager:
        collection = Collection(manager)
        assert collection.add_embeddings(tmp_path / "vectors").added == 39
        assert collection.search("text 12 about cats", k=1)[0].id == "x12"
    with (
        EmbeddingManager.from_config(provider="mock", options={"seed": 1}) as other,
        pytest.raises(FingerprintMismatchError, match=r"mock:mock@seed-1.*mock:mock@seed-0"),
    ):
        Collection(other).add_embeddings(tmp_path / "vectors")
