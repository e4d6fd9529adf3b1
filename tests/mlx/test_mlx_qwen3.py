"""The MLX provider on a tiny random Qwen3, against transformers' own Qwen3 forward pass,
and on MLX-quantized copies of it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager
from akidb_embed.errors import ProviderError
from akidb_embed.testing import ProviderConformance
from akidb_embed_mlx import MLXEmbeddingProvider, quantize_checkpoint

SAMPLE = [
    "The quick brown fox jumps over the lazy dog.",
    "hello",
    "",
    "東京は日本の首都です。 emoji 🚀",
    "def f(x):\n    return x ** 2  # code",
    "Instruct: Given a web search query, retrieve relevant passages\nQuery:what is MLX?",
    "interest rates rose in March " * 12,
]


def _provider(model: Path, **options: object) -> MLXEmbeddingProvider:
    return MLXEmbeddingProvider(EmbeddingConfig(provider="mlx", model=str(model), options=options))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def provider(tiny_qwen3: Path) -> Iterator[MLXEmbeddingProvider]:
    p = _provider(tiny_qwen3)
    yield p
    p.close()


def _transformers_last_token(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Qwen3-Embedding's reference recipe: left padding, last-token pooling, L2 norm."""
    import torch
    from transformers import AutoTokenizer, Qwen3Model

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = Qwen3Model.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    assert (batch["input_ids"][:, -1] == tokenizer.eos_token_id).all()
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    vectors = states[:, -1]
    return torch.nn.functional.normalize(vectors, p=2, dim=1).numpy()


def test_matches_transformers(provider: MLXEmbeddingProvider, tiny_qwen3: Path) -> None:
    expected = _transformers_last_token(tiny_qwen3, SAMPLE)
    got = provider.embed_batch(SAMPLE)
    cosine = _cosines(got, expected)
    print(f"\nQwen3 float32, MLX vs transformers: min cosine {cosine.min():.7f}")
    assert cosine.min() >= 0.9999, cosine
    # The vectors are not all alike: a broken attention would make them so.
    assert _cosines(got[:1], got[1:2])[0] < 0.99


def test_left_and_right_padding_agree(provider: MLXEmbeddingProvider, tiny_qwen3: Path) -> None:
    right = _provider(tiny_qwen3, padding_side="right")
    left = _provider(tiny_qwen3, padding_side="left")
    try:
        a, b = left.embed_batch(SAMPLE), right.embed_batch(SAMPLE)
    finally:
        left.close()
        right.close()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    alone = np.stack([provider.embed_batch([t])[0] for t in SAMPLE])
    np.testing.assert_allclose(a, alone, rtol=0, atol=1e-5)


def test_info_and_query_prompt(provider: MLXEmbeddingProvider) -> None:
    info = provider.info()
    assert (info.pooling, info.normalized, info.dimension) == ("lasttoken", True, 128)
    prompt = (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query"
        "\nQuery:"
    )
    assert info.prompts == {"query": prompt}
    manager = EmbeddingManager(provider, EmbeddingConfig(provider="mlx", model=info.model))
    query = manager.embed_query("what is MLX?")
    np.testing.assert_allclose(query, provider.embed_batch([prompt + "what is MLX?"])[0], atol=1e-6)
    documents = manager.embed_documents(["what is MLX?"])
    assert float(documents[0] @ query) < 0.9999


def test_query_instruction_option(tiny_qwen3: Path) -> None:
    p = _provider(tiny_qwen3, query_instruction="Find code that does the same")
    try:
        assert p.info().prompts == {"query": "Instruct: Find code that does the same\nQuery:"}
    finally:
        p.close()


def test_eos_appended_when_tokenizer_lacks_it(
    provider: MLXEmbeddingProvider, tiny_qwen3: Path, tmp_path: Path
) -> None:
    # Older Qwen3-Embedding tokenizers did not append <|endoftext|>; the model card did.
    copy = Path(shutil.copytree(tiny_qwen3, tmp_path / "no-eos"))
    data = json.loads((copy / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = None
    (copy / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    p = _provider(copy)
    try:
        np.testing.assert_allclose(p.embed_batch(SAMPLE), provider.embed_batch(SAMPLE), atol=1e-6)
        assert p.text_lengths(["hello"]) == provider.text_lengths(["hello"])
    finally:
        p.close()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(provider: MLXEmbeddingProvider, tiny_qwen3: Path, dtype: str) -> None:
    p = _provider(tiny_qwen3, dtype=dtype)
    try:
        cosine = _cosines(p.embed_batch(SAMPLE), provider.embed_batch(SAMPLE))
    finally:
        p.close()
    print(f"\nQwen3 {dtype} vs float32: min cosine {cosine.min():.6f}")
    assert cosine.min() >= 0.999


@pytest.fixture(scope="module")
def quantized(tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("quantized")
    return {
        bits: quantize_checkpoint(tiny_qwen3, root / f"tiny-qwen3-{bits}bit", bits=bits)
        for bits in (8, 4)
    }


def test_quantized_checkpoint_layout(quantized: dict[int, Path]) -> None:
    import mlx.core as mx

    folder = quantized[4]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    names = set(mx.load(str(folder / "model.safetensors")))
    for stem in (
        "model.embed_tokens",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ):
        assert {f"{stem}.weight", f"{stem}.scales", f"{stem}.biases"} <= names
    assert "model.norm.weight" in names
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()


@pytest.mark.parametrize(("bits", "floor"), [(8, 0.99), (4, 0.9)])
def test_quantized_close_to_full_precision(
    provider: MLXEmbeddingProvider, quantized: dict[int, Path], bits: int, floor: float
) -> None:
    p = _provider(quantized[bits])
    try:
        layer = p._model.module.layers[0]
        assert type(layer.mlp.gate_proj).__name__ == "QuantizedLinear"
        assert p.info().dtype == f"q{bits}-float32"
        cosine = _cosines(p.embed_batch(SAMPLE), provider.embed_batch(SAMPLE))
    finally:
        p.close()
    print(
        f"\nQwen3 {bits}-bit (group 64) vs float32: min cosine {cosine.min():.5f}, "
        f"mean {cosine.mean():.5f}"
    )
    assert cosine.min() >= floor


def test_quantize_refuses_to_overwrite(tiny_qwen3: Path, quantized: dict[int, Path]) -> None:
    before = (quantized[8] / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ValueError, match="already exists"):
        quantize_checkpoint(tiny_qwen3, quantized[8], bits=8)
    assert (quantized[8] / "model.safetensors").stat().st_mtime_ns == before


def test_foreign_quantization_refused(tiny_qwen3: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_qwen3, tmp_path / "gptq"))
    config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (copy / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ProviderError, match="gptq"):
        _provider(copy)


class TestMLXQwen3Conformance(ProviderConformance):
    model_dir: Path

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _model(cls, tiny_qwen3: Path) -> None:
        cls.model_dir = tiny_qwen3

    def make_provider(self) -> MLXEmbeddingProvider:
        return _provider(self.model_dir)


def test_quantize_command(
    tiny_qwen3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from akidb_embed_mlx._cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "q8"
    args = parser.parse_args(["mlx-quantize", str(tiny_qwen3), str(out), "--bits", "8"])
    assert args.func(args) == 0
    assert "8-bit" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["quantization"] == {"group_size": 64, "bits": 8, "mode": "affine"}


def test_sentence_transformers_layout(
    provider: MLXEmbeddingProvider, tiny_qwen3: Path, tmp_path: Path
) -> None:
    # Qwen3-Embedding's own files: last-token pooling, Normalize, and its prompts.
    copy = Path(shutil.copytree(tiny_qwen3, tmp_path / "st"))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (copy / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (copy / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 128, "pooling_mode_lasttoken": True}
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling), encoding="utf-8")
    prompts = {"query": "Instruct: Find the answer\nQuery:", "document": ""}
    (copy / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": prompts, "default_prompt_name": None}), encoding="utf-8"
    )
    (copy / "sentence_bert_config.json").write_text('{"max_seq_length": 64}', encoding="utf-8")
    p = _provider(copy)
    try:
        info = p.info()
        got = p.embed_batch(SAMPLE[:4])
    finally:
        p.close()
    assert (info.pooling, info.normalized, info.max_tokens) == ("lasttoken", True, 64)
    assert info.prompts == prompts
    np.testing.assert_allclose(got, provider.embed_batch(SAMPLE[:4]), atol=1e-6)


def test_small_batches_match(provider: MLXEmbeddingProvider, tiny_qwen3: Path) -> None:
    small = MLXEmbeddingProvider(
        EmbeddingConfig(provider="mlx", model=str(tiny_qwen3), batch_size=2)
    )
    try:
        vectors, usage = small.embed_batch_with_usage(SAMPLE)
    finally:
        small.close()
    expected, expected_usage = provider.embed_batch_with_usage(SAMPLE)
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)
    assert usage == expected_usage and usage["prompt_tokens"] > len(SAMPLE)
