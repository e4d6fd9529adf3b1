"""AkidbEmbeddingFunction with a real in-process Chroma: add + query, the fingerprint kept and
checked on reopening, the function rebuilt from the stored configuration, typed errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import chromadb
import pytest
from akidb_embed_chroma import FINGERPRINT_KEY, AkidbEmbeddingFunction, recorded_fingerprint
from chromadb.api.types import EmbeddingFunction
from chromadb.config import Settings
from chromadb.utils.embedding_functions import known_embedding_functions

from akidb_embed import (
    EmbeddingConfig,
    EmbeddingManager,
    MockEmbeddingProvider,
    ModelInfo,
    register_provider,
)
from akidb_embed.errors import (
    ConfigError,
    EmbeddingInputError,
    FingerprintMismatchError,
    InvalidRequestError,
    ProviderError,
    TruncationError,
)


def settings() -> Settings:
    # A fresh object each time: PersistentClient writes its path into the one it is given.
    return Settings(anonymized_telemetry=False, allow_reset=True)


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "chroma_search.py"
TEXTS = ["the cat sat on the mat", "stock prices fell sharply", "a recipe for tomato soup"]


@pytest.fixture
def client() -> Iterator[Any]:
    client = chromadb.EphemeralClient(settings=settings())
    yield client
    client.reset()  # the ephemeral system is shared within the process


def persistent(path: Path) -> Any:
    return chromadb.PersistentClient(str(path), settings=settings())


class PromptedMock(MockEmbeddingProvider):
    def info(self) -> ModelInfo:
        prompts = {"query": "query: ", "document": "passage: "}
        return dataclasses.replace(super().info(), prompts=prompts)


def test_registered_with_chroma_under_its_name() -> None:
    assert known_embedding_functions["akidb_embed"] is AkidbEmbeddingFunction
    with AkidbEmbeddingFunction(provider="mock") as ef:
        assert isinstance(ef, EmbeddingFunction)
        assert not ef.is_legacy()  # name, get_config and build_from_config all implemented
        assert ef.default_space() == "cosine" and "ip" in ef.supported_spaces()


def test_chromas_own_create_collection_add_and_query(client: Any, no_network: list[object]) -> None:
    with AkidbEmbeddingFunction(provider="mock") as ef:
        docs = client.create_collection("docs", embedding_function=ef)
        docs.add(ids=["a", "b", "c"], documents=TEXTS)
        found = docs.query(query_texts=["which cat sat on a mat"], n_results=1)
        assert found["documents"] == [["the cat sat on the mat"]]
        # Chroma keeps the function's configuration and the vectors' fingerprint.
        stored = docs.configuration_json["embedding_function"]
        assert stored["name"] == "akidb_embed"
        assert stored["config"]["fingerprint"] == ef.fingerprint
        assert recorded_fingerprint(docs) == ef.fingerprint
        assert docs.configuration_json["hnsw"]["space"] == "cosine"


def test_real_model_finds_the_answer(
    tmp_path: Path,
    minilm_onnx_dir: Path,
    corpus: list[str],
    paraphrases: dict[str, str],
    no_network: list[object],
) -> None:
    with AkidbEmbeddingFunction(provider="onnx", model=str(minilm_onnx_dir)) as ef:
        docs = ef.create_collection(persistent(tmp_path), "corpus")
        docs.add(ids=[str(i) for i in range(len(corpus))], documents=corpus)
        found = docs.query(query_texts=list(paraphrases), n_results=1)
        for answer, (text,) in zip(paraphrases.values(), found["documents"], strict=True):
            assert text.startswith(answer)
        assert json.loads(docs.metadata[FINGERPRINT_KEY]) == ef.fingerprint


def test_reopening_with_another_model_is_refused(tmp_path: Path, no_network: list[object]) -> None:
    with AkidbEmbeddingFunction(provider="mock") as ef:
        docs = ef.create_collection(persistent(tmp_path), "docs", metadata={"owner": "tests"})
        docs.add(ids=["a", "b", "c"], documents=TEXTS)
        assert docs.metadata["owner"] == "tests"
        assert json.loads(docs.metadata[FINGERPRINT_KEY]) == ef.fingerprint
    client = persistent(tmp_path)
    for other in ({"options": {"seed": 1}}, {"options": {"dimension": 64}}, {"max_length": 64}):
        with AkidbEmbeddingFunction(provider="mock", **other) as ef2:
            with pytest.raises(FingerprintMismatchError, match="collection 'docs'"):
                ef2.get_collection(client, "docs")
            with pytest.raises(FingerprintMismatchError):
                ef2.get_or_create_collection(client, "docs")
            # Chroma's own get_collection compares names only; check_collection does the rest.
            raw = client.get_collection("docs", embedding_function=ef2)
            with pytest.raises(FingerprintMismatchError):
                ef2.check_collection(raw)
    with AkidbEmbeddingFunction(provider="mock") as same:
        docs = same.get_collection(client, "docs")
        found = docs.query(query_texts=["stock prices"], n_results=1)
        assert found["documents"] == [["stock prices fell sharply"]]
        assert same.get_or_create_collection(client, "docs").count() == 3


def test_the_stored_fingerprint_is_checked_without_metadata(client: Any) -> None:
    # Created with Chroma's own API: the fingerprint is in the configuration Chroma kept.
    with AkidbEmbeddingFunction(provider="mock") as ef:
        client.create_collection("raw", embedding_function=ef)
    with (
        AkidbEmbeddingFunction(provider="mock", options={"seed": 9}) as other,
        pytest.raises(FingerprintMismatchError, match="seed-0' vs 'seed-9"),
    ):
        other.get_collection(client, "raw")


def test_swapping_the_function_of_a_collection_is_refused(client: Any) -> None:
    with AkidbEmbeddingFunction(provider="mock") as ef:
        docs = client.create_collection("docs", embedding_function=ef)
        with (
            AkidbEmbeddingFunction(provider="mock", options={"seed": 2}) as other,
            pytest.raises(FingerprintMismatchError),
        ):
            docs.modify(configuration={"embedding_function": other})


def test_opened_without_a_function_chroma_rebuilds_ours_offline(
    tmp_path: Path, no_network: list[object]
) -> None:
    with AkidbEmbeddingFunction(provider="mock", options={"dimension": 32}) as ef:
        ef.create_collection(persistent(tmp_path), "docs").add(ids=["a", "b", "c"], documents=TEXTS)
    # Chroma passes its DefaultEmbeddingFunction (which would download an ONNX model), but
    # prefers the function the collection was created with: ours, rebuilt from its config.
    docs = persistent(tmp_path).get_collection("docs")
    found = docs.query(query_texts=["tomato soup"], n_results=1)
    assert found["documents"] == [["a recipe for tomato soup"]]
    docs.add(ids=["d"], documents=["a new document"])
    assert docs.count() == 4


_DRIFT = {"revision": "v1"}


class DriftingMock(MockEmbeddingProvider):
    """A model whose files change between two runs (its revision is read when built)."""

    def info(self) -> ModelInfo:
        return dataclasses.replace(super().info(), revision=_DRIFT["revision"])


def test_a_rebuilt_function_whose_model_changed_refuses_to_embed(tmp_path: Path) -> None:
    register_provider("drifting", DriftingMock)
    try:
        with AkidbEmbeddingFunction(provider="drifting") as ef:
            ef.create_collection(persistent(tmp_path), "docs").add(ids=["a"], documents=["x"])
        _DRIFT["revision"] = "v2"
        AkidbEmbeddingFunction._rebuilt.clear()
        docs = persistent(tmp_path).get_collection("docs")
        with pytest.raises(FingerprintMismatchError, match="'v1' vs 'v2'"):
            docs.query(query_texts=["x"], n_results=1)  # raised as is, not as Chroma's ValueError
        with pytest.raises(FingerprintMismatchError):
            docs.add(ids=["b"], documents=["y"])
    finally:
        _DRIFT["revision"] = "v1"
        AkidbEmbeddingFunction._rebuilt.clear()


def test_config_keeps_no_secrets() -> None:
    options = {"dimension": 16, "api_key": "s3cret", "auth_token": "t", "seed": 1}
    with AkidbEmbeddingFunction(provider="mock", options=options) as ef:
        stored = ef.get_config()
    assert stored["config"]["options"] == {"dimension": 16, "seed": 1}
    assert "s3cret" not in json.dumps(stored)
    rebuilt = AkidbEmbeddingFunction.build_from_config(stored)
    assert rebuilt.fingerprint == stored["fingerprint"] and rebuilt.dimension == 16
    assert AkidbEmbeddingFunction.build_from_config(stored) is rebuilt  # one model per config
    with pytest.raises(ConfigError):
        AkidbEmbeddingFunction.build_from_config({"config": {"provider": "mock"}})


def test_built_from_a_manager_a_config_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, embedding_manager: EmbeddingManager
) -> None:
    ef = AkidbEmbeddingFunction(embedding_manager)
    assert ef.embedding_manager is embedding_manager
    ef.close()
    assert not embedding_manager.closed
    with pytest.raises(ConfigError, match="not both"):
        AkidbEmbeddingFunction(embedding_manager, provider="mock")
    with AkidbEmbeddingFunction(config=EmbeddingConfig(provider="mock"), batch_size=5) as ef:
        assert ef.embedding_manager.config.batch_size == 5
    monkeypatch.setenv("AKIDB_EMBEDDING_PROVIDER", "mock")
    monkeypatch.setenv("AKIDB_EMBEDDING_OPTIONS", '{"dimension": 8}')
    with AkidbEmbeddingFunction() as ef:
        assert ef.dimension == 8 and len(ef(["a"])[0]) == 8


def test_document_and_query_prompts(client: Any) -> None:
    provider = PromptedMock()
    with EmbeddingManager(provider) as manager:
        docs = client.create_collection("docs", embedding_function=AkidbEmbeddingFunction(manager))
        docs.add(ids=["a"], documents=["the cat sat"])
        docs.query(query_texts=["where is the cat"], n_results=1)
    assert provider.texts == ["passage: the cat sat", "query: where is the cat"]


def test_errors_reach_the_caller_typed_and_unwrapped(client: Any) -> None:
    provider = MockEmbeddingProvider(fail_on={"poison"}, max_tokens=4)
    config = EmbeddingConfig(provider="mock", truncation="error")
    with EmbeddingManager(provider, config) as manager:
        ef = AkidbEmbeddingFunction(manager)
        docs = client.create_collection("docs", embedding_function=ef)
        with pytest.raises(ProviderError):
            docs.add(ids=["a", "b"], documents=["fine", "poison"])
        with pytest.raises(TruncationError) as info:
            docs.add(ids=["a", "b"], documents=["fine", "one two three four five six"])
        assert info.value.index == 1
        with pytest.raises(TruncationError):
            docs.query(query_texts=["one two three four five six"], n_results=1)
        assert docs.count() == 0  # nothing half-written
        with pytest.raises(InvalidRequestError):
            ef([])  # Chroma's protocol has no empty result
        with pytest.raises(EmbeddingInputError):
            ef("a single string")  # type: ignore[arg-type]
        with pytest.raises(EmbeddingInputError):
            ef(["ok", None])  # type: ignore[list-item]
        assert len(ef([""])[0]) == 384  # the empty string has a vector


def test_the_example_runs_as_a_user_would(
    tmp_path: Path,
    minilm_onnx_dir: Path,
    paraphrases: dict[str, str],
    run_example: Callable[..., str],
) -> None:
    env = {"AKIDB_EMBEDDING_PROVIDER": "onnx", "AKIDB_EMBEDDING_MODEL": str(minilm_onnx_dir)}
    path = str(tmp_path / "chroma")
    out = run_example("chroma_search.py", "--path", path, *paraphrases, env=env)
    assert "added 273 documents" in out and "(384-d)" in out
    for question, answer in paraphrases.items():
        assert answer in out.split(question, 1)[1].split("\n")[1], out
    # Another model on the same collection: refused, and the collection left as it was.
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--path", path],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AKIDB_EMBEDDING_PROVIDER": "mock"},
    )
    assert proc.returncode == 1
    assert "FingerprintMismatchError" in proc.stderr and "'onnx' vs 'mock'" in proc.stderr
    assert "reused 273 documents" in run_example("chroma_search.py", "--path", path, env=env)


def test_a_fresh_process_needs_only_the_import(tmp_path: Path) -> None:
    with AkidbEmbeddingFunction(provider="mock") as ef:
        ef.create_collection(persistent(tmp_path), "docs").add(ids=["a", "b", "c"], documents=TEXTS)
    # Without the import Chroma cannot rebuild the function: it says so (and falls back on
    # nothing); after it, the collection works.
    script = textwrap.dedent(
        """
        import sys, chromadb
        from chromadb.config import Settings
        settings = Settings(anonymized_telemetry=False)
        client = chromadb.PersistentClient(sys.argv[1], settings=settings)
        try:
            client.get_collection("docs").query(query_texts=["tomato soup"], n_results=1)
        except ValueError as exc:
            print("refused:", exc)
        import akidb_embed_chroma
        found = client.get_collection("docs").query(query_texts=["tomato soup"], n_results=1)
        print(found["documents"][0][0])
        """
    )
    out = subprocess.check_output([sys.executable, "-c", script, str(tmp_path)], text=True)
    refused, found = out.strip().splitlines()
    assert refused.startswith("refused:") and "akidb_embed" in refused
    assert found == TEXTS[2]
