"""``python-bridge``: run any provider in another Python interpreter.

The host process starts ``<python_path> -m akidb_embed.bridge`` and talks to it over
the worker's stdin/stdout with a small framed binary protocol (see
:mod:`akidb_embed.bridge._protocol`). Crashes and hangs of the worker surface as typed
:class:`~akidb_embed.errors.WorkerError` subclasses; the next request starts a new
worker.
"""

from __future__ import annotations

from ._protocol import VERSION as PROTOCOL_VERSION
from ._provider import BRIDGE_OPTIONS, PythonBridgeProvider

__all__ = ["BRIDGE_OPTIONS", "PROTOCOL_VERSION", "PythonBridgeProvider"]
