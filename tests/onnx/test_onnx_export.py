"""``akidb-embed export``: layout, parity report, int8 quality, failure modes."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from akidb_embed import EmbeddingConfig
from akidb_embed.errors import AkidbEmbedError, ProviderError
from akidb_embed_onnx import OnnxEmbeddingProvider
from akidb_embed_onnx._cli import register
from akidb_embed_onnx.export import (
    EXPORT_INFO_FILE,
    PARITY_TEXTS,
    ExportDependencyError,
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
    # --optimize fuses bias + GELU and attention into MultiHeadAttention (which needs the
    # eager TorchScript export), and leaves out the fusions that run slower on the CPU.
    assert info["optimize"] is True
    assert info["fused_operators"]["BiasGelu"] == 6
    assert "FastGelu" not in info["fused_operators"]  # the exact GELU, as in PyTorch
    assert info["fused_operators"]["MultiHeadAttention"] == 6
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
    # The FFN outlier channels get their own fp32 path, so no whole Linear stays fp32.
    assert info["kept_fp32"] == []
    assert info["outlier_channels"]
    assert all(1 <= n <= 15 for n in info["outlier_channels"].values())
    assert info["optimize"] is True
    assert info["fused_operators"]["MultiHeadAttention"] == 6
    assert info["fused_operators"]["FastGelu"] >= 6  # tanh GELU in int8 (fp32: exact)
    model = onnx.load(str(minilm_onnx_int8_dir / "onnx" / "model.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "MultiHeadAttention"} <= ops
    # Only the rank-k outlier MatMuls are fp32; every full-width Linear is int8.
    weights = {init.name: init.dims for init in model.graph.initializer}
    fp32_linears = [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in weights
    ]
    assert fp32_linears and all(".outlier" in name.replace("/", ".") for name in fp32_linears)
    # SmoothQuant Muls only on the inputs that are a LayerNorm's output (Q/K/V, FFN in).
    smooth = [n for n in model.graph.node if n.name.startswith("/akidb/smooth_")]
    assert len(smooth) == 2 * 6
    assert {p.key: p.value for p in model.metadata_props}["akidb_embed.dtype"] == "int8"
    fp32_size = (minilm_onnx_dir / "onnx" / "model.onnx").stat().st_size
    assert (minilm_onnx_int8_dir / "onnx" / "model.onnx").stat().st_size < fp32_size / 2


def test_parity_report_is_the_onnx_providers_own(minilm_onnx_int8_dir: Path, st_model: Any) -> None:
    """The report's figures are the ones the onnx provider, loaded on the folder with its
    defaults, gives against sentence-transformers (int8 vectors depend on how the provider
    batches, so a second runner would report other figures)."""
    import numpy as np

    info = read_export_info(minilm_onnx_int8_dir)
    assert info is not None
    reference = st_model.encode(list(PARITY_TEXTS), normalize_embeddings=True)
    provider = OnnxEmbeddingProvider(
        EmbeddingConfig(provider="onnx", model=str(minilm_onnx_int8_dir))
    )
    try:
        vectors = provider.embed_batch(PARITY_TEXTS)
    finally:
        provider.close()
    cos = np.sum(reference.astype(np.float64) * vectors, axis=1)
    assert info["parity"]["min_cosine"] == pytest.approx(float(cos.min()), abs=1e-5)
    assert info["parity"]["mean_cosine"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert info["parity"]["worst_text"] == PARITY_TEXTS[int(cos.argmin())]


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


def test_refuses_modules_the_provider_does_not_run(tmp_path: Path, minilm_dir: Path) -> None:
    source = tmp_path / "dense"
    shutil.copytree(minilm_dir, source, ignore=shutil.ignore_patterns("*.safetensors"))
    (source / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    modules = json.loads((source / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (source / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ProviderError, match="Dense"):
        export_model(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


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
    error = ExportDependencyError("PyTorch", "pip install torch==2.13.0")
    assert isinstance(error, ImportError) and isinstance(error, AkidbEmbedError)


def test_export_info_is_json(minilm_onnx_dir: Path) -> None:
    data = json.loads((minilm_onnx_dir / EXPORT_INFO_FILE).read_text())
    assert data["format"] == 1


def test_outlier_split_and_smoothing_are_exact(minilm_dir: Path, tmp_path: Path) -> None:
    """Both int8 preparations rewrite the fp32 model without changing what it computes:
    the split model gives the same states in torch, and the smoothed ONNX graph gives
    the same states in onnxruntime."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    import transformers

    from akidb_embed_onnx.export import CALIBRATION_TEXTS, DEFAULT_OPSET
    from akidb_embed_onnx.export._graph import torch_export
    from akidb_embed_onnx.export._outliers import split_outlier_channels
    from akidb_embed_onnx.export._reference import TorchModel
    from akidb_embed_onnx.export._smoothquant import calibrate, smooth

    model = TorchModel.load(torch, transformers, minilm_dir, 256, do_lower_case=False)
    texts = ["Thanks!", "A longer sentence about interest rates and the central bank.", ""]
    ids, mask = model.encode(texts)
    with torch.inference_mode():
        before = model.module(*model.inputs(ids, mask)).numpy()
    split = split_outlier_channels(model, CALIBRATION_TEXTS)
    assert split and all(len(ch) == len(set(ch)) for ch in split.values())
    layer = model.transformer.encoder.layer[0]
    assert type(layer.intermediate).__name__ == "SplitIntermediate"
    with torch.inference_mode():
        after = model.module(*model.inputs(ids, mask)).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=2e-5)

    scales, ranking = calibrate(model, CALIBRATION_TEXTS, 0.75)
    assert scales and set(scales) <= set(ranking)
    assert all(".attention.self." in n or ".intermediate." in n for n in scales)
    plain = tmp_path / "plain.onnx"
    torch_export(model, plain, DEFAULT_OPSET)
    smoothed = tmp_path / "smoothed.onnx"
    smooth(onnx, plain, smoothed, scales)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    feed = {k: v for k, v in feed.items() if k in model.input_names}
    run = {
        path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        for path in (plain, smoothed)
    }
    np.testing.assert_allclose(run[smoothed], run[plain], atol=2e-4)
    np.testing.assert_allclose(run[plain], before, atol=2e-4)
    muls = [n for n in onnx.load(str(smoothed)).graph.node if n.name.startswith("/akidb/smooth_")]
    assert len(muls) == 2 * len(model.transformer.encoder.layer)
