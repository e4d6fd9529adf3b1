"""HTTP benchmark of ``akidb-embed serve`` against in-process embedding and peer servers.

Everything runs on this machine in one run, each contender in its own fresh process:

* the server under test: ``akidb-embed serve`` (``onnx`` provider on the exported
  all-MiniLM-L6-v2, fp32 and int8, the manager's vector cache off so no answer is a
  cache hit), driven by ``wrk`` with ``benchmarks/server/post.lua``, which POSTs
  ``/v1/embeddings`` bodies in rotation (3,000 distinct corpus queries of 3-12 words);
  requests of 256 corpus documents go through an httpx asyncio client instead;
* the in-process reference: ``EmbeddingManager`` on the same folder, in its own process:
  ``embed_query`` latency, and the same short texts (or documents) in one ``embed`` call;
* peers at 32 clients: infinity-emb (its ``torch`` engine, in ``.cache/infinity-venv``;
  ``--setup-peers`` installs it, never a project dependency) and a plain FastAPI +
  sentence-transformers endpoint (``benchmarks/server/st_server.py``), both on the
  packaged safetensors weights; the minimum cosine of each server's vectors to
  sentence-transformers' own.

Rows: ``latency`` (one client, one short query at a time), ``concurrency`` (1, 8, 32,
128 clients), ``docs`` (requests of 256 documents), ``peers``, ``seed`` (the seed's
Apple-silicon Python-bridge figure beside ours), ``grpc`` (gRPC unary and stream vs REST
at 1 and 32 clients, by ``benchmarks/bench_grpc.py`` in its own process), ``overhead``
(where the gap to in-process comes from: the CPU each request costs the server with no
model at all, against a bare ASGI app and a plain FastAPI route on the same stack
(``benchmarks/server/floor_server.py``), and in-process ``embed`` in calls of 8-32 texts,
the batch sizes concurrent clients make, against one call). wrk and the server share the
machine's cores; the tables give each one's CPU share (% of all cores).

    apt-get install -y wrk                           # the load generator (Debian package)
    python benchmarks/bench_server.py --setup-peers  # once: infinity-emb into .cache/
    python benchmarks/bench_server.py                # full run (about 5 minutes)
    python benchmarks/bench_server.py --quick        # smoke run (a few seconds a row)
    python benchmarks/bench_server.py --rows concurrency --variants int8 --duration 20

Speed goals live here and in ``benchmarks/README.md``, not in tests. Other processes on
the machine skew the figures; the ratios, measured in one run, are the meaningful part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA = HERE / "server" / "post.lua"
ST_SERVER = HERE / "server" / "st_server.py"
FLOOR_SERVER = HERE / "server" / "floor_server.py"
#: Call sizes of the in-process ``embed`` the overhead row compares with one call.
CALL_SIZES = (8, 16, 32)
INFINITY_VENV = REPO / ".cache" / "infinity-venv"
INFINITY_BIN = INFINITY_VENV / "bin" / "infinity_emb"
SERVED = "minilm"
DOCS_PER_REQUEST = 256
ROWS = ("latency", "concurrency", "docs", "peers", "seed", "grpc", "overhead")
VARIANTS = ("fp32", "int8")
# The seed's Python bridge on Apple silicon (a different machine), same model.
SEED = {"p50": 6.45, "p95": 7.0, "rps": (155, 190)}
# Pins found by trial on this project's machines: its optimum engine does not start with
# current packages; the torch engine does with these.
INFINITY_SETUP = [
    ["pip", "install", "torch==2.13.0"],  # the CPU build first, else CUDA wheels
    ["pip", "install", "infinity-emb[server,torch]", "click<8.2", "transformers<5"],
    ["pip", "uninstall", "-y", "optimum", "optimum-onnx"],
]
GOALS = {
    "latency_p50": 1.3,  # HTTP p50 at most this times in-process
    "share_32": {"fp32": 0.80, "int8": 0.60},  # of in-process throughput at 32 clients
    "tail_32": 4.0,  # p99 at most this times p50
    "docs": 0.95,  # of in-process corpus throughput
    "vs_infinity": 2.0,
}


# --- worker side ---------------------------------------------------------------------------


def _short_texts(n: int) -> list[str]:
    """*n* distinct corpus queries of 3-12 words: distinct, because the manager computes
    a text repeated within one call once, which would flatter the in-process figure."""
    sys.path.insert(0, str(HERE))
    import corpus

    return list(dict.fromkeys(corpus.queries(n + n // 10)))[:n]


def _documents(n: int) -> list[str]:
    sys.path.insert(0, str(HERE))
    import corpus

    return corpus.documents(n)


def inprocess_worker(args: argparse.Namespace) -> int:
    """The in-process reference: query latency and one-call throughput, as JSON."""
    import numpy as np

    from akidb_embed import EmbeddingManager

    options = {"threads": args.threads} if args.threads else {}
    manager = EmbeddingManager.from_config(
        provider="onnx", model=args.model_dir, cache_size=0, options=options
    )
    texts = _short_texts(args.short_texts)
    docs = _documents(args.docs)
    manager.embed(texts[-32:])  # warm-up: first-run allocations
    for query in texts[-10:]:
        manager.embed_query(query)
    latencies = []
    for query in texts[:200]:
        t = time.perf_counter()
        manager.embed_query(query)
        latencies.append(time.perf_counter() - t)
    t = time.perf_counter()
    manager.embed(texts)
    short_seconds = time.perf_counter() - t
    manager.embed(docs[:64])
    t = time.perf_counter()
    manager.embed(docs)
    docs_seconds = time.perf_counter() - t
    ms = np.array(latencies) * 1000
    result = {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "short_tps": len(texts) / short_seconds,
        "docs_tps": len(docs) / docs_seconds,
    }
    if args.call_sizes:
        result["calls"] = _calls_by_size(manager, texts[:1200], args.call_sizes)
    print(json.dumps(result), flush=True)
    manager.close()
    return 0


def _calls_by_size(manager: Any, texts: list[str], sizes: list[int]) -> dict[str, float]:
    """Texts/s of ``embed`` over *texts* in calls of each size, in one call (key
    ``"all"``) and in calls of ``sizes[1]`` texts in token-count order (key
    ``"<n> sorted"``): three rounds in alternating order, the median of each (the host's
    speed drifts within seconds)."""
    import statistics

    # The same texts in length order: calls of neighbours pad little, so the gap between
    # these calls and random ones of the same size is padding, not the cost of a call.
    counts = manager.count_tokens(texts) or [len(t) for t in texts]
    by_length = [t for _, t in sorted(zip(counts, texts, strict=True), key=lambda p: p[0])]
    runs: dict[str, list[float]] = {}
    plan = [
        ("all", texts, len(texts)),
        *((str(n), texts, n) for n in sizes),
        (f"{sizes[1]} sorted", by_length, sizes[1]),
    ]
    for round_ in range(3):
        for key, source, n in plan if round_ % 2 == 0 else plan[::-1]:
            t = time.perf_counter()
            for i in range(0, len(source), n):
                manager.embed(source[i : i + n])
            runs.setdefault(key, []).append(len(source) / (time.perf_counter() - t))
    return {key: statistics.median(values) for key, values in runs.items()}


def client_worker(args: argparse.Namespace) -> int:
    """An asyncio httpx client: ``--requests`` POSTs of the bodies in rotation over
    ``--connections`` connections; wall time from the first send to the last answer.

    The docs row uses it instead of wrk, whose fixed duration drops the requests still in
    flight at the end: with two-second requests that would be a 10-20% error."""
    import asyncio
    import resource

    import httpx
    import numpy as np

    bodies = [ln.encode() for ln in Path(args.bodies).read_text().splitlines() if ln]
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    failures = 0

    async def run() -> float:
        nonlocal failures
        todo = iter(range(args.requests))
        limits = httpx.Limits(max_connections=args.connections)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:

            async def connection() -> None:
                nonlocal failures
                for i in todo:
                    t = time.perf_counter()
                    reply = await client.post(
                        args.url, content=bodies[i % len(bodies)], headers=headers
                    )
                    latencies.append(time.perf_counter() - t)
                    failures += reply.status_code != 200

            start = time.perf_counter()
            await asyncio.gather(*(connection() for _ in range(args.connections)))
            return time.perf_counter() - start

    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = asyncio.run(run())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ms = np.array(latencies) * 1000
    result = {
        "seconds": seconds,
        "requests": len(latencies),
        "errors": failures,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "cpu_seconds": usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime,
    }
    print(json.dumps(result), flush=True)
    return 0


def reference_worker(args: argparse.Namespace) -> int:
    """sentence-transformers' own vectors of the closeness texts, saved to --vectors."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.source, device="cpu")
    texts = json.loads(Path(args.texts_file).read_text())
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    np.save(args.vectors, np.asarray(vectors, dtype=np.float32))
    print(json.dumps({"texts": len(texts)}), flush=True)
    return 0


# --- parent side ---------------------------------------------------------------------------


def _env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    env.update(HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
    # The manager's LRU cache would answer the rotating texts from memory after one round.
    env["AKIDB_EMBEDDING_CACHE_SIZE"] = "0"
    env.pop("AKIDB_CONFIG", None)
    return env


def _run_worker(extra: list[str], threads: int | None) -> dict[str, Any]:
    """Run this script as a worker in a fresh process; return its JSON line."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *extra],
        capture_output=True,
        text=True,
        env=_env(threads),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(extra[:2])} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    result: dict[str, Any] = json.loads(line)
    return result


def _ensure_exports() -> tuple[Path, Path, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import cached_export, packaged_minilm  # type: ignore[import-not-found]

    return (
        packaged_minilm(),
        cached_export("minilm-fp32", "--optimize"),
        cached_export("minilm-int8", "--quantize", "int8"),
    )


def setup_peers() -> None:
    """Install infinity-emb (torch engine) into its own virtualenv under ``.cache/``."""
    if not (INFINITY_VENV / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
    python = str(INFINITY_VENV / "bin" / "python")
    for step in INFINITY_SETUP:
        print("$", " ".join(step), file=sys.stderr, flush=True)
        subprocess.run([python, "-m", *step], check=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process *pid* so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Served:
    """A running server: its process, base URL and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def serve(
    name: str,
    command: list[str],
    ready_path: str,
    log: Path,
    threads: int | None,
    timeout: float,
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """Start *command* (which must take the port from ``{port}``) with *env* added to
    its environment, wait for ``GET ready_path`` to answer 200, yield, then stop it."""
    import httpx

    port = _free_port()
    argv = [part.replace("{port}", str(port)) for part in command]
    with log.open("wb") as out:
        child_env = {**_env(threads), **(env or {})}
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env)
    served = Served(name, proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{served.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(served.base + ready_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{served.log_tail()}")
            time.sleep(0.2)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(served: Served, bodies: Path, clients: int, duration: float, cores: int) -> dict[str, Any]:
    """One ``wrk -t1 -cN`` run against *served*'s ``/v1/embeddings``: requests/s,
    latency percentiles (ms), errors and the CPU share of wrk and the server."""
    url = served.base + "/v1/embeddings"
    argv = [
        "wrk", "-t1", f"-c{clients}", f"-d{max(1, round(duration))}s", "--timeout", "60s",
        "-s", str(LUA), url, "--", str(bodies),
    ]  # fmt: skip
    batches = _batch_counts(served)
    server_cpu = _cpu_seconds(served.proc.pid)
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        server_cpu = _cpu_seconds(served.proc.pid) - server_cpu
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"wrk failed: {stderr[-2000:] or stdout[-2000:]}")
    line = [ln for ln in stdout.splitlines() if ln.startswith("{")][-1]
    raw = json.loads(line)
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    after = _batch_counts(served)
    mean_batch = None
    if batches and after and after[1] > batches[1]:
        mean_batch = (after[0] - batches[0]) / (after[1] - batches[1])
    return {
        "mean_batch": mean_batch,
        "cpu_us_per_request": server_cpu / max(1, raw["requests"]) * 1e6,
        "clients": clients,
        "rps": (raw["requests"] - raw["errors"]["status"]) / seconds,
        "errors": errors,
        "requests": raw["requests"],
        "p50": raw["p50_us"] / 1000,
        "p95": raw["p95_us"] / 1000,
        "p99": raw["p99_us"] / 1000,
        "wrk_cpu": (usage.ru_utime + usage.ru_stime) / wall / cores,
        "server_cpu": server_cpu / wall / cores,
    }


def _batch_counts(served: Served) -> tuple[float, float] | None:
    """(texts, batches) the server's batcher has run so far, from its ``/metrics``;
    ``None`` for a server without them (the peers)."""
    import httpx

    try:
        text = httpx.get(served.base + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        for key in ("akidb_embed_batch_size_sum", "akidb_embed_batch_size_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    if len(values) < 2:
        return None
    return values["akidb_embed_batch_size_sum"], values["akidb_embed_batch_size_count"]


def closeness(served: Served, texts: list[str], reference: Any) -> float:
    """Minimum cosine between *served*'s vectors of *texts* and *reference*'s rows."""
    import httpx
    import numpy as np

    rows: list[list[float]] = []
    with httpx.Client(base_url=served.base, timeout=120) as client:
        for i in range(0, len(texts), 32):
            reply = client.post(
                "/v1/embeddings", json={"model": SERVED, "input": texts[i : i + 32]}
            )
            reply.raise_for_status()
            data = sorted(reply.json()["data"], key=lambda d: d["index"])
            rows.extend(d["embedding"] for d in data)
    a = np.asarray(rows, dtype=np.float32)
    b = reference
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def _write_bodies(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return path


def _fmt_ms(row: dict[str, Any], keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    return " / ".join(f"{row[k]:.2f}" for k in keys)


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in
              enumerate(header)]  # fmt: skip
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print()


def _grpc_rows(args: argparse.Namespace, duration: float) -> None:
    """The ``grpc`` row: ``bench_grpc.py`` in its own process, its table printed here."""
    grpc_args = ["--duration", f"{duration:g}", "--variants", *args.variants]
    if args.quick:
        grpc_args.append("--quick")
    print("gRPC vs REST (benchmarks/bench_grpc.py):", flush=True)
    subprocess.run([sys.executable, str(HERE / "bench_grpc.py"), *grpc_args], check=True)


def _overhead_servers(
    args: argparse.Namespace, tmp: Path, bodies: Path, cores: int
) -> list[dict[str, Any]]:
    """Per-request server CPU at 32 clients, and the p50 latency of one client, with no
    model: the floors of ``floor_server.py`` and ``akidb-embed serve --provider mock``
    with its parts on and off. All start at once (an idle one costs nothing), then take
    turns with wrk for several rounds; medians per server."""
    import statistics

    serve_mock = [
        sys.executable, "-m", "akidb_embed.cli", "serve", "--provider", "mock",
        "--model", "mock-384", "--port", "{port}", "--served-model-name", SERVED,
        "--grpc-port", "0",
    ]  # fmt: skip
    contenders = [
        ("bare ASGI app (uvicorn, uvloop, httptools, orjson)", "asgi", {}),
        ("plain FastAPI route (pydantic body, orjson)", "fastapi", {}),
        ("akidb-embed serve, mock provider", serve_mock, {}),
        ("  the same, access lines off", serve_mock, {"AKIDB_LOG_LEVEL": "warning"}),
        (
            "  the same, access lines and metrics off",
            serve_mock,
            {"AKIDB_LOG_LEVEL": "warning", "AKIDB_METRICS_ENABLED": "false"},
        ),
    ]
    rows: list[dict[str, Any]] = []
    rounds = 2 if args.quick else 4
    seconds = max(1.0, args.duration / 2)
    print("overhead: servers with no model ...", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        running = []
        for i, (name, what, env) in enumerate(contenders):
            if isinstance(what, str):
                command = [sys.executable, str(FLOOR_SERVER), "--kind", what, "--port", "{port}"]
                ready = "/v1/models"
            else:
                command, ready = list(what), "/ready"
            log = tmp / f"floor{i}.log"
            served = stack.enter_context(
                serve(name, command, ready, log, args.threads, 120.0, env=env)
            )
            wrk(served, bodies, 32, args.warmup, cores)
            running.append((name, served, [], []))
        for round_ in range(rounds):
            for _name, served, runs, single in running if round_ % 2 == 0 else running[::-1]:
                runs.append(wrk(served, bodies, 32, seconds, cores))
                single.append(wrk(served, bodies, 1, seconds / 2, cores))
        for name, _, runs, single in running:
            rows.append({
                "name": name,
                "rps": statistics.median(r["rps"] for r in runs),
                "cpu_us": statistics.median(r["cpu_us_per_request"] for r in runs),
                "p50_1": statistics.median(r["p50"] for r in single),
                "errors": sum(r["errors"] for r in runs + single),
            })  # fmt: skip
    return rows


def _overhead_tables(floors: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> None:
    if floors:
        print(
            "Server CPU per request at 32 clients, and p50 latency of one client, with no "
            "model (one short text a request; medians of alternating wrk runs)"
        )
        base = floors[0]["cpu_us"]
        _table(
            ["server", "req/s", "server CPU per request (us)", "vs bare ASGI",
             "1 client p50 ms", "errors"],
            [
                [f["name"], f"{f['rps']:.0f}", f"{f['cpu_us']:.0f}", f"{f['cpu_us'] / base:.1f}x",
                 f"{f['p50_1']:.2f}", str(f["errors"])]
                for f in floors
            ],
        )  # fmt: skip
    table = []
    for r in results.values():
        calls = r["inproc"].get("calls")
        if not calls:
            continue
        at32 = next((c for c in r["conc"] if c["clients"] == 32), None)
        mean = at32.get("mean_batch") if at32 else None
        keys = [*map(str, CALL_SIZES), f"{CALL_SIZES[1]} sorted"]
        cells = [f"{calls[k]:.0f} ({calls[k] / calls['all']:.0%})" for k in keys]
        table.append([
            r["label"], f"{calls['all']:.0f}", *cells,
            "-" if mean is None else f"{mean:.1f}",
            "-" if at32 is None else f"{at32['cpu_us_per_request']:.0f}",
        ])  # fmt: skip
    if table:
        print(
            "In-process `embed` in calls of 8, 16, 32 texts (and of 16 neighbours in length "
            "order) vs one call of 1200 (texts/s, share); the mean batch the server formed and "
            "its CPU per request at 32 clients"
        )
        _table(
            ["model", "one call", *(f"calls of {n}" for n in CALL_SIZES),
             f"calls of {CALL_SIZES[1]}, length-sorted texts",
             "server mean batch (32 clients)", "server CPU us/request (32 clients)"],
            table,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(ln for ln in __doc__.splitlines() if ln.startswith("    ")),
    )
    parser.add_argument(
        "--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows (default all)"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="onnx exports"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per wrk run (default 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of wrk warm-up per server (default 3)"
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32, 128], help="concurrency row"
    )
    parser.add_argument(
        "--doc-clients", type=int, default=2, help="connections in the docs row (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: the provider's)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s per wrk run, smaller references"
    )
    parser.add_argument(
        "--setup-peers", action="store_true", help="install infinity-emb into .cache/ first"
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `akidb-embed serve` argument (repeatable), e.g. --server-arg=--max-wait-ms=4",
    )
    parser.add_argument(
        "--doc-requests",
        type=int,
        default=8,
        help=f"requests of {DOCS_PER_REQUEST} documents in the docs row (default 8)",
    )
    parser.add_argument(
        "--worker", choices=["inprocess", "reference", "client"], help=argparse.SUPPRESS
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    parser.add_argument("--short-texts", type=int, default=3000, help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("--call-sizes", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "inprocess":
        return inprocess_worker(args)
    if args.worker == "reference":
        return reference_worker(args)
    if args.worker == "client":
        return client_worker(args)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 1.0)
        args.short_texts, args.docs, args.doc_requests = 600, 512, 2
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed; install it with: apt-get install -y wrk")
    if args.setup_peers:
        setup_peers()

    import httpx
    import numpy as np

    from akidb_embed.backend import available_cores

    cores = os.cpu_count() or 1
    source, fp32, int8 = _ensure_exports()
    folders = {"fp32": fp32, "int8": int8}
    short = _short_texts(args.short_texts)
    docs = _documents(args.docs)
    rows = set(args.rows)
    if rows == {"grpc"}:  # nothing else to set up
        _grpc_rows(args, args.duration)
        return 0
    duration = args.duration
    timeout = 120.0

    results: dict[str, dict[str, Any]] = {}
    peers: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        short_bodies = _write_bodies(
            tmp / "short.jsonl", [{"model": SERVED, "input": t} for t in short]
        )
        doc_bodies = _write_bodies(
            tmp / "docs.jsonl",
            [
                {"model": SERVED, "input": docs[i : i + DOCS_PER_REQUEST]}
                for i in range(0, len(docs), DOCS_PER_REQUEST)
            ],
        )
        close_texts = short[:200] + docs[:64]
        reference = None
        if "peers" in rows:
            (tmp / "texts.json").write_text(json.dumps(close_texts))
            print("sentence-transformers reference vectors ...", file=sys.stderr, flush=True)
            _run_worker(
                ["--worker", "reference", "--source", str(source), "--texts-file",
                 str(tmp / "texts.json"), "--vectors", str(tmp / "ref.npy")],
                args.threads,
            )  # fmt: skip
            reference = np.load(tmp / "ref.npy")

        for variant in args.variants:
            label = f"akidb-embed serve onnx {variant}"
            print(f"in-process {variant} ...", file=sys.stderr, flush=True)
            inproc = _run_worker(
                ["--worker", "inprocess", "--model-dir", str(folders[variant]),
                 "--short-texts", str(args.short_texts), "--docs", str(args.docs)]
                + (["--threads", str(args.threads)] if args.threads else [])
                + (["--call-sizes", *map(str, CALL_SIZES)] if "overhead" in rows else []),
                args.threads,
            )  # fmt: skip
            result: dict[str, Any] = {"label": label, "inproc": inproc, "conc": []}
            command = [
                sys.executable, "-m", "akidb_embed.cli", "serve", "--provider", "onnx",
                "--model", str(folders[variant]), "--port", "{port}",
                "--served-model-name", SERVED, "--grpc-port", "0", *args.server_arg,
            ] + (["--option", f"threads={args.threads}"] if args.threads else [])  # fmt: skip
            print(f"serving {variant} ...", file=sys.stderr, flush=True)
            with serve(
                label, command, "/ready", tmp / f"{variant}.log", args.threads, timeout
            ) as s:
                wrk(s, short_bodies, 32, args.warmup, cores)
                if "latency" in rows:
                    result["latency"] = wrk(s, short_bodies, 1, duration, cores)
                if "concurrency" in rows or "peers" in rows or "seed" in rows:
                    for clients in args.clients if "concurrency" in rows else [32]:
                        print(f"  {clients} clients ...", file=sys.stderr, flush=True)
                        result["conc"].append(wrk(s, short_bodies, clients, duration, cores))
                if "docs" in rows:
                    print(f"  {DOCS_PER_REQUEST}-document requests ...", file=sys.stderr)
                    server_cpu = _cpu_seconds(s.proc.pid)
                    docs_row = _run_worker(
                        ["--worker", "client", "--url", s.base + "/v1/embeddings",
                         "--bodies", str(doc_bodies), "--requests", str(args.doc_requests),
                         "--connections", str(args.doc_clients)],
                        args.threads,
                    )  # fmt: skip
                    docs_row["server_cpu"] = (
                        (_cpu_seconds(s.proc.pid) - server_cpu) / docs_row["seconds"] / cores
                    )
                    result["docs"] = docs_row
                if reference is not None:
                    result["cos"] = closeness(s, close_texts, reference)
            if "latency" in rows:
                # The floor of the design: a bare ASGI app, the model on one worker thread.
                floor = [
                    sys.executable, str(FLOOR_SERVER), "--kind", "asgi-model",
                    "--model", str(folders[variant]), "--port", "{port}",
                ] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
                log = tmp / f"{variant}-floor.log"
                with serve("floor", floor, "/v1/models", log, args.threads, timeout) as s:
                    wrk(s, short_bodies, 1, args.warmup, cores)
                    result["floor"] = wrk(s, short_bodies, 1, duration, cores)
            results[variant] = result

        if "peers" in rows:
            peer_commands = {
                "infinity-emb torch engine": (
                    [str(INFINITY_BIN), "v2", "--model-id", str(source),
                     "--served-model-name", SERVED, "--engine", "torch", "--device", "cpu",
                     "--url-prefix", "/v1", "--host", "127.0.0.1", "--port", "{port}"],
                    "/v1/models",
                ),
                "FastAPI + sentence-transformers": (
                    [sys.executable, str(ST_SERVER), "--model", str(source),
                     "--port", "{port}", "--served-model-name", SERVED],
                    "/v1/models",
                ),
            }  # fmt: skip
            for name, (command, ready) in peer_commands.items():
                if name.startswith("infinity") and not INFINITY_BIN.is_file():
                    peers[name] = {"error": "not installed: run with --setup-peers"}
                    continue
                print(f"serving {name} ...", file=sys.stderr, flush=True)
                log = tmp / f"peer{len(peers)}.log"
                try:
                    with serve(name, command, ready, log, args.threads, 300.0) as s:
                        wrk(s, short_bodies, 32, args.warmup, cores)
                        peer = wrk(s, short_bodies, 32, duration, cores)
                        peer["cos"] = closeness(s, close_texts, reference)
                except (RuntimeError, httpx.HTTPError) as exc:  # report it, run the others
                    peer = {"error": str(exc).splitlines()[0][:120]}
                peers[name] = peer

        floors = _overhead_servers(args, tmp, short_bodies, cores) if "overhead" in rows else []

    # --- tables ---------------------------------------------------------------------------
    print()
    print(
        f"all-MiniLM-L6-v2, {cores} cores (provider threads: "
        f"{args.threads or available_cores()}), wrk -t1 for {duration:g} s a run, "
        f"POST /v1/embeddings, {len(short)} distinct corpus queries (3-12 words) in rotation, "
        "manager cache off. CPU: share of all cores during the run.\n"
    )
    if "latency" in rows:
        print(
            "Single client, one short query at a time (goal: HTTP p50 <= 1.3x in-process); "
            "floor: a bare ASGI app running the same model on one worker thread"
        )
        table = []
        for r in results.values():
            lat, inproc, floor = r["latency"], r["inproc"], r["floor"]
            ratio = lat["p50"] / inproc["p50"]
            table.append([
                r["label"], _fmt_ms(lat), _fmt_ms(inproc), f"{ratio:.2f}x",
                _mark(ratio <= GOALS["latency_p50"]), f"{lat['rps']:.0f}",
                f"{floor['p50']:.2f} ({floor['p50'] / inproc['p50']:.2f}x)",
            ])  # fmt: skip
        _table(
            ["server", "HTTP p50 / p95 / p99 ms", "in-process embed_query p50 / p95 / p99 ms",
             "p50 ratio", "goal met", "req/s", "floor p50 ms (ratio)"],
            table,
        )  # fmt: skip
    if "concurrency" in rows:
        print(
            "Concurrent clients, one short text a request, vs in-process `embed` of the same "
            "texts in one call (goals at 32: >= 80% fp32, >= 60% int8; p99 <= 4x p50)"
        )
        table = []
        for variant, r in results.items():
            base = r["inproc"]["short_tps"]
            for c in r["conc"]:
                share = c["rps"] / base
                goal = "-"
                if c["clients"] == 32:
                    goal = _mark(
                        share >= GOALS["share_32"][variant]
                        and c["p99"] <= GOALS["tail_32"] * c["p50"]
                    )
                table.append([
                    r["label"], str(c["clients"]), f"{c['rps']:.0f}", f"{base:.0f}",
                    f"{share * 100:.0f}%", f"{c['p50']:.1f}", f"{c['p99']:.1f}",
                    f"{c['p99'] / c['p50']:.1f}x", str(c["errors"]),
                    f"{c['wrk_cpu'] * 100:.0f}%", f"{c['server_cpu'] * 100:.0f}%", goal,
                ])  # fmt: skip
        _table(
            ["server", "clients", "req/s", "in-process texts/s", "share", "p50 ms", "p99 ms",
             "p99/p50", "errors", "wrk CPU", "server CPU", "goal met"],
            table,
        )  # fmt: skip
    if "docs" in rows:
        print(
            f"{args.doc_requests} requests of {DOCS_PER_REQUEST} corpus documents over "
            f"{args.doc_clients} connections (an httpx asyncio client in its own process), vs "
            f"in-process `embed` of the same {len(docs)} documents in one call (goal: >= 95%)"
        )
        table = []
        for r in results.values():
            d, base = r["docs"], r["inproc"]["docs_tps"]
            tps = d["requests"] * DOCS_PER_REQUEST / d["seconds"]
            table.append([
                r["label"], f"{tps:.0f}", f"{base:.0f}", f"{tps / base * 100:.0f}%",
                f"{d['p50']:.0f}", f"{d['p99']:.0f}", str(d["errors"]),
                f"{d['cpu_seconds'] / d['seconds'] / cores * 100:.1f}%",
                f"{d['server_cpu'] * 100:.0f}%", _mark(tps / base >= GOALS["docs"]),
            ])  # fmt: skip
        _table(
            ["server", "docs/s", "in-process docs/s", "share", "p50 ms", "p99 ms", "errors",
             "client CPU", "server CPU", "goal met"],
            table,
        )  # fmt: skip
    if "peers" in rows:
        print(
            "Peers at 32 clients, same model and texts (goal: >= 2x infinity's req/s, lower "
            "p99; min cosine to sentence-transformers over "
            f"{len(close_texts)} texts)"
        )
        infinity = peers.get("infinity-emb torch engine", {})
        entries = [
            (r["label"], next(c for c in r["conc"] if c["clients"] == 32) | {"cos": r["cos"]})
            for r in results.values()
        ] + list(peers.items())
        table = []
        for name, p in entries:
            if "error" in p:
                table.append([name, p["error"], *[""] * 8])
                continue
            vs = goal = "-"
            if "rps" in infinity and p is not infinity and not name.startswith("FastAPI"):
                vs = f"{p['rps'] / infinity['rps']:.2f}x"
                goal = _mark(
                    p["rps"] >= GOALS["vs_infinity"] * infinity["rps"]
                    and p["p99"] < infinity["p99"]
                )
            elif "rps" in infinity:
                vs = f"{p['rps'] / infinity['rps']:.2f}x"
            table.append([
                name, f"{p['rps']:.0f}", vs, f"{p['p50']:.1f}", f"{p['p99']:.1f}",
                f"{p['cos']:.4f}", str(p["errors"]), f"{p['wrk_cpu'] * 100:.0f}%",
                f"{p['server_cpu'] * 100:.0f}%", goal,
            ])  # fmt: skip
        _table(
            ["server", "req/s", "vs infinity", "p50 ms", "p99 ms", "min cos vs ST", "errors",
             "wrk CPU", "server CPU", "goal met (req/s, p99)"],
            table,
        )  # fmt: skip
    if "seed" in rows:
        low, high = SEED["rps"]
        print(
            f"The seed's Python bridge, Apple silicon (a different machine, same model): "
            f"p50 {SEED['p50']} ms, p95 ~{SEED['p95']:.0f} ms, {low}-{high} req/s"
        )
        for r in results.values():
            best = max(r["conc"], key=lambda c: c["rps"]) if r["conc"] else None
            lat = r.get("latency")
            parts = [f"{r['label']} (this machine):"]
            if lat:
                parts.append(f"p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms (1 client),")
            if best:
                clients = f"{best['clients']} client" + ("s" if best["clients"] > 1 else "")
                parts.append(f"{best['rps']:.0f} req/s ({clients})")
            print("  " + " ".join(parts))
        print()
    if "overhead" in rows:
        _overhead_tables(floors, results)
    if "grpc" in rows:
        _grpc_rows(args, duration)
    quick = " --quick" if args.quick else ""
    chosen = "" if set(args.rows) == set(ROWS) else " --rows " + " ".join(args.rows)
    print(
        f"command: python benchmarks/bench_server.py --duration {duration:g}{quick}{chosen}"
        + (" --variants " + " ".join(args.variants) if len(args.variants) < 2 else "")
        + "".join(f" --server-arg={a}" for a in args.server_arg)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
