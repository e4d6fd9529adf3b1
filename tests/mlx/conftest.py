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


_SEED_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "a",
    "OK",
    "Embeddings map text to vectors.",
    "How do I reset my password?",
    "What is the capital of Japan?",
    "東京は日本の首都です。",
    "北京是中国的首都，也是一座历史悠久的城市。",  # noqa: RUF001 - a real CJK comma
    "서울은 대한민국의 수도입니다.",
    "Ελληνικά και русский текст вместе",
    "Le café est délicieux, n'est-ce pas ? Ça dépend.",
    "Die Straße ist naß und übermäßig glatt.",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी में एक छोटा वाक्य",
    "emoji 🚀🔥 and accents: café, naïve, façade 👩‍💻",
    "zero\u200bwidth and combining e\u0301",
    "tabs\tand\nnewlines\r\nand   spaces",
    "def f(x):\n    return x ** 2  # code",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "<p>Some <b>HTML</b> &amp; entities</p>",
    "https://example.com/path?query=1&x=y#frag",
    "user@example.org wrote: >>> quoted text",
    "3.14159 2.71828 1.41421 6.02e23 -42 +7",
    "2024-06-11T12:34:56Z",
    "UPPERCASE TEXT SHOUTING LOUDLY",
    "MiXeD cAsE tExT",
    "!!! ??? ... --- ***",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "The the the the the the the the",
    "I love this product. It works great!",
    "I hate this product. It broke after a day.",
    "Interest rates rose in March.",
    "A cat sleeps on the sofa.",
    "Photosynthesis converts light energy into chemical energy.",
    "The mitochondria is the powerhouse of the cell.",
]

_WORDS = (  # noqa: SIM905 - a word list reads better as prose
    "server database index query cache thread recipe oven garlic bread train station "
    "museum river market bond stock inflation budget protein neuron galaxy planet orbit "
    "quickly slowly rarely often always the a an of to in on with without because "
    "deploys bakes visits raises measures observes compiles simmers crosses lowers "
    "ancient modern crispy scenic volatile stable quantum tender remote bright"
).split()


def varied_texts(n: int = 200, seed: int = 1234) -> list[str]:
    """A deterministic, varied text set: the hand-written seeds above (scripts, code,
    markup, numbers, empty and blank strings) plus word sequences of 1 to 400 words, a few
    longer than all-MiniLM-L6-v2's 256-token limit. Mostly short: MLX on Linux CPU is slow."""
    import random

    rng = random.Random(seed)
    texts = list(_SEED_TEXTS)
    while len(texts) < n:
        roll = rng.random()
        if roll < 0.02:
            length = rng.randint(280, 400)
        elif roll < 0.12:
            length = rng.randint(30, 60)
        else:
            length = rng.randint(1, 30)
        words = [rng.choice(_WORDS) for _ in range(length)]
        text = " ".join(words)
        if rng.random() < 0.3:
            text = text.capitalize() + rng.choice([".", "?", "!", ";", " :)", ""])
        if rng.random() < 0.1:
            text = text + " " + rng.choice(_SEED_TEXTS[8:20])
        texts.append(text)
    return texts[:n]


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return varied_texts()
