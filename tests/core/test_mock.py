from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, MockEmbeddingProvider
from akidb_embed.mock import MockProviderFailure

SCRIPT = """
import hashlib, json, sys
from akidb_embed import MockEmbeddingProvider
out = MockEmbeddingProvider().embed_batch(json.loads(sys.argv[1]))
print(hashlib.sha256(out.tobytes()).hexdigest())
"""
TEXTS = ["hello world", "", "Ünïcødé 東京 🚀", "the cat sat on the mat"]


def digest(out: np.ndarray) -> str:
    return hashlib.sha256(out.astype("<f4").tobytes()).hexdigest()


def test_deterministic_across_processes_and_hash_seeds() -> None:
    here = digest(MockEmbeddingProvider().embed_batch(TEXTS))
    for seed in ("0", "1", "12345"):
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, json.dumps(TEXTS)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        assert result.stdout.strip() == here


def test_golden_values() -> None:
    # Fixed values: the mock must give these on every machine and Python version
    # (BLAKE2b-derived directions, float64 accumulation, float32 output).
    out = MockEmbeddingProvider().embed_batch(["hello world"])[0]
    np.testing.assert_allclose(
        out[:4],
        [0.0905778557062149, -0.004646850749850273, -0.02305314689874649, 0.10939373075962067],
        rtol=0,
        atol=1e-7,
    )


def test_a_bool_is_not_a_dimension() -> None:
    with pytest.raises(TypeError, match="not a bool"):
        MockEmbeddingProvider(True)  # type: ignore[arg-type]
    assert MockEmbeddingProvider(5).info().dimension == 5


def test_unit_norm_and_dimension() -> None:
    out = MockEmbeddingProvider(dimension=17).embed_batch(TEXTS)
    assert out.shape == (4, 17) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)


def test_shared_words_are_closer() -> None:
    a, b, c = MockEmbeddingProvider().embed_batch(
        ["the quick brown fox", "a quick brown dog", "interest rates and inflation"]
    )
    assert a @ b > 0.3
    assert abs(a @ c) < 0.2
    assert a @ b > a @ c + 0.2


def test_seed_changes_the_space() -> None:
    a = MockEmbeddingProvider(seed=0).embed_batch(["x"])
    b = MockEmbeddingProvider(seed=1).embed_batch(["x"])
    assert not np.allclose(a, b)


def test_records_calls() -> None:
    provider = MockEmbeddingProvider()
    provider.embed_batch(["a", "b"])
    provider.embed_batch(["c"])
    assert provider.calls == [["a", "b"], ["c"]] and provider.call_count == 2
    assert provider.texts == ["a", "b", "c"]
    provider.reset()
    assert provider.calls == []


def test_failure_injection() -> None:
    every = MockEmbeddingProvider(fail_every=2)
    every.embed_batch(["1"])
    with pytest.raises(MockProviderFailure, match="call 2"):
        every.embed_batch(["2"])
    every.embed_batch(["3"])

    on_text = MockEmbeddingProvider(fail_on=lambda t: "poison" in t, failure=ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        on_text.embed_batch(["ok", "poisoned text"])


def test_latency_injection() -> None:
    import time

    provider = MockEmbeddingProvider(latency=0.05)
    start = time.perf_counter()
    provider.embed_batch(["x"])
    assert time.perf_counter() - start >= 0.05


def test_from_config_options() -> None:
    config = EmbeddingConfig(
        provider="mock", model="my-mock", options={"dimension": 32, "seed": 3, "latency": 0}
    )
    provider = MockEmbeddingProvider(config)
    info = provider.info()
    assert info.dimension == 32 and info.model == "my-mock" and info.normalized
    assert MockEmbeddingProvider(8).info().dimension == 8


def test_truncation_is_counted() -> None:
    provider = MockEmbeddingProvider(max_tokens=2)
    _, usage = provider.embed_batch_with_usage(["one two three", "one"])
    assert usage == {"prompt_tokens": 3, "truncated": 1}


def test_closed_provider_refuses() -> None:
    provider = MockEmbeddingProvider()
    provider.close()
    provider.close()
    with pytest.raises(RuntimeError, match="closed"):
        provider.embed_batch(["x"])
