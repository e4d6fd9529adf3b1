"""``akidb-embed serve``: the subcommand this distribution adds to the CLI.

Importing this module is cheap; FastAPI and uvicorn are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from typing import Any

__all__ = ["register"]

_log = logging.getLogger("akidb_embed.server")


def register(subparsers: Any) -> None:
    """Add ``serve [--host H] [--port P] [configuration] [batcher limits]`` to *subparsers*."""
    parser = subparsers.add_parser(
        "serve",
        help="serve embeddings over HTTP (akidb, OpenAI- and TEI-compatible routes)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--config", metavar="PATH", help="TOML file with an [embedding] table")
    parser.add_argument("--provider", help="provider name (see `akidb-embed providers`)")
    parser.add_argument("--model", help="model id or local folder")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provider option (repeatable); VALUE is parsed as JSON when it can be",
    )
    parser.add_argument("--max-batch-tokens", type=int, default=16384, metavar="N")
    parser.add_argument("--max-batch-size", type=int, default=None, metavar="N")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, metavar="F")
    parser.add_argument("--max-queue-texts", type=int, default=4096, metavar="N")
    parser.add_argument("--request-timeout-s", type=float, default=30.0, metavar="F")
    parser.add_argument("--drain-timeout-s", type=float, default=30.0, metavar="F")
    parser.add_argument("--served-model-name", default=None, metavar="NAME")
    parser.set_defaults(func=_run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from akidb_embed.errors import ConfigError

    overrides: dict[str, Any] = {k: v for k in ("provider", "model") if (v := getattr(args, k))}
    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    if options:
        overrides["options"] = options
    return overrides


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from akidb_embed import EmbeddingConfig, EmbeddingManager

    from ._app import create_app
    from ._settings import ServerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = EmbeddingConfig.load(args.config, **_overrides(args))
    with EmbeddingManager.from_config(config) as manager:
        settings = ServerSettings(
            host=args.host,
            port=args.port,
            max_batch_tokens=args.max_batch_tokens,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue_texts=args.max_queue_texts,
            request_timeout_s=args.request_timeout_s,
            drain_timeout_s=args.drain_timeout_s,
            served_model_name=args.served_model_name,
        )
        app = create_app(manager, settings)
        state = app.state.server
        info = manager.info
        _log.info(
            "serving provider=%s model=%s dimension=%d dtype=%s fingerprint=%s limits=%s on "
            "http://%s:%d",
            info.provider,
            info.model,
            info.dimension,
            info.dtype,
            json.dumps(info.fingerprint(), sort_keys=True),
            json.dumps(state.limits(), sort_keys=True),
            args.host,
            args.port,
        )
        server = _make_server_class()(
            uvicorn.Config(app, host=args.host, port=args.port, access_log=False)
        )
        server.state = state
        # uvicorn re-raises the signal it shut down on once it has restored the previous
        # handlers; these make that a no-op, so a graceful stop exits 0.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        server.run()
        if not server.started:
            return 1
    return 0


def _make_server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        state: Any = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.state is not None:  # readiness goes 503 while uvicorn drains
                self.state.draining = True
            super().handle_exit(sig, frame)

    return Server
