"""python-bridge overhead: the same provider in process and through a worker process.

    python benchmarks/bench_bridge.py [--queries 500] [--docs 1000] [--rounds 3]
                                      [--onnx-model DIR | --no-onnx]

For each provider (``null``, which answers at once, so only the bridge's own cost is
left; ``mock``; ``onnx`` on the exported all-MiniLM-L6-v2 named by
``--onnx-model`` or ``AKIDB_BENCH_ONNX_MODEL``, else the newest fp32 export the tests
cached in ``.cache/models/minilm-fp32-*``; make one with
``akidb-embed export <model folder> --out DIR``) it measures, through an
``EmbeddingManager`` with the cache off:

* single-query latency: ``embed_query`` on short queries, p50 and p95 in ms, and the
  bridge's added p50 (target: <= 0.3 ms);
* corpus throughput: ``embed`` of the documents of ``benchmarks/corpus.py`` in batches
  of 32, texts per second, and the bridge's share of the in-process figure
  (target: >= 95 %).

In-process and bridge runs alternate in short blocks of queries (latency) and chunks of
documents (throughput), and the figures compare neighbouring blocks, so that background
load, which on a shared machine swamps a sub-millisecond difference, hits both sides
alike. The bare round trip of an empty frame (``ping``) is reported too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from akidb_embed import EmbeddingConfig, EmbeddingManager, ModelInfo, register_provider

HERE = Path(__file__).resolve().parent


class NullProvider:
    """Answers at once: through the bridge, what is measured is the bridge's own cost."""

    def __init__(self, config: EmbeddingConfig) -> None:
        self.row = np.full(384, 1 / np.sqrt(384), dtype=np.float32)

    def info(self) -> ModelInfo:
        return ModelInfo(provider="null", model="null", dimension=384, normalized=True)

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(self.row, (len(texts), 1))

    def close(self) -> None:
        pass


# Also imported by the worker (option "imports"), so that it can host the null provider.
register_provider("bench-null", NullProvider, replace=True)


def texts(n_queries: int, n_docs: int) -> tuple[list[str], list[str]]:
    sys.path.insert(0, str(HERE))
    from corpus import documents, queries

    return queries(n_queries), documents(n_docs)


def cached_onnx_model() -> str | None:
    """The newest fp32 MiniLM export the test suite cached, if any."""
    exports = [
        p
        for p in (HERE.parent / ".cache" / "models").glob("minilm-fp32-*")
        if (p / "akidb_export.json").is_file()
    ]
    return str(max(exports, key=lambda p: p.stat().st_mtime)) if exports else None


def latencies(manager: EmbeddingManager, queries: list[str]) -> list[float]:
    out = []
    for query in queries:
        start = time.perf_counter()
        manager.embed_query(query)
        out.append(time.perf_counter() - start)
    return out


def throughput(manager: EmbeddingManager, docs: list[str]) -> float:
    start = time.perf_counter()
    manager.embed(docs)
    return len(docs) / (time.perf_counter() - start)


def bench(
    name: str,
    config: EmbeddingConfig,
    queries: list[str],
    docs: list[str],
    rounds: int,
    block: int,
    chunk: int,
    worker_options: dict[str, Any],
) -> dict[str, Any]:
    in_process = EmbeddingManager.from_config(config.replace(cache_size=0))
    bridge_options = {**config.options, **worker_options, "target": config.provider}
    bridge = EmbeddingManager.from_config(
        config.replace(provider="python-bridge", options=bridge_options, cache_size=0)
    )
    modes = {"in-process": in_process, "bridge": bridge}
    try:
        # Same vectors, or the comparison means nothing.
        sample = docs[:64]
        diff = float(np.abs(in_process.embed(sample) - bridge.embed(sample)).max())
        for manager in modes.values():  # warm caches, threads, lazy sessions
            latencies(manager, queries)
            manager.embed(docs)
        lat: dict[str, list[float]] = {"in-process": [], "bridge": []}
        added: list[float] = []
        for i in range(rounds):
            # Short alternating blocks, first one mode then the other, so that changes in
            # background load hit both sides; the added latency is taken block by block.
            for b, start in enumerate(range(0, len(queries), block)):
                some = queries[start : start + block]
                order = ["in-process", "bridge"] if (i + b) % 2 == 0 else ["bridge", "in-process"]
                medians = {}
                for label in order:
                    sample_lat = latencies(modes[label], some)
                    lat[label] += sample_lat
                    medians[label] = statistics.median(sample_lat)
                added.append(medians["bridge"] - medians["in-process"])
        # The corpus goes through in chunks of `chunk` documents, each chunk once per mode
        # in alternating order: neighbouring chunks see the same background load.
        busy = {"in-process": 0.0, "bridge": 0.0}
        ratios = []
        for i in range(rounds):
            for c, start in enumerate(range(0, len(docs), chunk)):
                part = docs[start : start + chunk]
                order = ["in-process", "bridge"] if (i + c) % 2 == 0 else ["bridge", "in-process"]
                spent = {}
                for label in order:
                    spent[label] = len(part) / throughput(modes[label], part)
                    busy[label] += spent[label]
                ratios.append(spent["in-process"] / spent["bridge"])
        pings = [bridge.provider.ping() for _ in range(2000)]  # type: ignore[attr-defined]
    finally:
        in_process.close()
        bridge.close()
    row: dict[str, Any] = {"provider": name, "max_abs_diff": diff}
    for label in lat:
        row[label] = {
            "p50": float(np.percentile(lat[label], 50)) * 1e3,
            "p95": float(np.percentile(lat[label], 95)) * 1e3,
            "tput": rounds * len(docs) / busy[label],
        }
    row["added_p50"] = statistics.median(added) * 1e3
    row["ratio"] = statistics.median(ratios)
    row["ping_p50"] = float(np.percentile(pings, 50)) * 1e3
    return row


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\npython-bridge vs in-process: {args.queries} queries x {args.rounds} rounds in "
        f"alternating blocks of {args.block}; {args.docs} documents (batch 32) x "
        f"{args.rounds} rounds in alternating chunks of {args.chunk}; {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}\n"
        "added p50 = median over blocks of (bridge p50 - in-process p50); "
        "vs in-process = median over chunks of the throughput ratio\n"
    )
    head = (
        f"{'provider':<8} {'mode':<10} {'query p50 ms':>12} {'p95 ms':>8} "
        f"{'added p50 ms':>12} {'corpus texts/s':>14} {'vs in-process':>13}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        for label in ("in-process", "bridge"):
            r = row[label]
            added = f"{row['added_p50']:+.3f}" if label == "bridge" else ""
            ratio = f"{row['ratio'] * 100:.1f} %" if label == "bridge" else ""
            print(
                f"{row['provider']:<8} {label:<10} {r['p50']:>12.3f} {r['p95']:>8.3f} "
                f"{added:>12} {r['tput']:>14.1f} {ratio:>13}"
            )
        print(
            f"{'':<8} {'':<10} bridge ping (empty frame) p50 {row['ping_p50']:.3f} ms; "
            f"max |in-process - bridge| = {row['max_abs_diff']:.1e}"
        )
    print("\ntargets: added p50 <= 0.3 ms per call; bridge throughput >= 95 % of in-process")
    print(
        "null = no compute at all: its 'added' column is the bridge's whole cost per call; "
        "its throughput ratio is meaningless (nothing to amortise it over)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=25, help="queries per latency block")
    parser.add_argument("--chunk", type=int, default=64, help="documents per throughput chunk")
    parser.add_argument("--onnx-model", default=os.environ.get("AKIDB_BENCH_ONNX_MODEL"))
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnx provider")
    args = parser.parse_args(argv)
    args.onnx_model = None if args.no_onnx else args.onnx_model or cached_onnx_model()
    queries, docs = texts(args.queries, args.docs)
    null_options = {"imports": ["bench_bridge"], "env": {"PYTHONPATH": str(HERE)}}
    configs: list[tuple[str, EmbeddingConfig, dict[str, Any]]] = [
        ("null", EmbeddingConfig(provider="bench-null", model="null"), null_options),
        ("mock", EmbeddingConfig(provider="mock", model="mock"), {}),
    ]
    if args.onnx_model:
        onnx = EmbeddingConfig(provider="onnx", model=args.onnx_model, offline=True)
        configs.append(("onnx", onnx, {}))
        print(f"onnx model: {args.onnx_model}")
    else:
        print("onnx: skipped (no exported model: pass --onnx-model DIR)")
    rows = []
    for name, config, worker_options in configs:
        print(f"measuring {name} ...", flush=True)
        rows.append(
            bench(name, config, queries, docs, args.rounds, args.block, args.chunk, worker_options)
        )
    print_table(rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
