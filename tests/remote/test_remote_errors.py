"""Retries, back-off and typed errors of the remote provider, against real servers on
loopback (and a loopback proxy for what the server itself does not answer yet)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager
from akidb_embed.errors import (
    ConfigError,
    InvalidRequestError,
    ModelMismatchError,
    ProviderBusyError,
    ProviderClosedError,
    ProviderError,
    ProviderOutputError,
    TruncationError,
    UnknownConfigKeyError,
)
from akidb_embed.remote import (
    API_KEY_ENV,
    RemoteAuthError,
    RemoteBusyError,
    RemoteConfigError,
    RemoteConnectionError,
    RemoteEmbeddingProvider,
    RemoteError,
    RemoteInputError,
    RemoteModelError,
    RemoteResponseError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)

if TYPE_CHECKING:  # the classes behind the fixtures of conftest.py
    from conftest import Proxy, Served


# -- retries -----------------------------------------------------------------------------


def test_429_with_retry_after_is_waited_out_then_succeeds(proxy: Proxy) -> None:
    provider = RemoteEmbeddingProvider(url=proxy.url)
    try:
        busy = {"error": {"message": "queue full", "type": "rate_limit_error", "code": "x"}}
        proxy.failures.append((429, {"Retry-After": "1"}, busy))
        start = time.monotonic()
        out = provider.embed_batch(["hello world"])
        elapsed = time.monotonic() - start
        calls = proxy.embed_calls()
        assert len(calls) == 2 and calls[1].at - calls[0].at >= 0.95, "Retry-After not honoured"
        assert elapsed < 5
        assert provider.stats["retries"] == 1
        assert out.shape == (1, 384) and np.isfinite(out).all()
    finally:
        provider.close()


def test_503_without_retry_after_backs_off_then_succeeds(proxy: Proxy) -> None:
    provider = RemoteEmbeddingProvider(url=proxy.url, max_retries=3)
    try:
        down = {"error": {"message": "draining", "type": "server_error", "code": "unavailable"}}
        proxy.failures.extend([(503, {}, down), (503, {}, down)])
        provider.embed_batch(["hello"])
        assert provider.stats["retries"] == 2 and len(proxy.embed_calls()) == 3
    finally:
        provider.close()


def test_429_through_every_retry_is_a_busy_error_with_the_server_message(proxy: Proxy) -> None:
    provider = RemoteEmbeddingProvider(url=proxy.url, max_retries=2, max_retry_wait=0.2)
    try:
        busy = {"error": {"message": "queue is full (2 texts)", "type": "rate_limit_error"}}
        # Retry-After asks for 100 s: each wait is bounded by max_retry_wait.
        proxy.failures.extend([(429, {"Retry-After": "100"}, busy)] * 3)
        start = time.monotonic()
        with pytest.raises(RemoteBusyError) as caught:
            provider.embed_batch(["hello"])
        assert time.monotonic() - start < 3
        error = caught.value
        assert isinstance(error, ProviderBusyError) and isinstance(error, TimeoutError)
        assert error.status == 429 and error.attempts == 3
        assert error.server_message == "queue is full (2 texts)"
        assert "queue is full" in str(error) and "HTTP 429" in str(error)
    finally:
        provider.close()


def test_real_server_overload_is_retried_until_every_request_succeeds(
    slow_server: Served,
) -> None:
    provider = RemoteEmbeddingProvider(url=slow_server.url, max_retries=20, max_retry_wait=2)
    texts = [[f"client {i} text one", f"client {i} text two"] for i in range(8)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = provider.embed_batch(texts[i])
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        if errors:
            raise errors[0]
        assert len(results) == 8
        # The server's queue holds 2 texts: most of the 8 clients met a 429 at first.
        assert provider.stats["retries"] > 0
        with EmbeddingManager.from_config(provider="mock") as local:
            for i, out in results.items():
                np.testing.assert_allclose(out, local.embed(texts[i]), atol=1e-6)
    finally:
        provider.close()


def test_connection_refused_is_a_typed_error_after_bounded_retries() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(RemoteConnectionError) as caught:
        RemoteEmbeddingProvider(url=url, max_retries=2)
    assert time.monotonic() - start < 5
    error = caught.value
    assert isinstance(error, ProviderError) and isinstance(error, RemoteUnavailableError)
    assert error.attempts == 3 and error.status is None
    assert url in str(error)


def test_a_slow_answer_is_a_timeout_error(slow_server: Served) -> None:
    provider = RemoteEmbeddingProvider(url=slow_server.url, timeout=0.1, max_retries=0)
    try:
        with pytest.raises(RemoteTimeoutError) as caught:
            provider.embed_batch(["too slow"])
        assert isinstance(caught.value, TimeoutError)
        assert "options.timeout" in str(caught.value)
    finally:
        provider.close()


def test_close_interrupts_a_retry_wait(proxy: Proxy) -> None:
    provider = RemoteEmbeddingProvider(url=proxy.url, max_retry_wait=60)
    proxy.failures.append((429, {"Retry-After": "60"}, {"error": {"message": "busy"}}))
    caught: list[BaseException] = []

    def work() -> None:
        try:
            provider.embed_batch(["hello"])
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(0.5)
    start = time.monotonic()
    provider.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - start < 5
    assert caught and isinstance(caught[0], ProviderClosedError)
    with pytest.raises(ProviderClosedError):
        provider.embed_batch(["after close"])


# -- auth --------------------------------------------------------------------------------


def test_api_keys_missing_wrong_right(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789"
    proxy.api_key = secret
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(RemoteAuthError) as missing:
        RemoteEmbeddingProvider(url=proxy.url)
    assert missing.value.status == 401 and isinstance(missing.value, ConfigError)
    assert "wants an API key" in str(missing.value) and "invalid API key" in str(missing.value)
    with pytest.raises(RemoteAuthError) as wrong:
        RemoteEmbeddingProvider(url=proxy.url, api_key="sk-wrong-key")
    assert "refused the API key" in str(wrong.value) and "sk-wrong-key" not in str(wrong.value)

    monkeypatch.setenv(API_KEY_ENV, secret)
    for api in ("akidb", "openai", "tei"):
        provider = RemoteEmbeddingProvider(url=proxy.url, api=api)
        try:
            assert provider.embed_batch(["hello"]).shape == (1, 384)
            # The key goes in the header only: never in what the provider shows.
            shown = [repr(provider), repr(provider.info()), str(provider.info().fingerprint())]
            assert not any(secret in s for s in shown)
        finally:
            provider.close()
    assert {s.authorization for s in proxy.seen[2:]} == {f"Bearer {secret}"}
    # options.api_key wins over the environment.
    with pytest.raises(RemoteAuthError):
        RemoteEmbeddingProvider(url=proxy.url, api_key="sk-other")


# -- the server's errors -----------------------------------------------------------------


def test_unknown_model(mock_server: Served) -> None:
    # akidb and tei: /info names the served model, so the mismatch is found at start.
    for api in ("akidb", "tei"):
        with pytest.raises(RemoteModelError) as caught:
            RemoteEmbeddingProvider(url=mock_server.url, api=api, model="no-such-model")
        assert isinstance(caught.value, ModelMismatchError)
        assert "'mock'" in str(caught.value) and "no-such-model" in str(caught.value)
    # openai: the server's own 404, with its message.
    with pytest.raises(RemoteModelError) as caught:
        RemoteEmbeddingProvider(url=mock_server.url, api="openai", model="no-such-model")
    error = caught.value
    assert error.status == 404 and error.code == "model_not_found"
    assert error.server_message and "this server serves 'mock'" in error.server_message
    # config.model counts as the model asked for, as options.model does.
    config = EmbeddingConfig(provider="remote", model="other", options={"url": mock_server.url})
    with pytest.raises(ModelMismatchError):
        RemoteEmbeddingProvider(config)
    ok = RemoteEmbeddingProvider(url=mock_server.url, api="openai", model="mock")
    ok.close()


@pytest.mark.parametrize("api", ["akidb", "tei"])
def test_over_long_input_is_a_413_truncation_error(short_server: Served, api: str) -> None:
    config = EmbeddingConfig(
        provider="remote", truncation="error", options={"url": short_server.url, "api": api}
    )
    long_text = "one two three four five six seven eight nine ten eleven"
    with EmbeddingManager.from_config(config) as manager:
        with pytest.raises(TruncationError) as caught:
            manager.embed(["short", long_text])
        assert (caught.value.index, caught.value.tokens, caught.value.max_tokens) == (1, 11, 8)
        cause = caught.value.__cause__
        while cause is not None and not isinstance(cause, RemoteError):
            cause = cause.__cause__
        assert isinstance(cause, RemoteInputError) and cause.status == 413
        assert manager.embed(["short enough"]).shape == (1, 384)
    # Sent in several requests, the index still counts within the caller's texts.
    provider = RemoteEmbeddingProvider(config, batch_size=2)
    try:
        with pytest.raises(TruncationError) as caught:
            provider.embed_batch(["a", "b", "c", long_text])
        assert caught.value.index == 3
    finally:
        provider.close()
    # With truncation = "truncate" the server cuts it and says so.
    provider = RemoteEmbeddingProvider(url=short_server.url, api="akidb")
    try:
        _, usage = provider.embed_batch_with_usage(["short", long_text])
        assert usage == {"prompt_tokens": 1 + 8, "truncated": 1}
    finally:
        provider.close()


def test_a_bad_request_is_an_input_error_with_the_server_message(mock_server: Served) -> None:
    with pytest.raises(RemoteInputError) as caught:
        RemoteEmbeddingProvider(url=mock_server.url, api="openai", dimensions=100_000)
    error = caught.value
    assert isinstance(error, InvalidRequestError) and isinstance(error, ValueError)
    assert error.status == 400 and error.code == "invalid_dimensions"
    assert "between 1 and the model's dimension 384" in str(error)


def test_wrong_url_or_api_says_so(mock_server: Served) -> None:
    with pytest.raises(RemoteConfigError) as caught:
        RemoteEmbeddingProvider(url=f"{mock_server.url}/not/here")
    assert caught.value.status == 404 and "options.api" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body", "expected", "code"),
    [
        (
            400,
            {"error": {"message": "bad", "type": "invalid_request_error"}},
            RemoteInputError,
            None,
        ),
        (422, {"error": "inputs: must be str", "error_type": "Validation"}, RemoteInputError, None),
        (
            413,
            {"error": {"message": "too many inputs", "code": "too_many"}},
            RemoteInputError,
            None,
        ),
        (424, {"error": "model failed", "error_type": "Backend"}, RemoteUnavailableError, None),
        (500, {"detail": "boom"}, RemoteUnavailableError, None),
        (504, {"error": {"message": "deadline", "code": "timeout"}}, RemoteTimeoutError, None),
        (403, {"error": {"message": "forbidden"}}, RemoteAuthError, None),
        (200, "not an object", RemoteResponseError, ProviderOutputError),
        (200, {"embeddings": [[1.0, 2.0]]}, RemoteResponseError, ProviderOutputError),
    ],
)
def test_status_mapping(
    proxy: Proxy, status: int, body: object, expected: type, code: type | None
) -> None:
    provider = RemoteEmbeddingProvider(url=proxy.url, max_retries=0)
    try:
        proxy.failures.append((status, {}, body))
        with pytest.raises(expected) as caught:
            provider.embed_batch(["hello"])
        if code is not None:
            assert isinstance(caught.value, code)
        assert isinstance(caught.value, RemoteError)
        if status != 200:
            assert caught.value.status == status
            message = body.get("error") if isinstance(body, dict) else None
            said = message.get("message") if isinstance(message, dict) else message
            assert str(said or body["detail"]) in str(caught.value)  # type: ignore[index]
    finally:
        provider.close()


def test_a_manager_fails_only_the_request_the_server_refused(proxy: Proxy) -> None:
    from akidb_embed import EmbeddingRequest

    config = EmbeddingConfig(provider="remote", cache_size=0, options={"url": proxy.url})
    with EmbeddingManager.from_config(config) as manager:
        refused = {"error": {"message": "refused", "code": "invalid_input"}}
        proxy.failures.append((400, {}, refused))  # the first call the server sees
        outcomes = manager.embed_many(
            [EmbeddingRequest(["fine text"]), EmbeddingRequest(["another"])]
        )
        failed = [o for o in outcomes if isinstance(o, Exception)]
        assert len(failed) == 1 and isinstance(failed[0], RemoteInputError)
        assert "refused" in str(failed[0])
        (ok,) = [o for o in outcomes if not isinstance(o, Exception)]
        assert ok.embeddings.shape == (1, 384)


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "error", "text"),
    [
        (EmbeddingConfig(provider="remote"), ConfigError, "options.url"),
        (EmbeddingConfig(provider="remote", options={"url": "ftp://x"}), ConfigError, "http"),
        (
            EmbeddingConfig(provider="remote", options={"url": "http://x", "api": "grpc"}),
            ConfigError,
            "'akidb', 'openai', 'tei'",
        ),
        (
            EmbeddingConfig(provider="remote", options={"url": "http://x", "urll": 1}),
            UnknownConfigKeyError,
            "url",
        ),
        (
            EmbeddingConfig(provider="remote", options={"url": "http://x", "api_key": 12345}),
            ConfigError,
            "api_key",
        ),
        (
            EmbeddingConfig(provider="remote", options={"url": "http://x", "dimensions": 64}),
            ConfigError,
            "dimensions",
        ),
        (
            EmbeddingConfig(provider="remote", options={"url": "http://x", "timeout": 0}),
            ConfigError,
            "timeout",
        ),
        (
            EmbeddingConfig(provider="remote", options={"url": "http://x", "max_retries": -1}),
            ConfigError,
            "max_retries",
        ),
        (
            EmbeddingConfig(provider="remote", max_length=128, options={"url": "http://x"}),
            ConfigError,
            "token limit",
        ),
        (
            EmbeddingConfig(
                provider="remote", truncation="error", options={"url": "http://x", "api": "openai"}
            ),
            ConfigError,
            "no truncation option",
        ),
    ],
)
def test_bad_options_fail_before_any_request(
    config: EmbeddingConfig, error: type, text: str
) -> None:
    with pytest.raises(error, match=None) as caught:
        RemoteEmbeddingProvider(config)
    assert text in str(caught.value)
    assert "12345" not in str(caught.value)


def test_missing_httpx_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['httpx'] = None\n"
        "from akidb_embed import EmbeddingConfig, create_provider\n"
        "from akidb_embed.errors import ProviderNotInstalledError\n"
        "try:\n"
        "    create_provider(EmbeddingConfig(provider='remote', options={'url': 'http://x'}))\n"
        "except ProviderNotInstalledError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert "pip install 'akidb-embed[remote]'" in out.stdout
