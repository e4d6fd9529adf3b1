"""The remote provider passes ProviderConformance against real servers, through each API,
and its vectors equal the in-process manager's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager, EmbeddingRequest
from akidb_embed.remote import RemoteEmbeddingProvider
from akidb_embed.testing import ProviderConformance, conformance_texts

if TYPE_CHECKING:  # the class behind the server fixtures of conftest.py
    from conftest import Served

TEXTS = [*conformance_texts(), "word " * 40, "a somewhat longer sentence about vector databases"]


class _Remote(ProviderConformance):
    api = "akidb"
    url = ""

    def make_provider(self) -> RemoteEmbeddingProvider:
        return RemoteEmbeddingProvider(url=self.url, api=self.api)


@pytest.fixture(scope="class")
def _mock_url(request: pytest.FixtureRequest, mock_server: Served) -> None:
    request.cls.url = mock_server.url


@pytest.fixture(scope="class")
def _onnx_url(request: pytest.FixtureRequest, onnx_server: Served) -> None:
    request.cls.url = onnx_server.url


@pytest.mark.usefixtures("_mock_url")
class TestAkidbApiConformance(_Remote):
    api = "akidb"


@pytest.mark.usefixtures("_mock_url")
class TestOpenAIApiConformance(_Remote):
    api = "openai"


@pytest.mark.usefixtures("_mock_url")
class TestTeiApiConformance(_Remote):
    api = "tei"


@pytest.mark.slow
@pytest.mark.usefixtures("_onnx_url")
class TestOnnxServerConformance(_Remote):
    """The real model behind the server (akidb API: raw vectors, the client normalises)."""

    api = "akidb"


def _remote(url: str, api: str, **options: object) -> EmbeddingManager:
    config = EmbeddingConfig(provider="remote", cache_size=0, options={"url": url, "api": api})
    return EmbeddingManager(RemoteEmbeddingProvider(config, **options), config)


@pytest.fixture(scope="module")
def mock_manager() -> Iterator[EmbeddingManager]:
    with EmbeddingManager.from_config(provider="mock", cache_size=0) as m:
        yield m


@pytest.fixture(scope="module")
def onnx_manager(minilm_onnx_dir: Path) -> Iterator[EmbeddingManager]:
    with EmbeddingManager.from_config(
        provider="onnx", model=str(minilm_onnx_dir), cache_size=0
    ) as m:
        yield m


@pytest.mark.parametrize("api", ["akidb", "openai", "tei"])
def test_vectors_equal_in_process_mock(
    mock_server: Served, mock_manager: EmbeddingManager, api: str
) -> None:
    with _remote(mock_server.url, api) as remote:
        for normalize in (True, False):
            got = remote.embed(TEXTS, normalize=normalize)
            want = mock_manager.embed(TEXTS, normalize=normalize)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("api", ["akidb", "openai", "tei"])
def test_vectors_equal_in_process_onnx(
    onnx_server: Served, onnx_manager: EmbeddingManager, api: str
) -> None:
    with _remote(onnx_server.url, api) as remote:
        got = remote.embed(TEXTS)
        np.testing.assert_allclose(got, onnx_manager.embed(TEXTS), rtol=0, atol=1e-6)
        if api != "openai":  # the OpenAI API always answers the server's normalised vectors
            raw = remote.embed(TEXTS, normalize=False)
            want = onnx_manager.embed(TEXTS, normalize=False)
            np.testing.assert_allclose(raw, want, rtol=0, atol=1e-5)
        assert remote.info.dimension == onnx_manager.info.dimension == 384


@pytest.mark.slow
def test_akidb_api_keeps_the_served_fingerprint(
    onnx_server: Served, onnx_manager: EmbeddingManager
) -> None:
    # The same model in-process and behind the server: vectors can share an index.
    with _remote(onnx_server.url, "akidb") as remote:
        assert remote.info.fingerprint() == onnx_manager.info.fingerprint()


def test_usage_and_per_request_options(mock_server: Served, mock_manager: EmbeddingManager) -> None:
    with _remote(mock_server.url, "akidb") as remote:
        caps = remote.capabilities
        assert caps.reports_usage and caps.max_concurrency == 8
        assert caps.max_batch_size == 2048  # the server's max_client_batch_size, from /info
        (result,) = remote.embed_many([EmbeddingRequest(["three little words", "two words"])])
        assert not isinstance(result, Exception)
        assert result.usage["prompt_tokens"] == 5 and result.usage["texts"] == 2


def test_client_side_split_respects_batch_size(
    mock_server: Served, mock_manager: EmbeddingManager
) -> None:
    texts = [f"text number {i}" for i in range(23)]
    provider = RemoteEmbeddingProvider(url=mock_server.url, batch_size=5)
    try:
        before = provider.stats["requests"]
        vectors, usage = provider.embed_batch_with_usage(texts)
        assert provider.stats["requests"] - before == 5  # ceil(23 / 5) requests, in order
        np.testing.assert_allclose(vectors, mock_manager.embed(texts), rtol=0, atol=1e-6)
        assert usage["prompt_tokens"] == 3 * 23
        assert provider.embed_batch([]).shape == (0, 384)
    finally:
        provider.close()
