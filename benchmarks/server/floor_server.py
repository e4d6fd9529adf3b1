"""The per-request floor of a Python HTTP server on this machine, for ``bench_server.py``.

Two servers answer ``POST /v1/embeddings`` with one fixed 384-d vector and no model at
all, on the same uvicorn + uvloop + httptools stack as ``akidb-embed serve``:

* ``--kind asgi``: a bare ASGI callable (read the body, ``orjson`` parse, ``orjson``
  answer): what the HTTP stack itself costs;
* ``--kind fastapi``: one FastAPI route with a strict pydantic body model and an
  ``orjson`` response, no middleware: what the framework adds;
* ``--kind asgi-model --model DIR``: the bare ASGI callable answering with the real
  vector, the onnx model run on one worker thread (as ``akidb-embed serve`` keeps model
  work off the event loop, with its ``spinning = "in_run"``), no batching, no checks: the
  least any Python server of that design adds to a query.

``akidb-embed serve --provider mock`` beside them adds the rest (limits, auth, request
ids, access lines, metrics, the batcher and its threads) at the cost of a model that
costs almost nothing.

    python benchmarks/server/floor_server.py --kind fastapi --port 8002
    python benchmarks/server/floor_server.py --kind asgi-model --model DIR --port 8003
"""

import argparse

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict

_VECTOR = np.random.default_rng(0).random(384, dtype=np.float32)
_VECTOR /= np.linalg.norm(_VECTOR)


def _answer(model: str, vector: np.ndarray = _VECTOR) -> bytes:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
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


def _model_answer(model_dir: str, threads: int | None):  # type: ignore[no-untyped-def]
    """``answer(request) -> bytes`` embedding the request's text with the onnx model."""
    from akidb_embed import EmbeddingManager

    options: dict[str, object] = {"spinning": "in_run"}
    if threads:
        options["threads"] = threads
    manager = EmbeddingManager.from_config(
        provider="onnx", model=model_dir, cache_size=0, options=options
    )

    def answer(request: dict) -> bytes:  # type: ignore[type-arg]
        return _answer(request.get("model") or "minilm", manager.embed([request["input"]])[0])

    return answer


def asgi_app(answer=None):  # type: ignore[no-untyped-def]
    """The bare ASGI app; with *answer*, its body is computed on one worker thread."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    worker = ThreadPoolExecutor(1)

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
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
        if answer is None:
            out = _answer(request.get("model") or "minilm")
        else:
            out = await asyncio.get_running_loop().run_in_executor(worker, answer, request)
        headers.append((b"content-length", b"%d" % len(out)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


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
    parser.add_argument("--kind", choices=["asgi", "fastapi", "asgi-model"], required=True)
    parser.add_argument("--model", help="the onnx model folder (--kind asgi-model)")
    parser.add_argument("--threads", type=int, help="the model's intra-op threads")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)

    import uvicorn

    if args.kind == "fastapi":
        app = fastapi_app()
    elif args.kind == "asgi":
        app = asgi_app()
    else:
        if not args.model:
            parser.error("--kind asgi-model needs --model")
        app = asgi_app(_model_answer(args.model, args.threads))
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning", lifespan="off",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
