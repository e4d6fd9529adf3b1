"""Offline-first model resolution, proven with every socket connection failing.

The Hugging Face hub is not reachable here, so the cache is laid out on disk by the test,
in the real layout ``models--org--name/{blobs,refs/main,snapshots/<sha>/...}`` with
snapshot files as relative symlinks to content-addressed blobs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager
from akidb_embed.backend import SENTENCE_TRANSFORMERS_FILES, resolve_model
from akidb_embed.errors import ConfigValueError, ModelNotFoundError
from akidb_embed_onnx import OnnxEmbeddingProvider

REPO = "acme/minilm-onnx"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ONNX_PATTERNS = [*SENTENCE_TRANSFORMERS_FILES, "onnx/model.onnx*", "model.onnx*"]
ONNX_REQUIRED = [("onnx/model.onnx", "model.onnx"), ("tokenizer.json",)]


def lay_out_hub_cache(
    cache: Path, repo: str, source: Path, commit: str = COMMIT, skip: tuple[str, ...] = ()
) -> Path:
    """Put *source*'s files into *cache* as huggingface_hub stores a downloaded snapshot."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    blobs = repo_dir / "blobs"
    snapshot = repo_dir / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for file in sorted(source.rglob("*")):
        rel = file.relative_to(source)
        if not file.is_file() or rel.as_posix() in skip or rel.name == "akidb_export.json":
            continue
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = blobs / digest
        if not blob.exists():
            try:
                os.link(file, blob)  # same file system: no 90 MB copy
            except OSError:
                shutil.copyfile(file, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, minilm_onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    lay_out_hub_cache(cache, REPO, minilm_onnx_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return cache


def test_offline_resolution_from_the_cache_uses_no_network(
    hub_cache: Path, no_network: list[object]
) -> None:
    resolved = resolve_model(
        REPO, offline=True, allow_patterns=ONNX_PATTERNS, required=ONNX_REQUIRED
    )
    assert resolved.source == "cache"
    assert resolved.revision == COMMIT
    assert resolved.path == hub_cache / "models--acme--minilm-onnx" / "snapshots" / COMMIT
    assert (resolved.path / "onnx" / "model.onnx").is_file()
    assert no_network == []


def test_online_resolution_prefers_the_cache_without_network(
    hub_cache: Path, no_network: list[object]
) -> None:
    # Not offline: a cached, complete snapshot is still used without asking the hub.
    resolved = resolve_model(REPO, allow_patterns=ONNX_PATTERNS, required=ONNX_REQUIRED)
    assert resolved.source == "cache"
    pinned = resolve_model(f"{REPO}@{COMMIT}", required=ONNX_REQUIRED)
    assert pinned.path == resolved.path
    assert no_network == []


def test_provider_loads_a_repo_id_from_the_cache_with_hf_hub_offline(
    hub_cache: Path,
    no_network: list[object],
    monkeypatch: pytest.MonkeyPatch,
    onnx_provider: OnnxEmbeddingProvider,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    provider = OnnxEmbeddingProvider(EmbeddingConfig(provider="onnx", model=REPO))
    try:
        assert provider.info().revision == COMMIT
        assert provider.model_path.name == COMMIT
        texts = ["offline first", "no network at all"]
        np.testing.assert_allclose(
            provider.embed_batch(texts), onnx_provider.embed_batch(texts), atol=1e-6
        )
    finally:
        provider.close()
    assert no_network == []


def test_provider_through_the_manager_with_a_pinned_revision(
    hub_cache: Path, no_network: list[object]
) -> None:
    config = EmbeddingConfig(provider="onnx", model=f"{REPO}@{COMMIT}", offline=True)
    with EmbeddingManager.from_config(config) as manager:
        assert manager.info.revision == COMMIT
        assert manager.embed(["pinned"]).shape == (1, 384)
    assert no_network == []


def test_missing_model_offline_names_places_and_fetch_command(
    hub_cache: Path, no_network: list[object]
) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("acme/not-there", offline=True, allow_patterns=ONNX_PATTERNS)
    message = str(info.value)
    assert "acme/not-there" in message
    assert "local folder" in message
    assert str(hub_cache / "models--acme--not-there") in message
    assert "offline = true" in message
    assert "hf download acme/not-there" in message
    assert "'onnx/model.onnx*'" in message
    assert no_network == []


def test_hf_hub_offline_env_blocks_the_download(
    hub_cache: Path, no_network: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        OnnxEmbeddingProvider(EmbeddingConfig(provider="onnx", model="acme/not-there"))
    assert no_network == []


def test_missing_model_online_tries_the_hub_once_and_says_so(
    hub_cache: Path, no_network: list[object]
) -> None:
    # The download path runs (through huggingface_hub) and hits the blocked socket.
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("acme/not-there", allow_patterns=ONNX_PATTERNS)
    message = str(info.value)
    assert "download from the Hugging Face hub failed" in message
    assert "hf download acme/not-there" in message
    assert no_network, "the download path never tried the network"


def test_incomplete_snapshot_counts_as_missing(
    tmp_path: Path, minilm_onnx_dir: Path, no_network: list[object]
) -> None:
    cache = tmp_path / "partial"
    lay_out_hub_cache(cache, REPO, minilm_onnx_dir, skip=("onnx/model.onnx",))
    with pytest.raises(ModelNotFoundError) as info:
        OnnxEmbeddingProvider(
            EmbeddingConfig(provider="onnx", model=REPO, cache_dir=str(cache), offline=True)
        )
    message = str(info.value)
    assert "missing: onnx/model.onnx or model.onnx" in message
    assert "akidb-embed export" in message
    assert no_network == []


def test_local_folder_wins_and_needs_no_hub(
    minilm_onnx_dir: Path, no_network: list[object]
) -> None:
    resolved = resolve_model(str(minilm_onnx_dir), required=ONNX_REQUIRED)
    assert resolved.source == "local"
    assert resolved.repo_id is None
    assert no_network == []


def test_local_folder_without_onnx_points_at_export(minilm_dir: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        OnnxEmbeddingProvider(EmbeddingConfig(provider="onnx", model=str(minilm_dir)))
    assert "missing: onnx/model.onnx or model.onnx" in str(info.value)
    assert f"akidb-embed export {minilm_dir} --out DIR" in str(info.value)


def test_not_a_folder_nor_a_repo_id(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face repo id"):
        resolve_model("not a repo id!")


def test_conflicting_revisions() -> None:
    with pytest.raises(ConfigValueError, match="pins revision"):
        OnnxEmbeddingProvider(
            EmbeddingConfig(provider="onnx", model=f"{REPO}@v1", options={"revision": "v2"})
        )
