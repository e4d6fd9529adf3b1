"""Fixtures for the onnx provider tests: a varied text set and sentence-transformers'
vectors for it (the reference, computed once per session with torch on the CPU)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig
from akidb_embed_onnx import OnnxEmbeddingProvider

_LONG_TEXT = (
    "retrieval augmented generation splits long documents into passages, embeds every "
    "passage, stores the vectors in an index and looks up the nearest ones for a query"
)


def varied_texts() -> list[str]:
    """At least 200 texts: empty, whitespace, emoji, CJK, accented, code, HTML, numbers,
    mixed scripts, very short, and many longer than 256 tokens."""
    fixed = [
        "",
        " ",
        "   \t\n ",
        "\n\n",
        "a",
        "I",
        "OK",
        "?",
        "!!!",
        "Thanks!",
        "yes",
        "no",
        "hello",
        "Hello, world.",
        "The quick brown fox jumps over the lazy dog.",
        "🚀",
        "😀😃😄😁😆",
        "I love pizza 🍕 and tacos 🌮!",
        "🇫🇷 🇯🇵 🇧🇷 flags and 👨‍👩‍👧‍👦 families",
        "東京は日本の首都です。",
        "北京是中国的首都，也是一个历史悠久的城市。",  # noqa: RUF001 (CJK punctuation)
        "서울은 대한민국의 수도입니다.",
        "日本語とEnglishが混ざった文章です。",
        "café, naïve, façade, résumé, coöperate",
        "Ærøskøbing ligger på Ærø i Danmark.",
        "Crème brûlée à la française, s'il vous plaît.",
        "Straße, Größe, Übermaß, Fußgängerzone",
        "mañana, señor, año nuevo, ¿qué tal?",
        "Ελληνικά γράμματα: αβγδε",
        "Русский текст: привет, как дела?",
        "مرحبا بالعالم، كيف حالك؟",
        "שלום עולם",
        "हिन्दी में एक वाक्य।",
        "ภาษาไทยเป็นภาษาที่สวยงาม",
        "Tiếng Việt có dấu rất nhiều.",
        "zero\u200bwidth space and combining e\u0301 accents",
        "def f(x):\n    return x ** 2  # square",
        "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
        "import numpy as np\nnp.linalg.norm(np.ones(3))",
        'fn main() { println!("hello"); }',
        "<p>Some <b>HTML</b> &amp; entities &lt;tag&gt;</p>",
        "<html><head><title>Page</title></head><body><div class='x'>Body</div></body></html>",
        '<a href="https://example.com/?q=1&amp;r=2">link</a>',
        "https://example.com/path/to/page?query=embedding&lang=en#section-2",
        "contact: jane.doe+news@example.org, +1 (555) 010-9999",
        "3.14159 2.71828 1.41421 1.61803",
        "2024-06-11T12:34:56Z",
        "$1,299.99 — 20% off until 31/12",
        "ALL CAPS SHOUTING HEADLINE",
        "MiXeD cAsE tExT",
        "tabs\tand\nnewlines\r\nmixed\ttogether",
        "word " * 5,
        "repeated repeated repeated repeated",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    ]
    rng = random.Random(1234)
    topics = [
        "The central bank kept interest rates unchanged this quarter.",
        "Researchers sequenced the genome of a rare deep-sea fish.",
        "Add the garlic to the pan and stir until golden.",
        "The train to the coast leaves every hour from platform four.",
        "Our team merged the patch that fixes the cache invalidation bug.",
        "The striker scored twice in the final ten minutes of the match.",
        "Volcanic ash grounded flights across northern Europe.",
        "The museum reopens next month with a new sculpture wing.",
    ]
    generated = []
    for i in range(110):
        n = rng.randint(1, 12)
        sentences = [rng.choice(topics) for _ in range(n)]
        if i % 5 == 0:
            sentences.insert(rng.randint(0, n), rng.choice(fixed[15:35]))
        generated.append(" ".join(sentences))
    long_texts = []
    for i in range(40):
        n = rng.randint(200, 700)
        pool = _LONG_TEXT.split()
        words = [pool[(i + j) % len(pool)] for j in range(n)]
        if i % 4 == 0:
            words[rng.randrange(n)] = "東京🚀café"
        long_texts.append(" ".join(words))
    texts = fixed + generated + long_texts
    assert len(texts) >= 200
    return texts


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return varied_texts()


@pytest.fixture(scope="session")
def st_model(minilm_dir: Path) -> Any:
    """sentence-transformers on torch CPU, loading the packaged safetensors weights."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="session")
def st_vectors(st_model: Any, texts: list[str]) -> np.ndarray:
    """sentence-transformers' vectors for ``texts`` (normalized, float32)."""
    out = st_model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    return np.asarray(out, dtype=np.float32)


@pytest.fixture(scope="session")
def onnx_provider(minilm_onnx_dir: Path) -> Iterator[OnnxEmbeddingProvider]:
    provider = OnnxEmbeddingProvider(EmbeddingConfig(provider="onnx", model=str(minilm_onnx_dir)))
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="session")
def int8_provider(minilm_onnx_int8_dir: Path) -> Iterator[OnnxEmbeddingProvider]:
    config = EmbeddingConfig(provider="onnx", model=str(minilm_onnx_int8_dir))
    provider = OnnxEmbeddingProvider(config)
    try:
        yield provider
    finally:
        provider.close()


class NetworkBlocked(AssertionError):
    """Raised by any attempt to open a network connection while ``no_network`` is on."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Make every socket connection fail, and record the attempts."""
    attempts: list[tuple[object, ...]] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise NetworkBlocked(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts
