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
* ``--optimize`` (implied by ``--quantize``) fuses GELU with its bias, LayerNorm and
  attention into ``MultiHeadAttention`` (Q, K, V stay separate full-width MatMuls), but
  not SkipLayerNormalization, which is slower on the CPU than LayerNorm + Add.
* int8 is dynamic quantization with per-channel weights and ``reduce_range=False``
  (per-tensor weights drop some texts to cosine 0.88; ``reduce_range=True`` to 0.66).
  Activations are still quantized per tensor, and BERT's outlier channels make short
  texts suffer (cosine 0.95 for "OK"), so the exporter first
  - cuts the one or two FFN channels whose activations are outliers (max above 6x the
    median channel's) into separate rank-k Linears that stay fp32, and
  - moves the remaining activation outliers of the Linears that read a LayerNorm
    (Q/K/V, FFN input) into their weights, SmoothQuant style: input scaled by ``1/s``
    per channel, weight rows by ``s`` (an identity in exact arithmetic), with
    ``s = max|x|**alpha / max|w|**(1 - alpha)`` measured on built-in calibration texts.
  Both are exact rewrites of the fp32 model; the int8 model then needs no fp32 layers.
  The int8 model also uses the tanh approximation of GELU (error < 1e-3, far below
  int8's; 3-6% faster); fp32 keeps the exact one.
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
# An FFN channel is an outlier when its calibration max exceeds this times the median.
_OUTLIER_RATIO = 6.0
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
        scales: dict[str, np.ndarray] = {}
        split: dict[str, list[int]] = {}
        if quantize == "int8":
            calibration = _torch_vectors(
                torch, wrapper, tokenizer, input_names, spec, CALIBRATION_TEXTS
            )
            split = _split_outlier_channels(torch, wrapper, tokenizer, input_names)
            if split:
                say(
                    "keeping FFN outlier channels in fp32: "
                    + ", ".join(f"{name} {len(idx)}" for name, idx in split.items())
                )
            say(f"calibrating int8 on {len(CALIBRATION_TEXTS)} texts (alpha {smooth_alpha})")
            scales, ranking = _calibrate(torch, wrapper, tokenizer, input_names, smooth_alpha)

        onnx_dir = work / "onnx"
        onnx_dir.mkdir()
        fp32_path = onnx_dir / ("model_fp32.onnx" if (optimize or quantize) else "model.onnx")
        say(f"exporting with torch {torch.__version__} (TorchScript exporter, opset {opset})")
        _torch_export(torch, wrapper, input_names, fp32_path, opset)

        current = fp32_path
        fusion: dict[str, int] = {}
        kept_fp32: list[str] = []
        if optimize or quantize:
            say("optimizing with onnxruntime's transformer optimizer")
            optimized = onnx_dir / ("model_opt.onnx" if quantize else "model.onnx")
            fusion = _optimize(
                model.config, current, optimized, approximate_gelu=quantize == "int8"
            )
            current.unlink()
            current = optimized
        if quantize == "int8":
            if scales:
                smoothed = onnx_dir / "model_smooth.onnx"
                _smooth(onnx, current, smoothed, scales)
                current.unlink()
                current = smoothed
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
            "optimize": bool(optimize or quantize),
            "quantize": quantize,
            "smooth_alpha": smooth_alpha if quantize else None,
            "kept_fp32": kept_fp32,
            "outlier_channels": {name: len(idx) for name, idx in split.items()},
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


def _torch_forward(
    torch: Any, wrapper: Any, tokenizer: Any, names: list[str], texts: Sequence[str]
) -> tuple[Any, np.ndarray]:
    """Run the wrapped model on *texts* (one padded batch); (token states, mask)."""
    ids, mask = _encode(tokenizer, texts)
    inputs = [
        torch.from_numpy(ids),
        torch.from_numpy(mask),
        torch.zeros_like(torch.from_numpy(ids)),
    ]
    return wrapper(*inputs[: len(names)]), mask


def _torch_vectors(
    torch: Any, wrapper: Any, tokenizer: Any, names: list[str], spec: Any, texts: Sequence[str]
) -> np.ndarray:
    out = np.zeros((len(texts), spec.dimension or 0), dtype=np.float32)
    with torch.inference_mode():
        for batch in _batches(tokenizer, texts):
            states, mask = _torch_forward(
                torch, wrapper, tokenizer, names, [texts[i] for i in batch]
            )
            states = states.float().numpy()
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
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Measure every encoder Linear's input on the calibration texts.

    Returns the SmoothQuant scales of the input channels of the Linears that read a
    LayerNorm's output (Q/K/V and the FFN input, as in the SmoothQuant paper; none when
    *alpha* is ``None``; Linears reading the same tensor share one) and every Linear
    ranked by how heavy-tailed its (smoothed) input stays: the first ones lose most to
    per-tensor int8. :func:`_smooth` applies the scales to the ONNX graph. Measured on
    all-MiniLM-L6-v2: smoothing the other Linears too lowers the min cosine (0.9923 vs
    0.9934 on the test texts) and costs a ``Mul`` each."""
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
        _torch_forward(torch, wrapper, tokenizer, names, texts)

    normed: list[Any] = []

    def keep_output(module: Any, args: tuple[Any, ...], output: Any) -> None:
        normed.append(output)

    for name, module in linears.items():
        hooks.append(module.register_forward_pre_hook(record(name)))
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            hooks.append(module.register_forward_hook(keep_output))
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
            after_norm = {out.data_ptr() for out in normed if hasattr(out, "data_ptr")}
            smoothed = {n for ptr, ns in groups.items() if ptr in after_norm for n in ns}
            for table in (seen, amax, msq, rows):
                table.clear()
            normed.clear()
            run(CALIBRATION_TEXTS)
    finally:
        for hook in hooks:
            hook.remove()

    tail: dict[str, float] = {}
    scales: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for members in groups.values():
            act = torch.stack([amax[n] for n in members]).amax(dim=0).clamp(min=1e-5)
            scale = torch.ones_like(act)
            if alpha is not None and members[0] in smoothed:
                weight = torch.stack(
                    [linears[n].weight.abs().amax(dim=0).float() for n in members]
                ).amax(dim=0)
                scale = (act**alpha / weight.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            for name in members:
                rms = torch.sqrt((msq[name] / rows[name] / scale**2).mean()).item()
                tail[name] = (amax[name] / scale).max().item() / max(rms, 1e-12)
                if alpha is not None and name in smoothed:
                    scales[name] = scale.numpy().astype(np.float32)
    ranking = sorted(tail, key=tail.__getitem__, reverse=True)
    return scales, ranking


def _split_outlier_channels(
    torch: Any, wrapper: Any, tokenizer: Any, names: list[str]
) -> dict[str, list[int]]:
    """Give each feed-forward block's few outlier channels their own fp32 path.

    In BERT-style FFNs one or two of the intermediate channels (after GELU) reach 15-25
    on a few tokens while the rest stay below ~6: one per-tensor int8 scale for the
    FFN output Linear's input then rounds most of its values to a handful of levels.
    Channels whose calibration max exceeds ``_OUTLIER_RATIO`` times the median max
    (at most 1% of them) are cut out of both FFN Linears into separate ``outlier``
    Linears that stay fp32 (rank-k, nearly free); the rest is quantized as before. An
    exact re-association in fp32: no Slice or copy is added to the graph.
    Returns ``{ffn output Linear name: [channel, ...]}``.
    """
    model = wrapper.inner
    blocks: list[tuple[str, Any, Any, Any]] = []
    for name, module in model.named_modules():
        inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
        dense_in, dense_out = getattr(inter, "dense", None), getattr(out, "dense", None)
        act = getattr(inter, "intermediate_act_fn", None)
        if (
            isinstance(dense_in, torch.nn.Linear)
            and isinstance(dense_out, torch.nn.Linear)
            and act is not None
            and dense_out.in_features == dense_in.out_features
        ):
            blocks.append((name, module, inter, out))
    if not blocks:
        return {}
    amax: dict[str, Any] = {}
    hooks = []

    def record(key: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            amax[key] = torch.maximum(amax[key], m) if key in amax else m

        return hook

    for name, _, _, out in blocks:
        hooks.append(out.dense.register_forward_pre_hook(record(name)))
    try:
        with torch.inference_mode():
            _torch_forward(torch, wrapper, tokenizer, names, CALIBRATION_TEXTS)
    finally:
        for hook in hooks:
            hook.remove()

    class SplitIntermediate(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self, main: Any, outlier: Any, act: Any) -> None:
            super().__init__()
            self.main, self.outlier, self.act = main, outlier, act

        def forward(self, x: Any) -> Any:
            return self.act(self.main(x)), self.act(self.outlier(x))

    class SplitOutput(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self, main: Any, outlier: Any) -> None:
            super().__init__()
            self.main, self.outlier = main, outlier

        def forward(self, pair: tuple[Any, Any]) -> Any:
            return self.main(pair[0]) + self.outlier(pair[1])

    def part(linear: Any, rows: Any, cols: Any, bias: bool) -> Any:
        weight = linear.weight.detach()[rows][:, cols]
        new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
        new.weight.data.copy_(weight)
        if bias and linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach()[rows])
        elif new.bias is not None:
            new.bias.data.zero_()
        return new

    split: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, _, inter, out in blocks:
            m = amax.get(name)
            if m is None:
                continue
            limit = max(1, m.numel() // 100)
            ranked = torch.argsort(m, descending=True)[:limit]
            chosen = sorted(int(i) for i in ranked if m[i] > _OUTLIER_RATIO * m.median())
            if not chosen:
                continue
            width = m.numel()
            keep = torch.tensor([i for i in range(width) if i not in set(chosen)])
            outl = torch.tensor(chosen)
            every_in = torch.arange(inter.dense.in_features)
            every_out = torch.arange(out.dense.out_features)
            act = inter.intermediate_act_fn
            inter_new = SplitIntermediate(
                part(inter.dense, keep, every_in, True),
                part(inter.dense, outl, every_in, True),
                act,
            )
            out_new = SplitOutput(
                part(out.dense, every_out, keep, True),
                part(out.dense, every_out, outl, False),
            )
            layer = model.get_submodule(name)
            layer.intermediate = inter_new
            layer.output.dense = out_new
            split[f"{name}.output.dense"] = chosen
    return split


def _smooth(onnx: Any, src: Path, dst: Path, scales: dict[str, np.ndarray]) -> None:
    """SmoothQuant on the ONNX graph: for each Linear with a scale ``s``, multiply the
    rows of its MatMul weight by ``s`` and its input by ``1/s`` (one ``Mul`` per input
    tensor, shared by the Linears reading it). An identity in exact arithmetic.

    Done after the transformer optimizer, so the ``Mul`` cannot block its fusions."""
    from onnx import numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    by_path = {
        node.name.strip("/").replace("/", "."): node
        for node in graph.node
        if node.op_type == "MatMul"
    }
    groups: dict[str, list[tuple[Any, np.ndarray]]] = {}
    for name, scale in scales.items():
        node = by_path.get(f"inner.{name}.MatMul")
        if node is None or node.input[1] not in weights:
            continue
        groups.setdefault(node.input[0], []).append((node, scale))
    extra_nodes = []
    for index, (tensor, members) in enumerate(groups.items()):
        if any(not np.array_equal(scale, members[0][1]) for _, scale in members):
            raise ExportError(f"Linears reading {tensor} were calibrated with different scales")
        inverse = numpy_helper.from_array(
            (1.0 / members[0][1]).astype(np.float32), f"akidb_smooth_{index}"
        )
        graph.initializer.append(inverse)
        output = f"{tensor}_akidb_smoothed"
        extra_nodes.append(
            onnx.helper.make_node(
                "Mul", [tensor, inverse.name], [output], name=f"/akidb/smooth_{index}/Mul"
            )
        )
        for node, scale in members:
            init = weights[node.input[1]]
            value = numpy_helper.to_array(init).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value * scale[:, None], init.name))
            node.input[0] = output
    # Keep the graph topologically sorted: each Mul goes right before its first reader.
    nodes = list(graph.node)
    for mul in extra_nodes:
        first = next(i for i, n in enumerate(nodes) if mul.output[0] in n.input)
        nodes.insert(first, mul)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))


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


def _optimize(
    config: Any, src: Path, dst: Path, *, approximate_gelu: bool = False
) -> dict[str, int]:
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = "bert"
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    options = FusionOptions(model_type)
    # Measured on the CPU (onnxruntime 1.32, all-MiniLM-L6-v2): MultiHeadAttention (Q, K
    # and V stay three full-width MatMuls, which int8 quantizes) beats both the plain
    # graph and the fused Attention op (per-head Q/K/V GEMMs with N = head size, ~8%
    # slower than plain). A 2-D mask works with either padding side (a 1-D "lengths"
    # mask only with right padding) and measured as fast. SkipLayerNormalization is ~8x
    # slower per element than LayerNormalization + Add, so it stays unfused.
    options.enable_attention = True
    options.use_multi_head_attention = True
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    # int8 only: tanh-approximated GELU (FastGelu) runs the activation 3-6% faster end to
    # end and its error (<1e-3) is far below int8's; fp32 keeps the exact erf GELU.
    options.enable_gelu_approximation = approximate_gelu
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
    # The outlier-channel Linears (see _split_outlier_channels) are rank-k: fp32 is free.
    excluded = [n for n, path in nodes.items() if ".outlier." in f"{path}."]
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
