"""``akidb-embed export``: layout, parity report, int8 quality, failure modes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from akidb_embed.errors import AkidbEmbedError
from akidb_embed_onnx._cli import register
from akidb_embed_onnx.export import (
    EXPORT_INFO_FILE,
    ExportError,
    export_model,
    read_export_info,
)


def test_export_layout_and_parity_report(minilm_onnx_dir: Path) -> None:
    assert (minilm_onnx_dir / "onnx" / "model.onnx").is_file()
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ):
        assert (minilm_onnx_dir / name).is_file(), name
    assert not list(minilm_onnx_dir.rglob("*.safetensors"))
    info = read_export_info(minilm_onnx_dir)
    assert info is not None
    assert info["dtype"] == "float32"
    # --optimize fuses bias + GELU (which needs the eager TorchScript export), and leaves
    # out the fusions that run slower on the CPU.
    assert info["optimize"] is True
    assert info["fused_operators"]["BiasGelu"] == 6
    assert "Attention" not in info["fused_operators"]
    assert "SkipLayerNormalization" not in info["fused_operators"]
    assert info["parity"]["texts"] >= 30
    assert info["parity"]["min_cosine"] >= 0.9999
    assert info["versions"]["torch"].startswith("2.")


def test_int8_export_report(minilm_onnx_int8_dir: Path, minilm_onnx_dir: Path) -> None:
    import onnx

    info = read_export_info(minilm_onnx_int8_dir)
    assert info is not None
    assert info["dtype"] == "int8" and info["quantize"] == "int8"
    assert 0.98 <= info["parity"]["min_cosine"] < 1.0
    # Mixed precision stays the exception: most Linear layers are int8.
    assert len(info["kept_fp32"]) <= 9
    model = onnx.load(str(minilm_onnx_int8_dir / "onnx" / "model.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert {p.key: p.value for p in model.metadata_props}["akidb_embed.dtype"] == "int8"
    fp32_size = (minilm_onnx_dir / "onnx" / "model.onnx").stat().st_size
    assert (minilm_onnx_int8_dir / "onnx" / "model.onnx").stat().st_size < fp32_size / 2


def test_cli_parser() -> None:
    parser = argparse.ArgumentParser(prog="akidb-embed")
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["export", "org/name", "--out", "dir", "--optimize", "--quantize", "int8"]
    )
    assert (args.model, args.out, args.optimize, args.quantize) == ("org/name", "dir", True, "int8")
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "org/name", "--out", "dir", "--quantize", "int4"])


def test_unknown_quantization(tmp_path: Path, minilm_dir: Path) -> None:
    with pytest.raises(ExportError, match="unknown quantization"):
        export_model(minilm_dir, tmp_path / "out", quantize="fp8")


def test_refuses_a_non_empty_destination(tmp_path: Path, minilm_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="not empty"):
        export_model(minilm_dir, out)
    assert (out / "keep.txt").read_text() == "user data"


def test_failed_parity_writes_nothing(tmp_path: Path, minilm_dir: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="parity check failed"):
        export_model(minilm_dir, out, min_cosine=1.5)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "a partial export was left behind"


def test_without_torch_fails_with_the_install_command(tmp_path: Path, minilm_dir: Path) -> None:
    # sys.modules["torch"] = None makes `import torch` fail as if it were not installed.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from akidb_embed.cli import main\n"
        f"sys.exit(main(['export', {str(minilm_dir)!r}, '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "needs PyTorch, which is not installed" in result.stderr
    assert "pip install torch==2.13.0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_dependency_error_is_an_import_error() -> None:
    from akidb_embed_onnx.export import ExportDependencyError

    error = ExportDependencyError("PyTorch", "pip install torch==2.13.0")
    assert isinstance(error, ImportError) and isinstance(error, AkidbEmbedError)


def test_export_info_is_json(minilm_onnx_dir: Path) -> None:
    data = json.loads((minilm_onnx_dir / EXPORT_INFO_FILE).read_text())
    assert data["format"] == 1
