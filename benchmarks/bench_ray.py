"""Throughput of ``embed-corpus`` on Ray and locally, against in-process ``embed``.

Contenders, each in its own fresh process, on the same corpus (``benchmarks/corpus.py``
documents, written once as a .jsonl file) with the onnx provider (fp32 all-MiniLM-L6-v2
export) and 2 threads in all:

* ``in-process embed``: ``EmbeddingManager.embed_documents`` over every text (the model
  loaded before the clock starts; the reference);
* ``embed-corpus --engine local``: plan, read, embed, write Parquet shards and manifest;
* ``ray 1 actor x 2 threads`` and ``ray 2 actors x 1 thread``: ``embed-corpus --engine
  ray`` on a local Ray started with 2 CPUs.

Figures: texts/s end to end (the whole run, start-up included) and in steady state
(rows after the first batch over the time from the first batch to the last), each as a
share of in-process; Ray's fixed start-up (``ray.init``, then actors started and models
loaded: the time to the first rows, less what those rows took to embed) on its own line.

    python benchmarks/bench_ray.py                  # 20,000 texts
    python benchmarks/bench_ray.py --docs 2000      # quicker, while iterating

Run it with nothing else using the CPU. Ratios measured in one run are
what counts; absolute figures move with the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
THREADS = 2

CONTENDERS = {
    "inproc": "in-process embed",
    "local": "embed-corpus --engine local",
    "ray1x2": "ray 1 actor x 2 threads",
    "ray2x1": "ray 2 actors x 1 thread",
}


# --- worker side --------------------------------------------------------------------------


def _worker(name: str, model: str, corpus: Path, out: Path, shard_size: int) -> dict[str, Any]:
    from akidb_embed import EmbeddingConfig

    config = EmbeddingConfig(provider="onnx", model=model, cache_size=0)
    if name == "inproc":
        from akidb_embed import EmbeddingManager

        texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
        threads = {**config.options, "threads": THREADS}
        with EmbeddingManager.from_config(config.replace(options=threads)) as manager:
            manager.embed_documents(texts[:64])  # warm up, as the engines' first batch does
            start = time.perf_counter()
            vectors = manager.embed_documents(texts)
            seconds = time.perf_counter() - start
        return {"rows": len(vectors), "seconds": seconds, "steady_rate": len(vectors) / seconds}
    from akidb_embed.corpus import embed_corpus

    start = time.perf_counter()
    if name == "local":
        report = embed_corpus(corpus, out, config=config, shard_size=shard_size, threads=THREADS)
        seconds = time.perf_counter() - start
        return {"rows": report.rows, "seconds": seconds}
    import ray

    actors, cpus = (1, 2) if name == "ray1x2" else (2, 1)
    init = time.perf_counter()
    ray.init(address="local", num_cpus=THREADS, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - init
    sampler = _CpuSampler()
    report = embed_corpus(
        corpus,
        out,
        config=config,
        engine="ray",
        shard_size=shard_size,
        concurrency=actors,
        num_cpus=cpus,
    )
    seconds = time.perf_counter() - start
    cpu = sampler.stop()
    ray.shutdown()
    stats = report.engine
    rate, startup = _fit(stats["arrivals"], report.rows)
    return {
        "rows": report.rows,
        "seconds": seconds,
        "ray_init_s": init_s,
        "first_rows_s": stats["first_rows_s"],
        "steady_rate": rate,
        "startup_s": startup,
        "cpu": cpu,
    }


class _CpuSampler:
    """CPU seconds used by this driver, the embedding actors and the rest of Ray
    (raylet, GCS, agents, Ray Data's own actors, the shard readers), sampled every
    0.2 s so that processes which exit before the end (the actors) are counted too."""

    def __init__(self) -> None:
        import threading

        self._last: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                title = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            role = "driver" if proc.pid == me.pid else "ray"
            if "_Embedder" in title or self._last.get(proc.pid, ("",))[0] == "actors":
                role = "actors"
            self._last[proc.pid] = (role, times.user + times.system)

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        self._sample()
        out = {"driver": 0.0, "actors": 0.0, "ray": 0.0}
        for role, seconds in self._last.values():
            out[role] += seconds
        return out


def _fit(arrivals: list[list[float]], rows: int) -> tuple[float, float]:
    """Steady throughput and fixed start-up from the rows-over-time curve: a least-squares
    line through the arrivals between 10% and 90% of the rows; its slope is the rate, its
    time at zero rows the start-up (actors started, models loaded)."""
    import numpy as np

    points = np.array([(t, n) for t, n in arrivals if 0.1 * rows <= n <= 0.9 * rows])
    slope, intercept = np.polyfit(points[:, 0], points[:, 1], 1)
    return float(slope), float(-intercept / slope)


# --- driver side --------------------------------------------------------------------------


def _model(arg: str | None) -> str:
    if arg:
        return arg
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import cached_export  # type: ignore[import-not-found]

    return str(cached_export("minilm-fp32", "--optimize"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000, help="corpus size (20000)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--model", help="fp32 ONNX folder (default: export it, cached)")
    parser.add_argument("--only", choices=list(CONTENDERS), action="append")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = _worker(
            args.worker, args.model, Path(args.corpus), Path(args.out), args.shard_size
        )
        print("RESULT " + json.dumps(result))
        return 0

    sys.path.insert(0, str(HERE))
    from corpus import documents  # type: ignore[import-not-found]

    model = _model(args.model)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text(
            "".join(
                json.dumps({"id": f"d{i}", "text": t}) + "\n"
                for i, t in enumerate(documents(args.docs))
            )
        )
        for name in args.only or list(CONTENDERS):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--model",
                model,
                "--corpus",
                str(corpus),
                "--out",
                str(Path(tmp) / f"out-{name}"),
                "--shard-size",
                str(args.shard_size),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode != 0 or not line:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} failed (exit {done.returncode})")
            results[name] = json.loads(line[-1][len("RESULT ") :])
            print(f"{CONTENDERS[name]}: {results[name]}", file=sys.stderr)
    base = results.get("inproc")
    print(
        f"\n{args.docs} texts (benchmarks/corpus.py), onnx fp32 all-MiniLM-L6-v2, "
        f"{THREADS} threads per contender, shards of {args.shard_size}\n"
    )
    print("| contender | texts/s end to end | vs in-process | texts/s steady | vs in-process |")
    print("|---|---|---|---|---|")
    ref = base["steady_rate"] if base else None
    for name, r in results.items():
        e2e = r["rows"] / r["seconds"]
        steady = r.get("steady_rate")
        print(
            f"| {CONTENDERS[name]} | {e2e:.1f} | {f'{e2e / ref:.0%}' if ref else '-'} | "
            f"{f'{steady:.1f}' if steady else '-'} | "
            f"{f'{steady / ref:.0%}' if steady and ref else '-'} |"
        )
    for name, r in results.items():
        if "cpu" in r:
            budget = THREADS * r["seconds"]
            cpu = r["cpu"]
            print(
                f"\n{CONTENDERS[name]}: CPU time over the run ({budget:.0f} core-seconds): "
                f"embedding actors {cpu['actors']:.0f} s ({cpu['actors'] / budget:.0%}), "
                f"driver {cpu['driver']:.0f} s ({cpu['driver'] / budget:.0%}), rest of Ray "
                f"{cpu['ray']:.0f} s ({cpu['ray'] / budget:.0%})"
            )
    for name, r in results.items():
        if "ray_init_s" in r:
            print(
                f"\n{CONTENDERS[name]}: fixed start-up {r['ray_init_s'] + r['startup_s']:.1f} s "
                f"(ray.init {r['ray_init_s']:.1f} s; planning, actors started and models "
                f"loaded {r['startup_s']:.1f} s, from the rows-over-time line; first rows "
                f"back after {r['first_rows_s']:.1f} s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
