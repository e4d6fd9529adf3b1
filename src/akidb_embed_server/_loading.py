"""Listen first, load second: the ASGI app ``akidb-embed serve`` runs while the model loads.

Loading a model takes seconds to minutes; an orchestrator that sees no open port cannot tell
"loading" from "dead". So the port opens at once: ``GET /health`` answers 200, ``GET /ready``
503 ``{"status": "loading"}`` and every other route 503 in its own error shape with
``Retry-After``, until the manager is built (in a worker thread: the event loop keeps
answering) and the real app's startup (batcher, probe text) has run. Then every request goes
to the real app. A load that fails stops the server and the error is raised by :meth:`run`'s
caller, as it would have been without the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

__all__ = ["LoadingApp"]

_log = logging.getLogger("akidb_embed.server")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class LoadingApp:
    """Serve *build()*'s app once it is built; answer 503 "loading" until then.

    *build* runs in a thread and returns ``(app, close)``: the FastAPI app and what to call
    after its shutdown (closing the manager). *on_ready* is called with the app once its
    startup has run; *on_failure* with the exception if building or starting fails.
    *before_close* is awaited first at shutdown, before the app drains its batcher (the
    gRPC server finishes its calls then).
    """

    def __init__(
        self,
        build: Callable[[], tuple[Any, Callable[[], None]]],
        *,
        on_ready: Callable[[Any], None],
        on_failure: Callable[[BaseException], None],
        before_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._build = build
        self._before_close = before_close
        self._on_ready = on_ready
        self._on_failure = on_failure
        self._app: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._close: Callable[[], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif self._app is not None:
            await self._app(scope, receive, send)
        elif scope["type"] == "http":
            await _loading_response(scope, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._task = asyncio.get_running_loop().create_task(self._load())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _load(self) -> None:
        try:
            app, close = await asyncio.to_thread(self._build)
            self._close = close
            # The real app's own startup: its batcher starts and embeds the probe text.
            await self._stack.enter_async_context(app.router.lifespan_context(app))
        except Exception as exc:  # reported by the CLI once the server has stopped
            self._on_failure(exc)
            return
        self._app = app
        self._on_ready(app)

    async def _shutdown(self) -> None:
        if self._before_close is not None:
            await self._before_close()
        if self._task is not None:
            # A model still loading cannot be interrupted; wait for it, then close it.
            await asyncio.shield(self._task)
        try:
            await self._stack.aclose()  # the real app drains its batcher
        finally:
            if self._close is not None:
                await asyncio.to_thread(self._close)


_MESSAGE = "the model is loading; retry shortly"


async def _loading_response(scope: Scope, send: Send) -> None:
    path = scope.get("path", "")
    status = 503
    body: Any
    if path == "/health":
        status, body = 200, {"status": "ok"}
    elif path == "/ready":
        body = {"status": "loading"}
    elif path == "/embed":  # text-embeddings-inference's shape
        body = {"error": _MESSAGE, "error_type": "Unhealthy"}
    else:
        body = {
            "error": {"message": _MESSAGE, "type": "server_error", "param": None, "code": "loading"}
        }
    headers = [(b"content-type", b"application/json")]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})
