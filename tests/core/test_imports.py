"""`import akidb_embed` stays cheap: no heavy backend is imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "onnxruntime",
    "openvino",
    "tokenizers",
    "mlx",
    "torch",
    "huggingface_hub",
    "transformers",
    "hnswlib",
    "sentence_transformers",
    "fastapi",
    "uvicorn",
    "starlette",
    "httpx",
    "grpc",
    "google.protobuf",
    "pyarrow",
    "ray",
    # the framework integrations' frameworks (integrations/)
    "langchain_core",
    "llama_index",
    "chromadb",
)
OURS_LAZY = (
    "akidb_embed_onnx",
    "akidb_embed_mlx",
    "akidb_embed_openvino",
    "akidb_embed.index",
    "akidb_embed.bridge",
    "akidb_embed.remote",
    "akidb_embed.corpus",
    "akidb_embed_ray",
    "akidb_embed.cli",
    "akidb_embed.testing",
    "akidb_embed.pytest_plugin",
    "tqdm",
    "pytest",
    "asyncio",
)


def loaded_after(code: str) -> set[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def offenders(loaded: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in names))


def test_import_pulls_nothing_heavy_or_optional() -> None:
    loaded = loaded_after("import akidb_embed")
    assert offenders(loaded, HEAVY + OURS_LAZY) == []


def test_mock_use_pulls_nothing_heavy() -> None:
    loaded = loaded_after(
        "import akidb_embed\n"
        "with akidb_embed.EmbeddingManager.from_config(provider='mock') as m:\n"
        "    m.embed(['x'])\n"
    )
    assert offenders(loaded, (*HEAVY, "akidb_embed_onnx", "akidb_embed_mlx")) == []


def test_server_import_pulls_no_web_framework_or_grpc() -> None:
    # The serve command's entry point imports akidb_embed_server: listing commands stays cheap.
    loaded = loaded_after("import akidb_embed\nimport akidb_embed_server")
    assert offenders(loaded, HEAVY) == []


def test_listing_providers_imports_no_heavy_dependency() -> None:
    # Listing may import each plugin's own (light) module, never onnxruntime/mlx/torch.
    loaded = loaded_after("import akidb_embed\nakidb_embed.available_providers()")
    assert offenders(loaded, HEAVY) == []


def test_public_api_names() -> None:
    import akidb_embed

    for name in akidb_embed.__all__:
        assert getattr(akidb_embed, name) is not None
    fields = akidb_embed.ModelInfo.__dataclass_fields__
    for name in ("provider", "model", "dimension", "max_tokens", "pooling", "normalized"):
        assert name in fields
    info = akidb_embed.ModelInfo(
        provider="p", model="m", dimension=3, max_tokens=None, pooling="mean", normalized=True
    )
    assert hash(info) == hash(akidb_embed.ModelInfo.from_dict(info.to_dict()))


def test_the_old_models_module_is_a_deprecated_alias_of_the_toolkit() -> None:
    import importlib
    import sys

    import akidb_embed.backend as backend

    sys.modules.pop("akidb_embed.models", None)
    with pytest.warns(DeprecationWarning, match="akidb_embed.backend"):
        models = importlib.import_module("akidb_embed.models")
    assert models.resolve_model is backend.resolve_model
    assert set(models.__all__) == set(backend.__all__)


def test_cli_help_and_the_corpus_command_import_no_pyarrow_or_ray() -> None:
    # --help loads every command (embed-corpus included); the corpus package is lazy.
    loaded = loaded_after(
        "import contextlib, io\n"
        "from akidb_embed.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "import akidb_embed.corpus, akidb_embed_ray\n"
    )
    assert "akidb_embed.corpus._cli" in loaded
    assert offenders(loaded, ("pyarrow", "ray", "onnxruntime", "torch")) == []


def test_healthcheck_command_pulls_nothing_heavy() -> None:
    # The container runs it every few seconds: no web framework, model runtime or client.
    loaded = loaded_after(
        "from akidb_embed.cli import build_parser\nbuild_parser('healthcheck')\n"
        "import akidb_embed_server._healthcheck\n"
    )
    assert offenders(loaded, HEAVY) == []
