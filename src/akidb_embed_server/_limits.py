"""Request limits of the HTTP server: body size, inputs per request, characters per text.

The body limit is a pure ASGI middleware, so an oversized body is refused before it is
read whole: a ``Content-Length`` over the limit is answered before the app runs, and a
chunked body is counted as it streams and refused at the first chunk past the limit.
Starlette's ``RequestBodyLimitMiddleware`` (and FastAPI's ``max_body_size``) do the
same counting, but answer some of their 413s in plain text (``Content Too Large``), and
every error here must be a JSON body in the route's shape; hence these few lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "ErrorRenderer", "RequestLimitError", "check_inputs"]


class ErrorRenderer(Protocol):
    """Builds the error response (an ASGI app) in the shape of the route at *path*."""

    def __call__(
        self,
        path: str,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ASGIApp: ...


class RequestLimitError(ValueError):
    """A request over one of the server's limits: HTTP *status* (413) with *code*."""

    def __init__(self, message: str, *, code: str, param: str | None = None, status: int = 413):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


def check_inputs(
    inputs: Sequence[object], *, max_client_batch_size: int, max_input_chars: int
) -> None:
    """Raise :class:`RequestLimitError` when *inputs* holds too many items or a text
    longer than *max_input_chars* characters (token id lists are bounded by the body
    limit and cut to the model's own limit, so only their count is checked)."""
    if len(inputs) > max_client_batch_size:
        raise RequestLimitError(
            f"the request has {len(inputs)} inputs, more than this server takes in one "
            f"request (max_client_batch_size = {max_client_batch_size}): send them in "
            "several requests",
            code="too_many_inputs",
            param="input",
        )
    for index, text in enumerate(inputs):
        if isinstance(text, str) and len(text) > max_input_chars:
            raise RequestLimitError(
                f"the text at index {index} has {len(text)} characters, more than the "
                f"limit of {max_input_chars} (max_input_chars)",
                code="input_too_large",
                param="input",
            )


class _BodyTooLarge(Exception):
    """Raised into the app by the receive wrapper; the middleware answers the 413."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the HTTP server refuses those; not ours to judge
                return None
    return None


class BodyLimitMiddleware:
    """Refuse request bodies over *max_body_bytes* with a 413 in the route's shape.

    The 413 carries ``Connection: close``: the unread rest of the body is never read,
    and the connection cannot be reused past it.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, render: ErrorRenderer) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._render = render

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        response = self._render(
            scope["path"],
            413,
            f"the request body is larger than the limit of {limit} bytes (max_body_bytes)",
            "body_too_large",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        over = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # The app may turn the failed read into an answer of its own (FastAPI makes
            # any body error a 400); the 413 below replaces it.
            if over and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
            # Ours, or what the app made of it: either way the answer is the 413.
        if over and not started:
            await self._refuse(scope, receive, send)
