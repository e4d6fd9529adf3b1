"""Run the built image for real and probe it from the host (called by scripts/check-image.sh).

For each service of docker-compose.yaml: ``buildah run`` the image's own command
(entrypoint + cmd) with that service's environment, its model mount, tmpfs and dropped
capabilities, on a free loopback port with the host's network; then from the host:
``/ready`` (timed from the start), ``POST /api/v1/embed`` and ``/v1/embeddings`` (the
``openai`` client) against the host's in-process vectors, ``/metrics`` (prometheus-client's
parser), gRPC's standard health service and ``Embed`` (the committed stubs) on the gRPC
port, the image's HEALTHCHECK and the service's compose healthcheck run inside the container,
JSON log lines; then SIGTERM to the server process during a large request (it must be
answered: graceful drain), exit status 0, no process left, and the healthcheck
failing once it is gone. Also checks what the image holds (no torch, no export tooling;
a second interpreter without the web stack) and that compose and the image agree.

Prints a summary table; exits non-zero on the first failed check, with the server's log.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families

from akidb_embed import EmbeddingManager

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
# Never in the runtime image: the export tooling and the reference stack.
FORBIDDEN = {"torch", "transformers", "onnx", "onnxscript", "sentence-transformers", "optimum"}
# The server's virtualenv and the python-bridge worker's.
VENVS = ("/opt/venv", "/opt/bridge")
TEXTS = [
    "The cat sat on the mat.",
    "A kitten naps on a rug in the afternoon sun.",
    "Stocks fell sharply after the central bank raised interest rates.",
    "Übermäßig lange Sätze sind schwer zu lesen, sagt man.",
    "",
    "embedding " * 300,  # past the model's 256 tokens: truncated, counted
]


class CheckFailed(AssertionError):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Buildah:
    """The ``buildah`` command line with this check's private storage."""

    def __init__(self, command: str) -> None:
        self.argv = command.split()

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        done = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise CheckFailed(f"buildah {' '.join(args[:3])} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def run_argv(self, container: str, options: Sequence[str], command: Sequence[str]) -> list[str]:
        return [
            *self.argv,
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
            *options,
            container,
            "--",
            *command,
        ]


# --- processes -----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot) of *pid*, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> list[int]:
    """The processes under *root*, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop(0)
        kids = sorted(children.get(pid, []))
        out.extend(kids)
        todo.extend(kids)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start  # the same process, not a reused pid


# --- compose -------------------------------------------------------------------------------


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_run_options(service: dict[str, Any]) -> list[str]:
    """The service's tmpfs mounts and dropped capabilities as ``buildah run`` options."""
    options: list[str] = []
    tmpfs = service.get("tmpfs") or []
    for path in [tmpfs] if isinstance(tmpfs, str) else tmpfs:
        options += ["--mount", f"type=tmpfs,destination={path}"]
    for cap in service.get("cap_drop") or []:
        options += ["--cap-drop", cap]
    return options


def container_ports(service: dict[str, Any]) -> set[str]:
    ports = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(f"{entry['target']}/{entry.get('protocol', 'tcp')}")
        else:
            target = str(entry).rsplit(":", 1)[-1]
            ports.add(target if "/" in target else f"{target}/tcp")
    return ports


def model_mount(service: dict[str, Any], env: dict[str, str]) -> str:
    """The container path of the service's model, checked to lie in a read-only volume."""
    model = env.get("AKIDB_EMBEDDING_MODEL", "")
    check(model.startswith("/"), f"AKIDB_EMBEDDING_MODEL should be a mounted folder: {model!r}")
    for volume in service.get("volumes") or []:
        parts = str(volume).split(":")
        if len(parts) >= 2 and model.startswith(parts[1].rstrip("/") + "/"):
            check(parts[2:] == ["ro"], f"the model volume {volume!r} should be read-only")
            return model
    raise CheckFailed(f"the model {model} is in none of the service's volumes")


# --- the checks ----------------------------------------------------------------------------


class ServiceRun:
    """One service of the compose file, running in a container of the image.

    The services take turns in one container: with the vfs driver every container is a
    full copy of the image, and the server writes nothing into it.
    """

    def __init__(
        self,
        buildah: Buildah,
        container: str,
        config: dict[str, Any],
        name: str,
        service: dict[str, Any],
        model_dir: Path,
        log_dir: Path,
    ) -> None:
        self.buildah, self.config, self.name, self.service = buildah, config, name, service
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = compose_env(service)
        model_path = model_mount(service, env)
        # Loopback only and a free port: other servers run on this machine. The image's
        # default 0.0.0.0 is for a container's own network namespace.
        env |= {"AKIDB_SERVER_HOST": "127.0.0.1", "AKIDB_SERVER_PORT": str(self.port)}
        env["AKIDB_SERVER_GRPC_PORT"] = str(free_port())
        self.env = env
        self.options = [
            "-v",
            f"{model_dir}:{model_path}:ro",
            *compose_run_options(service),
            *(a for k, v in env.items() for a in ("-e", f"{k}={v}")),
        ]
        self.command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        self.container = container
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tree: list[tuple[int, int]] = []
        self.ready_at = 0.0

    def process_ready_s(self) -> float:
        """Seconds from the server process's start (after buildah's own) to ready."""
        start = _stat(self.server_pid())
        assert start is not None
        return self.ready_at - start[1] / os.sysconf("SC_CLK_TCK")

    def start(self) -> float:
        """Start the image's command; seconds until ``/ready`` answered 200."""
        with self.log_path.open("wb") as log:
            start = time.monotonic()
            self.proc = subprocess.Popen(
                self.buildah.run_argv(self.container, self.options, self.command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() - start < READY_TIMEOUT:
                if self.proc.poll() is not None:
                    raise CheckFailed(f"{self.name}: exited with {self.proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/ready").status_code == 200:
                        self.ready_at = time.clock_gettime(time.CLOCK_BOOTTIME)
                        return time.monotonic() - start
                time.sleep(0.02)
        raise CheckFailed(f"{self.name}: not ready within {READY_TIMEOUT:g} s")

    def server_pid(self) -> int:
        """The image's command itself (what Docker runs as PID 1)."""
        assert self.proc is not None
        for pid in descendants(self.proc.pid):
            argv = cmdline(pid)
            if argv and "buildah" not in Path(argv[0]).name and argv[-1] == self.command[-1]:
                return pid
        raise CheckFailed(f"{self.name}: no server process under buildah run")

    def exec(self, command: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run *command* in the running container, with the service's environment (as
        Docker runs a healthcheck)."""
        argv = self.buildah.run_argv(self.container, self.options, command)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self, *, during: Any = None) -> tuple[int, float]:
        """SIGTERM to the server process (after *during* started); its exit status, seconds."""
        assert self.proc is not None
        self.tree = [(p, st[1]) for p in descendants(self.proc.pid) if (st := _stat(p))]
        pid = self.server_pid()
        start = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        status = self.proc.wait(timeout=STOP_TIMEOUT)
        return status, time.monotonic() - start

    def leftovers(self) -> list[str]:
        return [" ".join(cmdline(p)) or str(p) for p, start in self.tree if alive(p, start)]

    def kill(self) -> None:
        """Failure path: nothing of this run may outlive the check."""
        if self.proc is not None and self.proc.poll() is None:
            for pid in reversed(descendants(self.proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _vector(embedding: list[float] | str) -> np.ndarray:
    # With encoding_format="base64" the client hands the little-endian float32 bytes over.
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), "<f4")
    return np.asarray(embedding, dtype=np.float32)


def probe(run: ServiceRun, expected: np.ndarray, provider: str) -> dict[str, Any]:
    """The HTTP checks of one running service; figures for the summary."""
    figures: dict[str, Any] = {}
    with httpx.Client(base_url=run.url, timeout=60) as client:
        r = client.get("/ready")
        check(r.status_code == 200 and r.json()["status"] == "ready", f"/ready: {r.text}")

        r = client.post("/api/v1/embed", json={"inputs": TEXTS})
        check(r.status_code == 200, f"/api/v1/embed: {r.status_code} {r.text[:300]}")
        body = r.json()
        got = np.asarray(body["embeddings"], dtype=np.float32)
        check(got.shape == expected.shape, f"/api/v1/embed shape {got.shape} != {expected.shape}")
        check(body["usage"]["truncated"] == 1, f"usage: {body['usage']}")
        diff = float(np.abs(got - expected).max())
        cos = float(np.min(np.sum(got * expected, axis=1)))
        check(diff <= 1e-5 and cos >= 0.99999, f"vectors differ from in-process: max |d| {diff}")
        figures["max_abs_diff"] = diff

        served = run.env.get("AKIDB_SERVER_SERVED_MODEL_NAME", "")
        oa = openai.OpenAI(base_url=f"{run.url}/v1", api_key="unused", max_retries=0)
        for fmt in ("float", "base64"):
            res = oa.embeddings.create(model=served, input=TEXTS[:4], encoding_format=fmt)
            vecs = np.stack([_vector(d.embedding) for d in res.data])
            check(np.abs(vecs - expected[:4]).max() <= 1e-5, f"/v1/embeddings ({fmt}) differ")
            check(res.model == served, f"/v1/embeddings model {res.model!r} != {served!r}")

        r = client.get("/metrics")
        check(r.status_code == 200, f"/metrics: {r.status_code}")
        samples = [s for f in text_string_to_metric_families(r.text) for s in f.samples]
        requests = sum(
            s.value
            for s in samples
            if s.name == "akidb_embed_requests_total"
            and s.labels.get("status") == "200"
            and s.labels.get("route") in ("/api/v1/embed", "/v1/embeddings")
        )
        check(requests == 3, f"/metrics counts {requests} embed requests, not 3")
        info = [s.labels for s in samples if s.name == "akidb_embed_model_info"]
        check(info and info[0].get("provider") == provider, f"model info: {info}")
        texts = [s.value for s in samples if s.name == "akidb_embed_texts_total"]
        check(texts == [len(TEXTS) + 8], f"akidb_embed_texts_total {texts}")
    figures.update(probe_grpc(run, expected))
    return figures


def probe_grpc(run: ServiceRun, expected: np.ndarray) -> dict[str, Any]:
    """The gRPC side of the same process: the standard health service answers SERVING
    (overall and for the Embedder service), and ``Embed`` gives the host's vectors."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from akidb_embed_server.proto import embed_pb2, embed_pb2_grpc

    port = run.env.get("AKIDB_SERVER_GRPC_PORT")
    check(port, "the gRPC port is not set for the run")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "akidb.embed.v1.Embedder"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            serving = status.status == health_pb2.HealthCheckResponse.SERVING
            check(serving, f"gRPC health {service or '(server)'}: {status.status}")
        answer = embed_pb2_grpc.EmbedderStub(channel).Embed(
            embed_pb2.EmbedRequest(inputs=TEXTS), timeout=60
        )
    got = np.asarray([list(e.values) for e in answer.embeddings], dtype=np.float32)
    check(got.shape == expected.shape, f"gRPC Embed shape {got.shape} != {expected.shape}")
    diff = float(np.abs(got - expected).max())
    check(diff <= 1e-5, f"gRPC Embed vectors differ from in-process: max |d| {diff}")
    check(answer.usage.truncated == 1, f"gRPC usage: {answer.usage}")
    return {"grpc_max_abs_diff": diff}


def check_healthchecks(run: ServiceRun) -> None:
    image_test = run.config.get("Healthcheck", {}).get("Test") or []
    check(image_test[:1] == ["CMD"], f"HEALTHCHECK should be exec form: {image_test}")
    compose_test = run.service.get("healthcheck", {}).get("test") or []
    check(compose_test[:1] == ["CMD"], f"compose healthcheck should be exec form: {compose_test}")
    for label, test in (("HEALTHCHECK", image_test), ("compose healthcheck", compose_test)):
        done = run.exec(test[1:])
        check(done.returncode == 0, f"{run.name}: {label} {test[1:]} failed: {done.stderr}")


def check_drain(run: ServiceRun) -> tuple[int, float]:
    """SIGTERM while a large request runs: it is answered in full, then a clean exit."""
    texts = [
        f"document {i}: " + "a rather long sentence about nothing much. " * 20 for i in range(64)
    ]
    answer: dict[str, Any] = {}

    def send() -> None:
        try:
            r = httpx.post(f"{run.url}/api/v1/embed", json={"inputs": texts}, timeout=120)
            answer["status"], answer["n"] = r.status_code, len(r.json().get("embeddings", []))
        except Exception as exc:  # reported below
            answer["error"] = repr(exc)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=run.url, timeout=5) as client:
        while time.monotonic() < deadline and "status" not in answer:
            text = client.get("/metrics").text
            if re.search(r"^akidb_embed_batches_in_flight [1-9]", text, re.M):
                break
            time.sleep(0.005)
    in_flight = "status" not in answer
    status, seconds = run.stop()
    sender.join(timeout=120)
    check(
        answer.get("status") == 200 and answer.get("n") == len(texts),
        f"{run.name}: the request in flight at SIGTERM got {answer}",
    )
    check(status == 0, f"{run.name}: exit status {status} after SIGTERM")
    if not in_flight:
        print(f"  note: {run.name}: the drain request finished before SIGTERM was sent")
    return status, seconds


def check_image_contents(buildah: Buildah, container: str, user: str) -> dict[str, list[str]]:
    """What each virtualenv of the image holds, and who the image runs as (one run)."""
    listing = (
        "import importlib.metadata as m, json, os, sys; "
        "print(json.dumps([os.getuid(), sorted(d.metadata['Name'].lower() "
        "for d in m.distributions())]))"
    )
    script = "; ".join(f'{venv}/bin/python -c "{listing}"' for venv in VENVS)
    done = subprocess.run(
        buildah.run_argv(container, [], ["/bin/sh", "-c", script]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    check(done.returncode == 0, f"listing the image's packages failed: {done.stderr}")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    found = {venv: names for venv, (_, names) in zip(VENVS, rows, strict=True)}
    uid = str(rows[0][0])
    check(uid != "0" and uid == user.split(":")[0], f"the image runs as uid {uid}, not {user}")
    server, bridge = set(found["/opt/venv"]), set(found["/opt/bridge"])
    extra = (server | bridge) & FORBIDDEN
    check(not extra, f"export tooling in the image: {sorted(extra)}")
    for name in ("akidb-embed", "akidb-embed-onnx", "akidb-embed-server", "onnxruntime"):
        check(name in server, f"{name} missing from /opt/venv")
    check({"akidb-embed", "akidb-embed-onnx", "onnxruntime"} <= bridge, "/opt/bridge lacks onnx")
    web = {"akidb-embed-server", "fastapi", "uvicorn"} & bridge
    check(not web, f"/opt/bridge has the web stack: {sorted(web)}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--buildah", required=True, help="the buildah command with its storage options"
    )
    parser.add_argument("--image", required=True)
    parser.add_argument("--model", required=True, type=Path, help="exported ONNX model folder")
    parser.add_argument("--compose", type=Path, default=Path("docker-compose.yaml"))
    parser.add_argument("--summary", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    buildah = Buildah(args.buildah)
    args.model = args.model.resolve()

    info = json.loads(buildah("inspect", "--type", "image", args.image))
    config = info["Docker"]["config"]
    compose = yaml.safe_load(args.compose.read_text())
    exposed = set(config.get("ExposedPorts") or {})
    check(exposed == {"8080/tcp", "9090/tcp"}, f"EXPOSE {sorted(exposed)}")
    check(config.get("Healthcheck"), "the image has no HEALTHCHECK (build with --format docker)")
    for name, service in compose["services"].items():
        check(
            container_ports(service) <= exposed,
            f"{name}: ports {container_ports(service)} not exposed",
        )

    with EmbeddingManager.from_config(provider="onnx", model=str(args.model), offline=True) as m:
        expected = m.embed(TEXTS)

    container = buildah("from", "--name", "akidb-check", args.image)
    summary: dict[str, Any] = {}
    try:
        t = time.monotonic()
        contents = check_image_contents(buildah, container, config.get("User", ""))
        print(
            f"ok  image contents: /opt/venv {len(contents['/opt/venv'])} packages, /opt/bridge "
            f"{len(contents['/opt/bridge'])}, no torch or export tooling, non-root "
            f"({time.monotonic() - t:.1f} s)"
        )
        with tempfile.TemporaryDirectory(prefix="akidb-check-logs-") as logs:
            for name, service in compose["services"].items():
                run = ServiceRun(buildah, container, config, name, service, args.model, Path(logs))
                summary[name] = check_service(run, expected)
    finally:
        buildah("rm", container, check=False)
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2))
    return 0


def check_service(run: ServiceRun, expected: np.ndarray) -> dict[str, Any]:
    """Start one compose service in the image, probe it, stop it; its figures."""
    name, env = run.name, run.env
    provider = env.get("AKIDB_EMBEDDING_PROVIDER", "onnx")
    # A bridge reports the model of the provider its worker hosts.
    hosted = env.get("AKIDB_EMBEDDING_TARGET", "") if provider == "python-bridge" else provider
    try:
        ready = run.start()
        pid = run.server_pid()
        process_ready = run.process_ready_s()
        check(uid_of(pid) not in (None, 0), f"{name}: the server runs as root")
        if provider == "python-bridge":
            python_path = env["AKIDB_EMBEDDING_PYTHON_PATH"]
            tree = [cmdline(p) for p in descendants(pid)]
            check(
                any(a[:3] == [python_path, "-m", "akidb_embed.bridge"] for a in tree),
                f"{name}: no bridge worker on {python_path}: {tree}",
            )
        figures = probe(run, expected, hosted)
        figures["peak_rss_mib"] = {
            " ".join(cmdline(p)[1:3]): peak_rss_mib(p) for p in [pid, *descendants(pid)]
        }
        check_healthchecks(run)
        _, stop_s = check_drain(run)
        check(not run.leftovers(), f"{name}: left running: {run.leftovers()}")
        done = run.exec(run.config["Healthcheck"]["Test"][1:])
        check(done.returncode == 1, f"{name}: the healthcheck passed with no server")
        lines = [ln for ln in run.log().splitlines() if ln.strip()]
        if env.get("AKIDB_LOG_FORMAT") == "json":
            bad = [ln for ln in lines if not _is_json_object(ln)]
            check(not bad, f"{name}: log lines that are not JSON: {bad[:3]}")
    except BaseException:
        print(f"--- {name}: server log ---\n{run.log()}", file=sys.stderr)
        run.kill()
        raise
    print(
        f"ok  {name} ({provider}): ready {ready:.2f} s after start ({process_ready:.2f} s "
        f"after the server process started), vectors = in-process "
        f"(max |d| {figures['max_abs_diff']:.1e}), /v1/embeddings, /metrics, healthchecks, "
        f"{len(lines)} JSON log lines, drained and exited 0 in {stop_s:.2f} s on SIGTERM, "
        "nothing left; peak RSS MiB: "
        + ", ".join(f"{k} {v:.0f}" for k, v in figures["peak_rss_mib"].items())
    )
    return {"ready_s": ready, "process_ready_s": process_ready, "stop_s": stop_s, **figures}


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
