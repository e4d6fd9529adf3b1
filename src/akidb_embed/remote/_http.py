"""One keep-alive HTTP client with bounded retries, and the map from HTTP failures to
the provider's typed errors.

httpx is imported here, and this module is imported only when a ``remote`` provider is
built, so ``import akidb_embed`` never pays for it.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .._version import __version__
from ..errors import ProviderClosedError, TruncationError
from ._errors import (
    API_KEY_ENV,
    RemoteAuthError,
    RemoteBusyError,
    RemoteConfigError,
    RemoteConnectionError,
    RemoteError,
    RemoteInputError,
    RemoteModelError,
    RemoteResponseError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)

__all__ = ["Http", "redact"]

_log = logging.getLogger("akidb_embed.remote")

# 429 is back-pressure; 502/503 are a server (or the proxy before it) that is restarting
# or draining. Embedding is idempotent, so sending the same texts again is always safe.
_RETRY_STATUSES = frozenset({429, 502, 503})
# The first backoff when the server gives no Retry-After; it doubles on each retry.
_BACKOFF = 0.25
# The core's TruncationError message, as the akidb server sends it back in a 413.
_TRUNCATION = re.compile(r"index (\d+) has (\d+) tokens, more than the model's limit of (\d+)")
_MESSAGE_CHARS = 500


def redact(url: str) -> str:
    """*url* without its user:password part, for messages and reprs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # a header we cannot read is ignored, not fatal
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(response: httpx.Response) -> tuple[str | None, str | None]:
    """The message and code of an error body in the akidb/OpenAI, TEI or FastAPI shape."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip()
        return (text[:_MESSAGE_CHARS] or None), None
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):  # akidb and OpenAI: {"error": {"message", "code"}}
            code = error.get("code") or error.get("type")
            message = error.get("message")
            return (str(message) if message else None), (str(code) if code else None)
        if isinstance(error, str):  # TEI: {"error": "...", "error_type": "..."}
            kind = body.get("error_type")
            return error, (str(kind) if kind else None)
        for key in ("detail", "message"):
            if body.get(key):
                return str(body[key])[:_MESSAGE_CHARS], None
    return str(body)[:_MESSAGE_CHARS], None


class Http:
    """A thread-safe httpx client for one server: keep-alive, timeouts, retries.

    Parameters
    ----------
    base_url:
        The server's base URL.
    api_key:
        Sent as ``Authorization: Bearer <key>``; never logged nor shown.
    api:
        The API name, for hints in error messages.
    timeout:
        Seconds for one attempt (connecting takes at most 10 of them).
    max_retries:
        Retries after a 429/502/503 or a connection failure.
    max_retry_wait:
        Longest wait before one retry, whatever ``Retry-After`` says.
    max_connections:
        Connections kept open to the server.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        api: str,
        timeout: float,
        max_retries: int,
        max_retry_wait: float,
        max_connections: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.display_url = redact(self.base_url)
        self.api = api
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.has_key = bool(api_key)
        headers = {"User-Agent": f"akidb-embed/{__version__}", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._retries = 0
        self._requests = 0

    @property
    def stats(self) -> dict[str, int]:
        """HTTP requests sent (retries included) and retries made, since the start."""
        with self._lock:
            return {"requests": self._requests, "retries": self._retries}

    def close(self) -> None:
        self._closing.set()  # wakes any retry wait at once
        self._client.close()

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        return self.request("POST", path, body)

    def json(self, response: httpx.Response) -> Any:
        """The JSON body of a 2xx answer, or :class:`RemoteResponseError`."""
        try:
            return response.json()
        except ValueError as exc:
            raise self._stamp(
                RemoteResponseError(
                    f"{response.request.method} {redact(str(response.request.url))} answered "
                    f"HTTP {response.status_code} with a body that is not JSON: "
                    f"{response.text[:200]!r}"
                ),
                str(response.request.url),
                1,
                response.status_code,
            ) from exc

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """Send until a final answer; return it if 2xx, else raise its typed error."""
        url = self.base_url + path
        where = f"{method} {redact(url)}"
        attempt = 0
        while True:
            attempt += 1
            with self._lock:
                self._requests += 1
            retries_left = attempt <= self.max_retries and not self._closing.is_set()
            try:
                response = self._client.request(method, url, json=body)
            except httpx.ConnectTimeout as exc:
                if retries_left:
                    self._wait(attempt, None, where, f"connect timeout ({exc})")
                    continue
                raise self._stamp(
                    RemoteConnectionError(
                        f"cannot connect to {self.display_url} ({where}): timed out after "
                        f"{attempt} attempt(s)"
                    ),
                    url,
                    attempt,
                ) from exc
            except httpx.TimeoutException as exc:
                # Not retried: the server may still be computing, and a retry would add to
                # the load that made it slow.
                raise self._stamp(
                    RemoteTimeoutError(
                        f"{where} got no answer within the timeout ({type(exc).__name__}); "
                        "raise options.timeout for large batches or a slow server"
                    ),
                    url,
                    attempt,
                ) from exc
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                # Refused, reset, or a keep-alive connection the server closed under us.
                if retries_left:
                    self._wait(attempt, None, where, f"{type(exc).__name__}: {exc}")
                    continue
                raise self._stamp(
                    RemoteConnectionError(
                        f"cannot reach {self.display_url} ({where}) after {attempt} "
                        f"attempt(s): {type(exc).__name__}: {exc}"
                    ),
                    url,
                    attempt,
                ) from exc
            except RuntimeError as exc:
                if self._closing.is_set():  # httpx refuses requests on a closed client
                    raise ProviderClosedError("the remote provider is closed") from exc
                raise
            except httpx.HTTPError as exc:  # a bad URL or protocol: configuration, not load
                raise self._stamp(
                    RemoteConfigError(f"{where} failed: {type(exc).__name__}: {exc}"),
                    url,
                    attempt,
                ) from exc
            status = response.status_code
            if status in _RETRY_STATUSES and retries_left:
                response.close()
                self._wait(attempt, response.headers.get("retry-after"), where, f"HTTP {status}")
                continue
            if response.is_success:
                return response
            raise self._failure(response, where, url, attempt)

    # -- internals -------------------------------------------------------------------------

    def _wait(self, attempt: int, retry_after: str | None, where: str, why: str) -> None:
        asked = _retry_after(retry_after)
        if asked is None:
            # Jitter spreads the retries of many clients that failed at the same moment.
            asked = _BACKOFF * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
        seconds = min(asked, self.max_retry_wait)
        with self._lock:
            self._retries += 1
        _log.info("%s: %s; retry %d/%d in %.2f s", where, why, attempt, self.max_retries, seconds)
        self._closing.wait(seconds)

    @staticmethod
    def _stamp(
        error: RemoteError,
        url: str,
        attempts: int,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> RemoteError:
        error.status = status
        error.code = code
        error.server_message = message
        error.url = redact(url)
        error.attempts = attempts
        return error

    def _failure(
        self, response: httpx.Response, where: str, url: str, attempts: int
    ) -> BaseException:
        status = response.status_code
        message, code = _server_message(response)
        said = message or response.reason_phrase or "no message"
        text = f"{said} (HTTP {status} from {where})"
        if attempts > 1:
            text += f", after {attempts} attempts"
        error: RemoteError
        if status in (401, 403):
            hint = (
                "the server refused the API key: check options.api_key or $" + API_KEY_ENV
                if self.has_key
                else "the server wants an API key: set options.api_key or $" + API_KEY_ENV
            )
            error = RemoteAuthError(f"{text}; {hint}")
        elif status == 404 and (code == "model_not_found" or "model" in said.lower()):
            error = RemoteModelError(text)
        elif status in (404, 405):
            error = RemoteConfigError(
                f"{text}; is options.api = {self.api!r} the API this server speaks, and "
                "options.url its base URL?"
            )
        elif status == 429:
            error = RemoteBusyError(f"the server stayed overloaded: {text}")
        elif status in (408, 504):
            error = RemoteTimeoutError(text)
        elif status >= 500 or status == 424:  # 424: TEI's backend (model) failure
            error = RemoteUnavailableError(text)
        else:
            error = RemoteInputError(text)
        self._stamp(error, url, attempts, status, code, message)
        if status == 413 and message and (match := _TRUNCATION.search(message)):
            index, tokens, limit = (int(g) for g in match.groups())
            truncation = TruncationError(index, tokens, limit)
            truncation.__cause__ = error
            return truncation
        return error
