"""gRPC vs REST on one ``akidb-embed serve`` process: same model, same batcher, one run.

``bench_server.py`` runs this (its ``grpc`` row); it runs alone too. One server (``onnx``
provider on the exported all-MiniLM-L6-v2, manager cache off) listens on both protocols.
Each load generator runs in its own fresh process, one at a time, closed loop (every client
keeps one request in flight), one short corpus query a request, at 1 and 32 clients:

* **3,000 rotating queries** (what the README's server figures use): REST by ``wrk`` (C,
  ``benchmarks/server/post.lua``, the baseline of every ratio) and by ``httpx`` (Python);
  gRPC by ``grpc.aio`` (Python over grpcio's C core): ``Embed`` calls, and one
  ``EmbedStream`` per client writing its next query when the last answer came. There is no
  C gRPC client that rotates bodies (ghz is in neither Debian nor PyPI), so the gRPC rows
  use grpcio's own client, whose CPU the table shows next to wrk's and httpx's.
* **One fixed query**, C clients on both sides: ``wrk`` (REST) and ``h2load`` (gRPC
  ``Embed`` over HTTP/2, one framed ``EmbedRequest``; ``apt-get install -y
  nghttp2-client``). A batch computes a repeated text once, so these rows weigh the two
  protocol stacks' own per-request cost. h2load sees HTTP 200 only: gRPC statuses are
  checked in the server's metrics (``errors`` counts every call not answered ``OK``).
* **REST with gRPC off**: wrk against a second server started with ``--no-grpc``: what
  hosting gRPC in the same event loop costs the HTTP routes.

Columns: requests/s, the ratio to REST by wrk (same texts, same clients), p50/p99, the CPU
share (of all cores) of the load generator and of the server, and the server's CPU time
per request.

    python benchmarks/bench_grpc.py                 # fp32, 1 and 32 clients, 8 s a run
    python benchmarks/bench_grpc.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_server as bs  # noqa: E402  (the sibling's helpers: exports, serve, wrk, tables)

EMBED = "/akidb.embed.v1.Embedder/Embed"
ROTATING = "3000 rotating"
# The manager embeds a text repeated within one batch once: with one fixed text, batches
# cost one text's inference, so these rows weigh the protocols' own per-request cost.
FIXED = "1 fixed"


# --- worker: the Python load generator -----------------------------------------------------


def client_worker(args: argparse.Namespace) -> int:
    """Closed-loop asyncio clients for ``--duration`` seconds after ``--warmup``; JSON out."""
    import asyncio
    import resource

    import numpy as np

    texts = json.loads(Path(args.texts_file).read_text())
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**12))

    async def run() -> float:
        nonlocal errors
        loop = asyncio.get_running_loop()
        start = loop.time()
        measure_from = start + args.warmup
        stop = measure_from + args.duration

        async def timed(call: Any) -> None:
            nonlocal errors
            while loop.time() < stop:
                text = texts[next(counter) % len(texts)]
                began, t = loop.time(), time.perf_counter()
                ok = await call(text)
                if began >= measure_from:
                    latencies.append(time.perf_counter() - t)
                    errors += not ok

        if args.protocol == "rest":
            import httpx

            limits = httpx.Limits(max_connections=args.clients)
            async with httpx.AsyncClient(base_url=args.target, timeout=60, limits=limits) as http:

                async def rest(text: str) -> bool:
                    body = {"model": bs.SERVED, "input": text}
                    reply = await http.post("/v1/embeddings", json=body)
                    return reply.status_code == 200 and len(reply.json()["data"]) == 1

                await asyncio.gather(*(timed(rest) for _ in range(args.clients)))
        else:
            import grpc

            from akidb_embed_server.proto import embed_pb2, embed_pb2_grpc

            async with grpc.aio.insecure_channel(args.target) as channel:
                stub = embed_pb2_grpc.EmbedderStub(channel)
                if args.protocol == "grpc-unary":

                    async def unary(text: str) -> bool:
                        reply = await stub.Embed(embed_pb2.EmbedRequest(inputs=[text]), timeout=60)
                        return len(reply.embeddings) == 1

                    await asyncio.gather(*(timed(unary) for _ in range(args.clients)))
                else:

                    async def one_stream() -> None:
                        stream = stub.EmbedStream(timeout=args.warmup + args.duration + 60)

                        async def streamed(text: str) -> bool:
                            await stream.write(embed_pb2.EmbedRequest(inputs=[text]))
                            reply = await stream.read()
                            return len(reply.embeddings) == 1

                        await timed(streamed)
                        await stream.done_writing()
                        await stream.code()

                    await asyncio.gather(*(one_stream() for _ in range(args.clients)))
        return loop.time() - measure_from

    before = resource.getrusage(resource.RUSAGE_SELF)
    wall_start = time.perf_counter()
    measured = asyncio.run(run())
    wall = time.perf_counter() - wall_start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ms = np.array(latencies) * 1000
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    print(
        json.dumps(
            {
                "clients": args.clients,
                "rps": len(latencies) / measured,
                "requests": len(latencies),
                "errors": errors,
                "p50": float(np.percentile(ms, 50)),
                "p99": float(np.percentile(ms, 99)),
                "client_cpu": cpu / wall / (os.cpu_count() or 1),
            }
        ),
        flush=True,
    )
    return 0


# --- parent side ---------------------------------------------------------------------------


def python_clients(
    served: bs.Served, protocol: str, target: str, texts_file: Path, clients: int, args: Any
) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    server_cpu = bs._cpu_seconds(served.proc.pid)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "client",
         "--protocol", protocol, "--target", target, "--texts-file", str(texts_file),
         "--clients", str(clients), "--duration", str(args.duration),
         "--warmup", str(args.warmup)],
        capture_output=True, text=True, env=bs._env(None), check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{protocol} client failed:\n{proc.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - started
    row["server_cpu"] = (bs._cpu_seconds(served.proc.pid) - server_cpu) / wall / cores
    return row


def _wrk(served: bs.Served, bodies: Path, clients: int, duration: float, cores: int) -> Any:
    row = bs.wrk(served, bodies, clients, duration, cores)
    row["client_cpu"] = row.pop("wrk_cpu")
    return row


def _grpc_ok(served: bs.Served) -> float:
    import httpx

    text = httpx.get(served.base + "/metrics", timeout=10).text
    match = re.search(
        r'akidb_embed_requests_total\{route="' + EMBED + r'",status="OK"\} (\S+)', text
    )
    return float(match.group(1)) if match else 0.0


def h2load(
    served: bs.Served, grpc_port: int, body: Path, clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    """``h2load`` calling ``Embed`` with one framed message, *clients* connections of one
    stream each, for *duration* seconds after *warmup*; answers checked in the metrics."""
    import numpy as np

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.tsv"
        argv = [
            "h2load", "-t1", f"-c{clients}", "-m1", f"-D{max(1, round(duration))}",
            f"--warm-up-time={max(1, round(warmup))}", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"--log-file={log}", f"http://127.0.0.1:{grpc_port}{EMBED}",
        ]  # fmt: skip
        ok_before = _grpc_ok(served)
        server_cpu = bs._cpu_seconds(served.proc.pid)
        started = time.perf_counter()
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
            out.seek(0)
            stdout = out.read()
        server_cpu = (bs._cpu_seconds(served.proc.pid) - server_cpu) / wall / cores
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"h2load failed:\n{stdout[-2000:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    ok = _grpc_ok(served) - ok_before
    # Per request: start (us since epoch), HTTP status, duration (us); warm-up not logged.
    durations = np.array([int(r[2]) for r in rows]) / 1000
    done = re.search(r"(\d+) succeeded", stdout)
    succeeded = int(done.group(1)) if done else len(rows)
    return {
        "clients": clients,
        "rps": len(rows) / duration,
        "requests": len(rows),
        "errors": len(rows) - succeeded + max(0, int(len(rows) - ok)),
        "p50": float(np.percentile(durations, 50)),
        "p99": float(np.percentile(durations, 99)),
        "client_cpu": (usage.ru_utime + usage.ru_stime) / wall / cores,
        "server_cpu": server_cpu,
    }


def _ab(args: argparse.Namespace, folder: Path, texts: list[str], cores: int) -> int:
    """REST by wrk against servers with gRPC on and off, alternately, in fresh processes."""
    clients = max(args.clients)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bodies = bs._write_bodies(
            tmp / "many.jsonl", [{"model": bs.SERVED, "input": t} for t in texts]
        )
        base = [
            sys.executable, "-m", "akidb_embed.cli", "serve", "--provider", "onnx",
            "--model", str(folder), "--port", "{port}", "--served-model-name", bs.SERVED,
        ]  # fmt: skip
        for pair in range(args.ab_pairs):
            rps = {}
            for name, extra in (("on", ["--grpc-port", "0"]), ("off", ["--no-grpc"])):
                log = tmp / f"{name}{pair}.log"
                with bs.serve(name, base + extra, "/ready", log, None, 120.0) as s:
                    _wrk(s, bodies, clients, args.warmup, cores)
                    rps[name] = _wrk(s, bodies, clients, args.duration, cores)["rps"]
            ratios.append(rps["off"] / rps["on"])
            print(
                f"pair {pair + 1}: REST req/s at {clients} clients, gRPC on {rps['on']:.0f}, "
                f"--no-grpc {rps['off']:.0f}, ratio {ratios[-1]:.3f}",
                flush=True,
            )
    median = sorted(ratios)[len(ratios) // 2]
    print(f"--no-grpc / gRPC on, median of {len(ratios)} pairs: {median:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variants", nargs="+", choices=bs.VARIANTS, default=["fp32"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds a run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each run")
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 s warm-up")
    parser.add_argument("--short-texts", type=int, default=3000, help="distinct queries")
    parser.add_argument(
        "--ab-pairs",
        type=int,
        default=0,
        metavar="N",
        help="instead: N alternating pairs of servers with and without gRPC, REST by wrk at "
        "the largest --clients (what hosting gRPC costs HTTP, order effects cancelled)",
    )
    parser.add_argument("--worker", choices=["client"], help=argparse.SUPPRESS)
    parser.add_argument("--protocol", choices=["rest", "grpc-unary", "grpc-stream"])
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "client":
        args.clients = args.clients[0]
        return client_worker(args)
    if args.quick:
        args.duration, args.warmup, args.short_texts = 2.0, 1.0, 600
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        parser.error(
            f"{' and '.join(missing)} not installed: apt-get install -y wrk nghttp2-client"
        )

    from akidb_embed_server.proto import embed_pb2

    cores = os.cpu_count() or 1
    _, fp32, int8 = bs._ensure_exports()
    folders = {"fp32": fp32, "int8": int8}
    texts = bs._short_texts(args.short_texts)
    one = texts[0]
    if args.ab_pairs:
        return _ab(args, folders[args.variants[0]], texts, cores)
    results: dict[str, list[tuple[str, str, str, dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        texts_file = tmp / "texts.json"
        texts_file.write_text(json.dumps(texts))
        one_body = bs._write_bodies(tmp / "one.jsonl", [{"model": bs.SERVED, "input": one}])
        many_bodies = bs._write_bodies(
            tmp / "many.jsonl", [{"model": bs.SERVED, "input": t} for t in texts]
        )
        message = embed_pb2.EmbedRequest(inputs=[one]).SerializeToString()
        grpc_body = tmp / "one.grpc"
        grpc_body.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)

        for variant in args.variants:
            rows: list[tuple[str, str, str, dict[str, Any]]] = []
            grpc_port = bs._free_port()
            command = [
                sys.executable, "-m", "akidb_embed.cli", "serve", "--provider", "onnx",
                "--model", str(folders[variant]), "--port", "{port}",
                "--grpc-port", str(grpc_port), "--served-model-name", bs.SERVED,
            ]  # fmt: skip
            print(f"serving {variant} (HTTP + gRPC) ...", file=sys.stderr, flush=True)
            with bs.serve(variant, command, "/ready", tmp / f"{variant}.log", None, 120.0) as s:
                target = f"127.0.0.1:{grpc_port}"
                bs.wrk(s, many_bodies, 32, args.warmup, cores)  # warm the model and routes
                for clients in args.clients:
                    print(f"  {clients} clients ...", file=sys.stderr, flush=True)
                    row = _wrk(s, many_bodies, clients, args.duration, cores)
                    rows.append((ROTATING, "REST /v1/embeddings", "wrk (C)", row))
                    for label, protocol, where in (
                        ("REST /v1/embeddings", "rest", s.base),
                        ("gRPC Embed", "grpc-unary", target),
                        ("gRPC EmbedStream", "grpc-stream", target),
                    ):
                        row = python_clients(s, protocol, where, texts_file, clients, args)
                        client = "httpx (Python)" if protocol == "rest" else "grpc.aio (Python)"
                        rows.append((ROTATING, label, client, row))
                    row = _wrk(s, one_body, clients, args.duration, cores)
                    rows.append((FIXED, "REST /v1/embeddings", "wrk (C)", row))
                    row = h2load(s, grpc_port, grpc_body, clients, args.duration, args.warmup)
                    rows.append((FIXED, "gRPC Embed", "h2load (C)", row))
            no_grpc = [c for c in command if c not in ("--grpc-port", str(grpc_port))]
            no_grpc.append("--no-grpc")
            log = tmp / f"{variant}-http.log"
            with bs.serve(variant, no_grpc, "/ready", log, None, 120.0) as s:
                bs.wrk(s, many_bodies, 32, args.warmup, cores)
                for clients in args.clients:
                    row = _wrk(s, many_bodies, clients, args.duration, cores)
                    rows.append((ROTATING, "REST /v1/embeddings, server --no-grpc", "wrk (C)", row))
            results[variant] = rows

    print()
    print(
        f"all-MiniLM-L6-v2 onnx, {cores} cores, one server for both protocols, closed-loop "
        f"clients, one short query a request, {args.duration:g} s a run after "
        f"{args.warmup:g} s of warm-up, manager cache off. vs REST: req/s over REST's by wrk "
        "with the same texts and clients. CPU: share of all cores; the load generator runs on "
        "the same cores as the server.\n"
    )
    for variant, rows in results.items():
        table = []
        for clients in args.clients:
            for texts_kind in (ROTATING, FIXED):
                base = next(
                    r for k, label, client, r in rows
                    if (k, label, client) == (texts_kind, "REST /v1/embeddings", "wrk (C)")
                    and r["clients"] == clients
                )  # fmt: skip
                for k, label, client, r in rows:
                    if k != texts_kind or r["clients"] != clients:
                        continue
                    cpu_ms = r["server_cpu"] * cores / r["rps"] * 1000 if r["rps"] else 0.0
                    table.append([
                        variant, texts_kind, label, client, str(clients), f"{r['rps']:.0f}",
                        f"{r['rps'] / base['rps']:.2f}x", f"{r['p50']:.2f}", f"{r['p99']:.2f}",
                        str(r["errors"]), f"{r['client_cpu'] * 100:.0f}%",
                        f"{r['server_cpu'] * 100:.0f}%", f"{cpu_ms:.2f}",
                    ])  # fmt: skip
        bs._table(
            ["model", "texts", "protocol", "load generator", "clients", "req/s",
             "vs REST (wrk)", "p50 ms", "p99 ms", "errors", "client CPU", "server CPU",
             "server CPU ms/req"],
            table,
        )  # fmt: skip
    quick = " --quick" if args.quick else ""
    print(
        f"command: python benchmarks/bench_grpc.py --duration {args.duration:g}{quick} "
        f"--variants {' '.join(args.variants)} --clients {' '.join(map(str, args.clients))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
