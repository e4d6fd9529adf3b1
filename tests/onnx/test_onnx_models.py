"""akidb_embed.backend: sentence-transformers folders, tokenizer, token counts, pooling,
normalisation, cores, and the checks every backend shares."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import akidb_embed.backend
from akidb_embed.backend import (
    POOLING_MODES,
    SentenceTransformerSpec,
    TokenCounter,
    available_cores,
    check_max_length,
    check_modules,
    check_options,
    check_token_ids,
    check_truncation,
    hub_cache_dir,
    int_option,
    load_tokenizer,
    normalize_rows,
    parse_model_id,
    pool,
    read_sentence_transformers_config,
    str_option,
)
from akidb_embed.errors import (
    ConfigTypeError,
    ConfigValueError,
    EmbeddingInputError,
    ModelNotFoundError,
    ProviderError,
    TruncationError,
    UnknownConfigKeyError,
)


def _copy_configs(src: Path, dst: Path) -> Path:
    for file in src.rglob("*"):
        if file.is_file() and not file.name.endswith(".safetensors"):
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
    return dst


def test_reads_minilm_like_sentence_transformers(minilm_dir: Path, st_model: object) -> None:
    spec = read_sentence_transformers_config(minilm_dir)
    assert spec.pooling_modes == ("mean",)
    assert spec.max_seq_length == st_model.max_seq_length == 256  # type: ignore[attr-defined]
    assert spec.normalize is True
    assert spec.dimension == 384
    assert spec.do_lower_case is False
    assert spec.modules == ("Transformer", "Pooling", "Normalize")
    assert spec.unsupported_modules == ()


def test_reads_prompts_new_pooling_format_and_lowercase(minilm_dir: Path, tmp_path: Path) -> None:
    folder = _copy_configs(minilm_dir, tmp_path / "m")
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "prompts": {"query": "query: ", "document": "passage: "},
                "default_prompt_name": "document",
            }
        )
    )
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {"embedding_dimension": 384, "pooling_mode": ["cls", "max"], "include_prompt": True}
        )
    )
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": True})
    )
    spec = read_sentence_transformers_config(folder)
    assert spec.prompts == {"query": "query: ", "document": "passage: "}
    assert spec.default_prompt_name == "document"
    assert spec.pooling_modes == ("cls", "max")
    assert spec.pooling == "cls+max"
    assert spec.dimension == 768
    assert spec.max_seq_length == 64
    assert spec.do_lower_case is True


def test_plain_hf_folder_and_unsupported_modules(minilm_dir: Path, tmp_path: Path) -> None:
    folder = _copy_configs(minilm_dir, tmp_path / "plain")
    (folder / "modules.json").unlink()
    (folder / "sentence_bert_config.json").unlink()
    spec = read_sentence_transformers_config(folder)
    # As sentence-transformers reads a bare transformers model: mean pooling, not normalized,
    # tokenizer limit (512) capped by max_position_embeddings (512).
    assert spec.pooling_modes == ("mean",)
    assert spec.normalize is False
    assert spec.max_seq_length == 512

    modules = json.loads((minilm_dir / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    assert read_sentence_transformers_config(folder).unsupported_modules == ("Dense",)


def test_unknown_pooling_mode_is_an_error(minilm_dir: Path, tmp_path: Path) -> None:
    folder = _copy_configs(minilm_dir, tmp_path / "m")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    with pytest.raises(ConfigValueError, match="median"):
        read_sentence_transformers_config(folder)


def test_tokenizer_replaces_the_shipped_truncation_and_padding(minilm_dir: Path) -> None:
    shipped = json.loads((minilm_dir / "tokenizer.json").read_text())
    # The trap: the file truncates at 128 and pads everything to 128.
    assert shipped["truncation"]["max_length"] == 128
    assert shipped["padding"]["strategy"] == {"Fixed": 128}
    tok = load_tokenizer(minilm_dir, 256)
    assert tok.truncation["max_length"] == 256
    assert tok.padding["length"] is None  # pad to the batch's longest, not to a fixed size
    short, long = tok.encode_batch(["hi there", "word " * 400])
    assert len(long.ids) == 256 and long.overflowing
    assert len(short.ids) == 256 and sum(short.attention_mask) == 4
    unpadded = load_tokenizer(minilm_dir, 256, padding=False)
    assert [len(e.ids) for e in unpadded.encode_batch(["hi there", "a"])] == [4, 3]
    with pytest.raises(ConfigValueError):
        load_tokenizer(minilm_dir, 1)
    with pytest.raises(ModelNotFoundError):
        load_tokenizer(minilm_dir / "1_Pooling", 16)


def test_lowercasing_is_applied(minilm_dir: Path, tmp_path: Path) -> None:
    folder = _copy_configs(minilm_dir, tmp_path / "m")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["normalizer"] = None  # a cased tokenizer
    (folder / "tokenizer.json").write_text(json.dumps(data))
    cased = load_tokenizer(folder, 32)
    lowered = load_tokenizer(folder, 32, do_lower_case=True)
    assert cased.encode("HELLO").ids != lowered.encode("HELLO").ids
    assert lowered.encode("HELLO").ids == lowered.encode("hello").ids


@pytest.mark.parametrize("mode", [*POOLING_MODES, ("cls", "mean")])
@pytest.mark.parametrize("side", ["right", "left"])
def test_pool_matches_sentence_transformers(mode: object, side: str) -> None:
    import torch
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    rng = np.random.default_rng(7)
    emb = rng.standard_normal((4, 9, 16)).astype(np.float32)
    lengths = [9, 1, 5, 3]
    mask = np.zeros((4, 9), dtype=np.int64)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, 9 - n :] = 1
    expected = Pooling(16, pooling_mode=mode)(  # type: ignore[arg-type]
        {"token_embeddings": torch.from_numpy(emb), "attention_mask": torch.from_numpy(mask)}
    )["sentence_embedding"].numpy()
    got = pool(emb, mask, mode)  # type: ignore[arg-type]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_pool_rejects_unknown_mode() -> None:
    with pytest.raises(ConfigValueError, match="unknown pooling mode"):
        pool(np.zeros((1, 2, 3), np.float32), np.ones((1, 2), np.int64), "median")


def test_parse_model_id() -> None:
    assert parse_model_id("org/name") == ("org/name", None)
    assert parse_model_id("org/name@v1") == ("org/name", "v1")
    assert parse_model_id("org/name", "abc") == ("org/name", "abc")
    assert parse_model_id("org/name@abc", "abc") == ("org/name", "abc")
    with pytest.raises(ConfigValueError, match="pins revision"):
        parse_model_id("org/name@v1", "v2")
    with pytest.raises(ConfigValueError):
        parse_model_id("org/name@")


def test_hub_cache_dir_reads_the_environment_at_call_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_cache_dir() == tmp_path / "hub"
    assert hub_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_available_cores_follows_affinity() -> None:
    assert available_cores() <= len(os.sched_getaffinity(0))
    assert available_cores() >= 1
    # A child pinned to one core must see exactly one.
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from akidb_embed.backend import available_cores; print(available_cores())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_normalize_rows_in_place_and_zero_rows_stay_zero() -> None:
    rows = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]], dtype=np.float32)
    out = normalize_rows(rows)
    assert out is rows
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])
    assert np.isfinite(rows).all()
    assert normalize_rows(np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_token_counter_counts_before_truncation(minilm_dir: Path) -> None:
    tok = load_tokenizer(minilm_dir, 16)
    counter = TokenCounter(tok)
    long = "word " * 40
    assert counter.count(["hello world", long, ""]) == [4, 42, 2]
    assert counter.count([long]) == [42]
    assert counter.count([]) == []
    assert tok.truncation["max_length"] == 16  # the provider's tokenizer is not changed
    assert len(tok.encode(long).ids) == 16


def test_token_counter_is_thread_safe(minilm_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    counter = TokenCounter(load_tokenizer(minilm_dir, 16))
    texts = [f"text number {i} " * (i % 30) for i in range(64)]
    expected = TokenCounter(load_tokenizer(minilm_dir, 16)).count(texts)
    with ThreadPoolExecutor(8) as pool_:
        results = list(pool_.map(lambda t: counter.count([t])[0], texts))
    assert results == expected
    assert counter._copy is not None  # made once, on first use


def test_check_truncation(minilm_dir: Path) -> None:
    tok = load_tokenizer(minilm_dir, 16)
    counter = TokenCounter(tok)
    texts = ["short", "word " * 40, "fine", "word " * 20]
    encodings = tok.encode_batch(texts)
    kwargs = {"max_tokens": 16, "counter": counter}
    assert check_truncation(encodings, texts, truncation="truncate", **kwargs) == 2
    with pytest.raises(TruncationError) as info:
        check_truncation(encodings, texts, truncation="error", **kwargs)
    assert (info.value.index, info.value.tokens, info.value.max_tokens) == (1, 42, 16)
    short = [texts[0], texts[2]]
    assert check_truncation(tok.encode_batch(short), short, truncation="error", **kwargs) == 0


def test_check_max_length() -> None:
    assert check_max_length(None, 512) == 512
    assert check_max_length(None, 512, default=256) == 256
    assert check_max_length(None, 512, default=8192) == 512
    assert check_max_length(128, 512, default=256) == 128
    assert check_max_length(512, 512, default=256) == 512
    with pytest.raises(ConfigValueError, match="1000 is more than the model's limit of 512") as e:
        check_max_length(1000, 512, source="env:AKIDB_EMBEDDING_MAX_LENGTH")
    assert (e.value.key, e.value.source) == ("max_length", "env:AKIDB_EMBEDDING_MAX_LENGTH")


def test_option_checks() -> None:
    assert check_options({"threads": 2}, ("threads", "revision"), "demo") == {"threads": 2}
    with pytest.raises(UnknownConfigKeyError, match="Did you mean 'threads'"):
        check_options({"thread": 2}, ("threads", "revision"), "demo")
    assert int_option({"n": 3}, "n") == 3 and int_option({}, "n") is None
    assert int_option({"n": 0}, "n", minimum=0) == 0
    for bad in ("3", True, 1.5):
        with pytest.raises(ConfigTypeError):
            int_option({"n": bad}, "n")
    with pytest.raises(ConfigValueError, match=">= 1"):
        int_option({"n": 0}, "n")
    assert str_option({"side": "left"}, "side", choices=("left", "right")) == "left"
    assert str_option({}, "side") is None
    for bad in (3, ""):
        with pytest.raises(ConfigTypeError):
            str_option({"side": bad}, "side")
    with pytest.raises(ConfigValueError, match="'left', 'right'"):
        str_option({"side": "middle"}, "side", choices=("left", "right"))


def test_check_modules() -> None:
    check_modules(SentenceTransformerSpec(modules=("Transformer", "Pooling")), "demo", "m")
    with pytest.raises(ProviderError, match="Dense"):
        check_modules(SentenceTransformerSpec(unsupported_modules=("Dense",)), "demo", "m")
    with pytest.raises(ProviderError, match="include_prompt = false"):
        check_modules(SentenceTransformerSpec(include_prompt=False), "demo", "m")


def test_check_token_ids() -> None:
    assert check_token_ids([[1, 2], (3,), np.array([4, 5])], vocab_size=6, max_tokens=4) == [
        [1, 2],
        [3],
        [4, 5],
    ]
    assert check_token_ids([], vocab_size=6, max_tokens=4) == []
    for bad in ([[1, 6]], [[-1]], [[]], [["1"]], [[1.0]], [[False]], ["ab"], 3):
        with pytest.raises(EmbeddingInputError):
            check_token_ids(bad, vocab_size=6, max_tokens=4)  # type: ignore[arg-type]
    with pytest.raises(TruncationError) as info:
        check_token_ids([[1], [1] * 5], vocab_size=6, max_tokens=4)
    assert (info.value.index, info.value.tokens) == (1, 5)


def test_backend_exports_and_imports_nothing_heavy() -> None:
    for name in akidb_embed.backend.__all__:
        obj = getattr(akidb_embed.backend, name)
        if callable(obj):
            assert obj.__doc__, f"akidb_embed.backend.{name} has no docstring"
    code = (
        "import sys, akidb_embed.backend; "
        "print(','.join(m for m in ('tokenizers', 'huggingface_hub', 'onnxruntime', 'mlx') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
