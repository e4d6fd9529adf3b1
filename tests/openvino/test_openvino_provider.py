"""The openvino provider on the real all-MiniLM-L6-v2 export, against sentence-transformers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import (
    BatchEmbeddingRequest,
    EmbeddingConfig,
    EmbeddingManager,
    ProviderCapabilities,
    available_providers,
    provider_capabilities,
)
from akidb_embed.backend import available_cores
from akidb_embed.errors import (
    ConfigTypeError,
    ConfigValueError,
    EmbeddingInputError,
    ExecutionProviderError,
    ModelNotFoundError,
    ProviderClosedError,
    TruncationError,
    UnknownConfigKeyError,
)
from akidb_embed.fingerprint import as_fingerprint
from akidb_embed.testing import ProviderConformance
from akidb_embed_openvino import OpenVINOEmbeddingProvider
from akidb_embed_openvino import _provider as ov_provider

pytestmark = pytest.mark.slow


def make_provider(
    model: Path, cache: Path | None = None, **options: object
) -> OpenVINOEmbeddingProvider:
    config = EmbeddingConfig(
        provider="openvino",
        model=str(model),
        cache_dir=str(cache) if cache is not None else None,
        options=options,
    )
    return OpenVINOEmbeddingProvider(config)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a64 * b64, axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


# --- parity with sentence-transformers ------------------------------------------------------


@pytest.mark.parametrize(("name", "threshold"), [("f32", 0.99999), ("bf16", 0.9999)])
def test_parity_on_every_text_with_truncation_counted(
    name: str,
    threshold: float,
    request: pytest.FixtureRequest,
    varied_texts: list[str],
    st_vectors: np.ndarray,
) -> None:
    provider: OpenVINOEmbeddingProvider = request.getfixturevalue(f"{name}_provider")
    assert provider.precision == name
    counts = provider.count_tokens(varied_texts)
    long = sum(n > 256 for n in counts)
    assert len(varied_texts) >= 200 and long >= 30, "the set must hold texts past 256 tokens"
    vectors, usage = provider.embed_batch_with_usage(varied_texts)
    assert usage["truncated"] == long
    assert usage["prompt_tokens"] == sum(min(n, 256) for n in counts)
    cos = _cosines(vectors, st_vectors)
    worst = int(np.argmin(cos))
    assert cos.min() >= threshold, (
        f"{name}: text {worst} ({varied_texts[worst]!r:.60}): cosine {cos[worst]:.7f}"
    )
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_dtype_is_the_precision_read_back_and_sets_the_fingerprint(
    f32_provider: OpenVINOEmbeddingProvider, bf16_provider: OpenVINOEmbeddingProvider
) -> None:
    assert f32_provider.info().dtype == "float32"
    assert bf16_provider.info().dtype == "bfloat16"
    assert (
        bf16_provider._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    )
    assert as_fingerprint(f32_provider.info()) != as_fingerprint(bf16_provider.info())


def test_auto_is_bf16_on_a_cpu_with_native_bf16(
    minilm_onnx_dir: Path, ov_cache: Path, bf16_provider: OpenVINOEmbeddingProvider
) -> None:
    provider = make_provider(minilm_onnx_dir, ov_cache)
    assert (provider.precision, provider.info().dtype) == ("bf16", "bfloat16")
    np.testing.assert_array_equal(
        provider.embed_batch(["auto precision"]), bf16_provider.embed_batch(["auto precision"])
    )
    provider.close()


def test_bf16_on_a_cpu_without_native_bf16_is_an_error_naming_what_it_has(
    minilm_onnx_dir: Path,
    ov_cache: Path,
    f32_provider: OpenVINOEmbeddingProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ov_provider.device_capabilities
    asked: list[str] = []

    def without_bf16(core: object, device: str) -> list[str]:
        asked.append(device)
        # What OpenVINO really reports on this CPU, minus native bf16 (an older CPU).
        return [c for c in real(core, device) if c != "BF16"]

    monkeypatch.setattr(ov_provider, "device_capabilities", without_bf16)
    with pytest.raises(ExecutionProviderError) as info:
        make_provider(minilm_onnx_dir, ov_cache, precision="bf16")
    message = str(info.value)
    assert "precision 'bf16' needs native BF16" in message
    assert "FP32" in message and "INT8" in message and "BF16," not in message
    assert asked == ["CPU"]
    # auto then means f32, and says so.
    provider = make_provider(minilm_onnx_dir, ov_cache)
    assert (provider.precision, provider.info().dtype) == ("f32", "float32")
    np.testing.assert_allclose(
        provider.embed_batch(["no bf16 here"]),
        f32_provider.embed_batch(["no bf16 here"]),
        atol=1e-6,
    )
    provider.close()


def test_f16_on_this_cpu_follows_its_capabilities(minilm_onnx_dir: Path, ov_cache: Path) -> None:
    import openvino as ov

    if "FP16" in ov_provider.device_capabilities(ov.Core(), "CPU"):
        provider = make_provider(minilm_onnx_dir, ov_cache, precision="f16")
        assert provider.info().dtype == "float16"
        provider.close()
    else:
        with pytest.raises(ExecutionProviderError, match="needs native FP16"):
            make_provider(minilm_onnx_dir, ov_cache, precision="f16")


@pytest.mark.parametrize("device", ["GPU", "NPU", "GPU.1", "AUTO", "CPU.7"])
def test_a_missing_device_is_an_error_never_a_fallback(
    minilm_onnx_dir: Path, ov_cache: Path, device: str
) -> None:
    import openvino as ov

    if device in ov.Core().available_devices:
        pytest.skip(f"this machine has {device}")
    with pytest.raises(
        ExecutionProviderError, match=rf"device '{re.escape(device)}'.*never falls back"
    ):
        make_provider(minilm_onnx_dir, ov_cache, device=device)


def test_compiled_model_is_cached_under_the_model_cache(
    minilm_onnx_dir: Path, tmp_path: Path, f32_provider: OpenVINOEmbeddingProvider
) -> None:
    cache = tmp_path / "hub"
    first = make_provider(minilm_onnx_dir, cache, precision="f32")
    folder = cache / "akidb-embed-openvino" / "CPU-f32"  # one folder per device and precision
    blobs = list(folder.iterdir())
    assert blobs, "nothing written to the compile cache"
    first.close()
    second = make_provider(minilm_onnx_dir, cache, precision="f32")
    assert sorted(folder.iterdir()) == sorted(blobs)  # reused
    np.testing.assert_allclose(
        second.embed_batch(["cached"]), f32_provider.embed_batch(["cached"]), atol=1e-6
    )
    second.close()


def test_each_precision_compiles_into_its_own_cache(
    minilm_onnx_dir: Path,
    tmp_path: Path,
    f32_provider: OpenVINOEmbeddingProvider,
    bf16_provider: OpenVINOEmbeddingProvider,
    varied_texts: list[str],
) -> None:
    """OpenVINO keys a cached blob without the precision: an f32 and a bf16 model compiled
    one after the other in one process from one cache folder shared a blob, and the bf16
    one gave NaN vectors in some starts (a CPU with AMX). Each precision has its folder."""
    texts = varied_texts[:24]
    for attempt in range(3):  # the failure was intermittent: a fresh cache each time
        cache = tmp_path / f"hub{attempt}"
        f32 = make_provider(minilm_onnx_dir, cache, precision="f32")
        bf16 = make_provider(minilm_onnx_dir, cache, precision="bf16")
        got = bf16.embed_batch(texts)
        assert np.isfinite(got).all(), f"attempt {attempt}: NaN from the bf16 model"
        assert _cosines(got, bf16_provider.embed_batch(texts)).min() >= 0.99999
        assert _cosines(f32.embed_batch(texts), f32_provider.embed_batch(texts)).min() >= 0.99999
        folders = sorted(p.name for p in (cache / "akidb-embed-openvino").iterdir())
        assert folders == ["CPU-bf16", "CPU-f32"]
        f32.close()
        bf16.close()


def test_threads_hint_and_run_batch_size(
    minilm_onnx_dir: Path,
    ov_cache: Path,
    f32_provider: OpenVINOEmbeddingProvider,
    varied_texts: list[str],
) -> None:
    assert f32_provider.threads == available_cores()
    assert f32_provider.run_batch_size == 16
    provider = make_provider(
        minilm_onnx_dir,
        ov_cache,
        precision="f32",
        threads=1,
        performance_hint="THROUGHPUT",
        run_batch_size=3,
        concurrent_runs=2,
    )
    assert provider.threads == 1
    assert provider._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(provider._compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert provider.run_batch_size == 3
    sample = varied_texts[:40]
    np.testing.assert_allclose(
        provider.embed_batch(sample), f32_provider.embed_batch(sample), atol=2e-6
    )
    provider.close()
    with pytest.raises(ProviderClosedError):
        provider.embed_batch(sample)


def test_bad_options(minilm_onnx_dir: Path, ov_cache: Path) -> None:
    with pytest.raises(UnknownConfigKeyError, match="Did you mean 'precision'"):
        make_provider(minilm_onnx_dir, ov_cache, precison="f32")
    with pytest.raises(ConfigValueError, match="precision"):
        make_provider(minilm_onnx_dir, ov_cache, precision="int4")
    with pytest.raises(ConfigValueError, match="performance_hint"):
        make_provider(minilm_onnx_dir, ov_cache, performance_hint="FAST")
    with pytest.raises(ConfigTypeError):
        make_provider(minilm_onnx_dir, ov_cache, threads="two")
    with pytest.raises(ConfigValueError, match="concurrent_runs"):
        make_provider(minilm_onnx_dir, ov_cache, concurrent_runs=0)


def test_folder_without_onnx_points_at_export(minilm_dir: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="akidb-embed export"):
        make_provider(minilm_dir)


def test_repo_id_from_the_local_hub_cache_offline(
    minilm_onnx_dir: Path, tmp_path: Path, f32_provider: OpenVINOEmbeddingProvider
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--minilm-onnx"
    snapshot = repo / "snapshots" / commit
    for file in minilm_onnx_dir.rglob("*"):
        if file.is_file():
            link = snapshot / file.relative_to(minilm_onnx_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    config = EmbeddingConfig(
        provider="openvino",
        model="acme/minilm-onnx",
        cache_dir=str(tmp_path / "hub"),
        offline=True,
        options={"precision": "f32"},
    )
    provider = OpenVINOEmbeddingProvider(config)
    assert provider.info().revision == commit
    assert (tmp_path / "hub" / "akidb-embed-openvino" / "CPU-f32").is_dir()
    np.testing.assert_allclose(
        provider.embed_batch(["from the hub cache"]),
        f32_provider.embed_batch(["from the hub cache"]),
        atol=1e-6,
    )
    provider.close()


# --- tokens -------------------------------------------------------------------------------


def test_token_counts_and_truncation_error(
    bf16_provider: OpenVINOEmbeddingProvider, minilm_onnx_dir: Path, ov_cache: Path
) -> None:
    texts = ["", "hello world", "word " * 300]
    assert bf16_provider.count_tokens(texts) == [2, 4, 302]
    assert bf16_provider.text_lengths(texts) == [2, 4, 256]
    strict = OpenVINOEmbeddingProvider(
        EmbeddingConfig(
            provider="openvino",
            model=str(minilm_onnx_dir),
            cache_dir=str(ov_cache),
            truncation="error",
        )
    )
    with pytest.raises(TruncationError) as info:
        strict.embed_batch(["fine", "word " * 300])
    assert (info.value.index, info.value.tokens, info.value.max_tokens) == (1, 302, 256)
    strict.close()


def test_token_ids_give_the_texts_vectors(
    bf16_provider: OpenVINOEmbeddingProvider, varied_texts: list[str]
) -> None:
    sample = [*varied_texts[:30], "", "hello world"]
    ids = [bf16_provider._texts.tokenizer.encode(t).ids for t in sample]
    np.testing.assert_allclose(
        bf16_provider.embed_token_ids(ids), bf16_provider.embed_batch(sample), atol=1e-6
    )
    assert bf16_provider.embed_token_ids([]).shape == (0, 384)
    with pytest.raises(EmbeddingInputError, match="outside the vocabulary"):
        bf16_provider.embed_token_ids([[101, -1, 102]])
    with pytest.raises(TruncationError):
        bf16_provider.embed_token_ids([[101] + [2773] * 300 + [102]])


def test_manager_counts_truncation(
    minilm_onnx_dir: Path, ov_cache: Path, varied_texts: list[str]
) -> None:
    long_texts = [t for t in varied_texts if len(t.split()) > 300]
    short = ["short one", "another short text"]
    config = EmbeddingConfig(
        provider="openvino", model=str(minilm_onnx_dir), cache_dir=str(ov_cache)
    )
    with EmbeddingManager.from_config(config) as manager:
        response = manager.embed_batch(BatchEmbeddingRequest(None, long_texts + short))
        assert response.usage["truncated"] == len(long_texts)
        assert response.usage["prompt_tokens"] == 256 * len(long_texts) + 4 + 5
        assert manager.info.provider == "openvino"


def test_declared_capabilities(bf16_provider: OpenVINOEmbeddingProvider) -> None:
    assert provider_capabilities(bf16_provider) == ProviderCapabilities(
        max_concurrency=1,
        reports_usage=True,
        counts_tokens=True,
        text_lengths=True,
        token_input=True,
    )


def test_registered_through_the_entry_point() -> None:
    status = available_providers()["openvino"]
    assert status.loadable, status.reason
    assert status.distribution == "akidb-embed-openvino"


def test_import_is_light() -> None:
    code = (
        "import sys, akidb_embed, akidb_embed_openvino; "
        "heavy = [m for m in ('openvino', 'tokenizers', 'huggingface_hub', 'onnxruntime', "
        "'torch') if m in sys.modules]; print(','.join(heavy))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == ""


def test_guide_lists_every_option() -> None:
    """docs/openvino.md documents exactly the options this provider accepts."""
    guide = Path(__file__).resolve().parents[2] / "docs" / "openvino.md"
    section = guide.read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert sorted(documented) == sorted(ov_provider._OPTIONS)


# --- the conformance suite ---------------------------------------------------------------------


@pytest.fixture(scope="class")
def _ov_dirs(minilm_onnx_dir: Path, ov_cache: Path) -> None:
    TestOpenVINOConformance.model_dir = minilm_onnx_dir
    TestOpenVINOConformance.cache = ov_cache
    TestOpenVINOf32Conformance.model_dir = minilm_onnx_dir
    TestOpenVINOf32Conformance.cache = ov_cache


@pytest.mark.usefixtures("_ov_dirs")
class TestOpenVINOConformance(ProviderConformance):
    # bf16 rounds each run's activations: a text's vector moves a little with the length
    # its run is padded to (far above the parity threshold).
    batch_atol = 0.01
    model_dir: Path
    cache: Path

    def make_provider(self) -> OpenVINOEmbeddingProvider:
        return make_provider(self.model_dir, self.cache)


@pytest.mark.usefixtures("_ov_dirs")
class TestOpenVINOf32Conformance(ProviderConformance):
    model_dir: Path
    cache: Path

    def make_provider(self) -> OpenVINOEmbeddingProvider:
        return make_provider(self.model_dir, self.cache, precision="f32")


def test_query_padding_changes_no_vector(
    minilm_onnx_dir: Path, ov_cache: Path, f32_provider: OpenVINOEmbeddingProvider
) -> None:
    from akidb_embed.backend import pad_rows

    ids, mask = pad_rows([[101, 7, 102], [101, 102]], 0, multiple=16, limit=256)
    assert ids.shape == mask.shape == (2, 16) and mask.sum() == 5
    assert pad_rows([[1] * 250], 0, multiple=16, limit=256)[0].shape == (1, 256)
    assert pad_rows([[1] * 250], 0, multiple=16, limit=252)[0].shape == (1, 252)
    assert f32_provider.query_pad_multiple == 16
    unpadded = make_provider(minilm_onnx_dir, ov_cache, precision="f32", query_pad_multiple=1)
    for query in ["a", "what is openvino", "word " * 40]:
        np.testing.assert_allclose(
            f32_provider.embed_batch([query]), unpadded.embed_batch([query]), atol=1e-6
        )
    unpadded.close()
