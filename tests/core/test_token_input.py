"""Texts given as token ids: ``EmbeddingRequest(token_ids=...)`` and
``EmbeddingManager.embed_token_ids`` over the mock and the real ONNX model."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from akidb_embed import (
    EmbeddingConfig,
    EmbeddingManager,
    EmbeddingRequest,
    MockEmbeddingProvider,
    ModelInfo,
)
from akidb_embed.errors import (
    AkidbEmbedError,
    EmbeddingInputError,
    InvalidRequestError,
    TruncationError,
)
from akidb_embed.testing import ProviderConformance


def _mock_manager(**options: Any) -> EmbeddingManager:
    return EmbeddingManager.from_config(provider="mock", options=options)


@pytest.fixture
def manager() -> Iterator[EmbeddingManager]:
    with _mock_manager(max_tokens=8) as m:
        yield m


def _ok(outcome: object) -> Any:
    assert not isinstance(outcome, Exception), outcome
    return outcome


# --- the mock's token ids ---------------------------------------------------------------


def test_mock_ids_are_words(manager: EmbeddingManager) -> None:
    ids = [[101, 7592, 102], [5], [7, 7, 8]]
    got = manager.embed_token_ids(ids)
    want = manager.embed(["101 7592 102", "5", "7 7 8"])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.shape == (3, 384)
    provider = manager.provider
    assert isinstance(provider, MockEmbeddingProvider)
    assert provider.token_calls and all(
        isinstance(i, int) for row in provider.token_calls[0] for i in row
    )


def test_ids_accept_tuples_and_numpy(manager: EmbeddingManager) -> None:
    want = manager.embed_token_ids([[1, 2, 3], [4, 5, 6]])
    for ids in (
        ((1, 2, 3), (4, 5, 6)),
        np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64),
        [np.array([1, 2, 3], dtype=np.int32), [np.int64(4), 5, 6]],
    ):
        np.testing.assert_array_equal(manager.embed_token_ids(ids), want)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ("1 2 3", "sequence of sequences"),
        (5, "sequence of sequences"),
        ([1, 2, 3], r"token_ids\[0\] must be a sequence of ints"),
        ([[1, 2], "12"], r"token_ids\[1\] must be a sequence of ints"),
        ([[1, 2], []], r"token_ids\[1\] is empty"),
        ([[1, "2"]], r"token_ids\[0\] must hold ints, got str"),
        ([[1, 2.0]], r"token_ids\[0\] must hold ints, got float"),
        ([[1, True]], r"token_ids\[0\] must hold ints, got bool"),
        ([[1], [2, -3]], r"token_ids\[1\] holds a negative token id \(-3\)"),
        (np.zeros((2, 2), dtype=np.float32), "2-d array of ints"),
        (np.zeros(3, dtype=np.int64), "2-d array of ints"),
    ],
)
def test_malformed_ids_are_refused_when_the_request_is_built(ids: object, match: str) -> None:
    with pytest.raises(EmbeddingInputError, match=match):
        EmbeddingRequest(token_ids=ids)  # type: ignore[arg-type]


def test_ids_and_texts_or_a_prompt_do_not_mix() -> None:
    with pytest.raises(InvalidRequestError, match="not both"):
        EmbeddingRequest(["a text"], token_ids=[[1, 2]])
    with pytest.raises(InvalidRequestError, match="prompt"):
        EmbeddingRequest(token_ids=[[1, 2]], prompt_name="query")
    # "" asks for no prompt, which is what ids get anyway.
    assert EmbeddingRequest(token_ids=[[1, 2]], prompt_name="").token_ids == ((1, 2),)


def test_an_id_outside_the_vocabulary_names_the_row_of_its_own_request() -> None:
    with _mock_manager(vocab_size=1000) as m:
        # The provider sees the ids sorted by length, so its own index would be 1 here.
        results = m.embed_many(
            [
                EmbeddingRequest(token_ids=[[3, 4, 5]]),
                EmbeddingRequest(token_ids=[[3, 1000, 4], [1]]),
                EmbeddingRequest(token_ids=[[999, 0]]),
            ]
        )
        error = results[1]
        assert isinstance(error, EmbeddingInputError)
        assert "token id 1000 at index 0 is outside the vocabulary (0 to 999)" in str(error)
        np.testing.assert_array_equal(_ok(results[0]).embeddings, m.embed_token_ids([[3, 4, 5]]))
        np.testing.assert_array_equal(_ok(results[2]).embeddings, m.embed_token_ids([[999, 0]]))
        with pytest.raises(EmbeddingInputError, match="outside the vocabulary"):
            m.embed_token_ids([[2], [1, 5000]])


# --- usage and the truncation policy ------------------------------------------------------


def test_usage_counts_the_ids_exactly(manager: EmbeddingManager) -> None:
    (out,) = manager.embed_many([EmbeddingRequest(token_ids=[[1, 2, 3], [4], [5, 6]])])
    assert _ok(out).usage == {"texts": 3, "prompt_tokens": 6, "truncated": 0, "cached": 0}


def test_over_the_limit_with_truncation_error_names_the_row(manager: EmbeddingManager) -> None:
    long = list(range(1, 12))  # 11 ids, the limit is 8
    with pytest.raises(TruncationError) as info:
        manager.embed_token_ids([[1, 2], long], truncation="error")
    assert (info.value.index, info.value.tokens, info.value.max_tokens) == (1, 11, 8)
    strict = EmbeddingManager.from_config(
        provider="mock", options={"max_tokens": 8}, truncation="error"
    )
    with strict:
        with pytest.raises(TruncationError):
            strict.embed_token_ids([long])  # the config's policy is the default
        # The manager cuts ids itself, so a request may still ask for "truncate".
        assert strict.embed_token_ids([long], truncation="truncate").shape == (1, 384)


def test_over_the_limit_with_truncate_is_cut_and_counted(manager: EmbeddingManager) -> None:
    long = list(range(1, 12))
    (out,) = manager.embed_many([EmbeddingRequest(token_ids=[long, [1, 2]])])
    result = _ok(out)
    assert result.usage["truncated"] == 1 and result.usage["prompt_tokens"] == 8 + 2
    np.testing.assert_array_equal(result.embeddings[0], manager.embed_token_ids([long[:8]])[0])
    np.testing.assert_array_equal(
        result.embeddings[0], manager.embed([" ".join(map(str, long))])[0]
    )


class _Unnormalized(MockEmbeddingProvider):
    """The mock with vectors three times too long, declared as not normalised."""

    def info(self) -> ModelInfo:
        return dataclasses.replace(super().info(), normalized=False)

    def embed_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        return super().embed_token_ids(ids) * 3

    def embed_batch_with_usage(self, texts: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        vectors, usage = super().embed_batch_with_usage(texts)
        return vectors * 3, usage


def test_normalize_applies_to_ids() -> None:
    with EmbeddingManager(_Unnormalized(), EmbeddingConfig(provider="mock", model="mock")) as m:
        unit = m.embed_token_ids([[1, 2], [3]])
        raw = m.embed_token_ids([[1, 2], [3]], normalize=False)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 3.0, atol=1e-5)


# --- merging, caching, async, text-only providers ------------------------------------------


def test_ids_and_texts_merge_into_separate_provider_calls() -> None:
    with _mock_manager(max_tokens=8) as m:
        provider = m.provider
        assert isinstance(provider, MockEmbeddingProvider)
        requests = [
            EmbeddingRequest(["alpha beta", "gamma"]),
            EmbeddingRequest(token_ids=[[1, 2], [3]]),
            EmbeddingRequest(token_ids=[[4, 5, 6]], normalize=False),
            EmbeddingRequest(["delta"], normalize=False),
        ]
        m.clear_cache()
        alone = [m.embed_many([r])[0] for r in requests]
        m.clear_cache()
        provider.reset()
        together = m.embed_many(requests)
        # One call of texts and one of ids, each merging two requests.
        assert [sorted(c) for c in provider.calls] == [["alpha beta", "delta", "gamma"]]
        assert [sorted(c) for c in provider.token_calls] == [[[1, 2], [3], [4, 5, 6]]]
    for got, want in zip(together, alone, strict=True):
        np.testing.assert_array_equal(_ok(got).embeddings, _ok(want).embeddings)
        assert _ok(got).usage == _ok(want).usage


def test_ids_are_cached_apart_from_texts(manager: EmbeddingManager) -> None:
    provider = manager.provider
    assert isinstance(provider, MockEmbeddingProvider)
    first = _ok(manager.embed_many([EmbeddingRequest(token_ids=[[1, 2], [1, 2]])])[0])
    again = _ok(manager.embed_many([EmbeddingRequest(token_ids=[[1, 2]])])[0])
    assert len(provider.token_calls) == 1 and provider.token_calls[0] == [[1, 2]]
    assert again.usage["cached"] == 1 and again.usage["prompt_tokens"] == 2
    np.testing.assert_array_equal(first.embeddings[0], again.embeddings[0])
    text = _ok(manager.embed_many([EmbeddingRequest(["1 2"])])[0])
    assert text.usage["cached"] == 0 and provider.calls[-1] == ["1 2"]


def test_async_twin(manager: EmbeddingManager) -> None:
    got = asyncio.run(manager.aembed_token_ids([[9, 8, 7]], normalize=False))
    np.testing.assert_array_equal(got, manager.embed_token_ids([[9, 8, 7]], normalize=False))


def test_a_text_only_provider_says_so() -> None:
    with _mock_manager(token_input=False) as m:
        assert not m.capabilities.token_input
        with pytest.raises(InvalidRequestError, match=r"this provider \(mock\) takes text only"):
            m.embed_token_ids([[1, 2]])
        results = m.embed_many([EmbeddingRequest(token_ids=[[1]]), EmbeddingRequest(["fine"])])
        assert isinstance(results[0], InvalidRequestError)
        _ok(results[1])
        provider = m.provider
        assert isinstance(provider, MockEmbeddingProvider) and not provider.token_calls


def test_a_provider_failure_on_ids_is_typed_and_fails_alone() -> None:
    provider = MockEmbeddingProvider(fail_on=lambda text: "666" in text.split())
    with EmbeddingManager(provider) as m:
        results = m.embed_many(
            [EmbeddingRequest(token_ids=[[1, 666]]), EmbeddingRequest(token_ids=[[1, 2]])]
        )
        assert isinstance(results[0], AkidbEmbedError) and "embed_token_ids" in str(results[0])
        np.testing.assert_array_equal(_ok(results[1]).embeddings, m.embed(["1 2"]))


class TestTextOnlyMockConformance(ProviderConformance):
    """The mock declaring no token input is still a conforming provider."""

    def make_provider(self) -> MockEmbeddingProvider:
        return MockEmbeddingProvider(token_input=False)


# --- the real model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_manager(minilm_onnx_dir: Path) -> Iterator[EmbeddingManager]:
    pytest.importorskip("akidb_embed_onnx")
    with EmbeddingManager.from_config(
        provider="onnx", model=str(minilm_onnx_dir), cache_size=0
    ) as m:
        yield m


@pytest.fixture(scope="module")
def tokenizer(minilm_onnx_dir: Path) -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(minilm_onnx_dir / "tokenizer.json"))
    # The file pads and cuts to 128 for training; a client sends each text's own ids.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


SAMPLE = [
    "hello",
    "a somewhat longer sentence about vector databases",
    "Café crème, naïve façade",
    "東京は日本の首都です",
    "def f(x): return x ** 2  # code",
]


@pytest.mark.slow
def test_onnx_ids_give_the_texts_vectors(onnx_manager: EmbeddingManager, tokenizer: Any) -> None:
    ids = [tokenizer.encode(t).ids for t in SAMPLE]
    assert tokenizer.encode("hello").ids == [101, 7592, 102]
    (out,) = onnx_manager.embed_many([EmbeddingRequest(token_ids=ids)])
    result = _ok(out)
    np.testing.assert_allclose(result.embeddings, onnx_manager.embed(SAMPLE), atol=1e-5)
    assert result.usage["prompt_tokens"] == sum(map(len, ids))
    assert result.usage["prompt_tokens"] == sum(onnx_manager.count_tokens(SAMPLE) or [])
    np.testing.assert_allclose(
        np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5
    )  # the model normalises


@pytest.mark.slow
def test_onnx_ids_over_the_limit_and_outside_the_vocabulary(
    onnx_manager: EmbeddingManager, tokenizer: Any
) -> None:
    limit = onnx_manager.info.max_tokens
    assert limit == 256
    long = [101] + [2773] * 300 + [102]  # "[CLS] word x 300 [SEP]"
    with pytest.raises(TruncationError) as info:
        onnx_manager.embed_token_ids([[101, 102], long], truncation="error")
    assert (info.value.index, info.value.tokens, info.value.max_tokens) == (1, 302, 256)
    (out,) = onnx_manager.embed_many([EmbeddingRequest(token_ids=[long], truncation="truncate")])
    result = _ok(out)
    assert result.usage["truncated"] == 1 and result.usage["prompt_tokens"] == 256
    np.testing.assert_allclose(
        result.embeddings, onnx_manager.embed_token_ids([long[:256]]), atol=1e-6
    )
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    with pytest.raises(EmbeddingInputError, match=f"token id {vocab} at index 1 is outside"):
        onnx_manager.embed_token_ids([[101, 7592, 102], [101, vocab, 102]])
