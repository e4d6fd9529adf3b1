"""The main job: the sample corpus, search_demo.py and the quickstart notebook, run for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

from akidb_embed import EmbeddingManager
from akidb_embed.index import Collection

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO = EXAMPLES / "search_demo.py"
CORPUS = [line for line in (EXAMPLES / "sample_corpus.txt").read_text().splitlines() if line]

# Paraphrases that share few words with their answer: only a real model finds these.
EXPECTED = {
    "what happens when the moon blocks the sun": "A total solar eclipse happens",
    "my program keeps eating more RAM until it dies": "A memory leak slowly consumes RAM",
    "how to teach a young dog good manners": "Puppies learn faster",
    "is it going to pour tonight": "Heavy rain is expected tonight",
    "why does my homemade loaf come out heavy and dense": "Proofing the dough",
}


def run_demo(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(DEMO), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def execute_notebook(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run examples/quickstart.ipynb in a real kernel; return each code cell's output."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel process inherits the environment
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    # "python3" is ipykernel's own kernel; jupyter_client starts it with sys.executable.
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()
    return [
        "".join(
            out.get("text") or out.get("data", {}).get("text/plain", "") for out in cell.outputs
        )
        for cell in nb.cells
        if cell.cell_type == "code"
    ]


def test_sample_corpus_is_a_few_hundred_distinct_texts() -> None:
    assert 200 <= len(CORPUS) <= 500 and len(set(CORPUS)) == len(CORPUS)


def test_demo_with_the_mock_provider(tmp_path: Path) -> None:
    out = run_demo("--provider", "mock", "--index-dir", str(tmp_path / "i"))
    assert f"Indexed {len(CORPUS)} texts" in out and f"({len(CORPUS)} new" in out
    # The mock shares words, not meaning: this query shares several with its answer.
    moon = out.split("what happens when the moon blocks the sun\n")[1].splitlines()[0]
    assert "A total solar eclipse happens" in moon
    again = run_demo("--provider", "mock", "--index-dir", str(tmp_path / "i"), "bread dough")
    assert f"(0 new, {len(CORPUS)} already indexed)" in again
    assert "Knead bread dough" in again.split("bread dough\n")[1].splitlines()[0]


def test_notebook_with_the_mock_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = execute_notebook({"AKIDB_DEMO_PROVIDER": "mock"}, monkeypatch)
    assert outputs[1] == f"AddReport(added={len(CORPUS)}, updated=0, skipped=0)"
    assert "A total solar eclipse happens" in outputs[2].splitlines()[0]
    assert outputs[4] == f"AddReport(added=0, updated=0, skipped={len(CORPUS)})"


@pytest.mark.slow
def test_collection_with_the_onnx_provider(minilm_onnx_dir: Path) -> None:
    with EmbeddingManager.from_config(
        provider="onnx", model=str(minilm_onnx_dir), offline=True
    ) as manager:
        # backend="hnsw" so that the real-vector path goes through the graph, too.
        docs = Collection(manager, backend="hnsw")
        docs.add(CORPUS)
        assert docs.fingerprint["provider"] == "onnx" and docs.fingerprint["dimension"] == 384
        results = docs.search(list(EXPECTED), k=3)
        for (query, want), hits in zip(EXPECTED.items(), results, strict=True):
            assert hits[0].text.startswith(want), (query, [h.text for h in hits])
            assert hits[0].score > 0.3 and hits[0].score > hits[2].score
        exact = docs.index.search(
            manager.embed(list(EXPECTED)), k=3, exact=True, fingerprint=docs.fingerprint
        )
        assert exact.ids == [[h.id for h in hits] for hits in results]


@pytest.mark.slow
def test_demo_and_notebook_with_the_onnx_provider(
    minilm_onnx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"AKIDB_DEMO_MODEL_DIR": str(minilm_onnx_dir)}
    out = run_demo("--index-dir", str(tmp_path / "i"), "-k", "1", *EXPECTED, env=env)
    for query, want in EXPECTED.items():
        assert out.split(f"\n{query}\n")[1].splitlines()[0].split("  ", 2)[2].startswith(want)
    outputs = execute_notebook({**env, "AKIDB_DEMO_PROVIDER": "onnx"}, monkeypatch)
    assert "A total solar eclipse happens" in outputs[2].splitlines()[0]
    assert outputs[3].startswith("my program keeps eating")
    assert "A memory leak slowly consumes RAM" in outputs[3].splitlines()[1]
    assert "Proofing the dough" in outputs[5]
