"""Zero-downtime configuration changes: :class:`Reloader` (``SIGHUP``, ``POST /admin/reload``).

A reload re-reads the configuration file and the environment the server was started with
(the command-line flags stay as they were), then:

1. builds the new provider beside the old one, in a thread (the event loop keeps
   serving), and embeds one probe text with it;
2. swaps the service's manager and batcher on the event loop, in one step
   (``EmbeddingService.swap``): requests with texts in a batch already cut finish on the
   old provider, with the old model's name; requests still queued whole move to the new
   batcher, as does every later request. No request gets vectors from two models;
3. lets the old batcher drain, then closes the old provider (a python-bridge worker
   exits). The reload answers once it is closed, and the next reload waits for that:
   two providers are resident only during a switch.

A reload that fails anywhere before the swap (unreadable TOML, unknown provider, missing
model, probe error) changes nothing, is logged, counted (``akidb_embed_reloads_total``)
and shown in ``/info``; it can be retried. Server settings apply without rebuilding the
provider when the ``[embedding]`` configuration is unchanged; the ones in
:data:`RESTART_ONLY` are not reloaded (a warning names them). One reload runs at a time:
``POST /admin/reload`` during another answers 409; a ``SIGHUP`` during one runs another
reload after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from akidb_embed import EmbeddingConfig, EmbeddingManager, EmbeddingRequest

from ._batcher import Batcher
from ._logging import configure_logging
from ._service import PROBE_TEXT, EmbeddingService
from ._settings import _SECRETS, ServerSettings

__all__ = ["RESTART_ONLY", "ReloadInProgressError", "ReloadOutcome", "Reloader"]

_log = logging.getLogger("akidb_embed.server")

#: Settings a running server cannot change: its sockets, the middleware and routes built
#: at start, gRPC's message size. A reload that changes them applies the rest and warns.
RESTART_ONLY: tuple[str, ...] = (
    "host",
    "port",
    "grpc_port",
    "grpc_enabled",
    "metrics_enabled",
    "cors_origins",
    "max_body_bytes",
)
_BATCHER = ("max_batch_tokens", "max_batch_size", "max_wait_ms", "max_queue_texts")

#: Re-reads the configuration: ``(server settings, embedding config)``.
Loader = Callable[[], tuple[ServerSettings, EmbeddingConfig]]


class ReloadInProgressError(RuntimeError):
    """Another reload is running; retry once it has answered."""


@dataclass
class ReloadOutcome:
    """What one reload did (the body of ``POST /admin/reload``, ``/info``'s ``reload``)."""

    result: Literal["success", "failure"]
    trigger: str
    started: float  # time.time()
    seconds: float = 0.0
    provider_reloaded: bool = False
    changed: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    message: str | None = None
    generation: int = 0
    provider: str | None = None
    model: str | None = None
    fingerprint: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.result == "success"

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "trigger": self.trigger,
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(),
            "seconds": round(self.seconds, 4),
            "provider_reloaded": self.provider_reloaded,
            "changed": self.changed,
            "restart_required": self.restart_required,
            "message": self.message,
            "generation": self.generation,
            "provider": self.provider,
            "model": self.model,
            "fingerprint": self.fingerprint,
        }


class Reloader:
    """Reloads the configuration of one running :class:`EmbeddingService`.

    Parameters
    ----------
    service:
        The service to change (its ``reloader`` is set to this object).
    load:
        Re-reads ``(ServerSettings, EmbeddingConfig)`` as at start: the same file
        search, environment and flags. Runs in a thread.
    config:
        The ``[embedding]`` configuration the service's provider was built from.
    on_switch:
        Called on the event loop after a successful reload (the startup-style log line).
    on_settings:
        Called with the new settings when they are applied (gRPC reads its keys there).
    """

    def __init__(
        self,
        service: EmbeddingService,
        load: Loader,
        config: EmbeddingConfig,
        *,
        on_switch: Callable[[EmbeddingService], None] | None = None,
        on_settings: Callable[[ServerSettings], None] | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.generation = 1
        self._load = load
        self._on_switch = on_switch
        self._on_settings = on_settings
        self._task: asyncio.Task[ReloadOutcome] | None = None
        self._again = False  # a SIGHUP came during a reload: run one more after it
        self._last: ReloadOutcome | None = None
        self._last_error: ReloadOutcome | None = None
        self._counts = {"success": 0, "failure": 0}
        service.reloader = self

    # -- public API ------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def reload(self, trigger: str = "admin") -> ReloadOutcome:
        """Reload now and return what happened (a failure is an outcome, not raised).

        Raises :class:`ReloadInProgressError` while another reload runs. The work goes
        on if the caller is cancelled (a client that hangs up).
        """
        if self.busy:
            raise ReloadInProgressError(
                "a reload is already in progress; retry once it has answered"
            )
        return await asyncio.shield(self._start(trigger))

    def _start(self, trigger: str) -> asyncio.Task[ReloadOutcome]:
        # Synchronous from the busy check to here: no second reload can slip in between.
        task = asyncio.ensure_future(self._reload(trigger))
        task.add_done_callback(self._after)
        self._task = task
        return task

    def on_signal(self) -> None:
        """The ``SIGHUP`` handler (on the event loop): reload, or once more after the
        reload under way."""
        if self.service.draining:
            _log.warning("SIGHUP ignored: the server is shutting down")
            return
        if self.busy:
            _log.info("SIGHUP during a reload: reloading again once it is done")
            self._again = True
            return
        self._start("SIGHUP")

    def _after(self, task: asyncio.Future[ReloadOutcome]) -> None:
        """After any reload (SIGHUP's or the admin route's): report what escaped it, and
        run the one a SIGHUP asked for meanwhile."""
        if not task.cancelled() and task.exception() is not None:
            _log.error("reload failed unexpectedly", exc_info=task.exception())
        if self._again and not self.service.draining:
            self._again = False
            self.on_signal()

    def status(self) -> dict[str, Any]:
        """``/info``'s ``reload``: counts, whether one runs now, the last outcome and the
        last failure (kept after a later success)."""
        return {
            "in_progress": self.busy,
            "generation": self.generation,
            "reloads": dict(self._counts),
            "last": None if self._last is None else self._last.to_dict(),
            "last_error": None if self._last_error is None else self._last_error.to_dict(),
        }

    async def aclose(self) -> None:
        """Wait for a reload under way (it gives up: the server is closing) and for the
        replaced provider to close."""
        self._again = False
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    # -- the reload ------------------------------------------------------------------

    async def _reload(self, trigger: str) -> ReloadOutcome:
        service = self.service
        outcome = ReloadOutcome("failure", trigger, time.time())
        start = time.perf_counter()
        _log.info("reloading the configuration (%s)", trigger, extra={"trigger": trigger})
        built: EmbeddingManager | None = None
        retiring: tuple[Batcher, EmbeddingManager | None] | None = None
        try:
            settings, config = await asyncio.to_thread(self._load)
            old = service.settings
            names = ServerSettings.fields()
            changed = [n for n in names if getattr(settings, n) != getattr(old, n)]
            outcome.restart_required = [n for n in changed if n in RESTART_ONLY]
            outcome.changed = [n for n in changed if n not in RESTART_ONLY]
            if outcome.restart_required:  # the running values stay
                keep = {n: getattr(old, n) for n in outcome.restart_required}
                settings = settings.replace(**keep)
            rebuild = config != self.config
            manager = service.manager
            if rebuild:
                _log.info(
                    "reload: loading provider=%s model=%s beside the current one",
                    config.provider,
                    config.model,
                )
                built = await asyncio.to_thread(EmbeddingManager.from_config, config)
                await _probe(built)
                manager = built
            if service.draining:
                raise RuntimeError("the server is shutting down")
            # From here on, nothing awaits until the swap: it is atomic for requests.
            batcher = None
            if rebuild or any(n in _BATCHER for n in outcome.changed):
                batcher = Batcher(manager, **settings.batcher_options())
            self._apply(settings, old)
            outcome.provider_reloaded = rebuild
            if batcher is not None:
                old_manager, old_batcher = service.swap(manager, batcher)
                retiring = (old_batcher, old_manager if rebuild else None)
            elif service.metrics is not None and service.batcher is not None:
                # The same pair: only the model's served name may have changed.
                service.metrics.switch(service.manager, service.batcher, service.served_model)
            built = None  # served now: closing it is the service's job
            if rebuild:
                self.config = config
                self.generation += 1
            outcome.result = "success"
        except Exception as exc:  # any failure before the swap leaves everything as it was
            outcome.message = _message(exc)
            if built is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(built.close)
        if retiring is not None:
            # The reload answers once the old provider is closed; the next waits. The new
            # configuration serves already: a failure here is reported, not undone.
            try:
                await service.retire(*retiring)
            except Exception as exc:
                outcome.message = f"closing the replaced provider failed: {_message(exc)}"
                _log.error("reload: %s", outcome.message, exc_info=exc)
        outcome.seconds = time.perf_counter() - start
        self._finish(outcome)
        return outcome

    def _apply(self, settings: ServerSettings, old: ServerSettings) -> None:
        """Apply the server settings (no await: part of the atomic step)."""
        service = self.service
        service.settings = settings
        logs = (settings.log_level, settings.log_format, settings.access_log)
        if logs != (old.log_level, old.log_format, old.access_log):
            configure_logging(
                settings.log_level, settings.log_format, access_log=settings.access_log
            )
        if self._on_settings is not None:
            self._on_settings(settings)

    def _finish(self, outcome: ReloadOutcome) -> None:
        service = self.service
        info = service.manager.info
        outcome.generation = self.generation
        outcome.provider, outcome.model = info.provider, info.model
        outcome.fingerprint = info.fingerprint()
        self._counts[outcome.result] += 1
        self._last = outcome
        if service.metrics is not None:
            service.metrics.reloads.labels(outcome.result).inc()
        shown = [n if n not in _SECRETS else f"{n} (values not shown)" for n in outcome.changed]
        fields = {"reload": {**outcome.to_dict(), "fingerprint": None}}
        if not outcome.ok:
            self._last_error = outcome
            _log.error(
                "reload failed, nothing changed (the previous configuration keeps serving): %s",
                outcome.message,
                extra=fields,
            )
            return
        if outcome.restart_required:
            outcome.message = (
                f"not reloaded, applied only at a restart: {', '.join(outcome.restart_required)}"
                " (the running values stay)"
            )
            _log.warning("reload: %s", outcome.message, extra=fields)
        _log.info(
            "reload done in %.3f s: provider %s, settings changed: %s",
            outcome.seconds,
            "rebuilt" if outcome.provider_reloaded else "unchanged",
            ", ".join(shown) or "none",
            extra=fields,
        )
        if self._on_switch is not None:
            self._on_switch(service)


async def _probe(manager: EmbeddingManager) -> None:
    """Embed the probe text with *manager*: a provider that cannot must not serve."""
    (outcome,) = await manager.aembed_many([EmbeddingRequest([PROBE_TEXT])])
    if isinstance(outcome, BaseException):
        raise outcome
    vector = outcome.embeddings
    if vector.shape != (1, manager.dimension) or not all(map(math.isfinite, vector[0])):
        raise ValueError(f"the probe text's embedding is not {manager.dimension} finite numbers")


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
