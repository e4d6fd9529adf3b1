"""Where the time of the ``onnx`` provider goes: onnxruntime's per-operator profile.

Runs the benchmark corpus (``benchmarks/corpus.py``) through the fp32 and int8 exports
the way the provider does (sorted by token count, its session options and sub-batch
size, one multi-threaded session), with onnxruntime's profiler on, and prints per model
the share of kernel time per operator type, the rate the matrix products reach, and the
throughput the model would have if every operator but the matrix products took no time.
That bound is what limits the fp32 ratio to sentence-transformers in ``bench_onnx.py``.

    python benchmarks/profile_onnx.py                    # 2,000 texts, usable cores
    python benchmarks/profile_onnx.py --docs 500 --threads 2

Profiling adds a few percent of overhead; compare shares, not absolute speed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MATMUL_OPS = {
    "MatMul",
    "FusedMatMul",
    "Gemm",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
}


def profile(folder: Path, docs: list[str], threads: int, tokens: int) -> dict[str, float]:
    import onnxruntime as ort

    from akidb_embed.backend import load_tokenizer, sorted_runs
    from akidb_embed_onnx._provider import _CPU_DISABLED_OPTIMIZERS

    tokenizer = load_tokenizer(folder, 256, padding=False)
    encodings = tokenizer.encode_batch(docs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(
        str(folder / "onnx" / "model.onnx"),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=_CPU_DISABLED_OPTIMIZERS,
    )
    names = {i.name for i in session.get_inputs()}
    feeds = []
    for rows in sorted_runs([e.ids for e in encodings], 32, tokens):
        width = max(len(encodings[i].ids) for i in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(rows):
            n = len(encodings[i].ids)
            ids[r, :n] = encodings[i].ids
            mask[r, :n] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds.append({k: v for k, v in feed.items() if k in names})
    started = time.perf_counter()
    for feed in feeds:
        session.run(None, feed)
    wall = time.perf_counter() - started
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1e6
    return {"__wall__": wall, **per_op}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=10, help="operator types shown per model")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO / "tests"))
    import corpus
    from bench_onnx import corpus_flops
    from conftest import cached_export, packaged_minilm  # type: ignore[import-not-found]

    from akidb_embed.backend import available_cores
    from akidb_embed_onnx._provider import _CPU_RUN_TOKENS

    threads = args.threads or available_cores()
    docs = corpus.documents()[: args.docs]
    source = packaged_minilm()
    linear, attention, tokens = corpus_flops(source, docs)
    flops = linear + attention
    models = {
        "fp32": cached_export("minilm-fp32", "--optimize"),
        "int8": cached_export("minilm-int8", "--quantize", "int8"),
    }
    print(
        f"all-MiniLM-L6-v2, {len(docs)} texts ({tokens} tokens, {flops / 1e9:.0f} GFLOP), "
        f"{threads} threads, runs of up to {_CPU_RUN_TOKENS} padded tokens, one session, "
        "profiler on\n"
    )
    for name, folder in models.items():
        times = profile(folder, docs, threads, _CPU_RUN_TOKENS)
        wall = times.pop("__wall__")
        total = sum(times.values())
        matmul = sum(v for k, v in times.items() if k in MATMUL_OPS)
        print(f"{name}: {len(docs) / wall:.1f} texts/s, kernels {total:.2f} s of {wall:.2f} s")
        print("| operator | seconds | share |")
        print("|---|---|---|")
        for op, seconds in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"| {op} | {seconds:.3f} | {seconds / total * 100:.1f}% |")
        print(
            f"matrix products: {matmul / total * 100:.1f}% of kernel time at "
            f"{linear / matmul / 1e9:.0f} GFLOP/s (the Linear layers' FLOPs over their time; "
            f"attention's {attention / 1e9:.0f} GFLOP run inside the attention op); with every "
            f"other operator free: {len(docs) / matmul:.1f} texts/s "
            f"({wall / matmul:.2f}x this run)\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
