"""The typed errors of the ``remote`` provider.

Each one derives from :class:`RemoteError` (the HTTP details of the failed call) *and*
from the core error a caller already catches for the same failure in-process: a text the
server refuses is an :class:`~akidb_embed.errors.InvalidRequestError`, a server that stays
overloaded a :class:`~akidb_embed.errors.ProviderBusyError`, and so on.
"""

from __future__ import annotations

from ..errors import (
    AkidbEmbedError,
    ConfigError,
    InvalidRequestError,
    ModelMismatchError,
    ProviderBusyError,
    ProviderError,
    ProviderOutputError,
)

__all__ = [
    "RemoteAuthError",
    "RemoteBusyError",
    "RemoteConfigError",
    "RemoteConnectionError",
    "RemoteError",
    "RemoteInputError",
    "RemoteModelError",
    "RemoteResponseError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
]

PROVIDER = "remote"
#: The environment variable the API key is read from when ``options.api_key`` is unset.
API_KEY_ENV = "AKIDB_REMOTE_API_KEY"


class RemoteError(AkidbEmbedError):
    """A call to the embedding server failed.

    Attributes
    ----------
    status:
        The HTTP status of the last answer, ``None`` when none came (connection refused,
        timeout).
    code:
        The server's error code or type (``"model_not_found"``, ``"Validation"``), when
        its body has one.
    server_message:
        The server's own message, when its body has one.
    url:
        The URL called (without credentials).
    attempts:
        How many times the call was sent (1 + retries).
    """

    status: int | None = None
    code: str | None = None
    server_message: str | None = None
    url: str = ""
    attempts: int = 1

    def __str__(self) -> str:  # some bases (LookupError, OSError) format args otherwise
        return str(self.args[0]) if self.args else super().__str__()


class RemoteInputError(RemoteError, InvalidRequestError):
    """The server refused the input (HTTP 400, 413, 422)."""


class RemoteModelError(RemoteError, ModelMismatchError):
    """The server does not serve the model asked for (HTTP 404 naming the model)."""


class RemoteConfigError(RemoteError, ConfigError):
    """The provider's configuration does not fit the server (no such route: wrong ``url``
    or ``api``; a server that answers something else than an embedding API)."""


class RemoteAuthError(RemoteConfigError):
    """The server refused the API key, or wants one (HTTP 401, 403)."""


class RemoteBusyError(RemoteError, ProviderBusyError):
    """The server kept answering 429 (overloaded) through every retry."""


class RemoteUnavailableError(RemoteError, ProviderError):
    """The server failed (HTTP 5xx), or kept answering 502/503 through every retry."""

    def __init__(self, message: str) -> None:
        super().__init__(PROVIDER, message)


class RemoteConnectionError(RemoteUnavailableError):
    """The server could not be reached (refused, reset, DNS) through every retry."""


class RemoteTimeoutError(RemoteError, ProviderError, TimeoutError):
    """The server did not answer within ``timeout``, or answered 504 (its own deadline)."""

    def __init__(self, message: str) -> None:
        super().__init__(PROVIDER, message)


class RemoteResponseError(RemoteError, ProviderOutputError):
    """The server answered 2xx with a body that is not what the API promises."""

    def __init__(self, message: str) -> None:
        super().__init__(PROVIDER, message)
