"""Export a Hugging Face (safetensors) model to a folder the ``onnx`` provider loads.

``akidb-embed export MODEL --out DIR [--optimize] [--quantize int8]`` and
:func:`export_model` write ``DIR/onnx/model.onnx`` next to the tokenizer and the
sentence-transformers configuration files, the same layout as Hugging Face repos that
ship ONNX weights, then check the result against the fp32 PyTorch model on a built-in
text set (the parity report, also saved as ``DIR/akidb_export.json``).

Only this module needs PyTorch (and ``transformers``, ``onnx``); the provider does not.
Choices, each measured on all-MiniLM-L6-v2:

* The legacy TorchScript exporter (``dynamo=False``) with ``attn_implementation="eager"``:
  onnxruntime's transformer optimizer recognises BERT's patterns only in that graph.
* ``--optimize`` fuses GELU with its bias and LayerNorm, but not Attention or
  SkipLayerNormalization: on the CPU both fused kernels are slower than the plain ops.
* int8 is dynamic quantization with per-channel weights and ``reduce_range=False``
  (per-tensor weights drop some texts to cosine 0.88; ``reduce_range=True`` to 0.66).
  Activations are still quantized per tensor, and BERT's outlier channels make short
  texts suffer (cosine 0.95 for "OK"), so the exporter first moves activation outliers
  into the weights, SmoothQuant style: every encoder ``Linear`` gets its input scaled by
  ``1/s`` per channel and its weight columns by ``s`` (an exact identity in fp32), with
  ``s = max|x|**alpha / max|w|**(1 - alpha)`` measured on built-in calibration texts.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akidb_embed.errors import AkidbEmbedError, ProviderError
from akidb_embed.models import (
    SENTENCE_TRANSFORMERS_FILES,
    load_tokenizer,
    pool,
    read_sentence_transformers_config,
    resolve_model,
)

__all__ = [
    "CALIBRATION_TEXTS",
    "EXPORT_INFO_FILE",
    "PARITY_TEXTS",
    "ExportDependencyError",
    "ExportError",
    "ParityReport",
    "export_model",
    "read_export_info",
]

EXPORT_INFO_FILE = "akidb_export.json"
TORCH_INSTALL = (
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
    "&& pip install 'akidb-embed-onnx[export]'"
)
EXTRA_INSTALL = "pip install 'akidb-embed-onnx[export]'"
QUANTIZE_MODES = ("int8",)
DEFAULT_SMOOTH_ALPHA = 0.75
DEFAULT_INT8_TARGET = 0.992
DEFAULT_OPSET = 17
_MIN_COSINE = {None: 0.9999, "int8": 0.98}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ot", ".onnx")
_SKIP_DIRS = {"onnx", "openvino", ".git", ".cache"}
_SOURCE_PATTERNS = [
    *SENTENCE_TRANSFORMERS_FILES,
    "*.safetensors",
    "*.safetensors.index.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "added_tokens.json",
    "README.md",
]


class ExportError(ProviderError):
    """The export failed (unsupported model, parity below the threshold, bad output folder)."""

    def __init__(self, message: str) -> None:
        super().__init__("onnx", f"export: {message}")


class ExportDependencyError(AkidbEmbedError, ImportError):
    """A package the export needs (PyTorch, transformers, onnx) is not installed."""

    def __init__(self, package: str, install: str) -> None:
        self.package = package
        self.install = install
        super().__init__(
            f"akidb-embed export needs {package}, which is not installed. "
            f"Install it with: {install}"
        )


_FILLER = (
    "the index stores vectors for every document and answers nearest neighbour "
    "queries in a few milliseconds while the model keeps running on the cpu"
)


def _words(n: int, start: int = 0) -> str:
    base = _FILLER.split()
    return " ".join(base[(start + i) % len(base)] for i in range(n))


#: Texts the int8 export measures activation ranges on (disjoint from PARITY_TEXTS).
CALIBRATION_TEXTS: tuple[str, ...] = (
    "OK",
    "?",
    "a",
    "",
    "yes please",
    "How do I reset my password?",
    "cheap flights to Lisbon in May",
    "The committee approved the annual budget after a long debate.",
    "Stir the sauce slowly and season it with salt, pepper and fresh basil.",
    "Gradient descent updates the weights in the direction that lowers the loss.",
    "東京の天気は明日晴れるでしょう。",
    "Le café est fermé le dimanche, mais la boulangerie reste ouverte.",
    "Привет, как дела? Всё хорошо.",
    "🚀 launch day! 🎉🎉",
    "for i in range(10):\n    total += i * i",
    "<div class='card'><h2>Title</h2><p>Body text &amp; more</p></div>",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days';",
    "Die Mannschaft gewann das Spiel in der letzten Minute.",
    _words(40),
    _words(120, 7),
    _words(400, 3),
    "Q3 revenue grew 12% year over year to $4.2B, beating estimates by 3 cents a share.",
    "The patient reported mild headaches and was prescribed 200 mg ibuprofen.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
)

#: Texts the parity report compares the export with the fp32 PyTorch model on.
PARITY_TEXTS: tuple[str, ...] = (
    "",
    "   ",
    "hi",
    "Thanks!",
    "What is the capital of France?",
    "best budget laptop for students",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage in front of a large crowd.",
    "Interest rates were left unchanged at the central bank's March meeting.",
    "Mix the flour and butter until the dough is smooth, then chill it for an hour.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "北京是中国的首都。",
    "서울은 한국의 수도입니다.",
    "Ελληνικά και русский текст вместе",
    "mañana habrá una reunión en la oficina de Málaga",
    "naïve façade, café au lait, crème brûlée",
    "emoji only 😀😃😄😁",
    "مرحبا بالعالم",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "<html><body><p>Hello <b>world</b></p></body></html>",
    "https://example.com/path?query=1&lang=en#section",
    "user@example.com wrote: see ticket #4521 for details",
    "1 2 3 4 5 6 7 8 9 10",
    "ALL CAPS HEADLINE ABOUT THE ELECTION RESULTS",
    "tabs\tand\nnewlines\r\nmixed",
    _words(25, 2),
    _words(70, 5),
    _words(180, 1),
    _words(300, 4),
    _words(600, 9),
)


@dataclass(frozen=True)
class ParityReport:
    """Cosine similarity of the export's vectors to the fp32 PyTorch model's."""

    texts: int
    min_cosine: float
    mean_cosine: float
    threshold: float
    worst_text: str

    @property
    def ok(self) -> bool:
        return self.min_cosine >= self.threshold

    def format(self) -> str:
        """A short table for the terminal."""
        worst = self.worst_text if len(self.worst_text) <= 40 else self.worst_text[:37] + "..."
        return (
            f"parity vs fp32 PyTorch on {self.texts} built-in texts: "
            f"min cosine {self.min_cosine:.6f}, mean {self.mean_cosine:.6f} "
            f"(threshold {self.threshold}); worst: {worst!r}"
        )


def _require(module: str, package: str, install: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportDependencyError(package, install) from exc


def read_export_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``akidb_export.json`` of an exported folder, ``None`` when absent."""
    file = Path(path) / EXPORT_INFO_FILE
    if not file.is_file():
        return None
    with file.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


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
        Run onnxruntime's transformer optimizer (fused LayerNorm and bias + GELU; not
        Attention nor SkipLayerNormalization, which run slower on the CPU).
    quantize:
        ``"int8"``: dynamic int8 quantization, per-channel weights, smoothed activations.
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
        ``akidb_export.json`` (options, versions and the :class:`ParityReport`).

    Raises
    ------
    ExportDependencyError
        PyTorch, transformers or onnx is missing (the message has the install command).
    ExportError
        Unsupported model, parity below *min_cosine*, or *out* exists.
    ModelNotFoundError
        *source* cannot be found.
    """
    say = log or (lambda line: None)
    if quantize not in (None, *QUANTIZE_MODES):
        raise ExportError(f"unknown quantization {quantize!r}; choose one of {QUANTIZE_MODES}")
    torch = _require("torch", "PyTorch", TORCH_INSTALL)
    transformers = _require("transformers", "transformers", EXTRA_INSTALL)
    onnx = _require("onnx", "onnx", EXTRA_INSTALL)
    ort = _require("onnxruntime", "onnxruntime", "pip install onnxruntime")

    dest = Path(out).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not overwrite:
        raise ExportError(f"{dest} exists and is not empty; pass overwrite=True (--force)")
    resolved = resolve_model(
        str(source),
        revision=revision,
        cache_dir=cache_dir,
        offline=offline,
        allow_patterns=_SOURCE_PATTERNS,
        required=[("config.json",), ("*.safetensors", "pytorch_model.bin")],
    )
    spec = read_sentence_transformers_config(resolved.path)
    if spec.unsupported_modules:
        raise ExportError(
            f"{source} has modules the onnx provider does not run: "
            f"{', '.join(spec.unsupported_modules)}"
        )
    model_dir = resolved.path / spec.transformer_dir
    max_length = spec.max_seq_length or 512
    threshold = min_cosine if min_cosine is not None else _MIN_COSINE[quantize]

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        started = time.perf_counter()
        say(f"loading {resolved.path} with transformers {transformers.__version__}")
        model = transformers.AutoModel.from_pretrained(
            str(model_dir), attn_implementation="eager", dtype=torch.float32
        ).eval()
        tokenizer = load_tokenizer(model_dir, max_length, do_lower_case=spec.do_lower_case)
        wrapper, input_names = _wrap(torch, model)
        reference = _torch_vectors(torch, wrapper, tokenizer, input_names, spec, PARITY_TEXTS)

        ranking: list[str] = []
        if quantize == "int8":
            calibration = _torch_vectors(
                torch, wrapper, tokenizer, input_names, spec, CALIBRATION_TEXTS
            )
            say(f"calibrating int8 on {len(CALIBRATION_TEXTS)} texts (alpha {smooth_alpha})")
            ranking = _calibrate(torch, wrapper, tokenizer, input_names, smooth_alpha)

        onnx_dir = work / "onnx"
        onnx_dir.mkdir()
        fp32_path = onnx_dir / ("model_fp32.onnx" if (optimize or quantize) else "model.onnx")
        say(f"exporting with torch {torch.__version__} (TorchScript exporter, opset {opset})")
        _torch_export(torch, wrapper, input_names, fp32_path, opset)

        current = fp32_path
        fusion: dict[str, int] = {}
        kept_fp32: list[str] = []
        if optimize:
            say("optimizing with onnxruntime's transformer optimizer")
            optimized = onnx_dir / ("model_opt.onnx" if quantize else "model.onnx")
            fusion = _optimize(model.config, current, optimized)
            current.unlink()
            current = optimized
        if quantize == "int8":
            say("quantizing to int8 (dynamic, per-channel, reduce_range=False)")
            kept_fp32 = _quantize_mixed(
                onnx,
                ort,
                current,
                onnx_dir / "model.onnx",
                ranking,
                calibration,
                tokenizer,
                spec,
                say,
                int8_target,
            )
            current.unlink()
            current = onnx_dir / "model.onnx"

        dtype = "int8" if quantize == "int8" else "float32"
        _add_metadata(
            onnx, current, {"akidb_embed.dtype": dtype, "akidb_embed.source": str(source)}
        )
        say("checking parity against the fp32 PyTorch model")
        vectors = _onnx_vectors(ort, current, tokenizer, spec, PARITY_TEXTS)
        report = _parity(reference, vectors, PARITY_TEXTS, threshold)
        say(report.format())
        if not report.ok:
            raise ExportError(
                f"parity check failed: min cosine {report.min_cosine:.6f} < {threshold} "
                f"(worst text {report.worst_text[:60]!r}); nothing was written to {dest}"
            )
        _copy_configs(resolved.path, work)
        info = {
            "format": 1,
            "source": str(source),
            "source_revision": resolved.revision,
            "dtype": dtype,
            "optimize": optimize,
            "quantize": quantize,
            "smooth_alpha": smooth_alpha if quantize else None,
            "kept_fp32": kept_fp32,
            "opset": opset,
            "fused_operators": fusion,
            "parity": asdict(report),
            "seconds": round(time.perf_counter() - started, 2),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "python": platform.python_version(),
            },
        }
        (work / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _install(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"wrote {dest}")
    return dest


# --- steps ----------------------------------------------------------------------------------


def _wrap(torch: Any, model: Any) -> tuple[Any, list[str]]:
    """A module taking positional (input_ids, attention_mask[, token_type_ids]) and
    returning the token states: the exporter needs positional inputs with fixed names."""
    import inspect

    accepts = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    type_vocab: int = getattr(model.config, "type_vocab_size", None) or 0
    if "token_type_ids" in accepts and type_vocab > 0:
        names.append("token_type_ids")

    class TokenStates(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            kwargs = dict(zip(names, inputs, strict=True))
            return self.inner(**kwargs).last_hidden_state

    return TokenStates(model).eval(), names


def _encode(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def _batches(tokenizer: Any, texts: Sequence[str], size: int = 16) -> list[list[int]]:
    lengths = [len(e.ids) for e in tokenizer.encode_batch(list(texts))]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


def _finish(states: np.ndarray, mask: np.ndarray, spec: Any) -> np.ndarray:
    vectors = pool(states, mask, spec.pooling_modes)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _torch_vectors(
    torch: Any, wrapper: Any, tokenizer: Any, names: list[str], spec: Any, texts: Sequence[str]
) -> np.ndarray:
    out = np.zeros((len(texts), spec.dimension or 0), dtype=np.float32)
    with torch.inference_mode():
        for batch in _batches(tokenizer, texts):
            ids, mask = _encode(tokenizer, [texts[i] for i in batch])
            inputs = [
                torch.from_numpy(ids),
                torch.from_numpy(mask),
                torch.zeros_like(torch.from_numpy(ids)),
            ]
            states = wrapper(*inputs[: len(names)]).float().numpy()
            vectors = _finish(states, mask, spec)
            if out.shape[1] != vectors.shape[1]:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[batch] = vectors
    return out


def _onnx_vectors(
    ort: Any, path: Path, tokenizer: Any, spec: Any, texts: Sequence[str]
) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    out: np.ndarray | None = None
    for batch in _batches(tokenizer, texts):
        ids, mask = _encode(tokenizer, [texts[i] for i in batch])
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        states = session.run(None, {k: v for k, v in feed.items() if k in wanted})[0]
        vectors = _finish(states, mask, spec)
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[batch] = vectors
    assert out is not None
    return out


def _parity(
    reference: np.ndarray, vectors: np.ndarray, texts: Sequence[str], threshold: float
) -> ParityReport:
    cos = np.sum(reference.astype(np.float64) * vectors.astype(np.float64), axis=1)
    worst = int(np.argmin(cos))
    return ParityReport(
        texts=len(texts),
        min_cosine=round(float(cos.min()), 6),
        mean_cosine=round(float(cos.mean()), 6),
        threshold=threshold,
        worst_text=texts[worst],
    )


def _calibrate(
    torch: Any, wrapper: Any, tokenizer: Any, names: list[str], alpha: float | None
) -> list[str]:
    """Measure every encoder Linear's input on the calibration texts, smooth it
    (SmoothQuant) unless *alpha* is ``None``, and rank the Linears by how heavy-tailed
    their (smoothed) input stays: the first ones lose most to per-tensor int8."""
    model = wrapper.inner
    linears = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith("pooler")
    }
    amax: dict[str, Any] = {}
    msq: dict[str, Any] = {}
    rows: dict[str, int] = {}
    seen: dict[str, Any] = {}
    hooks = []

    def record(name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            seen.setdefault(name, x)
            flat = x.reshape(-1, x.shape[-1]).float()
            m, sq = flat.abs().amax(dim=0), flat.pow(2).sum(dim=0)
            amax[name] = torch.maximum(amax[name], m) if name in amax else m
            msq[name] = msq[name] + sq if name in msq else sq
            rows[name] = rows.get(name, 0) + flat.shape[0]

        return hook

    def run(texts: Sequence[str]) -> None:
        ids, mask = _encode(tokenizer, texts)
        tensors = [
            torch.from_numpy(ids),
            torch.from_numpy(mask),
            torch.zeros_like(torch.from_numpy(ids)),
        ]
        wrapper(*tensors[: len(names)])

    for name, module in linears.items():
        hooks.append(module.register_forward_pre_hook(record(name)))
    try:
        with torch.inference_mode():
            # A first tiny pass keeps every Linear input alive (so no two share an address
            # by reuse): Linears reading the same tensor (query, key, value) then share one
            # scale, and the graph quantizes that input once.
            run(["grouping pass"])
            groups: dict[int, list[str]] = {}
            for name in linears:
                if name in seen:
                    groups.setdefault(seen[name].data_ptr(), []).append(name)
            for table in (seen, amax, msq, rows):
                table.clear()
            run(CALIBRATION_TEXTS)
    finally:
        for hook in hooks:
            hook.remove()

    class Smoothed(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self, linear: Any, inverse: Any) -> None:
            super().__init__()
            self.linear = linear
            self.register_buffer("inverse", inverse)

        def forward(self, x: Any) -> Any:
            return self.linear(x * self.inverse)

    tail: dict[str, float] = {}
    with torch.no_grad():
        for members in groups.values():
            act = torch.stack([amax[n] for n in members]).amax(dim=0).clamp(min=1e-5)
            scale = torch.ones_like(act)
            if alpha is not None:
                weight = torch.stack(
                    [linears[n].weight.abs().amax(dim=0).float() for n in members]
                ).amax(dim=0)
                scale = (act**alpha / weight.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            for name in members:
                rms = torch.sqrt((msq[name] / rows[name] / scale**2).mean()).item()
                tail[name] = (amax[name] / scale).max().item() / max(rms, 1e-12)
                if alpha is None:
                    continue
                linear = linears[name]
                linear.weight.mul_(scale.to(linear.weight.dtype)[None, :])
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, attr, Smoothed(linear, (1.0 / scale).to(linear.weight.dtype)))
    return sorted(tail, key=tail.__getitem__, reverse=True)


def _torch_export(torch: Any, wrapper: Any, names: list[str], path: Path, opset: int) -> None:
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
    ids = ids.clamp(max=wrapper.inner.config.vocab_size - 1)
    mask = (ids != 0).long()
    mask[:, 0] = 1
    inputs = (ids, mask, torch.zeros_like(ids))[: len(names)]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    params = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of dynamo, and tracing warns
        # about shape-dependent Python branches that are constant for a bidirectional encoder.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            inputs,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            external_data=params > 1_800_000_000,
        )
    # Exporting put the wrapper back in training mode (it restores the mode it found).
    wrapper.eval()


def _optimize(config: Any, src: Path, dst: Path) -> dict[str, int]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = "bert"
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    options = FusionOptions(model_type)
    # On the CPU (onnxruntime 1.32, all-MiniLM-L6-v2, batches of 8) the fused Attention
    # runs ~8% slower than the plain graph (its Q/K/V projections are per-head GEMMs
    # with N = head size), and SkipLayerNormalization is ~8x slower per element than
    # LayerNormalization + Add: the model runs 12-16% faster without both fusions.
    options.enable_attention = False
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    optimized = optimize_model(
        str(src),
        model_type=model_type,
        num_heads=heads,
        hidden_size=hidden,
        opt_level=0,
        optimization_options=options,
    )
    optimized.save_model_to_file(str(dst))
    stats = optimized.get_fused_operator_statistics()
    return {k: int(v) for k, v in stats.items() if v}


def _quantize_int8(onnx: Any, src: Path, dst: Path, exclude: Sequence[str] = ()) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        extra_options={
            # Fused Attention/SkipLayerNorm outputs have no type info the quantizer knows.
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            # Leave activation x activation products (Q.K^T, P.V) in fp32.
            "MatMulConstBOnly": True,
        },
    )


def _matmul_nodes(onnx: Any, path: Path) -> dict[str, str]:
    """ONNX MatMul node name -> its module path with dots (``inner.encoder.layer.0...``)."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        node.name: node.name.strip("/").replace("/", ".")
        for node in model.graph.node
        if node.op_type == "MatMul"
    }


def _quantize_mixed(
    onnx: Any,
    ort: Any,
    src: Path,
    dst: Path,
    ranking: Sequence[str],
    reference: np.ndarray,
    tokenizer: Any,
    spec: Any,
    say: Callable[[str], None],
    target: float,
) -> list[str]:
    """Quantize *src*; while the calibration texts' min cosine stays below *target*, keep
    the next most heavy-tailed Linear in fp32 (at most a quarter of them).

    Per-tensor activation scales hurt most where a few tokens carry huge activations
    (BERT's FFN outputs in early layers); keeping those few MatMuls in fp32 costs far
    less speed than dropping int8 altogether.
    """
    nodes = _matmul_nodes(onnx, src)
    excluded: list[str] = []
    kept: list[str] = []
    for step in range(len(ranking) // 4 + 1):
        _quantize_int8(onnx, src, dst, excluded)
        vectors = _onnx_vectors(ort, dst, tokenizer, spec, CALIBRATION_TEXTS)
        worst = float(np.min(np.sum(reference * vectors, axis=1)))
        if worst >= target or step == len(ranking) // 4:
            break
        name = ranking[step]
        matched = [n for n, path in nodes.items() if path.startswith(f"inner.{name}.")]
        say(f"  calibration min cosine {worst:.4f} < {target}: keeping {name} in fp32")
        excluded += matched
        kept.append(name)
    say(f"  calibration min cosine {worst:.4f} with {len(kept)} Linear(s) kept in fp32")
    return kept


def _add_metadata(onnx: Any, path: Path, values: dict[str, str]) -> None:
    model = onnx.load(str(path), load_external_data=False)
    present = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        entry = present.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _copy_configs(src: Path, dst: Path) -> None:
    """Everything but weights: tokenizer, configs, pooling folders, README."""
    for file in sorted(src.rglob("*")):
        rel = file.relative_to(src)
        if not file.is_file() or rel.parts[0] in _SKIP_DIRS or rel.name.startswith("."):
            continue
        if file.name.endswith(_WEIGHT_SUFFIXES) or file.name.endswith(".index.json"):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)


def _install(work: Path, dest: Path) -> None:
    """Move the finished folder into place, replacing *dest* only once it is complete."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        work.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(dest)
