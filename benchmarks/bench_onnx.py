"""Side-by-side CPU benchmark of the ``onnx`` provider, printed as one table.

Contenders, each measured in fresh subprocesses with the same intra-op thread count on
the same corpus (``benchmarks/corpus.py``: 2,000 English texts of 5-120 words and 200
queries of 3-12 words):

* ``sentence-transformers`` (torch CPU) on the packaged all-MiniLM-L6-v2 weights;
* ``fastembed`` loading the same fp32 ONNX file from a local folder, at its defaults;
* ``onnxruntime loop``: a plain session, batches of 32 in corpus order (no sorting);
* ``akidb-embed onnx fp32`` and ``int8`` through ``EmbeddingManager``;
* ``akidb-embed openvino f32`` and ``bf16`` through ``EmbeddingManager``, on the same fp32
  ONNX file (their cold starts find the compile cache their corpus run filled).

Figures: corpus throughput (texts/s, tokens/s, ratio to sentence-transformers and the
fraction of this machine's fp32 compute limit: the corpus' FLOPs, from the model config
and the real token counts, over the best fp32 GEMM rate measured with numpy and
onnxruntime), single-query latency p50/p95/p99, cold start (a fresh process: import,
load, first vector) and peak RSS, and the minimum cosine to sentence-transformers.

    python benchmarks/bench_onnx.py                 # exports the models first if needed
    python benchmarks/bench_onnx.py --threads 2 --docs 500
    python benchmarks/bench_onnx.py --only st fp32 ov-f32 ov-bf16 --docs 1200   # OpenVINO goals

Speed goals live here, not in tests. Other processes on the machine skew the figures;
the ratios, measured in one run, are the meaningful part.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = REPO / ".cache" / "models"
BATCH = 32

CONTENDERS = {
    "st": "sentence-transformers (torch)",
    "fastembed": "fastembed (same ONNX)",
    "ort": "onnxruntime loop",
    "fp32": "akidb-embed onnx fp32",
    "int8": "akidb-embed onnx int8",
    "ov-f32": "akidb-embed openvino f32",
    "ov-bf16": "akidb-embed openvino bf16",
}


# --- worker side -------------------------------------------------------------------------


def _load(name: str, args: argparse.Namespace) -> Any:
    """Import and load contender *name*; return ``embed(texts) -> ndarray``."""
    threads = args.threads
    if name == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(args.source, device="cpu")
        return lambda texts: model.encode(texts, batch_size=BATCH, convert_to_numpy=True)
    if name == "fastembed":
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        TextEmbedding.add_custom_model(
            model="local/all-MiniLM-L6-v2-onnx",
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf="local/all-MiniLM-L6-v2-onnx"),
            dim=384,
            model_file="onnx/model.onnx",
        )
        model = TextEmbedding(
            "local/all-MiniLM-L6-v2-onnx", specific_model_path=args.fp32, threads=threads
        )
        import numpy as np

        return lambda texts: np.stack(list(model.embed(texts)))
    if name == "ort":
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(Path(args.fp32) / "onnx" / "model.onnx"),
            options,
            providers=["CPUExecutionProvider"],
        )
        tok = Tokenizer.from_file(str(Path(args.fp32) / "tokenizer.json"))
        tok.enable_truncation(256)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")

        def naive(texts: list[str]) -> Any:
            out = []
            for i in range(0, len(texts), BATCH):
                enc = tok.encode_batch(texts[i : i + BATCH])
                ids = np.array([e.ids for e in enc], dtype=np.int64)
                mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
                feed = {
                    "input_ids": ids,
                    "attention_mask": mask,
                    "token_type_ids": np.zeros_like(ids),
                }
                states = session.run(None, feed)[0]
                v = (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
                out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
            return np.concatenate(out)

        return naive
    from akidb_embed import EmbeddingManager

    if name.startswith("ov-"):
        manager = EmbeddingManager.from_config(
            provider="openvino",
            model=args.fp32,
            cache_size=0,
            batch_size=BATCH,
            cache_dir=args.ov_cache,
            options={"threads": threads, "precision": name[3:]},
        )
        return manager.embed
    folder = args.fp32 if name == "fp32" else args.int8
    manager = EmbeddingManager.from_config(
        provider="onnx", model=folder, cache_size=0, batch_size=BATCH, options={"threads": threads}
    )
    return manager.embed


def worker(args: argparse.Namespace) -> int:
    if args.cold:
        embed = _load(args.worker, args)
        embed(["a first query"])
        print(json.dumps({"ready": time.time()}), flush=True)
        return 0
    import numpy as np

    sys.path.insert(0, str(HERE))
    import corpus

    docs = corpus.documents()[: args.docs]
    queries = corpus.queries()
    embed = _load(args.worker, args)
    embed(docs[:16])  # warm-up: first-run allocations
    passes = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        vectors = np.asarray(embed(docs), dtype=np.float32)
        passes.append(time.perf_counter() - start)
    seconds = statistics.median(passes)
    latencies = []
    for query in queries[:10] + queries:
        t = time.perf_counter()
        embed([query])
        latencies.append(time.perf_counter() - t)
    latencies = latencies[10:]
    np.save(args.vectors, vectors)
    ms = np.array(latencies) * 1000
    print(
        json.dumps(
            {
                "seconds": seconds,
                "p50": float(np.percentile(ms, 50)),
                "p95": float(np.percentile(ms, 95)),
                "p99": float(np.percentile(ms, 99)),
            }
        ),
        flush=True,
    )
    return 0


def gemm_worker(threads: int) -> int:
    """Best fp32 GEMM rate (FLOP/s) of numpy and onnxruntime at the encoder's shapes."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m, k, n = 4096, 384, 1536
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)

    def best(fn: Any) -> float:
        fn()
        times = []
        for _ in range(7):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 2 * m * k * n / min(times)

    rate_numpy = best(lambda: a @ b)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["m", n])],
        [onnx.numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rate_ort = best(lambda: session.run(None, {"a": a}))
    print(json.dumps({"numpy": rate_numpy, "onnxruntime": rate_ort}), flush=True)
    return 0


# --- parent side ---------------------------------------------------------------------------


def _run_measured(
    extra: list[str], threads: int, pythonpath: str | None = None
) -> tuple[dict[str, Any], float, int]:
    """Run this script as a worker; return (its JSON line, spawn time, peak RSS bytes).

    The child is reaped with ``os.wait4`` to read its own peak RSS. *pythonpath* puts
    another copy of the packages first on the child's path (``--baseline``)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.time()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *extra], stdout=out, stderr=err, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(extra)} failed:\n{stderr[-3000:]}")
    line = [ln for ln in stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), started, usage.ru_maxrss * 1024


def _checkout(ref: str, dest: Path) -> str:
    """The packages of git *ref* under *dest*, for PYTHONPATH (the installed
    distributions' entry points then load that copy's modules)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src/akidb_embed", "src/akidb_embed_onnx"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest / "src")


def _ensure_exports() -> tuple[Path, Path, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import cached_export, packaged_minilm  # type: ignore[import-not-found]

    return (
        packaged_minilm(),
        cached_export("minilm-fp32", "--optimize"),
        cached_export("minilm-int8", "--quantize", "int8"),
    )


def corpus_flops(source: Path, docs: list[str]) -> tuple[float, float, int]:
    """FLOPs of the encoder on *docs* at their real token counts: (Linear layers,
    attention products, tokens)."""
    from akidb_embed.backend import load_tokenizer

    cfg = json.loads((source / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    tok = load_tokenizer(source, 256, padding=False)
    lengths = [len(e.ids) for e in tok.encode_batch(docs)]
    linear = 2.0 * sum(layers * (4 * n * h * h + 2 * n * h * inter) for n in lengths)
    attention = 2.0 * sum(layers * 2 * n * n * h for n in lengths)
    return linear, attention, sum(lengths)


def _openvino_goals(rows: dict[str, dict[str, Any]], labels: dict[str, str]) -> None:
    """Issue #14's goals, as ratios of this run: openvino bf16 against onnx fp32."""
    fp32, bf16 = rows.get("fp32", {}), rows.get("ov-bf16", {})
    if "seconds" not in fp32 or "seconds" not in bf16:
        return
    print(
        f"\nopenvino bf16 vs onnx fp32 (same run): throughput "
        f"{fp32['seconds'] / bf16['seconds']:.2f}x (goal >= 1.6x), query p50 "
        f"{bf16['p50']:.2f} vs {fp32['p50']:.2f} ms (goal <=), cold start with a warm compile "
        f"cache {bf16['cold'] / fp32['cold']:.2f}x (goal <= 1.5x)"
    )
    f32 = rows.get("ov-f32", {})
    if "seconds" in f32:
        print(f"openvino f32 vs onnx fp32: throughput {fp32['seconds'] / f32['seconds']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: usable cores)"
    )
    parser.add_argument("--docs", type=int, default=2000, help="corpus size (default 2000)")
    parser.add_argument(
        "--cold-runs", type=int, default=3, help="cold starts per contender (median)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="passes over the corpus per contender (median)"
    )
    parser.add_argument("--only", nargs="*", choices=list(CONTENDERS), help="subset of contenders")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the akidb-embed contenders as of git REF (e.g. HEAD~1), same run",
    )
    parser.add_argument("--worker", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--gemm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--exports", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--fp32", help=argparse.SUPPRESS)
    parser.add_argument("--int8", help=argparse.SUPPRESS)
    parser.add_argument("--ov-cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.threads is None:
        from akidb_embed.backend import available_cores

        args.threads = available_cores()
    if args.gemm:
        return gemm_worker(args.threads)
    if args.exports:
        print(json.dumps({"paths": [str(p) for p in _ensure_exports()]}), flush=True)
        return 0
    if args.worker:
        return worker(args)

    import numpy as np

    sys.path.insert(0, str(HERE))
    import corpus

    # In a child: an export run here (torch, ~1 GB) would raise this process's peak RSS,
    # which every worker it forks then reports as its own (ru_maxrss survives exec).
    paths, _, _ = _run_measured(["--exports"], args.threads)
    source, fp32, int8 = (Path(p) for p in paths["paths"])
    docs = corpus.documents()[: args.docs]
    linear, attention, tokens = corpus_flops(source, docs)
    flops = linear + attention
    gemm, _, _ = _run_measured(["--gemm", "--threads", str(args.threads)], args.threads)
    limit = max(gemm["numpy"], gemm["onnxruntime"])
    common = [
        "--threads",
        str(args.threads),
        "--source",
        str(source),
        "--fp32",
        str(fp32),
        "--int8",
        str(int8),
        "--docs",
        str(args.docs),
        "--repeats",
        str(args.repeats),
    ]

    rows: dict[str, dict[str, Any]] = {}
    vectors: dict[str, Any] = {}
    labels = dict(CONTENDERS)
    with tempfile.TemporaryDirectory() as tmp:
        # OpenVINO's compile cache for this run: the corpus run fills it, cold starts find it.
        common += ["--ov-cache", str(Path(tmp) / "ov-cache")]
        runs: list[tuple[str, str, str | None]] = [
            (name, name, None) for name in args.only or list(CONTENDERS)
        ]
        if args.baseline:
            base_src = _checkout(args.baseline, Path(tmp) / "baseline")
            for name in ("fp32", "int8"):
                if name in (args.only or CONTENDERS):
                    key = f"{name}@{args.baseline}"
                    labels[key] = f"{CONTENDERS[name]} @{args.baseline}"
                    runs.append((key, name, base_src))
        for key, name, pythonpath in runs:
            if name == "fastembed" and importlib.util.find_spec("fastembed") is None:
                rows[key] = {"error": "fastembed is not installed"}
                continue
            if name.startswith("ov-") and importlib.util.find_spec("akidb_embed_openvino") is None:
                rows[key] = {"error": "akidb-embed-openvino is not installed"}
                continue
            print(f"measuring {labels[key]} ...", file=sys.stderr, flush=True)
            out = Path(tmp) / f"{key}.npy"
            try:
                result, _, rss = _run_measured(
                    ["--worker", name, "--vectors", str(out), *common], args.threads, pythonpath
                )
                colds = []
                for _ in range(args.cold_runs):
                    ready, started, cold_rss = _run_measured(
                        ["--worker", name, "--cold", *common], args.threads, pythonpath
                    )
                    colds.append((ready["ready"] - started, cold_rss))
            except RuntimeError as exc:
                rows[key] = {"error": str(exc).splitlines()[-1][:100]}
                continue
            result["cold"] = statistics.median(c for c, _ in colds)
            result["cold_rss"] = max(r for _, r in colds)
            result["rss"] = rss
            rows[key] = result
            vectors[key] = np.load(out)

    base = rows.get("st", {}).get("seconds")
    reference = vectors.get("st")
    print()
    print(
        f"all-MiniLM-L6-v2, {len(docs)} texts ({tokens} tokens), {args.threads} threads, "
        f"fp32 GEMM limit {limit / 1e9:.1f} GFLOP/s (numpy {gemm['numpy'] / 1e9:.1f}, "
        f"onnxruntime {gemm['onnxruntime'] / 1e9:.1f}), corpus {flops / 1e9:.1f} GFLOP"
    )
    header = (
        f"| {'contender':<30} | texts/s | tokens/s | vs ST | % fp32 limit "
        "| query p50 / p95 / p99 ms | cold start s | peak RSS MiB (cold / corpus) "
        "| min cos vs ST |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, row in rows.items():
        label = labels[name]
        if "error" in row:
            print(f"| {label:<30} | {row['error']} |")
            continue
        tps = len(docs) / row["seconds"]
        ratio = f"{base / row['seconds']:.2f}x" if base else "-"
        share = flops / row["seconds"] / limit * 100
        cos = "-"
        if reference is not None:
            a, b = vectors[name], reference
            c = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            cos = f"{c.min():.6f}"
        print(
            f"| {label:<30} | {tps:7.1f} | {tokens / row['seconds']:8.0f} | {ratio:>5} "
            f"| {share:11.0f}% | {row['p50']:5.2f} / {row['p95']:5.2f} / {row['p99']:5.2f} "
            f"| {row['cold']:12.2f} | {row['cold_rss'] / 2**20:6.0f} / {row['rss'] / 2**20:6.0f} "
            f"| {cos:>13} |"
        )
    _openvino_goals(rows, labels)
    baseline = f" --baseline {args.baseline}" if args.baseline else ""
    only = f" --only {' '.join(args.only)}" if args.only else ""
    only += f" --repeats {args.repeats}" if args.repeats != 1 else ""
    print(
        f"\ncommand: python benchmarks/bench_onnx.py --threads {args.threads} --docs {args.docs}"
        + only
        + baseline
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
