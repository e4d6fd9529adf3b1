"""The onnx provider on the real all-MiniLM-L6-v2 weights, against sentence-transformers."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from akidb_embed import (
    BatchEmbeddingRequest,
    EmbeddingConfig,
    EmbeddingManager,
    ProviderCapabilities,
    available_providers,
    provider_capabilities,
)
from akidb_embed.backend import available_cores
from akidb_embed.errors import (
    ConfigTypeError,
    ConfigValueError,
    EmbeddingInputError,
    ExecutionProviderError,
    ModelNotFoundError,
    ProviderClosedError,
    ProviderError,
    TruncationError,
    UnknownConfigKeyError,
)
from akidb_embed.testing import ProviderConformance
from akidb_embed_onnx import OnnxEmbeddingProvider


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a64 * b64, axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def _linked_copy(src: Path, dst: Path) -> Path:
    """A folder of symlinks to *src*'s files, so a test can rename or edit a few."""
    for file in src.rglob("*"):
        if file.is_file():
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
    return dst


def _provider(model: Path, **kwargs: object) -> OnnxEmbeddingProvider:
    return OnnxEmbeddingProvider(EmbeddingConfig(provider="onnx", model=str(model), **kwargs))  # type: ignore[arg-type]


# --- parity with sentence-transformers ------------------------------------------------------


def test_fp32_matches_sentence_transformers_on_every_text(
    onnx_provider: OnnxEmbeddingProvider, texts: list[str], st_vectors: np.ndarray
) -> None:
    tokens = onnx_provider.text_lengths(texts)
    assert len(texts) >= 200
    assert sum(t == 256 for t in tokens) >= 30, "the set must hold texts past 256 tokens"
    vectors = onnx_provider.embed_batch(texts)
    cos = _cosines(vectors, st_vectors)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.9999, f"text {worst} ({texts[worst]!r:.60}): cosine {cos[worst]:.6f}"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_int8_keeps_quality_on_every_text(
    int8_provider: OnnxEmbeddingProvider, texts: list[str], st_vectors: np.ndarray
) -> None:
    assert int8_provider.info().dtype == "int8"
    cos = _cosines(int8_provider.embed_batch(texts), st_vectors)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.98, f"text {worst} ({texts[worst]!r:.60}): cosine {cos[worst]:.4f}"


def test_manager_gives_the_same_vectors(
    minilm_onnx_dir: Path, texts: list[str], st_vectors: np.ndarray
) -> None:
    sample = slice(0, None, 4)
    with EmbeddingManager.from_config(provider="onnx", model=str(minilm_onnx_dir)) as manager:
        vectors = manager.embed(texts[sample])
        assert manager.info.provider == "onnx"
    assert _cosines(vectors, st_vectors[sample]).min() >= 0.9999


def test_max_length_matches_sentence_transformers_at_that_length(
    minilm_onnx_dir: Path, st_model: object, texts: list[str]
) -> None:
    provider = _provider(minilm_onnx_dir, max_length=16)
    assert provider.info().max_tokens == 16
    sample = texts[:40] + texts[-10:]
    st_model.max_seq_length = 16  # type: ignore[attr-defined]
    try:
        expected = st_model.encode(sample, convert_to_numpy=True)  # type: ignore[attr-defined]
    finally:
        st_model.max_seq_length = 256  # type: ignore[attr-defined]
    assert _cosines(provider.embed_batch(sample), expected).min() >= 0.9999
    provider.close()


def test_max_length_above_the_models_limit_is_an_error(
    minilm_onnx_dir: Path, st_model: object
) -> None:
    # The default is max_seq_length (256); the ceiling is the model's 512 positions, as
    # sentence-transformers allows (the same rule as the mlx provider).
    assert _provider(minilm_onnx_dir).info().max_tokens == 256
    with pytest.raises(ConfigValueError, match="model's limit of 512 tokens") as info:
        _provider(minilm_onnx_dir, max_length=4096)
    assert info.value.key == "max_length"
    provider = _provider(minilm_onnx_dir, max_length=512)  # exactly the limit is fine
    assert provider.info().max_tokens == 512
    long_text = "the cat sat on the warm mat by the door " * 40  # 402 tokens
    vectors, usage = provider.embed_batch_with_usage([long_text])
    assert usage["truncated"] == 0 and usage["prompt_tokens"] > 256
    st_model.max_seq_length = 512  # type: ignore[attr-defined]
    try:
        expected = st_model.encode([long_text], convert_to_numpy=True)  # type: ignore[attr-defined]
    finally:
        st_model.max_seq_length = 256  # type: ignore[attr-defined]
    assert _cosines(vectors, expected).min() >= 0.9999
    provider.close()


@pytest.mark.parametrize("change", ["dense", "no_prompt_pooling"])
def test_pipelines_it_cannot_run_exactly_are_refused(
    minilm_onnx_dir: Path, tmp_path: Path, change: str
) -> None:
    folder = _linked_copy(minilm_onnx_dir, tmp_path / "changed")
    if change == "dense":
        path, dense = folder / "modules.json", "sentence_transformers.models.Dense"
        modules = json.loads(path.read_text())
        modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": dense})
        match = "Dense"
    else:
        path = folder / "1_Pooling" / "config.json"
        modules = {**json.loads(path.read_text()), "include_prompt": False}
        match = "include_prompt = false"
    path.unlink()
    path.write_text(json.dumps(modules))
    with pytest.raises(ProviderError, match=match):
        _provider(folder)


# --- batching, order, usage --------------------------------------------------------------------


def test_order_restored_and_batch_invariant(
    onnx_provider: OnnxEmbeddingProvider, texts: list[str]
) -> None:
    sample = texts[:60] + texts[-6:]
    reference = onnx_provider.embed_batch(sample)
    order = list(range(len(sample)))
    random.Random(5).shuffle(order)
    shuffled = onnx_provider.embed_batch([sample[i] for i in order])
    np.testing.assert_allclose(shuffled, reference[order], atol=1e-5)
    for i in (0, 1, 7, len(sample) - 1):
        np.testing.assert_allclose(
            onnx_provider.embed_batch([sample[i]])[0], reference[i], atol=1e-5
        )


def test_sub_batches_follow_batch_size(
    minilm_onnx_dir: Path, onnx_provider: OnnxEmbeddingProvider, texts: list[str]
) -> None:
    small = _provider(minilm_onnx_dir, batch_size=3)
    sample = texts[:30] + texts[-4:]
    np.testing.assert_allclose(
        small.embed_batch(sample), onnx_provider.embed_batch(sample), atol=1e-5
    )
    small.close()


def test_session_batch_size(
    minilm_onnx_dir: Path, onnx_provider: OnnxEmbeddingProvider, texts: list[str]
) -> None:
    assert onnx_provider.session_batch_size == 32  # default: batch_size
    wide = _provider(minilm_onnx_dir, options={"session_batch_size": 64})
    assert wide.session_batch_size == 32  # never above batch_size
    narrow = _provider(minilm_onnx_dir, options={"session_batch_size": 3})
    sample = texts[:40] + texts[-4:]
    np.testing.assert_allclose(
        narrow.embed_batch(sample), onnx_provider.embed_batch(sample), atol=1e-5
    )
    wide.close()
    narrow.close()


def _run_shapes(provider: OnnxEmbeddingProvider, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (texts, padded width) of every onnxruntime run *provider* makes."""
    shapes: list[tuple[int, int]] = []
    forward = provider._forward

    def spy(session: Any, rows: list[Any]) -> np.ndarray:
        shapes.append((len(rows), max(len(r) for r in rows)))
        return forward(session, rows)

    monkeypatch.setattr(provider, "_forward", spy)
    return shapes


@pytest.mark.parametrize("threads", [1, 2])
def test_runs_keep_within_the_token_budget(
    threads: int,
    minilm_onnx_dir: Path,
    texts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Short texts share a run up to ``session_batch_tokens`` padded tokens, long ones
    run in small runs or alone; the vectors do not depend on how runs are cut (fp32)."""
    budget = 96
    provider = _provider(
        minilm_onnx_dir, options={"threads": threads, "session_batch_tokens": budget}
    )
    assert provider.session_batch_tokens == budget
    shapes = _run_shapes(provider, monkeypatch)
    short = ["a query", "a short one", "one more", "the fourth text"] * 4
    sample = short + texts[-4:]  # the last texts are over 256 tokens: each runs alone
    random.Random(3).shuffle(sample)
    got = provider.embed_batch(sample)
    counts = provider.count_tokens(sample)
    assert sum(n for n, _ in shapes) == len(sample)
    assert all(n * width <= budget or n == 1 for n, width in shapes), shapes
    assert max(n for n, _ in shapes) > 8  # the short texts shared runs
    assert sum(1 for n, w in shapes if n == 1 and w > budget) == sum(c > budget for c in counts)
    whole = _provider(minilm_onnx_dir, options={"threads": threads, "session_batch_tokens": 10**6})
    np.testing.assert_allclose(got, whole.embed_batch(sample), atol=1e-5)
    whole.close()
    provider.close()


def test_concurrent_runs_default_to_int8_on_the_cpu(
    minilm_onnx_dir: Path, minilm_onnx_int8_dir: Path
) -> None:
    def runs(provider: OnnxEmbeddingProvider) -> tuple[int, int, int | None]:
        shape = (provider.concurrent_runs, provider.session_batch_size)
        return (*shape, provider.session_batch_tokens)

    fp32 = _provider(minilm_onnx_dir, options={"threads": 2})
    assert runs(fp32) == (1, 32, 512)
    fp32.close()
    int8 = _provider(minilm_onnx_int8_dir, options={"threads": 2})
    assert runs(int8) == (2, 32, 256)  # each single-threaded run takes half the tokens
    int8.close()
    single = _provider(minilm_onnx_int8_dir, options={"threads": 1})
    assert runs(single) == (1, 32, 512)
    single.close()
    capped = _provider(minilm_onnx_dir, options={"threads": 2, "concurrent_runs": 8})
    assert capped.concurrent_runs == 2  # never more runs than threads
    capped.close()


def test_concurrent_runs_split_a_call_across_the_threads(
    minilm_onnx_int8_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that would fit one run is cut into one run per thread, so no thread idles."""
    provider = _provider(minilm_onnx_int8_dir, options={"threads": 2})
    shapes = _run_shapes(provider, monkeypatch)
    provider.embed_batch([f"query number {i}" for i in range(10)])  # 10 x ~6 tokens
    assert sorted(n for n, _ in shapes) == [5, 5]
    shapes.clear()
    provider.embed_batch(["one query"])  # a query: the multi-threaded session, one run
    assert shapes == [(1, 4)]
    provider.close()


def test_spinning_reaches_every_session(minilm_onnx_int8_dir: Path, texts: list[str]) -> None:
    entries = {
        "in_run": {"session.force_spinning_stop": "1"},
        "never": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
    }
    every = {key for want in entries.values() for key in want}
    default = _provider(minilm_onnx_int8_dir, options={"threads": 2})
    want_vectors = default.embed_batch(texts[:12])

    def config_of(session: Any) -> dict[str, str]:
        found = {}
        for key in every:
            with contextlib.suppress(RuntimeError):  # absent: onnxruntime's default
                found[key] = session.get_session_options().get_session_config_entry(key)
        return found

    assert config_of(default._session) == {}  # "always": onnxruntime's own default
    default.close()
    for mode, want in entries.items():
        provider = _provider(minilm_onnx_int8_dir, options={"threads": 2, "spinning": mode})
        np.testing.assert_allclose(provider.embed_batch(texts[:12]), want_vectors, atol=1e-5)
        single, _ = provider._concurrent_pool()  # the int8 single-threaded session too
        for session in (provider._session, single):
            assert config_of(session) == want, mode
        provider.close()
    with pytest.raises(ConfigValueError, match="spinning"):
        _provider(minilm_onnx_int8_dir, options={"spinning": "sometimes"})


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_concurrent_runs_give_the_sequential_vectors(
    dtype: str, minilm_onnx_dir: Path, minilm_onnx_int8_dir: Path, texts: list[str]
) -> None:
    """Sub-batches run two at a time on a single-threaded session land in the caller's
    order and equal the same sub-batches run one after the other."""
    folder = minilm_onnx_dir if dtype == "fp32" else minilm_onnx_int8_dir
    threads_before = set(threading.enumerate())
    sample = texts[:60] + texts[-6:]
    random.Random(7).shuffle(sample)
    # The same runs either way (int8 vectors depend on which texts share a run).
    options = {"threads": 2, "session_batch_size": 3, "session_batch_tokens": 256}
    concurrent = _provider(folder, options={**options, "concurrent_runs": 2})
    sequential = _provider(folder, options={**options, "concurrent_runs": 1})
    got = concurrent.embed_batch(sample)
    want = sequential.embed_batch(sample)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A one-run call (a query) takes the multi-threaded session in both.
    np.testing.assert_allclose(
        concurrent.embed_batch(sample[:1]), sequential.embed_batch(sample[:1]), atol=1e-6
    )
    assert concurrent._pool is not None and sequential._pool is None
    sequential.close()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as callers:  # calls from several threads share the pool
        results = list(callers.map(concurrent.embed_batch, [sample] * 6))
    for result in results:
        np.testing.assert_allclose(result, want, atol=1e-5)
    concurrent.close()
    left = [t for t in set(threading.enumerate()) - threads_before if "akidb-embed" in t.name]
    assert not left  # close() joined the provider's run threads
    with pytest.raises(ProviderClosedError):
        concurrent.embed_batch(sample)


def test_text_lengths_are_token_counts(onnx_provider: OnnxEmbeddingProvider) -> None:
    assert onnx_provider.text_lengths(["", "hello world", "word " * 1000]) == [2, 4, 256]


def test_truncation_is_counted(minilm_onnx_dir: Path, texts: list[str]) -> None:
    long_texts = [t for t in texts if len(t.split()) > 300]
    short = ["short one", "another short text"]
    with EmbeddingManager.from_config(provider="onnx", model=str(minilm_onnx_dir)) as manager:
        response = manager.embed_batch(BatchEmbeddingRequest(None, long_texts + short))
        assert response.usage["truncated"] == len(long_texts)
        assert response.usage["prompt_tokens"] == 256 * len(long_texts) + 4 + 5
        assert manager.stats()["truncated"] == len(long_texts)
        _, usage = manager.provider.embed_batch_with_usage(short)  # type: ignore[attr-defined]
        assert usage == {"prompt_tokens": 9, "truncated": 0}


def test_count_tokens_counts_before_truncation(onnx_provider: OnnxEmbeddingProvider) -> None:
    texts = ["", "hello world", "word " * 300]
    assert onnx_provider.count_tokens(texts) == [2, 4, 302]
    assert onnx_provider.count_tokens(texts[2:]) == [302]
    assert onnx_provider.text_lengths(texts) == [2, 4, 256]  # after truncation


def test_declared_capabilities(onnx_provider: OnnxEmbeddingProvider) -> None:
    assert provider_capabilities(onnx_provider) == ProviderCapabilities(
        max_concurrency=1,
        reports_usage=True,
        counts_tokens=True,
        text_lengths=True,
        token_input=True,
    )


def test_token_ids_give_the_texts_vectors(
    onnx_provider: OnnxEmbeddingProvider, int8_provider: OnnxEmbeddingProvider, texts: list[str]
) -> None:
    sample = [*texts[:30], "", "hello world"]
    for provider in (onnx_provider, int8_provider):
        ids = [provider._tokenizer.encode(t).ids for t in sample]
        np.testing.assert_allclose(
            provider.embed_token_ids(ids), provider.embed_batch(sample), atol=1e-6
        )
    ids = onnx_provider._tokenizer.encode("one text").ids
    np.testing.assert_allclose(
        onnx_provider.embed_token_ids([np.array(ids)]),
        onnx_provider.embed_batch(["one text"]),
        atol=1e-6,
    )
    assert onnx_provider.embed_token_ids([]).shape == (0, 384)


def test_bad_token_ids_are_refused(onnx_provider: OnnxEmbeddingProvider) -> None:
    vocab = onnx_provider._tokenizer.get_vocab_size(with_added_tokens=True)
    for bad, match in [
        ("101 102", "sequence of sequences"),
        ([[101, "x", 102]], "must be ints"),
        ([[101, 1.0, 102]], "must be ints"),
        ([[101, True, 102]], "must be ints"),
        ([[101, 102], []], "index 1 are empty"),
        ([[101, vocab, 102]], f"token id {vocab} at index 0 is outside"),
        ([[101, -1, 102]], "outside the vocabulary"),
        ([101, 102], "index 0 must be a sequence"),
    ]:
        with pytest.raises(EmbeddingInputError, match=match):
            onnx_provider.embed_token_ids(bad)  # type: ignore[arg-type]
    with pytest.raises(TruncationError) as info:
        onnx_provider.embed_token_ids([[101, 102], [101] + [2773] * 300 + [102]])
    assert (info.value.index, info.value.tokens, info.value.max_tokens) == (1, 302, 256)


def test_truncation_error_names_index_and_token_count(minilm_onnx_dir: Path) -> None:
    provider = _provider(minilm_onnx_dir, truncation="error")
    long_text = "word " * 300  # 300 tokens + [CLS] + [SEP]
    with pytest.raises(TruncationError) as info:
        provider.embed_batch(["fine", "also fine", long_text])
    assert info.value.index == 2
    assert info.value.tokens == 302
    assert info.value.max_tokens == 256
    assert "index 2 has 302 tokens" in str(info.value)
    assert provider.embed_batch(["word " * 254]).shape == (1, 384)  # exactly 256: no error
    provider.close()


# --- options ------------------------------------------------------------------------------


def test_onnx_file_option(
    minilm_onnx_dir: Path, tmp_path: Path, onnx_provider: OnnxEmbeddingProvider
) -> None:
    folder = _linked_copy(minilm_onnx_dir, tmp_path / "repo")
    (folder / "onnx" / "model.onnx").rename(folder / "onnx" / "model_O2.onnx")
    with pytest.raises(ModelNotFoundError, match="onnx_file"):
        _provider(folder)
    for name in ("model_O2.onnx", "onnx/model_O2.onnx"):
        provider = _provider(folder, options={"onnx_file": name})
        assert provider.onnx_path.name == "model_O2.onnx"
        np.testing.assert_allclose(
            provider.embed_batch(["same file"]), onnx_provider.embed_batch(["same file"]), atol=1e-6
        )
        provider.close()
    with pytest.raises(ModelNotFoundError, match=r"model_qint8_avx512\.onnx"):
        _provider(folder, options={"onnx_file": "model_qint8_avx512.onnx"})


def test_model_onnx_at_the_root(minilm_onnx_dir: Path, tmp_path: Path) -> None:
    folder = _linked_copy(minilm_onnx_dir, tmp_path / "flat")
    (folder / "onnx" / "model.onnx").rename(folder / "model.onnx")
    provider = _provider(folder)
    assert provider.onnx_path == folder / "model.onnx"
    provider.close()


def test_unknown_execution_provider_is_an_error(minilm_onnx_dir: Path) -> None:
    with pytest.raises(ExecutionProviderError, match=r"CUDAExecutionProvider.*never falls back"):
        _provider(minilm_onnx_dir, options={"execution_providers": ["cuda"]})
    with pytest.raises(ExecutionProviderError, match="NoSuchExecutionProvider"):
        _provider(minilm_onnx_dir, options={"execution_providers": ["NoSuchExecutionProvider"]})


def test_explicit_cpu_and_threads(minilm_onnx_dir: Path) -> None:
    provider = _provider(minilm_onnx_dir, options={"execution_providers": ["cpu"], "threads": 1})
    assert provider.execution_providers == ["CPUExecutionProvider"]
    assert provider.threads == 1
    provider.close()
    default = _provider(minilm_onnx_dir)
    assert default.threads == available_cores()
    default.close()


def test_bad_options(minilm_onnx_dir: Path) -> None:
    with pytest.raises(UnknownConfigKeyError, match="Did you mean 'threads'"):
        _provider(minilm_onnx_dir, options={"thread": 2})
    with pytest.raises(ConfigTypeError):
        _provider(minilm_onnx_dir, options={"threads": "two"})
    with pytest.raises(ConfigTypeError):
        _provider(minilm_onnx_dir, options={"execution_providers": 3})
    with pytest.raises(ConfigValueError, match="concurrent_runs"):
        _provider(minilm_onnx_dir, options={"concurrent_runs": 0})


def test_prompts_from_the_model_config(
    minilm_onnx_dir: Path, tmp_path: Path, onnx_provider: OnnxEmbeddingProvider
) -> None:
    folder = _linked_copy(minilm_onnx_dir, tmp_path / "prompted")
    config = folder / "config_sentence_transformers.json"
    config.unlink()
    config.write_text(json.dumps({"prompts": {"query": "query: ", "document": "passage: "}}))
    provider = _provider(folder)
    assert provider.info().prompts == {"query": "query: ", "document": "passage: "}
    with EmbeddingManager(provider, EmbeddingConfig(provider="onnx", model=str(folder))) as manager:
        query = manager.embed_query("what is onnx")
        docs = manager.embed_documents(["onnx is a format"])
    expected = onnx_provider.embed_batch(["query: what is onnx", "passage: onnx is a format"])
    np.testing.assert_allclose(query, expected[0], atol=1e-5)
    np.testing.assert_allclose(docs[0], expected[1], atol=1e-5)


def test_info(onnx_provider: OnnxEmbeddingProvider, minilm_onnx_dir: Path) -> None:
    info = onnx_provider.info()
    assert (info.provider, info.dimension, info.max_tokens) == ("onnx", 384, 256)
    assert (info.pooling, info.normalized, info.dtype) == ("mean", True, "float32")
    assert info.model == str(minilm_onnx_dir)
    assert info.revision is None


def test_closed_provider_refuses_work(minilm_onnx_dir: Path) -> None:
    provider = _provider(minilm_onnx_dir)
    provider.close()
    provider.close()
    with pytest.raises(ProviderClosedError):
        provider.embed_batch(["too late"])
    with pytest.raises(ProviderClosedError):
        provider.embed_token_ids([[101, 102]])


def test_registered_through_the_entry_point() -> None:
    status = available_providers()["onnx"]
    assert status.loadable, status.reason
    assert status.distribution == "akidb-embed-onnx"


def test_import_is_light() -> None:
    code = (
        "import sys, akidb_embed, akidb_embed_onnx, akidb_embed_onnx._cli; "
        "heavy = [m for m in ('onnxruntime', 'tokenizers', 'huggingface_hub', 'torch', 'onnx') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == ""


# --- the conformance suite ---------------------------------------------------------------------


@pytest.fixture(scope="class")
def _onnx_dirs(minilm_onnx_dir: Path, minilm_onnx_int8_dir: Path) -> None:
    TestOnnxConformance.model_dir = minilm_onnx_dir
    TestOnnxInt8Conformance.model_dir = minilm_onnx_int8_dir


@pytest.mark.usefixtures("_onnx_dirs")
class TestOnnxConformance(ProviderConformance):
    model_dir: Path

    def make_provider(self) -> OnnxEmbeddingProvider:
        return _provider(self.model_dir)


@pytest.mark.usefixtures("_onnx_dirs")
class TestOnnxInt8Conformance(ProviderConformance):
    # Dynamic quantization scales activations per batch, so a text's vector moves a
    # little with its neighbours (never below the parity threshold).
    batch_atol = 0.02
    model_dir: Path

    def make_provider(self) -> OnnxEmbeddingProvider:
        return _provider(self.model_dir)


def test_configuration_guide_lists_every_option() -> None:
    """docs/configuration.md documents exactly the options this provider accepts."""
    import re

    from akidb_embed_onnx._provider import _OPTIONS

    guide = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    section = guide.read_text().split("## Options of the `onnx` provider", 1)[1]
    section = section.split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert sorted(documented) == sorted(_OPTIONS)
