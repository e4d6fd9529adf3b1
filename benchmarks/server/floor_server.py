"""The per-request floor of a Python HTTP server on this machine, for ``bench_server.py``.

Two servers answer ``POST /v1/embeddings`` with one fixed 384-d vector and no model at
all, on the same uvicorn + uvloop + httptools stack as ``akidb-embed serve``:

* ``--kind asgi``: a bare ASGI callable (read the body, ``orjson`` parse, ``orjson``
  answer): what the HTTP stack itself costs;
* ``--kind fastapi``: one FastAPI route with a strict pydantic body model and an
  ``orjson`` response, no middleware: what the framework adds.

``akidb-embed serve --provider mock`` beside them adds the rest (limits, auth, request
ids, access lines, metrics, the batcher and its threads) at the cost of a model that
costs almost nothing.

    python benchmarks/server/floor_server.py --kind fastapi --port 8002
"""

import argparse

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict

_VECTOR = np.random.default_rng(0).random(384, dtype=np.float32)
_VECTOR /= np.linalg.norm(_VECTOR)


def _answer(model: str) -> bytes:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": _VECTOR}],
        "model": model,
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


# At module level (no ``from __future__ import annotations``): FastAPI resolves a route's
# annotations from the module.
class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    input: str | list[str]
    model: str | None = None


async def asgi_app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json")]
    if scope["method"] == "GET":  # /v1/models: the readiness probe
        out = orjson.dumps({"object": "list", "data": [{"id": "minilm", "object": "model"}]})
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    request = orjson.loads(b"".join(chunks))
    out = _answer(request.get("model") or "minilm")
    headers.append((b"content-length", b"%d" % len(out)))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


def fastapi_app():  # type: ignore[no-untyped-def]
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": "minilm", "object": "model"}]}

    @app.post("/v1/embeddings")
    async def embeddings(body: Body) -> Response:
        return Response(_answer(body.model or "minilm"), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["asgi", "fastapi"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)

    import uvicorn

    app = asgi_app if args.kind == "asgi" else fastapi_app()
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning", lifespan="off",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
