"""How the ``onnx`` provider should cut a call into onnxruntime runs.

Two tables, each contender in a fresh process:

* ``--rows grid``: time per token of one run of *n* texts of *L* tokens (a synthetic
  token id run on the provider's own session): fp32 on the multi-threaded session, int8
  on one single-threaded session (what each of its concurrent runs uses);
* ``--rows calls``: texts/s of one ``embed`` call of 3,000 corpus queries and of 1,000
  corpus documents with the provider's defaults, against the run sizes it used before
  (``session_batch_size`` 8 for fp32, 2 for int8, no token budget), alternating.

    python benchmarks/bench_runs.py                  # both tables, about 3 minutes
    python benchmarks/bench_runs.py --rows calls --rounds 3

The defaults these justify (``_CPU_RUN_TOKENS``, ``_CPU_CONCURRENT_RUN_TOKENS`` in
``src/akidb_embed_onnx/_provider.py``) and the figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LENGTHS = (16, 32, 64, 128, 256)
SIZES = (1, 2, 4, 8, 16, 32)
#: The run sizes before token budgets (2026-12-05): texts per run, no token limit.
FORMER = {"fp32": {"session_batch_size": 8}, "int8": {"session_batch_size": 2}}
NO_BUDGET = 10**9


def _exports() -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import cached_export  # type: ignore[import-not-found]

    return {
        "fp32": cached_export("minilm-fp32", "--optimize"),
        "int8": cached_export("minilm-int8", "--quantize", "int8"),
    }


def grid_worker(model: str, threads: int) -> dict[str, Any]:
    """Microseconds per token of one run, for each (length, texts) shape."""
    from akidb_embed import EmbeddingConfig
    from akidb_embed_onnx import OnnxEmbeddingProvider

    options = {"threads": threads, "concurrent_runs": 1}
    provider = OnnxEmbeddingProvider(EmbeddingConfig(provider="onnx", model=model, options=options))
    session = provider._session
    table: dict[str, float] = {}
    for length in LENGTHS:
        for n in SIZES:
            if n * length > 4096:
                continue
            body = [[2000 + (i * 7 + j) % 1000 for j in range(length - 2)] for i in range(n)]
            rows = [[101, *ids, 102] for ids in body]
            for _ in range(3):
                provider._forward(session, rows)
            times = []
            for _ in range(max(3, 200 // n)):
                start = time.perf_counter()
                provider._forward(session, rows)
                times.append(time.perf_counter() - start)
            table[f"{length}x{n}"] = statistics.median(times) / (n * length) * 1e6
    provider.close()
    return table


def calls_worker(model: str, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Texts/s of one ``embed`` call (best of two) with *options*."""
    sys.path.insert(0, str(HERE))
    import corpus

    from akidb_embed import EmbeddingManager

    manager = EmbeddingManager.from_config(
        provider="onnx", model=model, cache_size=0, options=options
    )
    texts = corpus.queries(3000) if kind == "queries" else corpus.documents(1000)
    manager.embed(texts[:64])
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        manager.embed(texts)
        best = max(best, len(texts) / (time.perf_counter() - start))
    manager.close()
    return {"texts_per_s": best}


def _fresh(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def grid_rows(models: dict[str, Path], threads: int) -> None:
    for name, threads_used in (("fp32", threads), ("int8", 1)):
        table = _fresh("grid", str(models[name]), str(threads_used))
        print(
            f"\n{name}, one run on a {threads_used}-thread session: microseconds per token "
            "(rows: tokens per text; columns: texts per run)"
        )
        print("| tokens | " + " | ".join(str(n) for n in SIZES) + " |")
        print("|---" * (len(SIZES) + 1) + "|")
        for length in LENGTHS:
            cells = [table.get(f"{length}x{n}") for n in SIZES]
            text = " | ".join("-" if c is None else f"{c:.1f}" for c in cells)
            print(f"| {length} | {text} |")


def calls_rows(models: dict[str, Path], threads: int, rounds: int) -> None:
    print(f"\nOne `embed` call, {threads} threads, texts/s per round (fresh process each)")
    print("| model | texts | former runs | defaults now | ratio |")
    print("|---|---|---|---|---|")
    for kind in ("queries", "documents"):
        for name, former in FORMER.items():
            old_options = {"threads": threads, **former, "session_batch_tokens": NO_BUDGET}
            new_options = {"threads": threads}
            old, new = [], []
            for _ in range(rounds):  # alternate, so drift hits both alike
                for options, sink in ((old_options, old), (new_options, new)):
                    args = ("calls", str(models[name]), kind, json.dumps(options))
                    sink.append(_fresh(*args)["texts_per_s"])
            ratio = statistics.median(new) / statistics.median(old)
            print(
                f"| {name} | {kind} | {' / '.join(f'{v:.0f}' for v in old)} | "
                f"{' / '.join(f'{v:.0f}' for v in new)} | {ratio:.2f}x |"
            )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        if argv[1] == "grid":
            result = grid_worker(argv[2], int(argv[3]))
        else:
            result = calls_worker(argv[2], argv[3], json.loads(argv[4]))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=["grid", "calls"], default=["grid", "calls"])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of `calls`")
    args = parser.parse_args(argv)
    models = _exports()
    print("all-MiniLM-L6-v2 (onnx provider), each contender in a fresh process")
    if "grid" in args.rows:
        grid_rows(models, args.threads)
    if "calls" in args.rows:
        calls_rows(models, args.threads, args.rounds)
    print(f"\ncommand: python benchmarks/bench_runs.py {' '.join(argv)}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
