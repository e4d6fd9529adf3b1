"""API keys and CORS for the HTTP server, and the order of the middleware around the app.

API keys are checked by a pure ASGI middleware rather than a FastAPI dependency: it
guards every path, the ones no route declares included (an unknown path answers 401,
not 404, so the routes cannot be probed without a key), it answers before the app reads
a byte of the body, and it costs one header scan and a few hashes per request, without
the per-route dependency resolution or the task of Starlette's ``BaseHTTPMiddleware``.

``/docs`` and ``/openapi.json`` need a key like any other path when keys are set; list
them in ``public_paths`` to open them (Swagger UI fetches ``/openapi.json`` without a
key). The schema then declares the bearer scheme, so Swagger's *Authorize* button works.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from akidb_embed.errors import ConfigError

from ._limits import BodyLimitMiddleware, ErrorRenderer
from ._settings import ServerSettings

__all__ = [
    "ADMIN_PREFIX",
    "APIKeyMiddleware",
    "KeySet",
    "bearer_token",
    "check_keys",
    "install_security",
]

#: Paths of the admin API, guarded by the admin keys instead of the client keys.
ADMIN_PREFIX = "/admin/"

_REALM = 'Bearer realm="akidb-embed"'

# Response headers a browser script may read across origins (the CORS-safelisted ones
# aside): the timing headers of the embed routes and Retry-After of a 429.
_EXPOSED = [
    "Retry-After",
    "X-Request-ID",
    "x-queue-time",
    "x-inference-time",
    "x-total-time",
    "x-total-tokens",
    "x-texts",
]


def _digest(value: bytes) -> bytes:
    # Comparing fixed-size digests: hmac.compare_digest takes constant time only for
    # equal lengths, so this keeps the keys' lengths from showing as well.
    return hashlib.sha256(value).digest()


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key of the first ``Authorization: Bearer <key>`` header; ``None`` if there
    is none or it is not a bearer credential."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.strip()
            if scheme.lower() != b"bearer" or not token:
                return None
            return token
    return None


class KeySet:
    """The accepted API keys, kept only as SHA-256 digests (HTTP and gRPC check the same)."""

    def __init__(self, keys: Sequence[str]) -> None:
        check_keys(keys)
        self._digests = tuple(_digest(key.encode("utf-8")) for key in keys)

    def accepts(self, token: bytes) -> bool:
        """Whether *token* is one of the keys, compared in constant time."""
        given = _digest(token)
        accepted = False
        for digest in self._digests:
            # Every key is compared, match or not (no early exit), so the time taken
            # says nothing about whether, or which, key matched.
            accepted |= hmac.compare_digest(given, digest)
        return accepted


class APIKeyMiddleware:
    """Answer 401 to HTTP requests without one of *keys* as a bearer token.

    Parameters
    ----------
    app:
        The ASGI app to guard.
    keys:
        The accepted keys (at least one; none may be empty). Only their SHA-256 digests
        are kept.
    public_paths:
        Paths served without a key (exact matches).
    render:
        Builds the 401 in the shape of the route asked for.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Sequence[str] = (),
        public_paths: Iterable[str] = (),
        render: ErrorRenderer,
        settings: Callable[[], ServerSettings] | None = None,
    ) -> None:
        self.app = app
        self._settings = settings
        self._seen: ServerSettings | None = None
        self._keys: KeySet | None = KeySet(keys) if settings is None else None
        self._public = frozenset(public_paths)
        self._admin = False
        self._render = render

    def accepts(self, token: bytes) -> bool:
        """Whether *token* is one of the keys, compared in constant time."""
        return self._keys is not None and self._keys.accepts(token)

    def _refresh(self) -> None:
        # Keys read from live settings (a reload may change them): digests are
        # recomputed only when the settings object changed.
        assert self._settings is not None
        current = self._settings()
        if current is not self._seen:
            self._keys = KeySet(current.api_keys) if current.api_keys else None
            self._public = frozenset(current.public_paths)
            self._admin = bool(current.admin_api_keys)
            self._seen = current

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if self._settings is not None:
            self._refresh()
        path = scope.get("path", "")
        if (
            kind not in ("http", "websocket")
            or self._keys is None  # no client keys: open
            or path in self._public
            or (self._admin and path.startswith(ADMIN_PREFIX))  # the admin keys guard it
        ):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        if token is not None and self.accepts(token):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":  # no route takes one; refuse it all the same
            await send({"type": "websocket.close", "code": 1008})
            return
        if token is None:
            message = "missing API key: send it as 'Authorization: Bearer <key>'"
            challenge = _REALM
        else:
            message = "invalid API key"  # never echoed: it may be a near-miss of a real one
            challenge = f'{_REALM}, error="invalid_token"'
        response = self._render(
            scope["path"], 401, message, "invalid_api_key", headers={"WWW-Authenticate": challenge}
        )
        await response(scope, receive, send)


def check_keys(keys: Sequence[str]) -> None:
    """Raise :class:`~akidb_embed.errors.ConfigError` unless *keys* are usable API keys."""
    if not keys:
        raise ConfigError("API key authentication needs at least one key")
    for number, key in enumerate(keys, 1):
        if not key.strip():
            raise ConfigError(f"API key #{number} is empty: remove it or give it a value")


def _document_bearer_auth(app: FastAPI, public_paths: Iterable[str]) -> None:
    """Declare the bearer scheme in ``/openapi.json`` on every operation that needs it."""
    public = frozenset(public_paths)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # cached by FastAPI; amended in place, once
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
        }
        for path, operations in schema.get("paths", {}).items():
            if path in public:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearerAuth": []}]
                responses = operation.setdefault("responses", {})
                responses.setdefault("401", {"description": "Missing or invalid API key"})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_security(
    app: FastAPI,
    settings: ServerSettings,
    render: ErrorRenderer,
    current: Callable[[], ServerSettings] | None = None,
) -> None:
    """Add the body limit, API keys (when set) and CORS (when origins are set) to *app*.

    From the outside in: CORS, so preflights are answered without a key and a 401 still
    carries the CORS headers a browser needs to read it; then API keys, so a request
    without one is refused before its body is read; then the body limit. Middleware
    added to *app* after this call wraps all three. With *current* (the live settings,
    which a reload replaces), the keys and public paths are read from it at each
    request, so a reload can add, change or remove them.
    """
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, render=render)
    if settings.api_keys:
        check_keys(settings.api_keys)  # now, not when the middleware stack is built
        _document_bearer_auth(app, settings.public_paths)
    if current is not None:
        app.add_middleware(APIKeyMiddleware, render=render, settings=current)
    elif settings.api_keys:
        app.add_middleware(
            APIKeyMiddleware,
            keys=settings.api_keys,
            public_paths=settings.public_paths,
            render=render,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=_EXPOSED,
            max_age=600,
        )
