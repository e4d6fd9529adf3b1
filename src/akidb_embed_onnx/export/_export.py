"""``export_model``: the export, step by step."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from akidb_embed import EmbeddingConfig
from akidb_embed.backend import ResolvedModel, SentenceTransformerSpec, open_model

from . import _int8
from ._errors import EXTRA_INSTALL, TORCH_INSTALL, ExportError, require
from ._folder import check_destination, copy_configs, install, staging, write_export_info
from ._graph import DEFAULT_OPSET, add_metadata, optimize_graph, torch_export
from ._int8 import DEFAULT_INT8_TARGET, DEFAULT_SMOOTH_ALPHA, Int8Recipe
from ._parity import DEFAULT_MIN_COSINE, ParityReport, parity, provider_vectors
from ._reference import TorchModel
from ._texts import PARITY_TEXTS

__all__ = ["QUANTIZE_MODES", "export_model"]

QUANTIZE_MODES = ("int8",)
# Besides the sentence-transformers files: the weights and every tokenizer format.
_SOURCE_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "added_tokens.json",
    "README.md",
)


@dataclass(frozen=True)
class _Tools:
    """The packages only the export needs, imported when it runs."""

    torch: Any
    transformers: Any
    onnx: Any
    ort: Any

    @classmethod
    def load(cls) -> _Tools:
        return cls(
            require("torch", "PyTorch", TORCH_INSTALL),
            require("transformers", "transformers", EXTRA_INSTALL),
            require("onnx", "onnx", EXTRA_INSTALL),
            require("onnxruntime", "onnxruntime", "pip install onnxruntime"),
        )

    def versions(self) -> dict[str, str]:
        return {
            "torch": self.torch.__version__,
            "transformers": self.transformers.__version__,
            "onnx": self.onnx.__version__,
            "onnxruntime": self.ort.__version__,
            "python": platform.python_version(),
        }


def export_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    optimize: bool = False,
    quantize: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool = False,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    smooth_alpha: float | None = DEFAULT_SMOOTH_ALPHA,
    min_cosine: float | None = None,
    int8_target: float = DEFAULT_INT8_TARGET,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Export *source* (a safetensors Hugging Face model) to the folder *out*.

    Parameters
    ----------
    source:
        Local folder or Hugging Face repo id (``org/name@revision``), resolved like the
        provider resolves models (local, cache, then download unless *offline*).
    out:
        Destination folder. It is written whole or not at all (built next to it,
        then renamed). An existing non-empty folder needs *overwrite*.
    optimize:
        Run onnxruntime's transformer optimizer (MultiHeadAttention, LayerNorm, bias +
        GELU; not SkipLayerNormalization, which runs slower on the CPU).
    quantize:
        ``"int8"``: dynamic int8 quantization, per-channel weights, FFN outlier channels
        in fp32, smoothed activations. Implies *optimize*.
    smooth_alpha:
        SmoothQuant migration strength for int8 (``None`` disables smoothing).
    min_cosine:
        Parity threshold; defaults to 0.9999 (fp32) or 0.98 (int8). Below it the export
        fails and nothing is written.
    int8_target:
        Min cosine the int8 model must reach on the calibration texts; while it does
        not, the Linear whose input is most heavy-tailed stays fp32 (at most a quarter).
    log:
        Called with progress lines (the CLI prints them).

    Returns
    -------
    Path
        *out*, holding ``onnx/model.onnx``, the tokenizer and configuration files and
        ``akidb_export.json`` (options, versions and the :class:`ParityReport`, whose
        ONNX side is the ``onnx`` provider loaded on the folder).

    Raises
    ------
    ExportDependencyError
        PyTorch, transformers or onnx is missing (the message has the install command).
    ExportError
        Unknown quantization, parity below *min_cosine*, or *out* exists.
    ProviderError
        The model has sentence-transformers modules the ``onnx`` provider does not run.
    ModelNotFoundError
        *source* cannot be found.
    """
    say = log or (lambda line: None)
    if quantize not in (None, *QUANTIZE_MODES):
        raise ExportError(f"unknown quantization {quantize!r}; choose one of {QUANTIZE_MODES}")
    tools = _Tools.load()
    dest = check_destination(out, overwrite)
    resolved, spec = _open_source(str(source), revision, cache_dir, offline)
    threshold = min_cosine if min_cosine is not None else DEFAULT_MIN_COSINE[quantize]
    recipe = Int8Recipe(smooth_alpha, int8_target) if quantize == "int8" else None
    dtype = "int8" if recipe else "float32"

    with staging(dest) as work:
        started = time.perf_counter()
        # First, so that the onnx provider can load the folder to check each ONNX file.
        copy_configs(resolved.path, work)
        say(f"loading {resolved.path} with transformers {tools.transformers.__version__}")
        model = TorchModel.load(
            tools.torch,
            tools.transformers,
            resolved.path / spec.transformer_dir,
            spec.max_seq_length or 512,
            spec.do_lower_case,
        )
        reference = model.vectors(PARITY_TEXTS, spec.pooling_modes)
        plan = _int8.prepare(model, recipe, spec.pooling_modes, say) if recipe else None
        onnx_file, fused = _fp32_graph(
            model,
            work / "onnx",
            opset,
            optimize=bool(optimize or recipe),
            int8=bool(recipe),
            say=say,
        )
        metadata = {"akidb_embed.dtype": dtype, "akidb_embed.source": str(source)}
        kept: list[str] = []
        outliers = plan.outlier_channels if plan else {}
        if recipe and plan:
            final = onnx_file.with_name("model.onnx")
            embed = partial(_stamped_vectors, tools.onnx, work, metadata)
            kept = _int8.quantize(tools.onnx, onnx_file, final, plan, recipe, embed, say)
            onnx_file.unlink()
            onnx_file = final
        add_metadata(tools.onnx, onnx_file, metadata)
        report = _check_parity(work, onnx_file, reference, threshold, dest, say)
        info = {
            "format": 1,
            "source": str(source),
            "source_revision": resolved.revision,
            "dtype": dtype,
            "optimize": bool(optimize or recipe),
            "quantize": quantize,
            "smooth_alpha": smooth_alpha if recipe else None,
            "kept_fp32": kept,
            "outlier_channels": {n: len(idx) for n, idx in outliers.items()},
            "opset": opset,
            "fused_operators": fused,
            "parity": asdict(report),
            "seconds": round(time.perf_counter() - started, 2),
            "versions": tools.versions(),
        }
        write_export_info(work, info)
        install(work, dest)
    say(f"wrote {dest}")
    return dest


def _open_source(
    source: str,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    offline: bool,
) -> tuple[ResolvedModel, SentenceTransformerSpec]:
    """Find the safetensors model and refuse one the onnx provider could not run."""
    config = EmbeddingConfig(
        provider="onnx",
        model=source,
        cache_dir=None if cache_dir is None else str(cache_dir),
        offline=offline,
    )
    return open_model(
        config,
        "onnx",
        revision=revision,
        files=_SOURCE_FILES,
        required=[("config.json",), ("*.safetensors", "pytorch_model.bin")],
    )


def _fp32_graph(
    model: TorchModel,
    onnx_dir: Path,
    opset: int,
    *,
    optimize: bool,
    int8: bool,
    say: Callable[[str], None],
) -> tuple[Path, dict[str, int]]:
    """Export *model*, then optimize it: ``model.onnx``, or ``model_opt.onnx`` when int8
    follows. Returns the file and the fused operator counts."""
    onnx_dir.mkdir()
    final = onnx_dir / ("model_opt.onnx" if int8 else "model.onnx")
    exported = onnx_dir / "model_fp32.onnx" if optimize else final
    say(f"exporting with torch {model.torch.__version__} (TorchScript exporter, opset {opset})")
    torch_export(model, exported, opset)
    if not optimize:
        return exported, {}
    say("optimizing with onnxruntime's transformer optimizer")
    # int8 only: the tanh approximation of GELU (fp32 keeps the exact one).
    fused = optimize_graph(model.transformer.config, exported, final, approximate_gelu=int8)
    exported.unlink()
    return final, fused


def _stamped_vectors(
    onnx: Any, work: Path, metadata: dict[str, str], candidate: Path, texts: Sequence[str]
) -> np.ndarray:
    """The onnx provider's vectors for *texts* with the int8 *candidate*."""
    # Stamped first: the provider runs an int8 file with int8's session settings.
    add_metadata(onnx, candidate, metadata)
    return provider_vectors(work, candidate, texts)


def _check_parity(
    work: Path,
    onnx_file: Path,
    reference: np.ndarray,
    threshold: float,
    dest: Path,
    say: Callable[[str], None],
) -> ParityReport:
    """The onnx provider on *work* against the PyTorch *reference*; fails below *threshold*."""
    say("checking parity against the fp32 PyTorch model")
    vectors = provider_vectors(work, onnx_file, PARITY_TEXTS)
    report = parity(reference, vectors, PARITY_TEXTS, threshold)
    say(report.format())
    if not report.ok:
        raise ExportError(
            f"parity check failed: min cosine {report.min_cosine:.6f} < {threshold} "
            f"(worst text {report.worst_text[:60]!r}); nothing was written to {dest}"
        )
    return report
