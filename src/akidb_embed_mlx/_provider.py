"""``MLXEmbeddingProvider``: the ``mlx`` provider."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from akidb_embed import EmbeddingConfig, ModelInfo, ProviderCapabilities
from akidb_embed.backend import (
    TokenCounter,
    check_max_length,
    check_options,
    check_truncation,
    load_tokenizer,
    normalize_rows,
    open_model,
    pool,
    str_option,
)
from akidb_embed.errors import (
    ExecutionProviderError,
    ProviderClosedError,
    ProviderError,
    ProviderOutputError,
)

if TYPE_CHECKING:
    import mlx.core as mx
    from tokenizers import Tokenizer

    from ._model import LoadedModel

__all__ = ["OPTIONS", "MLXEmbeddingProvider"]

OPTIONS = ("device", "dtype", "revision", "query_instruction", "padding_side")
_DEVICES = ("gpu", "cpu")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "model-*.safetensors")
_REQUIRED = ("config.json", "tokenizer.json", ("model.safetensors", "model.safetensors.index.json"))


class MLXEmbeddingProvider:
    """Embeddings computed with Apple's MLX, registered as ``mlx``.

    Runs BERT-family encoders (mean/CLS pooling as the model's sentence-transformers
    config says) and Qwen3-Embedding (last-token pooling, normalized, with the query
    instruction as the ``query`` prompt), from full-precision or MLX-quantized
    safetensors checkpoints.

    Parameters
    ----------
    config:
        ``model`` (local folder, or Hugging Face id resolved through the cache and, unless
        ``offline``, downloaded), ``max_length``, ``truncation``, ``batch_size``,
        ``cache_dir``, ``offline``, and these ``options``:

        ``device``
            ``"gpu"`` (Metal, or CUDA with the CUDA build), ``"cpu"``, or unset for the GPU
            when MLX has one, else the CPU. Asking for ``"gpu"`` without one raises
            :class:`~akidb_embed.errors.ExecutionProviderError`; there is no silent fallback.
        ``dtype``
            ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``: compute precision, and
            the precision of a quantized checkpoint's scales.
        ``revision``
            Hub revision (branch, tag or commit) when ``model`` is a repo id.
        ``query_instruction``
            Qwen3 only: the task text of the ``query`` prompt
            ``"Instruct: {task}\\nQuery:"``, used when the model ships no prompts.
        ``padding_side``
            ``"left"`` or ``"right"``; defaults to the tokenizer's own (vectors do not
            depend on it).

    Raises
    ------
    ModelNotFoundError
        The model is neither a folder nor in the cache (and may not be downloaded).
    ExecutionProviderError
        ``device="gpu"`` but MLX has no GPU here.
    ConfigValueError, UnknownConfigKeyError
        A bad option, or ``max_length`` above the model's positions.
    ProviderError
        The model's sentence-transformers pipeline has modules this provider does not run
        (``Dense``, ...), or pools without its prompt tokens (``include_prompt = false``).
    """

    requires: tuple[str, ...] = ("mlx", "tokenizers", "huggingface_hub")
    thread_safe = True
    name = "mlx"
    # Calls serialise on one lock around the model: running more at once gains nothing.
    capabilities = ProviderCapabilities(
        max_concurrency=1, reports_usage=True, counts_tokens=True, text_lengths=True
    )

    def __init__(self, config: EmbeddingConfig | None = None) -> None:
        import mlx.core as mx

        from ._model import load_model
        from ._weights import mlx_dtype

        config = config or EmbeddingConfig(provider="mlx")
        self.config = config
        options = check_options(config.options, OPTIONS, "mlx")
        self._device = _pick_device(mx, str_option(options, "device", choices=_DEVICES))
        dtype_name = options.get("dtype", "float32")
        self._dtype = mlx_dtype(dtype_name)
        self._dtype_name = dtype_name
        padding_side = str_option(options, "padding_side", choices=("left", "right"))

        resolved, spec = open_model(
            config,
            "mlx",
            revision=str_option(options, "revision"),
            files=_WEIGHT_FILES,
            required=_REQUIRED,
        )
        self._path = resolved.path
        self._revision = resolved.revision
        with mx.stream(self._device):
            self._model: LoadedModel = load_model(self._path, config.model, self._dtype)

        qwen = self._model.model_type == "qwen3"
        if (self._path / "modules.json").is_file():
            self._pooling_modes = tuple(spec.pooling_modes)
            self._normalize = spec.normalize
        else:
            # A bare Hugging Face folder: what the architecture is trained for.
            self._pooling_modes = (self._model.default_pooling,)
            self._normalize = qwen
        self._prompts = dict(spec.prompts)
        self._default_prompt = spec.default_prompt_name
        if qwen and "query" not in self._prompts:
            from ._qwen3 import QWEN3_QUERY_INSTRUCTION

            task = options.get("query_instruction", QWEN3_QUERY_INSTRUCTION)
            self._prompts["query"] = f"Instruct: {task}\nQuery:"

        self._max_tokens = check_max_length(
            config.max_length,
            self._model.max_positions,
            default=spec.max_seq_length,
            source=config.source("max_length"),
        )
        self._tokenizer: Tokenizer = load_tokenizer(
            self._path,
            self._max_tokens,
            do_lower_case=spec.do_lower_case,
            padding_side=padding_side,
        )
        self._dimension = self._model.hidden_size * len(self._pooling_modes)
        if "lasttoken" in self._pooling_modes:
            _ensure_eos(self._tokenizer, self._model.config)
        self._counter = TokenCounter(self._tokenizer)
        self._lock = threading.Lock()
        self._closed = False

    # -- provider contract ---------------------------------------------------------------

    def info(self) -> ModelInfo:
        quant = self._model.quantization
        dtype = f"q{quant['bits']}-{self._dtype_name}" if quant else self._dtype_name
        return ModelInfo(
            provider="mlx",
            model=self.config.model,
            dimension=self._dimension,
            max_tokens=self._max_tokens,
            pooling="+".join(self._pooling_modes),
            normalized=self._normalize,
            revision=self._revision,
            dtype=dtype,
            prompts=dict(self._prompts),
            default_prompt_name=self._default_prompt,
        )

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed *texts*; float32 of shape ``(len(texts), dimension)``."""
        return self.embed_batch_with_usage(texts)[0]

    def embed_batch_with_usage(self, texts: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        """Vectors for *texts* and ``{"prompt_tokens", "truncated"}`` counts."""
        texts = list(texts)
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        usage = {"prompt_tokens": 0, "truncated": 0}
        if not texts:
            return out, usage
        bs = self.config.batch_size
        with self._lock:
            self._check_open()
            # Encoded per chunk, so each pads to its own longest text; all are encoded (and
            # checked against the limit) before any is run.
            chunks = [
                self._tokenizer.encode_batch(texts[i : i + bs]) for i in range(0, len(texts), bs)
            ]
            encodings = [e for chunk in chunks for e in chunk]
            usage["truncated"] = check_truncation(
                encodings,
                texts,
                truncation=self.config.truncation,
                max_tokens=self._max_tokens,
                counter=self._counter,
            )
            for n, chunk in enumerate(chunks):
                out[n * bs : n * bs + len(chunk)] = self._forward(chunk, n * bs)
        usage["prompt_tokens"] = sum(sum(e.attention_mask) for e in encodings)
        return out, usage

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text (after truncation), for length-sorted batching."""
        with self._lock:
            self._check_open()
            encodings = self._tokenizer.encode_batch(list(texts))
        return [sum(e.attention_mask) for e in encodings]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text before truncation, special tokens included."""
        self._check_open()
        return self._counter.count(texts)

    def close(self) -> None:
        """Drop the weights. Calling it twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            del self._model.module

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderClosedError("MLXEmbeddingProvider is closed")

    def _forward(self, encodings: list[Any], offset: int) -> np.ndarray:
        import mlx.core as mx

        ids = np.array([e.ids for e in encodings], dtype=np.int32)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int32)
        if not mask.sum(axis=1).all():
            bad = offset + int(np.flatnonzero(mask.sum(axis=1) == 0)[0])
            raise ProviderError("mlx", f"text {bad} has no tokens to embed")
        with mx.stream(self._device):
            states = self._model.module(mx.array(ids), mx.array(mask))
            states = states.astype(mx.float32)
            mx.eval(states)
        hidden = np.asarray(states)
        vectors = pool(hidden, mask, self._pooling_modes)
        if not np.isfinite(vectors).all():
            raise ProviderOutputError(
                "mlx",
                f"non-finite values in {self._dtype_name}; float16 can overflow on this model, "
                "use dtype float32 or bfloat16",
            )
        if self._normalize:
            normalize_rows(vectors)
        return vectors


def _pick_device(mx: Any, requested: str | None) -> mx.Device:
    """The MLX device to run on; a requested GPU that MLX lacks is an error, not a fallback."""
    has_gpu = bool(mx.is_available(mx.gpu))
    if requested == "gpu" and not has_gpu:
        raise ExecutionProviderError(
            "MLX has no GPU here (no Metal device and not the CUDA build of mlx); "
            "use device='cpu' or leave it unset"
        )
    if requested == "cpu" or not has_gpu:
        return mx.cpu
    return mx.gpu


def _ensure_eos(tokenizer: Tokenizer, config: dict[str, Any]) -> None:
    """Make every encoding end with the end-of-text token, as Qwen3-Embedding expects.

    Its current ``tokenizer.json`` appends ``<|endoftext|>`` itself; older copies did not,
    and the model card appended it by hand. Last-token pooling reads that token's state.
    """
    from tokenizers import processors

    eos = tokenizer.token_to_id("<|endoftext|>")
    if eos is None:
        configured = config.get("eos_token_id")
        eos = configured[0] if isinstance(configured, list) else configured
    if eos is None:
        raise ProviderError("mlx", "last-token pooling needs an end-of-text token; none found")
    probe = tokenizer.encode("probe")
    if probe.ids and probe.ids[-1] == eos:
        return
    token = tokenizer.id_to_token(eos)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {token}", pair=f"$A {token} $B:1 {token}:1", special_tokens=[(token, eos)]
    )
