"""``OpenVINOEmbeddingProvider``: sentence-transformers ONNX exports on OpenVINO.

This module imports only numpy and akidb-embed at import time; openvino and tokenizers
are imported when a provider is built.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from akidb_embed import EmbeddingConfig, ModelInfo, ProviderCapabilities
from akidb_embed.backend import (
    EncoderProvider,
    TextEncoder,
    available_cores,
    check_encoder_inputs,
    check_max_length,
    check_options,
    encoder_feed,
    hub_cache_dir,
    int_option,
    normalize_rows,
    open_onnx_model,
    pad_rows,
    pick_output,
    pool,
    run_sorted,
    str_option,
)
from akidb_embed.errors import ExecutionProviderError, ProviderClosedError, ProviderError

__all__ = ["PRECISIONS", "OpenVINOEmbeddingProvider"]

#: ``precision`` option -> (OpenVINO capability the device must report, ``ModelInfo.dtype``).
PRECISIONS: dict[str, tuple[str, str]] = {
    "f32": ("FP32", "float32"),
    "bf16": ("BF16", "bfloat16"),
    "f16": ("FP16", "float16"),
}
_DTYPES = {name: dtype for name, (_, dtype) in PRECISIONS.items()}
_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_OPTIONS = (
    "onnx_file",
    "revision",
    "device",
    "precision",
    "threads",
    "performance_hint",
    "run_batch_size",
    "concurrent_runs",
    "query_pad_multiple",
)
# Texts per inference run. Measured with bf16 on 2 cores (1,000 corpus texts, best of 3):
# runs of 8 gave 155 texts/s, 16 and 32 gave 184; two runs at once (concurrent_runs=2)
# gave 180, so it stays off by default.
_RUN_BATCH = 16
_SHARE = True
# OpenVINO's CPU plugin prepares its graph again for every new input shape (~1.7 ms for
# this model): queries of varying length took 3.4 ms each, at a fixed width of 16 1.9.
# So a single text is padded to a multiple of 16 (masked positions: same vector). Runs
# of many texts are not: there the extra tokens cost more (-12% texts/s) than they save.
_QUERY_PAD_MULTIPLE = 16
# Compiled models are cached here, under the model cache (OpenVINO's CACHE_DIR), in one
# folder per device and precision: OpenVINO 2026.4 keys a blob without the precision hint,
# and a bf16 model compiled from the blob an f32 compile had just written in the same
# process gave NaN vectors in some starts (2 of 9 here, on a CPU with AMX).
_CACHE_SUBDIR = "akidb-embed-openvino"


def device_capabilities(core: Any, device: str) -> list[str]:
    """What *device* reports as ``OPTIMIZATION_CAPABILITIES`` (``FP32``, ``BF16``, ...).

    A native ``BF16`` means bf16 arithmetic in hardware (``avx512_bf16`` or AMX on x86).
    """
    return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]


class OpenVINOEmbeddingProvider(EncoderProvider):
    """Embeds with an ONNX export of a sentence-transformers model on OpenVINO.

    Registered as ``openvino``. Loads the folder ``akidb-embed export`` writes (and the
    same local folders and Hugging Face ids the ``onnx`` provider resolves,
    offline-first), compiles the ONNX file for the device (cached under the model cache,
    so a second start skips the compilation), tokenizes, sorts texts by token count,
    runs them in small runs, then pools and normalizes as sentence-transformers does.

    Parameters
    ----------
    config:
        ``model``, ``max_length``, ``truncation``, ``batch_size``, ``offline`` and
        ``cache_dir`` apply as for the ``onnx`` provider. ``options`` may hold:

        ``onnx_file``
            ONNX file in the model folder; default ``onnx/model.onnx``, else ``model.onnx``.
        ``revision``
            Branch, tag or commit (same as ``@revision`` in ``model``).
        ``device``
            OpenVINO device: ``"CPU"`` (default), ``"GPU"``, ``"GPU.1"``, ``"NPU"``, ...
            One this machine lacks is an :class:`ExecutionProviderError`; there is no
            silent fallback to the CPU.
        ``precision``
            ``"auto"`` (default: bf16 on a CPU with native bf16, else f32; on other
            devices, the device's default), ``"f32"``, ``"bf16"`` or ``"f16"``. A precision
            the device does not run natively is an :class:`ExecutionProviderError` naming
            what it has. ``info().dtype`` is the precision the compiled model uses.
        ``threads``
            Inference threads on the CPU; default: the cores this process may use.
        ``performance_hint``
            ``"LATENCY"`` (default), ``"THROUGHPUT"`` or ``"CUMULATIVE_THROUGHPUT"``.
        ``run_batch_size``
            Texts per inference run (default 16, at most ``batch_size``).
        ``query_pad_multiple``
            Pad a run of one text (a query) to a multiple of this many tokens (default
            16; 1 turns it off), so that most queries share one input shape and OpenVINO
            does not prepare its graph again for each.
        ``concurrent_runs``
            Runs executed at once when a call has several, each on its own infer request
            and stream (default 1: on the CPU one run already uses every thread).

    Raises
    ------
    ModelNotFoundError
        The model, its ONNX file or its tokenizer cannot be found.
    ExecutionProviderError
        The device is missing, or does not run the precision natively.
    UnknownConfigKeyError, ConfigTypeError, ConfigValueError
        Bad options, or ``max_length`` above the model's limit.
    ProviderError
        The model cannot be compiled, or its pipeline has modules this provider does not
        run (``Dense``, ...).
    """

    requires = ("openvino", "tokenizers", "huggingface_hub")
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
        self.config = config or EmbeddingConfig(provider="openvino")
        options = check_options(self.config.options, _OPTIONS, "openvino")
        onnx_file = str_option(options, "onnx_file")
        revision = str_option(options, "revision")
        device = str_option(options, "device") or "CPU"
        precision = str_option(options, "precision", choices=("auto", *PRECISIONS)) or "auto"
        threads = int_option(options, "threads")
        hint = str_option(options, "performance_hint", choices=_HINTS) or "LATENCY"
        run_batch = int_option(options, "run_batch_size") or _RUN_BATCH
        concurrent = int_option(options, "concurrent_runs") or 1
        pad_multiple = int_option(options, "query_pad_multiple") or _QUERY_PAD_MULTIPLE

        import openvino as ov

        core = ov.Core()
        self.device = self._check_device(core, device)
        on_cpu = self.device.split(".")[0] == "CPU"
        if on_cpu and threads is None:
            threads = available_cores()
        chosen = self._choose_precision(core, precision, on_cpu)

        self._resolved, spec, self._onnx_path = open_onnx_model(
            self.config, "openvino", onnx_file=onnx_file, revision=revision
        )
        self._spec = spec
        self._max_length = check_max_length(
            self.config.max_length,
            spec.max_positions or spec.max_seq_length or 512,
            default=spec.max_seq_length,
            source=self.config.source("max_length"),
        )
        self._texts = TextEncoder(
            self._resolved.path / spec.transformer_dir,
            self._max_length,
            do_lower_case=spec.do_lower_case,
            truncation=self.config.truncation,
        )

        tag = f"{self.device}-{chosen or 'default'}".replace("/", "_")
        cache = hub_cache_dir(self.config.cache_dir) / _CACHE_SUBDIR / tag
        properties: dict[str, Any] = {
            "PERFORMANCE_HINT": hint,
            "CACHE_DIR": str(cache),
        }
        if chosen is not None:
            properties["INFERENCE_PRECISION_HINT"] = chosen
        if threads is not None:
            properties["INFERENCE_NUM_THREADS"] = threads
        if concurrent > 1:
            properties["NUM_STREAMS"] = concurrent
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only cache only costs the compile-time saving
            del properties["CACHE_DIR"]
        try:
            compiled = core.compile_model(str(self._onnx_path), self.device, properties)
        except Exception as exc:  # openvino raises plain RuntimeErrors
            raise ProviderError(
                "openvino", f"cannot compile {self._onnx_path} for {self.device}: {exc}"
            ) from exc
        self._compiled: Any = compiled
        names = [port.get_any_name() for port in compiled.inputs]
        check_encoder_inputs(names, "openvino", self._onnx_path)
        self._inputs = [
            (port.get_any_name(), np.int32 if port.get_element_type() == ov.Type.i32 else np.int64)
            for port in compiled.inputs
        ]
        outputs = [
            (port.get_any_name(), port.get_partial_shape().rank.get_length())
            for port in compiled.outputs
        ]
        self._output, self._pooled_output = pick_output(outputs)
        used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        #: The precision the compiled model computes in (``f32``, ``bf16``, ``f16``).
        self.precision: str = used
        #: Inference threads (``None`` off the CPU).
        self.threads = threads
        #: Texts per inference run.
        self.run_batch_size = min(run_batch, self.config.batch_size)
        #: Runs executed at once when a call has several.
        self.concurrent_runs = concurrent
        #: A run of one text (a query) is padded to a multiple of this many tokens.
        self.query_pad_multiple = pad_multiple
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        dimension = spec.dimension or int(self._run_ids([[0, 0]]).shape[-1])
        self._info = ModelInfo(
            provider="openvino",
            model=self.config.model,
            dimension=dimension,
            max_tokens=self._max_length,
            pooling=spec.pooling,
            normalized=spec.normalize,
            revision=self._resolved.revision,
            dtype=_DTYPES.get(used, used),
            prompts=dict(spec.prompts),
            default_prompt_name=spec.default_prompt_name,
        )

    # -- construction helpers -------------------------------------------------------------

    @staticmethod
    def _check_device(core: Any, device: str) -> str:
        available = list(core.available_devices)
        base = device.split(".")[0]
        if device in available or (
            base == device and any(d.split(".")[0] == base for d in available)
        ):
            return device
        raise ExecutionProviderError(
            f"OpenVINO device {device!r} is not available on this machine (available: "
            f"{', '.join(available) or 'none'}); akidb-embed never falls back to another "
            "device. Check the device's driver, or set options.device to one listed."
        )

    def _choose_precision(self, core: Any, precision: str, on_cpu: bool) -> str | None:
        """The ``INFERENCE_PRECISION_HINT`` to compile with; ``None``: the device's own."""
        capabilities = device_capabilities(core, self.device)
        if precision == "auto":
            if not on_cpu:
                return None
            return "bf16" if "BF16" in capabilities else "f32"
        needed = PRECISIONS[precision][0]
        if needed not in capabilities:
            raise ExecutionProviderError(
                f"precision {precision!r} needs native {needed} on OpenVINO device "
                f"{self.device}, which reports {', '.join(capabilities) or 'nothing'}; "
                "emulating it would be slower than f32. Use precision 'f32' or 'auto'."
            )
        return precision

    # -- the provider contract -------------------------------------------------------------

    def close(self) -> None:
        """Release the compiled model and worker threads. Calling it again is harmless."""
        with self._lock:
            self._compiled = None
            executor, self._executor = self._executor, None
            self._requests = queue.SimpleQueue()
        self._texts.clear()
        if executor is not None:
            executor.shutdown(wait=True)

    def __repr__(self) -> str:
        return (
            f"<OpenVINOEmbeddingProvider {self.config.model!r} device={self.device} "
            f"precision={self.precision} threads={self.threads}>"
        )

    # -- inference -------------------------------------------------------------------------

    def _live(self) -> Any:
        compiled = self._compiled
        if compiled is None:
            raise ProviderClosedError("the openvino provider is closed")
        return compiled

    def _run_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        compiled = self._live()
        dimension = self._info.dimension if hasattr(self, "_info") else 0
        size = self.run_batch_size
        map_runs: Any = map
        if len(rows) > size and self.concurrent_runs > 1:
            map_runs = self._pool().map
        try:
            out = run_sorted(
                rows,
                size,
                lambda run: self._forward(compiled, run),
                dimension=dimension,
                map_runs=map_runs,
            )
        except RuntimeError:  # the executor refuses work once close() shut it down
            if self._compiled is None:
                raise ProviderClosedError("the openvino provider is closed") from None
            raise
        if self._spec.normalize:
            normalize_rows(out)
        return out

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._compiled is None:
                raise ProviderClosedError("the openvino provider is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.concurrent_runs, thread_name_prefix="akidb-embed-openvino"
                )
            return self._executor

    def _forward(self, compiled: Any, rows: list[Sequence[int]]) -> np.ndarray:
        ids, mask = pad_rows(
            rows,
            self._texts.pad_id,
            left=self._texts.left_pad,
            multiple=self.query_pad_multiple if len(rows) == 1 else 1,
            limit=self._max_length,
        )
        feed = encoder_feed(self._inputs, ids, mask)
        # An infer request runs one inference at a time: each run takes an idle one.
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            try:
                # No copies: the outputs are read (pooled) before the request is reused.
                result = request.infer(feed, share_inputs=_SHARE, share_outputs=_SHARE)
                states = result[self._output]
            except Exception as exc:  # openvino raises plain RuntimeErrors
                raise ProviderError("openvino", f"inference failed: {exc}") from exc
            if self._pooled_output:
                return np.array(states, dtype=np.float32)
            return pool(states, mask, self._spec.pooling_modes)
        finally:
            self._requests.put(request)
