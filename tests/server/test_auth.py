"""API keys and CORS: real servers on loopback (uvicorn in a thread, and ``akidb-embed
serve`` as a subprocess configured through ``AKIDB_SERVER_*`` variables)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import openai
import pytest

from akidb_embed import EmbeddingManager
from akidb_embed.errors import ConfigError
from akidb_embed_server import create_app

if TYPE_CHECKING:  # the classes behind the fixtures of conftest.py
    from conftest import InProcess, Served

KEYS = ("k1-first-key", "k2-second-key", "k3-third-key")


@pytest.fixture(scope="module")
def manager() -> Iterator[EmbeddingManager]:
    with EmbeddingManager.from_config(provider="mock") as m:
        yield m


@pytest.fixture
def keyed(serve_app: Callable[..., InProcess], manager: EmbeddingManager) -> InProcess:
    return serve_app(manager, api_keys=KEYS)


# Every route, called the way a client calls it; (method, path, json body).
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/api/v1/embed", {"inputs": ["hello"]}),
    ("POST", "/v1/embeddings", {"input": "hello"}),
    ("POST", "/embed", {"inputs": "hello"}),
    ("GET", "/v1/models", None),
    ("GET", "/info", None),
    ("GET", "/ready", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
]


def _call(url: str, method: str, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.request(method, url + path, json=body, headers=headers, timeout=10)


def _assert_401(r: httpx.Response, path: str) -> str:
    """The 401 is in the shape of the route at *path*; its message."""
    assert r.status_code == 401, (path, r.status_code, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    if path == "/embed":
        assert set(body) == {"error", "error_type"} and body["error_type"] == "Unauthorized"
        message: str = body["error"]
    else:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        message = error["message"]
    return message


@pytest.mark.parametrize(("method", "path", "body"), [*ROUTES, ("GET", "/no/such/path", None)])
def test_missing_key_is_401_in_the_routes_shape(
    keyed: InProcess, method: str, path: str, body: Any
) -> None:
    r = _call(keyed.url, method, path, body)
    assert "Authorization: Bearer" in _assert_401(r, path)
    assert "error=" not in r.headers["www-authenticate"]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_wrong_key_is_401_and_not_echoed(
    keyed: InProcess, method: str, path: str, body: Any
) -> None:
    wrong = "k1-first-kez"  # one character off a real key
    r = _call(keyed.url, method, path, body, Authorization=f"Bearer {wrong}")
    message = _assert_401(r, path)
    assert wrong not in r.text and "k1-first" not in message
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


@pytest.mark.parametrize(
    "header", ["k1-first-key", "Basic k1-first-key", "Bearer", "Token k1-first-key"]
)
def test_not_a_bearer_credential_is_401(keyed: InProcess, header: str) -> None:
    r = _call(keyed.url, "POST", "/embed", {"inputs": "a"}, Authorization=header)
    _assert_401(r, "/embed")


@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_opens_every_route(keyed: InProcess, key: str) -> None:
    for method, path, body in ROUTES:
        r = _call(keyed.url, method, path, body, Authorization=f"Bearer {key}")
        assert r.status_code == 200, (path, r.text)
    # The scheme is case-insensitive (RFC 7235), extra spaces are tolerated.
    r = _call(keyed.url, "POST", "/embed", {"inputs": "a"}, Authorization=f"bearer   {key}")
    assert r.status_code == 200


def test_default_public_paths_need_no_key(keyed: InProcess) -> None:
    assert httpx.get(keyed.url + "/health", timeout=10).json() == {"status": "ok"}
    r = httpx.get(keyed.url + "/metrics", timeout=10)
    # /metrics is public; with metrics off it is simply not there (404, never 401).
    assert r.status_code in (200, 404) and r.status_code != 401


def test_public_paths_are_configurable(
    serve_app: Callable[..., InProcess], manager: EmbeddingManager
) -> None:
    served = serve_app(manager, api_keys=KEYS, public_paths=("/ready", "/docs", "/openapi.json"))
    for path in ("/ready", "/docs", "/openapi.json"):
        assert httpx.get(served.url + path, timeout=10).status_code == 200, path
    # No longer listed, so no longer public.
    _assert_401(httpx.get(served.url + "/health", timeout=10), "/health")
    _assert_401(httpx.post(served.url + "/embed", json={"inputs": "a"}, timeout=10), "/embed")


def test_openapi_declares_the_bearer_scheme(keyed: InProcess) -> None:
    schema = httpx.get(
        keyed.url + "/openapi.json", headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=10
    ).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    paths = schema["paths"]
    embed = paths["/v1/embeddings"]["post"]
    assert embed["security"] == [{"bearerAuth": []}] and "401" in embed["responses"]
    assert "security" not in paths["/health"]["get"]


def test_keys_are_compared_with_hmac_compare_digest_for_every_key(
    keyed: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        assert isinstance(a, bytes) and isinstance(b, bytes)
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for token, status in ((KEYS[0], 200), (KEYS[2], 200), ("nope", 401)):
        calls.clear()
        r = _call(keyed.url, "POST", "/embed", {"inputs": "a"}, Authorization=f"Bearer {token}")
        assert r.status_code == status
        # One compare per configured key: a match on the first key does not stop early.
        assert len(calls) == len(KEYS), token
        # Fixed-size digests are compared, never the raw key (its length would show).
        assert all(len(a) == len(b) == 32 for a, b in calls)
        assert len({b for _, b in calls}) == len(KEYS)
    # A public path never reaches the compare.
    calls.clear()
    assert httpx.get(keyed.url + "/health", timeout=10).status_code == 200
    assert calls == []


def test_openai_client_with_keys(keyed: InProcess, manager: EmbeddingManager) -> None:
    good = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEYS[1], timeout=10, max_retries=0)
    out = good.embeddings.create(model="mock", input=["hello", "world"])
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    np.testing.assert_allclose(got, manager.embed(["hello", "world"]), atol=1e-6)
    bad = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", timeout=10, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.embeddings.create(model="mock", input="hello")
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


def test_no_keys_means_no_authentication(
    serve_app: Callable[..., InProcess], manager: EmbeddingManager
) -> None:
    served = serve_app(manager)
    for method, path, body in ROUTES:
        assert _call(served.url, method, path, body).status_code == 200, path
    schema = httpx.get(served.url + "/openapi.json", timeout=10).json()
    assert "securitySchemes" not in schema.get("components", {})


def test_an_empty_key_is_refused_at_startup(manager: EmbeddingManager) -> None:
    with pytest.raises(ConfigError, match="empty"):
        create_app(manager, api_keys=("good-key", ""))


# --- CORS -------------------------------------------------------------------------------

ORIGIN = "https://app.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_cors_is_off_by_default(keyed: InProcess) -> None:
    r = httpx.options(keyed.url + "/v1/embeddings", headers=PREFLIGHT, timeout=10)
    assert "access-control-allow-origin" not in r.headers
    assert r.status_code == 401  # an OPTIONS like any request: no key, no answer
    r = _call(
        keyed.url,
        "POST",
        "/v1/embeddings",
        {"input": "a"},
        Authorization=f"Bearer {KEYS[0]}",
        Origin=ORIGIN,
    )
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_with_origins(serve_app: Callable[..., InProcess], manager: EmbeddingManager) -> None:
    served = serve_app(manager, api_keys=KEYS, cors_origins=(ORIGIN,))
    # The preflight carries no key (browsers never send one) and is answered.
    r = httpx.options(served.url + "/v1/embeddings", headers=PREFLIGHT, timeout=10)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert {"GET", "POST"} <= set(r.headers["access-control-allow-methods"].split(", "))
    # Another origin is refused.
    other = {**PREFLIGHT, "Origin": "https://evil.example"}
    r = httpx.options(served.url + "/v1/embeddings", headers=other, timeout=10)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    # The real request: answered with the CORS headers, the timing headers readable.
    r = _call(
        served.url,
        "POST",
        "/v1/embeddings",
        {"input": "a"},
        Authorization=f"Bearer {KEYS[0]}",
        Origin=ORIGIN,
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-queue-time" in r.headers["access-control-expose-headers"]
    # A 401 carries them too, so the page can read why it was refused.
    r = _call(served.url, "POST", "/v1/embeddings", {"input": "a"}, Origin=ORIGIN)
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN


# --- the real command ---------------------------------------------------------------------


def test_serve_subprocess_with_keys_from_the_environment(
    serve: Callable[..., Served], manager: EmbeddingManager
) -> None:
    keys = "alpha-0123456789,beta-9876543210"
    env = {
        "AKIDB_SERVER_API_KEYS": keys,
        # /ready opened so the fixture (and a load balancer) can poll it without a key.
        "AKIDB_SERVER_PUBLIC_PATHS": "/health,/ready",
        "AKIDB_SERVER_CORS_ORIGINS": ORIGIN,
    }
    served = serve("--provider", "mock", env=env)
    url = served.url
    _assert_401(httpx.post(url + "/embed", json={"inputs": "a"}, timeout=10), "/embed")
    r = httpx.post(
        url + "/api/v1/embed",
        json={"inputs": ["a"]},
        headers={"Authorization": "Bearer alpha-01234567890"},
        timeout=10,
    )
    _assert_401(r, "/api/v1/embed")
    for key in keys.split(","):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=10, max_retries=0)
        out = client.embeddings.create(model="mock", input="hello")
        np.testing.assert_allclose(out.data[0].embedding, manager.embed(["hello"])[0], atol=1e-6)
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    # /metrics is no longer listed as public.
    assert httpx.get(url + "/metrics", timeout=10).status_code == 401
    r = httpx.options(url + "/v1/embeddings", headers=PREFLIGHT, timeout=10)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    served.stop()
    output = served.output()
    for key in keys.split(","):
        assert key not in output, "an API key was logged"
