"""Request limits and bad input over real HTTP: every refusal a 4xx JSON body in the
route's shape, never a 5xx, and the server healthy afterwards."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from akidb_embed import EmbeddingManager, EmbeddingRequest

if TYPE_CHECKING:  # the classes behind the fixtures of conftest.py
    from conftest import InProcess, Served

MAX_INPUTS = 4
MAX_CHARS = 50
MAX_BODY = 2000

EMBED_ROUTES = ("/api/v1/embed", "/v1/embeddings", "/embed")


@pytest.fixture(scope="module")
def manager() -> Iterator[EmbeddingManager]:
    with EmbeddingManager.from_config(provider="mock") as m:
        yield m


@pytest.fixture
def limited(serve_app: Callable[..., InProcess], manager: EmbeddingManager) -> InProcess:
    return serve_app(
        manager,
        max_client_batch_size=MAX_INPUTS,
        max_input_chars=MAX_CHARS,
        max_body_bytes=MAX_BODY,
    )


def _body(route: str, texts: list[str], **extra: Any) -> dict[str, Any]:
    key = "input" if route == "/v1/embeddings" else "inputs"
    return {key: texts, **extra}


def _error(r: httpx.Response, route: str, status: int, code: str | None = None) -> str:
    """*r* is a *status* error in the shape of *route*; its message."""
    assert r.status_code == status, (route, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    if route == "/embed":
        assert set(body) == {"error", "error_type"}, body
        assert isinstance(body["error"], str) and isinstance(body["error_type"], str)
        return str(body["error"])
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["code"], str)
    if code is not None:
        assert error["code"] == code, error
    return str(error["message"])


def _post(url: str, route: str, content: bytes, content_type: str | None = "application/json"):
    headers = {} if content_type is None else {"Content-Type": content_type}
    return httpx.post(url + route, content=content, headers=headers, timeout=10)


def _assert_healthy(url: str) -> None:
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    r = httpx.post(url + "/api/v1/embed", json={"inputs": ["still fine"]}, timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize("route", EMBED_ROUTES)
def test_too_many_inputs_is_413(limited: InProcess, route: str) -> None:
    url = limited.url
    ok = httpx.post(url + route, json=_body(route, ["a"] * MAX_INPUTS), timeout=10)
    assert ok.status_code == 200, ok.text
    r = httpx.post(url + route, json=_body(route, ["a"] * (MAX_INPUTS + 1)), timeout=10)
    message = _error(r, route, 413, "too_many_inputs")
    assert "5 inputs" in message and f"max_client_batch_size = {MAX_INPUTS}" in message


def test_too_many_token_id_inputs_is_413(limited: InProcess, manager: EmbeddingManager) -> None:
    assert manager.capabilities.token_input  # the mock takes ids; the limit counts them too
    body = {"input": [[101, 7, 102]] * (MAX_INPUTS + 1)}
    r = httpx.post(limited.url + "/v1/embeddings", json=body, timeout=10)
    _error(r, "/v1/embeddings", 413, "too_many_inputs")


@pytest.mark.parametrize("route", EMBED_ROUTES)
def test_text_over_max_input_chars_is_413_naming_index_and_limit(
    limited: InProcess, route: str
) -> None:
    url = limited.url
    at_limit = ["a", "b", "c" * MAX_CHARS]
    assert httpx.post(url + route, json=_body(route, at_limit), timeout=10).status_code == 200
    r = httpx.post(url + route, json=_body(route, ["a", "b", "c" * (MAX_CHARS + 1)]), timeout=10)
    message = _error(r, route, 413, "input_too_large")
    assert "index 2" in message and str(MAX_CHARS) in message and "max_input_chars" in message
    # Characters, not bytes: 50 three-byte characters are within the limit.
    assert httpx.post(url + route, json=_body(route, ["€" * MAX_CHARS]), timeout=10).is_success


@pytest.mark.parametrize(("route", "key"), [("/v1/embeddings", "input"), ("/embed", "inputs")])
def test_single_string_input_is_limited_too(limited: InProcess, route: str, key: str) -> None:
    r = httpx.post(limited.url + route, json={key: "x" * (MAX_CHARS + 1)}, timeout=10)
    assert "index 0" in _error(r, route, 413, "input_too_large")


@pytest.mark.parametrize("route", EMBED_ROUTES)
def test_body_over_max_body_bytes_with_content_length_is_413(
    limited: InProcess, route: str
) -> None:
    # Small inputs, padded past the limit by a field the schema ignores.
    content = json.dumps(_body(route, ["a"], pad="x" * MAX_BODY)).encode()
    r = _post(limited.url, route, content)
    message = _error(r, route, 413, "body_too_large")
    assert str(MAX_BODY) in message and "max_body_bytes" in message
    assert r.headers["connection"] == "close"
    _assert_healthy(limited.url)


@pytest.mark.parametrize("route", EMBED_ROUTES)
def test_chunked_body_over_max_body_bytes_is_413(limited: InProcess, route: str) -> None:
    content = json.dumps(_body(route, ["a"], pad="x" * (4 * MAX_BODY))).encode()

    def chunks() -> Iterator[bytes]:  # a generator: httpx sends it chunked
        for start in range(0, len(content), 256):
            yield content[start : start + 256]

    request = httpx.Request(
        "POST", limited.url + route, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    with httpx.Client(timeout=10) as client:
        r = client.send(request)
    _error(r, route, 413, "body_too_large")
    _assert_healthy(limited.url)


def _raw_exchange(port: int, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request by hand, never finishing its body; the server's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_body_is_refused_before_it_is_read_whole(limited: InProcess) -> None:
    """The request bodies below are never finished: an answer at all proves the server
    did not wait for them (the socket timeout would fail the test)."""
    head = b"POST /api/v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    start = time.monotonic()
    # Content-Length of a gigabyte, and not a byte of it sent.
    answer = _raw_exchange(limited.port, head + b"Content-Length: 1000000000\r\n\r\n", [])
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b'"code":"body_too_large"' in answer
    # Chunked: just past the limit, then silence (no closing zero-size chunk).
    chunk = b"1f4\r\n" + b" " * 500 + b"\r\n"
    answer = _raw_exchange(limited.port, head + b"Transfer-Encoding: chunked\r\n\r\n", [chunk] * 5)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b'"code":"body_too_large"' in answer
    assert time.monotonic() - start < 5
    _assert_healthy(limited.url)


@pytest.mark.parametrize("route", EMBED_ROUTES)
def test_empty_inputs_is_400(limited: InProcess, route: str) -> None:
    r = httpx.post(limited.url + route, json=_body(route, []), timeout=10)
    _error(r, route, 400, "empty_input")


@pytest.mark.parametrize("route", EMBED_ROUTES)
def test_invalid_utf8_is_400(limited: InProcess, route: str) -> None:
    key = "input" if route == "/v1/embeddings" else "inputs"
    r = _post(limited.url, route, b'{"%s": ["ok", "caf\xe9"]}' % key.encode())
    message = _error(r, route, 400, "invalid_body")
    assert "UTF-8" in message and "0xe9" in message


@pytest.mark.parametrize("route", EMBED_ROUTES)
@pytest.mark.parametrize(
    "raw",
    [b'"\\ud800"', b'"a\\udfffb"', b'"\xed\xa0\x80"'],
    ids=["json-escape", "low-surrogate", "cesu-bytes"],
)
def test_lone_surrogates_are_400(limited: InProcess, route: str, raw: bytes) -> None:
    key = "input" if route == "/v1/embeddings" else "inputs"
    r = _post(limited.url, route, b'{"%s": ["fine", %s]}' % (key.encode(), raw))
    message = _error(r, route, 400, "invalid_input")
    assert "texts[1]" in message and "not valid Unicode" in message


@pytest.mark.parametrize("route", EMBED_ROUTES)
def test_nul_characters_are_embedded_as_given(
    limited: InProcess, manager: EmbeddingManager, route: str
) -> None:
    # A NUL is a valid character: defined result, the vector of the text as given.
    texts = ["a\x00b", "\x00"]
    r = httpx.post(limited.url + route, json=_body(route, texts), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    if route == "/api/v1/embed":
        got = body["embeddings"]
    elif route == "/v1/embeddings":
        got = [d["embedding"] for d in body["data"]]
    else:
        got = body
    np.testing.assert_allclose(got, manager.embed(texts), atol=1e-6)


@pytest.mark.parametrize("route", EMBED_ROUTES)
@pytest.mark.parametrize("content", [b'{"inputs": ["a"', b"not json", b'{"input": "a",}'])
def test_malformed_json_is_400(limited: InProcess, route: str, content: bytes) -> None:
    message = _error(_post(limited.url, route, content), route, 400, "invalid_json")
    assert "not valid JSON" in message


@pytest.mark.parametrize("route", EMBED_ROUTES)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
def test_wrong_content_type_is_415(
    limited: InProcess, route: str, content_type: str | None
) -> None:
    content = json.dumps(_body(route, ["a"])).encode()
    r = _post(limited.url, route, content, content_type)
    assert "Content-Type: application/json" in _error(r, route, 415, "unsupported_media_type")
    # JSON with a charset parameter, or a +json type, is fine.
    for ok in ("application/json; charset=utf-8", "application/vnd.api+json"):
        assert _post(limited.url, route, content, ok).status_code == 200, ok


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/api/v1/embed", {"inputs": ["a"], "normalize": "false"}),
        ("/api/v1/embed", {"inputs": "a"}),
        ("/api/v1/embed", {"inputs": [1, 2]}),
        ("/api/v1/embed", {"inputs": ["a"], "truncation": True}),
        ("/v1/embeddings", {"input": "a", "dimensions": "8"}),
        ("/v1/embeddings", {"input": "a", "dimensions": 8.0}),
        ("/v1/embeddings", {"input": [True]}),
        ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}),
        ("/embed", {"inputs": "a", "normalize": "false"}),
        ("/embed", {"inputs": "a", "normalize": 0}),
        ("/embed", {"inputs": "a", "truncate": "yes"}),
        ("/embed", {"inputs": {"text": "a"}}),
        ("/embed", {}),
    ],
)
def test_strict_types_are_422(limited: InProcess, route: str, body: dict[str, Any]) -> None:
    r = httpx.post(limited.url + route, json=body, timeout=10)
    _error(r, route, 422, "validation_error")


def test_unknown_path_and_wrong_method_in_json(limited: InProcess) -> None:
    r = httpx.get(limited.url + "/no/such/path", timeout=10)
    assert "Not Found" in _error(r, "/no/such/path", 404, "not_found")
    r = httpx.get(limited.url + "/embed", timeout=10)
    _error(r, "/embed", 405)
    assert "POST" in r.headers["allow"]
    r = httpx.get(limited.url + "/v1/embeddings", timeout=10)
    _error(r, "/v1/embeddings", 405, "method_not_allowed")


@pytest.mark.parametrize("route", ["/api/v1/embed", "/embed"])
def test_over_long_text_with_truncation_error_mock(
    serve_app: Callable[..., InProcess], manager: EmbeddingManager, route: str
) -> None:
    served = serve_app(manager)  # the default max_input_chars lets the text through
    _truncation_error(served.url, route, limit=512, long="w " * 600)


def _truncation_error(url: str, route: str, *, limit: int, long: str) -> None:
    option = {"truncation": "error"} if route == "/api/v1/embed" else {"truncate": False}
    r = httpx.post(url + route, json=_body(route, ["short", long], **option), timeout=60)
    message = _error(r, route, 413, "input_too_long")
    assert "index 1" in message and str(limit) in message, message


@pytest.mark.slow
def test_onnx_limits_through_the_server(
    serve_app: Callable[..., InProcess], minilm_onnx_dir: Path
) -> None:
    with EmbeddingManager.from_config(provider="onnx", model=str(minilm_onnx_dir)) as onnx:
        served = serve_app(onnx, max_input_chars=20_000)
        limit = onnx.info.max_tokens
        assert limit is not None
        long = "vector databases store embeddings " * 200
        for route in ("/api/v1/embed", "/embed"):
            _truncation_error(served.url, route, limit=limit, long=long)
        # NUL and control characters: a defined result, the in-process vector.
        texts = ["a\x00b", "\x00", "tab\there"]
        r = httpx.post(served.url + "/api/v1/embed", json={"inputs": texts}, timeout=60)
        assert r.status_code == 200, r.text
        want = onnx.embed_many([EmbeddingRequest(texts)])[0].embeddings
        np.testing.assert_allclose(r.json()["embeddings"], want, atol=1e-5)
        r = _post(served.url, "/embed", b'{"inputs": "\\ud800"}')
        assert "not valid Unicode" in _error(r, "/embed", 400)


def test_serve_subprocess_limits(serve: Callable[..., Served]) -> None:
    served = serve(
        "--provider",
        "mock",
        "--max-body-bytes",
        str(MAX_BODY),
        "--max-client-batch-size",
        str(MAX_INPUTS),
        "--max-input-chars",
        str(MAX_CHARS),
    )
    url = served.url
    limits = httpx.get(url + "/info", timeout=10).json()["limits"]
    assert limits["max_body_bytes"] == MAX_BODY
    assert limits["max_client_batch_size"] == MAX_INPUTS
    assert limits["max_input_chars"] == MAX_CHARS
    r = httpx.post(url + "/v1/embeddings", json={"input": ["a"] * 5}, timeout=10)
    _error(r, "/v1/embeddings", 413, "too_many_inputs")
    r = httpx.post(url + "/embed", json={"inputs": "x" * 51}, timeout=10)
    _error(r, "/embed", 413)
    content = json.dumps({"inputs": ["a"], "pad": "x" * (4 * MAX_BODY)}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(content), 512):
            yield content[start : start + 512]

    r = httpx.post(
        url + "/api/v1/embed",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    _error(r, "/api/v1/embed", 413, "body_too_large")
    r = _post(url, "/api/v1/embed", b'{"inputs": ["\xff"]}')
    _error(r, "/api/v1/embed", 400, "invalid_body")
    _assert_healthy(url)
    assert served.proc.poll() is None
    served.stop()
    assert "Traceback" not in served.output()
