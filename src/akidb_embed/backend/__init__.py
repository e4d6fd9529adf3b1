"""The toolkit local backends are built from (public API for provider authors).

* :func:`open_model` runs the first steps every local backend shares: :func:`resolve_model`
  (offline-first: a local folder, the Hugging Face cache, then, when allowed, a download),
  :func:`read_sentence_transformers_config` and :func:`check_modules`.
* :func:`load_tokenizer` loads ``tokenizer.json`` with explicit truncation and padding;
  :class:`TokenCounter` counts tokens before truncation, and :func:`check_truncation`
  applies the ``truncation`` policy to a batch of encodings.
* :class:`TextEncoder` puts those together: texts to unpadded token id rows, token
  counts before truncation (kept for the embed call that follows), token id checks.
* :class:`EncoderProvider` is the base class of the ``onnx`` and ``openvino`` providers: the
  text side of the provider contract on a :class:`TextEncoder`, given ``_run_ids``.
* :func:`open_onnx_model` finds a folder with an ONNX export and its ONNX file.
* :func:`sorted_runs`, :func:`pad_rows`, :func:`encoder_feed`, :func:`pick_output` and
  :func:`run_sorted` run an encoder graph on token-sorted, padded runs.
* :func:`pool` and :func:`normalize_rows` turn token states into vectors, as
  sentence-transformers' ``Pooling`` and ``Normalize`` modules do, in numpy.
* :func:`check_options`, :func:`int_option`, :func:`str_option`, :func:`check_max_length`
  and :func:`check_token_ids` validate configuration and input the same way everywhere.
* :func:`available_cores` counts the CPU cores this process may actually use.

Nothing heavy is imported at module level: ``huggingface_hub`` and ``tokenizers`` are
imported inside the functions that need them.
"""

from __future__ import annotations

from ._checks import (
    check_max_length,
    check_modules,
    check_options,
    check_token_ids,
    int_option,
    str_option,
)
from ._cores import available_cores
from ._encoder import EncoderProvider
from ._open import DEFAULT_ONNX_FILES, open_model, open_onnx_model
from ._pooling import POOLING_MODES, normalize_rows, pool
from ._resolve import (
    SENTENCE_TRANSFORMERS_FILES,
    ResolvedModel,
    fetch_command,
    hub_cache_dir,
    is_offline,
    parse_model_id,
    resolve_model,
)
from ._runs import (
    ENCODER_INPUTS,
    check_encoder_inputs,
    encoder_feed,
    pad_rows,
    pick_output,
    run_sorted,
    sorted_runs,
)
from ._st_config import SentenceTransformerSpec, read_sentence_transformers_config
from ._texts import TextEncoder
from ._tokenizer import TokenCounter, check_truncation, load_tokenizer

__all__ = [
    "DEFAULT_ONNX_FILES",
    "ENCODER_INPUTS",
    "EncoderProvider",
    "POOLING_MODES",
    "SENTENCE_TRANSFORMERS_FILES",
    "ResolvedModel",
    "SentenceTransformerSpec",
    "TextEncoder",
    "TokenCounter",
    "available_cores",
    "check_encoder_inputs",
    "check_max_length",
    "check_modules",
    "check_options",
    "check_token_ids",
    "check_truncation",
    "encoder_feed",
    "fetch_command",
    "hub_cache_dir",
    "int_option",
    "is_offline",
    "load_tokenizer",
    "normalize_rows",
    "open_model",
    "open_onnx_model",
    "pad_rows",
    "parse_model_id",
    "pick_output",
    "pool",
    "read_sentence_transformers_config",
    "resolve_model",
    "run_sorted",
    "sorted_runs",
    "str_option",
]
