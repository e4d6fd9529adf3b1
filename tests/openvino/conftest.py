"""Fixtures for the openvino provider tests: one provider per precision, on the ONNX
folder ``akidb-embed export`` writes (fixture ``minilm_onnx_dir``), each compiling into a
session-wide compile cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from akidb_embed import EmbeddingConfig
from akidb_embed_openvino import OpenVINOEmbeddingProvider


def _provider(model: Path, cache: Path, precision: str) -> OpenVINOEmbeddingProvider:
    config = EmbeddingConfig(
        provider="openvino",
        model=str(model),
        cache_dir=str(cache),
        options={"precision": precision},
    )
    return OpenVINOEmbeddingProvider(config)


@pytest.fixture(scope="session")
def ov_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="session")
def f32_provider(minilm_onnx_dir: Path, ov_cache: Path) -> Iterator[OpenVINOEmbeddingProvider]:
    provider = _provider(minilm_onnx_dir, ov_cache, "f32")
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="session")
def bf16_provider(minilm_onnx_dir: Path, ov_cache: Path) -> Iterator[OpenVINOEmbeddingProvider]:
    import openvino as ov

    from akidb_embed_openvino._provider import device_capabilities

    capabilities = device_capabilities(ov.Core(), "CPU")
    if "BF16" not in capabilities:
        pytest.skip(f"this CPU has no native bf16 (OpenVINO reports {capabilities})")
    provider = _provider(minilm_onnx_dir, ov_cache, "bf16")
    try:
        yield provider
    finally:
        provider.close()
