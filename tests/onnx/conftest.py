"""Fixtures for the onnx provider tests (sentence-transformers' reference vectors,
``st_model`` and ``st_vectors``, come from tests/conftest.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from akidb_embed import EmbeddingConfig
from akidb_embed_onnx import OnnxEmbeddingProvider


@pytest.fixture(scope="session")
def texts(varied_texts: list[str]) -> list[str]:
    return varied_texts


@pytest.fixture(scope="session")
def onnx_provider(minilm_onnx_dir: Path) -> Iterator[OnnxEmbeddingProvider]:
    provider = OnnxEmbeddingProvider(EmbeddingConfig(provider="onnx", model=str(minilm_onnx_dir)))
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="session")
def int8_provider(minilm_onnx_int8_dir: Path) -> Iterator[OnnxEmbeddingProvider]:
    config = EmbeddingConfig(provider="onnx", model=str(minilm_onnx_int8_dir))
    provider = OnnxEmbeddingProvider(config)
    try:
        yield provider
    finally:
        provider.close()


class NetworkBlocked(AssertionError):
    """Raised by any attempt to open a network connection while ``no_network`` is on."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Make every socket connection fail, and record the attempts."""
    attempts: list[tuple[object, ...]] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise NetworkBlocked(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts
