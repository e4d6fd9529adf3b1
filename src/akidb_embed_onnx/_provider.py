"""``OnnxEmbeddingProvider``: sentence-transformers models on ONNX Runtime.

This module imports only numpy and akidb-embed at import time; onnxruntime and
tokenizers are imported when a provider is built.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from akidb_embed import EmbeddingConfig, ModelInfo, ProviderCapabilities
from akidb_embed.backend import (
    DEFAULT_ONNX_FILES,
    EncoderProvider,
    TextEncoder,
    available_cores,
    check_encoder_inputs,
    check_max_length,
    check_options,
    encoder_feed,
    int_option,
    normalize_rows,
    open_onnx_model,
    pad_rows,
    pick_output,
    pool,
    run_sorted,
    str_option,
)
from akidb_embed.errors import (
    ConfigTypeError,
    ExecutionProviderError,
    ProviderClosedError,
    ProviderError,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["DEFAULT_ONNX_FILES", "EXECUTION_PROVIDER_ALIASES", "OnnxEmbeddingProvider"]

#: Short names accepted in the ``execution_providers`` option.
EXECUTION_PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}

_OPTIONS = (
    "onnx_file",
    "revision",
    "threads",
    "inter_op_threads",
    "execution_providers",
    "session_batch_size",
    "session_batch_tokens",
    "concurrent_runs",
    "spinning",
)
_SPINNING = ("always", "in_run", "never")
# Benchmarks behind these three: benchmarks/README.md, "Measured choices in the onnx provider".
# Padded tokens (texts x the longest) per onnxruntime run on the CPU: a run this small keeps
# its activations in cache, and one this large pays the per-run cost on enough tokens.
_CPU_RUN_TOKENS = 512
# int8 on the CPU: per-operator work, not GEMMs, dominates and splits badly across threads,
# so several single-threaded runs at once beat one multi-threaded run (fp32 does not gain);
# each of those runs takes half the tokens of a multi-threaded one.
_CPU_CONCURRENT_RUN_TOKENS = 256
# onnxruntime's CPU SkipLayerNormalization kernel is slower than the LayerNormalization + Add
# it fuses; other execution providers keep the fusion.
_CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def _execution_providers(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """Normalise the ``execution_providers`` option to ``[(name, options), ...]``."""
    if value is None:
        return [("CPUExecutionProvider", {})]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise ConfigTypeError(
            "options.execution_providers", "a non-empty list of names", value, "options"
        )
    out: list[tuple[str, dict[str, Any]]] = []
    for item in value:
        opts: dict[str, Any] = {}
        if isinstance(item, Mapping) and "name" in item:
            opts = {k: v for k, v in item.items() if k != "name"}
            item = item["name"]
        elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
            item, opts = item[0], dict(item[1])
        if not isinstance(item, str):
            raise ConfigTypeError(
                "options.execution_providers", "provider names (str)", item, "options"
            )
        out.append((EXECUTION_PROVIDER_ALIASES.get(item.lower(), item), opts))
    return out


def _dtype_of(path: Path, metadata: Mapping[str, str]) -> str:
    if metadata.get("akidb_embed.dtype"):
        return metadata["akidb_embed.dtype"]
    name = path.name.lower()
    if any(tag in name for tag in ("int8", "uint8", "qint8", "quint8", "quantized")):
        return "int8"
    if any(tag in name for tag in ("int4", "q4", "bnb4")):
        return "int4"
    if "fp16" in name or "f16" in name:
        return "float16"
    return "float32"


class OnnxEmbeddingProvider(EncoderProvider):
    """Embeds with an ONNX export of a sentence-transformers model on ONNX Runtime.

    Registered as ``onnx``. Tokenizes with ``tokenizers`` (truncation at the model's
    ``max_seq_length``, padding to each batch's longest text), sorts texts by token
    count, runs one reused ``InferenceSession``, then pools and normalizes in numpy as
    sentence-transformers does.

    Parameters
    ----------
    config:
        ``model`` is a Hugging Face repo id (``org/name`` or ``org/name@revision``) or a
        local folder; ``max_length`` (at most the model's limit), ``truncation``,
        ``batch_size``, ``offline`` and ``cache_dir`` apply. ``options`` may hold:

        ``onnx_file``
            ONNX file in the model folder (``model_O2.onnx``, ``onnx/model_qint8_avx512.onnx``);
            default ``onnx/model.onnx``, else ``model.onnx``.
        ``revision``
            Branch, tag or commit (same as ``@revision`` in ``model``).
        ``threads``
            Intra-op threads; default: the cores this process may use (affinity and
            cgroup quota aware).
        ``inter_op_threads``
            Inter-op threads (default 1).
        ``session_batch_size``
            Texts per onnxruntime run at most (and at most ``batch_size``, the default).
            Each call is sorted by token count and cut into runs.
        ``session_batch_tokens``
            Padded tokens (texts x the run's longest) per onnxruntime run at most; a
            text longer than that runs alone. Default on the CPU: 512, or 256 for each
            of several concurrent runs (a run this size stays in cache, and short texts
            share one run); no limit on accelerators.
        ``concurrent_runs``
            Runs at once when a call has several texts, each on its own thread against a
            single-threaded session (queries keep the multi-threaded session); a call
            is cut into at least this many runs. Default: the thread count for int8
            models on the CPU, else 1.
        ``spinning``
            When onnxruntime's threads spin-wait for work: ``"always"`` (onnxruntime's
            default: fastest for back-to-back calls, but the cores stay busy between
            calls), ``"in_run"`` (spin inside a run, stop when it returns:
            ``session.force_spinning_stop``) or ``"never"``
            (``session.intra_op.allow_spinning = 0``: least CPU, slower runs).
            ``akidb-embed serve`` sets ``"in_run"`` unless configured, so the threads
            leave the cores to the event loop between requests.
        ``execution_providers``
            ONNX Runtime execution providers in priority order (``["cuda", "cpu"]``, or
            ``[["CUDAExecutionProvider", {"device_id": 1}]]``). One that this
            onnxruntime build lacks raises :class:`ExecutionProviderError`; there is no
            silent fallback to the CPU.

    Raises
    ------
    ModelNotFoundError
        The model, its ONNX file or its tokenizer cannot be found (offline-first).
    ExecutionProviderError
        A requested execution provider is not available.
    UnknownConfigKeyError, ConfigTypeError, ConfigValueError
        Bad options, or ``max_length`` above the model's limit.
    ProviderError
        The model's sentence-transformers pipeline has modules this provider does not run
        (``Dense``, ...), or pools without its prompt tokens (``include_prompt = false``).
    """

    requires = ("onnxruntime", "tokenizers", "huggingface_hub")
    thread_safe = True
    # One call already runs on every core: calls at once would only oversubscribe them.
    capabilities = ProviderCapabilities(
        max_concurrency=1,
        reports_usage=True,
        counts_tokens=True,
        text_lengths=True,
        token_input=True,
    )

    def __init__(self, config: EmbeddingConfig | None = None) -> None:
        self.config = config or EmbeddingConfig(provider="onnx")
        options = check_options(self.config.options, _OPTIONS, "onnx")
        onnx_file = str_option(options, "onnx_file")
        revision = str_option(options, "revision")
        threads = int_option(options, "threads") or available_cores()
        inter_threads = int_option(options, "inter_op_threads") or 1
        providers = _execution_providers(options.get("execution_providers"))
        on_cpu = all(name == "CPUExecutionProvider" for name, _ in providers)
        concurrent = int_option(options, "concurrent_runs")
        session_batch = int_option(options, "session_batch_size")
        run_tokens = int_option(options, "session_batch_tokens")
        spinning = str_option(options, "spinning", choices=_SPINNING) or "always"

        import onnxruntime as ort

        available = ort.get_available_providers()
        for name, _ in providers:
            if name not in available:
                raise ExecutionProviderError(
                    f"ONNX Runtime execution provider {name!r} is not available in this "
                    f"onnxruntime build (available: {', '.join(available)}). Install the "
                    "onnxruntime package built for it (onnxruntime-gpu for CUDA/TensorRT, "
                    "onnxruntime-openvino, onnxruntime-directml, ...), or remove it from "
                    "options.execution_providers; akidb-embed never falls back to the CPU."
                )

        self._resolved, spec, self._onnx_path = open_onnx_model(
            self.config, "onnx", onnx_file=onnx_file, revision=revision
        )
        self._spec = spec
        root = self._resolved.path

        self._max_length = check_max_length(
            self.config.max_length,
            spec.max_positions or spec.max_seq_length or 512,
            default=spec.max_seq_length,
            source=self.config.source("max_length"),
        )
        self._texts = TextEncoder(
            root / spec.transformer_dir,
            self._max_length,
            do_lower_case=spec.do_lower_case,
            truncation=self.config.truncation,
        )
        self._tokenizer: Tokenizer = self._texts.tokenizer

        self._session_args = (
            [name for name, _ in providers],
            [opts for _, opts in providers],
            inter_threads,
            _CPU_DISABLED_OPTIMIZERS if on_cpu else None,
            spinning,
        )
        session = self._new_session(threads)
        active = session.get_providers()
        lost = [name for name, _ in providers if name not in active]
        if lost:
            raise ExecutionProviderError(
                f"ONNX Runtime could not start execution provider(s) {', '.join(lost)} "
                f"(session runs on: {', '.join(active)}); akidb-embed never falls back "
                "to the CPU. Check the accelerator's drivers and libraries."
            )
        self._session: Any = session
        self.threads = threads
        self.execution_providers = active
        self._setup_io(session)
        metadata = session.get_modelmeta().custom_metadata_map or {}
        self._dtype = _dtype_of(self._onnx_path, metadata)
        if concurrent is None:
            concurrent = threads if on_cpu and self._dtype == "int8" else 1
        #: Sub-batches run at once (each single-threaded) when a call has several.
        self.concurrent_runs = min(concurrent, threads)
        #: Texts per onnxruntime run at most.
        self.session_batch_size = min(
            session_batch or self.config.batch_size, self.config.batch_size
        )
        if run_tokens is None and on_cpu:
            run_tokens = _CPU_CONCURRENT_RUN_TOKENS if self.concurrent_runs > 1 else _CPU_RUN_TOKENS
        #: Padded tokens per onnxruntime run at most (``None``: no limit); a text longer
        #: than that runs alone.
        self.session_batch_tokens = run_tokens
        self._pool_lock = threading.Lock()
        self._pool: tuple[Any, ThreadPoolExecutor] | None = None
        dimension = spec.dimension or int(self.embed_batch([""]).shape[-1])
        self._info = ModelInfo(
            provider="onnx",
            model=self.config.model,
            dimension=dimension,
            max_tokens=self._max_length,
            pooling=spec.pooling,
            normalized=spec.normalize,
            revision=self._resolved.revision,
            dtype=self._dtype,
            prompts=dict(spec.prompts),
            default_prompt_name=spec.default_prompt_name,
        )

    # -- construction helpers -------------------------------------------------------------

    def _setup_io(self, session: Any) -> None:
        nodes = session.get_inputs()
        check_encoder_inputs([node.name for node in nodes], "onnx", self._onnx_path)
        self._inputs: list[tuple[str, Any]] = [
            (node.name, np.int32 if node.type == "tensor(int32)" else np.int64) for node in nodes
        ]
        outputs = [(o.name, len(o.shape)) for o in session.get_outputs()]
        self._output, self._pooled_output = pick_output(outputs)

    # -- the provider contract -------------------------------------------------------------

    def close(self) -> None:
        """Release the sessions and worker threads. Calling it again is harmless."""
        with self._pool_lock:
            self._session = None
            pool, self._pool = self._pool, None
        self._texts.clear()
        if pool is not None:
            pool[1].shutdown(wait=True)

    def __repr__(self) -> str:
        return (
            f"<OnnxEmbeddingProvider {self.config.model!r} file={self._onnx_path.name} "
            f"dtype={self._dtype} threads={self.threads}>"
        )

    # -- inference -------------------------------------------------------------------------

    def _live(self) -> Any:
        session = self._session
        if session is None:
            raise ProviderClosedError("the onnx provider is closed")
        return session

    def _run_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Vectors for token id lists: sorted by length, run in sub-batches, restored."""
        session = self._live()
        dimension = self._info.dimension if hasattr(self, "_info") else 0
        size = self.session_batch_size
        if len(rows) > 1 and self.concurrent_runs > 1:
            single, executor = self._concurrent_pool()
            # At least one run per thread, so no thread idles while another works.
            size = min(size, -(-len(rows) // self.concurrent_runs))
            try:
                out = run_sorted(
                    rows,
                    size,
                    lambda run: self._forward(single, run),
                    dimension=dimension,
                    map_runs=executor.map,
                    tokens=self.session_batch_tokens,
                )
            except RuntimeError:  # the executor refuses work once close() shut it down
                if self._session is None:
                    raise ProviderClosedError("the onnx provider is closed") from None
                raise
        else:
            out = run_sorted(
                rows,
                size,
                lambda run: self._forward(session, run),
                dimension=dimension,
                tokens=self.session_batch_tokens,
            )
        if self._spec.normalize:
            normalize_rows(out)
        return out

    def _new_session(self, threads: int) -> Any:
        import onnxruntime as ort

        names, provider_options, inter_threads, disabled, spinning = self._session_args
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = inter_threads
        if spinning == "in_run":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        elif spinning == "never":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(self._onnx_path),
                sess_options=options,
                providers=names,
                provider_options=provider_options,
                disabled_optimizers=disabled,
            )
        except Exception as exc:  # onnxruntime raises its own (untyped) errors
            raise ProviderError(
                "onnx", f"cannot load {self._onnx_path}: {type(exc).__name__}: {exc}"
            ) from exc

    def _concurrent_pool(self) -> tuple[Any, ThreadPoolExecutor]:
        """The single-threaded session and the threads that run it concurrently (onnxruntime
        sessions take concurrent ``run`` calls), made on first use."""
        with self._pool_lock:
            if self._session is None:
                raise ProviderClosedError("the onnx provider is closed")
            if self._pool is None:
                single = self._new_session(max(1, self.threads // self.concurrent_runs))
                executor = ThreadPoolExecutor(
                    self.concurrent_runs, thread_name_prefix="akidb-embed-onnx"
                )
                self._pool = (single, executor)
            return self._pool

    def _forward(self, session: Any, rows: list[Sequence[int]]) -> np.ndarray:
        ids, mask = pad_rows(rows, self._texts.pad_id, left=self._texts.left_pad)
        feed = encoder_feed(self._inputs, ids, mask)
        try:
            states = session.run([self._output], feed)[0]
        except Exception as exc:  # onnxruntime errors are untyped; name the provider
            raise ProviderError("onnx", f"inference failed: {type(exc).__name__}: {exc}") from exc
        if self._pooled_output:
            return np.asarray(states, dtype=np.float32)
        return pool(states, mask, self._spec.pooling_modes)
