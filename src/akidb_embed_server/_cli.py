"""``akidb-embed serve``: the subcommand this distribution adds to the CLI.

Importing this module is cheap; FastAPI and uvicorn are imported when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from typing import Any

from akidb_embed.cli import add_config_arguments, config_overrides

__all__ = ["register"]

_log = logging.getLogger("akidb_embed.server")


def register(subparsers: Any) -> None:
    """Add ``serve [--config PATH] [embedding flags] [server flags]`` to *subparsers*.

    Every server flag defaults to None, so a flag left out does not override the
    ``[server]`` table or the ``AKIDB_SERVER_*`` variables (see ``ServerSettings.load``).
    """
    parser = subparsers.add_parser(
        "serve",
        help="serve embeddings over HTTP (akidb, OpenAI- and TEI-compatible routes) and gRPC",
        description="Serve embeddings over HTTP and gRPC. Settings come from the defaults, "
        "then the [server] table of the config file, then AKIDB_SERVER_* variables, then these "
        "flags. API keys are not taken on the command line (other users can read it with ps): set "
        "AKIDB_SERVER_API_KEYS, api_keys in [server], or --api-key-file.",
    )
    add_config_arguments(parser, config_help="TOML file with [embedding] and [server] tables")
    _server_arguments(parser.add_argument_group("server (overrides [server] and AKIDB_SERVER_*)"))
    parser.set_defaults(func=_run)


def _server_arguments(group: Any) -> None:
    # dest is the ServerSettings field; the defaults live there, not here.
    def add(flag: str, dest: str, help: str, **kwargs: Any) -> None:
        group.add_argument(flag, dest=dest, default=None, help=help, **kwargs)

    add("--host", "host", "address to bind (default 127.0.0.1)")
    add("--port", "port", "port (default 8080)", type=int)
    add(
        "--api-key-file",
        "api_key_file",
        "file of accepted API keys, one per line ('#' comments); there is no --api-key",
        metavar="PATH",
    )
    add(
        "--admin-api-key-file",
        "admin_api_key_file",
        "file of admin API keys (POST /admin/reload), one per line",
        metavar="PATH",
    )
    add(
        "--cors-origin",
        "cors_origins",
        "allowed CORS origin, '*' for any (repeatable; replaces cors_origins)",
        action="append",
        metavar="ORIGIN",
    )
    add(
        "--public-path",
        "public_paths",
        "path served without a key (repeatable; replaces the default /health /metrics)",
        action="append",
        metavar="PATH",
    )
    add("--max-batch-tokens", "max_batch_tokens", "padded tokens per batch", type=int, metavar="N")
    add("--max-batch-size", "max_batch_size", "texts per batch", type=int, metavar="N")
    add("--max-wait-ms", "max_wait_ms", "wait for a thin queue to fill", type=float, metavar="F")
    add("--max-queue-texts", "max_queue_texts", "queued texts before 429", type=int, metavar="N")
    add(
        "--max-client-batch-size",
        "max_client_batch_size",
        "inputs per request before 413",
        type=int,
        metavar="N",
    )
    add("--max-input-chars", "max_input_chars", "characters per text", type=int, metavar="N")
    add("--max-body-bytes", "max_body_bytes", "request body size", type=int, metavar="N")
    add(
        "--request-timeout-s",
        "request_timeout_s",
        "per-request deadline, 504 past it (0: none)",
        type=float,
        metavar="F",
    )
    add("--drain-timeout-s", "drain_timeout_s", "shutdown drain limit", type=float, metavar="F")
    add(
        "--drain-grace-s",
        "drain_grace_s",
        "on shutdown, keep the port open this long answering /ready 503",
        type=float,
        metavar="F",
    )
    add("--log-format", "log_format", "log line format", choices=["text", "json"])
    add("--log-level", "log_level", "logging level (INFO, DEBUG, ...)", metavar="LEVEL")
    add("--served-model-name", "served_model_name", "model name clients use", metavar="NAME")
    add("--grpc-port", "grpc_port", "gRPC port (default 9090; 0: the OS picks)", type=int)
    group.add_argument(
        "--no-grpc",
        dest="grpc_enabled",
        action="store_false",
        default=None,
        help="serve HTTP only",
    )
    group.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        default=None,
        help="no access line per request (5xx answers are still logged)",
    )
    group.add_argument(
        "--no-metrics",
        dest="metrics_enabled",
        action="store_false",
        default=None,
        help="do not serve GET /metrics",
    )


def _server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The server settings given as flags (the ones left out are None)."""
    from ._settings import ServerSettings

    return {k: v for k in ServerSettings.fields() if (v := getattr(args, k, None)) is not None}


#: Provider options ``serve`` sets unless the configuration gives them. onnxruntime's
#: threads spin between runs by default, taking the cores the event loop needs between
#: requests; spinning only inside runs keeps single-query latency (benchmarks/README.md#server).
SERVE_OPTION_DEFAULTS: dict[str, dict[str, Any]] = {"onnx": {"spinning": "in_run"}}


def serve_config(config: Any) -> Any:
    """*config* with :data:`SERVE_OPTION_DEFAULTS` filled in for its provider."""
    defaults = SERVE_OPTION_DEFAULTS.get(config.provider, {})
    missing = {k: v for k, v in defaults.items() if k not in config.options}
    return config.replace(options={**config.options, **missing}) if missing else config


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from akidb_embed import EmbeddingConfig, EmbeddingManager

    from ._app import create_app
    from ._loading import LoadingApp
    from ._logging import configure_logging
    from ._reload import Reloader
    from ._settings import ServerSettings

    # A reload re-reads the file with the environment and flags the server started with.
    environ = dict(os.environ)
    server_flags, embedding_flags = _server_overrides(args), config_overrides(args)

    def load_configuration() -> tuple[ServerSettings, EmbeddingConfig]:
        settings = ServerSettings.load(args.config, environ=environ, **server_flags)
        config = EmbeddingConfig.load(args.config, env=environ, **embedding_flags)
        return settings, serve_config(config)

    # Before the model loads, so a bad setting fails at once (and logging can use it).
    settings = ServerSettings.load(args.config, environ=environ, **server_flags)
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    config = serve_config(EmbeddingConfig.load(args.config, env=environ, **embedding_flags))
    failures: list[BaseException] = []
    server: Any = None
    grpc_server: Any = None
    if settings.grpc_enabled:
        from ._grpc import GrpcServer

        grpc_server = GrpcServer(settings)

    def build() -> tuple[Any, Any]:
        manager = EmbeddingManager.from_config(config)
        try:
            app = create_app(manager, settings)
        except BaseException:
            manager.close()
            raise
        # A reload may have replaced the manager: close the one served at the end.
        return app, lambda: app.state.server.manager.close()

    def on_settings(new: ServerSettings) -> None:
        if grpc_server is not None:
            grpc_server.settings = new
        # The drain settings are read at SIGTERM: a reload changes them in place.
        server.drain_grace_s = new.drain_grace_s
        server.config.timeout_graceful_shutdown = new.drain_timeout_s

    def on_ready(app: Any) -> None:
        state = app.state.server
        server.state = state
        if grpc_server is not None:
            grpc_server.attach(state)
        reloader = Reloader(
            state,
            load_configuration,
            config,
            on_switch=lambda s: _log_startup(s, s.settings, grpc_server, "serving (reloaded)"),
            on_settings=on_settings,
        )
        # From now on SIGHUP reloads (before, the handler below ignores it).
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.on_signal)
        _log_startup(state, settings, grpc_server)

    def on_failure(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    # The port opens at once and answers 503 "loading" until the model is loaded and the
    # probe text embedded (see _loading), so an orchestrator can tell loading from dead.
    loading = LoadingApp(
        build,
        on_ready=on_ready,
        on_failure=on_failure,
        # gRPC's calls in flight finish before the batcher drains (HTTP's do in uvicorn).
        before_close=None if grpc_server is None else grpc_server.stop,
    )
    server = _make_server_class()(
        uvicorn.Config(
            loading,
            host=settings.host,
            port=settings.port,
            access_log=False,  # the app writes its own access lines
            log_config=None,  # uvicorn logs through configure_logging's handler
            lifespan="on",
            # Without it uvicorn waits for open requests forever on SIGTERM (typed
            # int, used as asyncio.wait_for's float timeout).
            timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
        )
    )
    server.grpc = grpc_server
    server.failures = failures
    server.drain_grace_s = settings.drain_grace_s
    # uvicorn re-raises the signal it shut down on once it has restored the previous
    # handlers; these make that a no-op, so a graceful stop exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    # SIGHUP's default action ends the process: until the model is served, ignore it.
    signal.signal(signal.SIGHUP, _sighup_while_loading)
    _log.info("loading provider=%s model=%s", config.provider, config.model)
    server.run()
    if failures:
        raise failures[0]
    if not server.started:
        return 1
    return 0


def _sighup_while_loading(signum: int, frame: Any) -> None:
    _log.warning("SIGHUP ignored: the model is still loading (reload once it is served)")


def _log_startup(state: Any, settings: Any, grpc_server: Any, what: str = "serving") -> None:
    info = state.manager.info
    grpc_address = None if grpc_server is None else grpc_server.address
    _log.info(
        "%s provider=%s model=%s dimension=%d dtype=%s fingerprint=%s limits=%s on "
        "http://%s:%d grpc=%s",
        what,
        info.provider,
        info.model,
        info.dimension,
        info.dtype,
        json.dumps(info.fingerprint(), sort_keys=True),
        json.dumps(state.limits(), sort_keys=True),
        settings.host,
        settings.port,
        grpc_address or "off",
        extra={  # the same figures as fields, for JSON logs
            "provider": info.provider,
            "model": info.model,
            "dimension": info.dimension,
            "dtype": info.dtype,
            "fingerprint": info.fingerprint(),
            "limits": state.limits(),
            "url": f"http://{settings.host}:{settings.port}",
            "grpc": grpc_address,
        },
    )


def _make_server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        state: Any = None
        grpc: Any = None  # the GrpcServer, when gRPC is on
        failures: list[BaseException]
        drain_grace_s: float = 0.0
        _grace: tuple[float, int] | None = None  # (when it ends, the signal)

        async def startup(self, sockets: Any = None) -> None:
            # gRPC binds first: a port it cannot have stops the server before the
            # model starts loading.
            if self.grpc is not None:
                try:
                    port = await self.grpc.start()
                except OSError as exc:
                    self.failures.append(exc)
                    self.should_exit = True
                    return
                _log.info("gRPC listening on %s", self.grpc.address, extra={"grpc_port": port})
            await super().startup(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.state is not None:  # readiness goes 503 while uvicorn drains
                self.state.draining = True
            if self.grpc is not None:  # health NOT_SERVING, new calls UNAVAILABLE
                self.grpc.begin_drain_threadsafe()
            if self.state is not None and self.drain_grace_s > 0 and self._grace is None:
                # uvicorn closes its socket at should_exit, so a load balancer's next
                # /ready would be refused, not answered 503: keep listening a while first.
                # A second signal ends the grace at once.
                self._grace = (time.monotonic() + self.drain_grace_s, sig)
                _log.info("draining: /ready answers 503 for %.3g s", self.drain_grace_s)
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            grace = self._grace
            if grace is not None and not self.should_exit and time.monotonic() >= grace[0]:
                super().handle_exit(grace[1], None)
            return bool(await super().on_tick(counter))

    return Server
