"""A plain FastAPI + sentence-transformers embeddings endpoint: the peer users write by hand.

It is deliberately what a tutorial gives: one synchronous route (FastAPI runs it in its
thread pool), ``model.encode`` per request, no batching across requests, Python lists
in the JSON. ``benchmarks/bench_server.py`` starts it as a peer of ``akidb-embed serve``.

    python benchmarks/server/st_server.py --model <folder> --port 8001 --served-model-name minilm
"""

import argparse
from typing import Any

from pydantic import BaseModel


# At module level (and no ``from __future__ import annotations``): FastAPI resolves a
# route's annotations from the module, and an unresolved body model becomes a query
# parameter.
class Body(BaseModel):
    input: str | list[str]
    model: str | None = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="sentence-transformers model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--served-model-name", default="minilm")
    args = parser.parse_args(argv)

    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu")
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": args.served_model_name, "object": "model"}]}

    @app.post("/v1/embeddings")
    def embeddings(body: Body) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = model.encode(texts, normalize_embeddings=True)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
            "model": args.served_model_name,
        }

    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
