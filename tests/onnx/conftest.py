"""Fixtures for the onnx provider tests: a varied text set and sentence-transformers'
vectors for it (the reference, computed once per session with torch on the CPU)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig
from akidb_embed_onnx import OnnxEmbeddingProvider


@pytest.fixture(scope="session")
def texts(varied_texts: list[str]) -> list[str]:
    return varied_texts


@pytest.fixture(scope="session")
def st_model(minilm_dir: Path) -> Any:
    """sentence-transformers on torch CPU, loading the packaged safetensors weights."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="session")
def st_vectors(st_model: Any, texts: list[str]) -> np.ndarray:
    """sentence-transformers' vectors for ``texts`` (normalized, float32)."""
    out = st_model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    return np.asarray(out, dtype=np.float32)


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
