"""Providers the bridge tests load *inside the worker* (option ``imports``).

They wrap the real mock provider and misbehave on request, so the tests can crash,
hang or confuse a real worker process. A text starting with a command triggers it:

``!segfault``  reads address 0 (SIGSEGV)       ``!exit``      ``os._exit(7)``
``!hang``      sleeps for an hour              ``!raise``     ``RuntimeError``
``!truncate``  ``TruncationError``             ``!print``     writes to stdout, fd 1, C stdio
``!log``       logs a warning in the worker    ``!bad``       returns a 1-d array

Options: ``start_delay`` (seconds of sleep in ``__init__``), ``start_error`` (a message:
``__init__`` raises ``ModelNotFoundError``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from akidb_embed import EmbeddingConfig, MockEmbeddingProvider, register_provider
from akidb_embed.errors import ModelNotFoundError, TruncationError

_log = logging.getLogger("bridge_test_providers")


class ScriptedProvider:
    thread_safe = True

    def __init__(self, config: EmbeddingConfig) -> None:
        delay = float(config.option("start_delay", 0))
        if delay:
            time.sleep(delay)
        message = config.option("start_error")
        if message:
            raise ModelNotFoundError(config.model, ["/nowhere"], str(message))
        self.mock = MockEmbeddingProvider(config.replace(provider="mock"))

    def info(self) -> Any:
        return self.mock.info()

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_batch_with_usage(texts)[0]

    def embed_batch_with_usage(self, texts: Sequence[str]) -> tuple[Any, dict[str, int]]:
        for text in texts:
            self._command(text)
        if texts and texts[0].startswith("!bad"):
            return np.zeros(3, dtype=np.float32), {}
        return self.mock.embed_batch_with_usage(texts)

    def _command(self, text: str) -> None:
        if text.startswith("!segfault"):
            ctypes.string_at(0)
        elif text.startswith("!exit"):
            os._exit(7)
        elif text.startswith("!hang"):
            time.sleep(3600)
        elif text.startswith("!raise"):
            raise RuntimeError("scripted failure")
        elif text.startswith("!truncate"):
            raise TruncationError(0, 10, 5)
        elif text.startswith("!print"):
            print("a stray print() to stdout")
            sys.stdout.flush()
            os.write(1, b"a stray write to file descriptor 1\n")
            libc = ctypes.CDLL(None)
            libc.puts(b"a stray puts() from C")
            libc.fflush(None)
        elif text.startswith("!log"):
            _log.warning("worker says: %s", text)

    def close(self) -> None:
        self.mock.close()


class ScriptedLengthsProvider(ScriptedProvider):
    """Also reports token counts, like the onnx provider does."""

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


class SerialProvider(ScriptedProvider):
    """Not thread-safe: its worker serves one request at a time, whatever ``concurrency``."""

    thread_safe = False


class PlainProvider:
    """Only the required method: no usage, no lengths."""

    def __init__(self, config: EmbeddingConfig) -> None:
        self.mock = MockEmbeddingProvider(config.replace(provider="mock"))

    def info(self) -> Any:
        return self.mock.info()

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.mock.embed_batch(texts).astype(np.float64)

    def close(self) -> None:
        pass


register_provider("scripted", ScriptedProvider)
register_provider("scripted-lengths", ScriptedLengthsProvider)
register_provider("scripted-serial", SerialProvider)
register_provider("plain", PlainProvider)
