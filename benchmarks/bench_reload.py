"""Latency and memory of zero-downtime reloads in ``akidb-embed serve`` (issue #15).

One ``akidb-embed serve`` process (fresh, on 127.0.0.1), 16 asyncio clients sending
``POST /api/v1/embed`` requests of mixed sizes (1, 2, 5, 12 and 40 texts) without pause,
in three phases of the same run:

* ``steady mock`` and ``steady onnx``: no reload (the configuration is switched between
  them, and their first second is left out of the figures);
* ``reloading``: ``mock -> onnx -> mock`` five times through ``POST /admin/reload``, one
  second apart. Requests that overlap a switch (from the reload's start to its answer,
  which comes once the old provider is closed) are counted apart from the others.

The server's resident memory (its process and children: a python-bridge worker would be
one) is sampled every 10 ms: steady mock, steady onnx, and the peak of each switch.

    python benchmarks/bench_reload.py              # about 1.5 minutes
    python benchmarks/bench_reload.py --duration 4 # shorter phases

The onnx model is the exported all-MiniLM-L6-v2 of the tests (``tests/conftest.py``). Other
processes on the machine skew the figures; the ratios of one run are the meaningful part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ADMIN_KEY = "bench-admin"
CLIENTS = 16
SIZES = (1, 2, 5, 12, 40)
POOL = [f"benchmark text {i} " + "about reloading a server " * (1 + i % 6) for i in range(400)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    if sys.platform == "linux":  # the server goes if this script is killed
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _onnx_dir() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import cached_export  # type: ignore[import-not-found]

    return Path(cached_export("minilm-fp32", "--optimize"))


@dataclass
class Samples:
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    failed: int = 0


class Memory(threading.Thread):
    """RSS of a process and its children, every 10 ms, as (time, bytes)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            with contextlib.suppress(psutil.Error):
                for p in [self.process, *self.process.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            self.samples.append((time.monotonic(), total))
            time.sleep(0.01)

    def peak(self, start: float, end: float) -> int:
        return max((b for t, b in self.samples if start <= t <= end), default=0)

    def median(self, start: float, end: float) -> int:
        values = [b for t, b in self.samples if start <= t <= end]
        return int(np.median(values)) if values else 0


async def _client(n: int, http: httpx.AsyncClient, stop: asyncio.Event, out: Samples) -> None:
    i = n
    while not stop.is_set():
        size = SIZES[i % len(SIZES)]
        first = (i * 7) % (len(POOL) - size)
        i += CLIENTS
        start = time.monotonic()
        try:
            r = await http.post("/api/v1/embed", json={"inputs": POOL[first : first + size]})
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        out.latencies.append((start, time.monotonic() - start))
        out.failed += not ok


def _stats(values: list[float]) -> tuple[int, float, float, float]:
    if not values:
        return 0, float("nan"), float("nan"), float("nan")
    a = np.array(values) * 1000
    return len(a), float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


async def _run(url: str, config: Path, onnx_dir: Path, duration: float, memory: Memory) -> None:
    mock = '[embedding]\nprovider = "mock"\n'
    onnx = f'[embedding]\nprovider = "onnx"\nmodel = "{onnx_dir}"\n'
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    samples = Samples()
    stop = asyncio.Event()
    marks: dict[str, tuple[float, float]] = {}
    switches: list[tuple[str, float, float]] = []
    limits = httpx.Limits(max_connections=CLIENTS + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def reload(text: str) -> tuple[float, float]:
            config.write_text(text)
            start = time.monotonic()
            r = await http.post("/admin/reload", headers=admin, timeout=120)
            r.raise_for_status()
            return start, time.monotonic()

        clients = [asyncio.ensure_future(_client(n, http, stop, samples)) for n in range(CLIENTS)]
        t = time.monotonic()
        await asyncio.sleep(duration + 1)
        marks["steady mock"] = (t + 1, time.monotonic())
        await reload(onnx)
        t = time.monotonic()
        await asyncio.sleep(duration + 1)
        marks["steady onnx"] = (t + 1, time.monotonic())
        await reload(mock)
        await asyncio.sleep(1)
        t = time.monotonic()
        for _ in range(5):
            for name, text in (("mock -> onnx", onnx), ("onnx -> mock", mock)):
                switches.append((name, *await reload(text)))
                await asyncio.sleep(1)
        marks["reloading"] = (t, time.monotonic())
        stop.set()
        await asyncio.gather(*clients)

    def during(start: float, seconds: float, kind: str | None = None) -> bool:
        return any(
            s <= start + seconds and start <= e and kind in (None, name) for name, s, e in switches
        )

    rows = []
    for name in ("steady mock", "steady onnx"):
        a, b = marks[name]
        rows.append((name, [d for s, d in samples.latencies if a <= s <= b]))
    a, b = marks["reloading"]
    window = [(s, d) for s, d in samples.latencies if a <= s <= b]
    rows.append(("reloading: overlapping a switch", [d for s, d in window if during(s, d)]))
    for kind in ("mock -> onnx", "onnx -> mock"):
        rows.append((f"... overlapping {kind}", [d for s, d in window if during(s, d, kind)]))
    rows.append(("reloading: between switches", [d for s, d in window if not during(s, d)]))
    rows.append(("reloading: all", [d for _, d in window]))
    print(f"\n16 clients, requests of {SIZES} texts, {len(samples.latencies)} requests, "
          f"{samples.failed} failed\n")  # fmt: skip
    print("| phase | requests | p50 ms | p99 ms | max ms | p99 / steady onnx p99 |")
    print("|---|---|---|---|---|---|")
    onnx_p99 = _stats(rows[1][1])[2]
    for name, values in rows:
        n, p50, p99, top = _stats(values)
        print(f"| {name} | {n} | {p50:.1f} | {p99:.1f} | {top:.1f} | {p99 / onnx_p99:.2f} |")
    seconds = [e - s for name, s, e in switches]
    median, top = np.median(seconds), max(seconds)
    print(f"\nswitch, old provider closed: median {median:.2f} s, max {top:.2f} s")
    mib = 1024 * 1024
    mock_rss = memory.median(*marks["steady mock"])
    onnx_rss = memory.median(*marks["steady onnx"])
    print("| resident memory (server + children) | MiB | / steady onnx |")
    print("|---|---|---|")
    print(f"| steady mock | {mock_rss / mib:.0f} | {mock_rss / onnx_rss:.2f} |")
    print(f"| steady onnx | {onnx_rss / mib:.0f} | 1.00 |")
    for kind in ("mock -> onnx", "onnx -> mock"):
        peak = max(memory.peak(s, e + 0.05) for name, s, e in switches if name == kind)
        print(f"| peak during {kind} | {peak / mib:.0f} | {peak / onnx_rss:.2f} |")
    end = memory.samples[-1][1]
    print(f"| after the last switch (mock) | {end / mib:.0f} | {end / onnx_rss:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each steady phase")
    args = parser.parse_args()
    onnx_dir = _onnx_dir()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "akidb.toml"
        config.write_text('[embedding]\nprovider = "mock"\n')
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 closed below
        cmd = [sys.executable, "-m", "akidb_embed.cli", "serve", "--config", str(config)]
        cmd += ["--port", str(port), "--no-grpc", "--max-batch-size", "16"]
        cmd += ["--log-level", "WARNING"]
        env = {**os.environ, "AKIDB_SERVER_ADMIN_API_KEYS": ADMIN_KEY}
        server = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((Path(tmp) / "server.log").read_text())
                time.sleep(0.05)
            memory = Memory(server.pid)
            memory.start()
            asyncio.run(_run(url, config, onnx_dir, args.duration, memory))
            memory.stop.set()
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
            log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
