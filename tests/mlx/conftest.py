"""Fixtures for the MLX provider tests: a varied text set, and a tiny Qwen3 model with
random weights built offline (the hub is not reachable from CI)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

EOS = "<|endoftext|>"

# Texts the tiny tokenizer is trained on; it still has to handle any other text byte-wise.
_TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors, and vectors to neighbours.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query",
    "Query: what is the capital of Japan? 東京は日本の首都です。",
    "def f(x):\n    return x ** 2  # code",
    "<p>Some <b>HTML</b> &amp; entities</p> emoji 🚀 café naïve",
    "interest rates rose in March while a cat slept on the sofa",
]


def build_tiny_qwen3(
    out: Path, *, append_eos: bool = True, corpus: Iterable[str] = _TOKENIZER_CORPUS
) -> Path:
    """Save a 2-layer Qwen3 with random weights and a byte-level BPE tokenizer to *out*.

    Like Qwen3-Embedding's ``tokenizer.json``, the tokenizer appends ``<|endoftext|>`` to
    every text (unless *append_eos* is false) and pads with it on the left. Norm weights are
    randomised too (transformers initialises them to 1), so a norm that is not loaded shows.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=[EOS, "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer)
    eos_id = tokenizer.token_to_id(EOS)
    if append_eos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS}", pair=f"$A {EOS} $B:1 {EOS}:1", special_tokens=[(EOS, eos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS,
        pad_token=EOS,
        padding_side="left",
        model_max_length=512,
    )
    fast.save_pretrained(out)

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        initializer_range=0.05,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
    )
    model = Qwen3Model(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.3 * torch.randn_like(param))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny-qwen3")


@pytest.fixture(scope="session")
def texts(varied_texts: list[str]) -> list[str]:
    """The varied set the ONNX tests use (tests/conftest.py)."""
    return varied_texts
