"""``akidb-embed healthcheck``: the container's HEALTHCHECK, against real servers.

It must find the server from the same settings as ``serve`` (environment, config file),
pass the API key, ignore proxies, and tell ready (0) from loading, refused or unauthorised
(1) and from bad settings (2).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from akidb_embed_server._healthcheck import probe_url

from .conftest import free_port

MOCK = ("--provider", "mock", "--model", "mock")


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
    return subprocess.run(
        [sys.executable, "-m", "akidb_embed.cli", "healthcheck", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_ready(url: str, headers: dict[str, str] | None = None, path: str = "/ready") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url}{path} did not answer 200 within 60 s")


def test_ready_server_from_the_environment(serve):
    server = serve(*MOCK)
    done = healthcheck(env={"AKIDB_SERVER_PORT": str(server.port)})
    assert done.returncode == 0, done.stderr
    assert f"ok: http://127.0.0.1:{server.port}/ready answered 200" in done.stdout
    assert '"ready"' in done.stdout


def test_wildcard_bind_address_is_probed_on_loopback(serve):
    server = serve(*MOCK)
    env = {"AKIDB_SERVER_HOST": "0.0.0.0", "AKIDB_SERVER_PORT": str(server.port)}
    done = healthcheck(env=env)
    assert done.returncode == 0, done.stderr


def test_port_from_a_config_file(serve, tmp_path: Path):
    server = serve(*MOCK)
    config = tmp_path / "akidb.toml"
    config.write_text(f"[server]\nport = {server.port}\n")
    assert healthcheck("--config", str(config)).returncode == 0
    assert healthcheck(env={"AKIDB_CONFIG": str(config)}).returncode == 0


def test_sends_the_configured_api_key(serve, tmp_path: Path):
    # /ready stays private (the default public paths), so wait for readiness with a key.
    server = serve(*MOCK, env={"AKIDB_SERVER_API_KEYS": "k-one,k-two"}, wait=False)
    wait_ready(server.url, {"Authorization": "Bearer k-two"})
    port = {"AKIDB_SERVER_PORT": str(server.port)}
    assert httpx.get(f"{server.url}/ready").status_code == 401
    done = healthcheck(env={**port, "AKIDB_SERVER_API_KEYS": "k-one,k-two"})
    assert done.returncode == 0, done.stderr
    keys = tmp_path / "keys"
    keys.write_text("# the server's keys\nk-one\n")
    assert healthcheck(env={**port, "AKIDB_SERVER_API_KEY_FILE": str(keys)}).returncode == 0
    wrong = healthcheck(env={**port, "AKIDB_SERVER_API_KEYS": "k-three"})
    assert wrong.returncode == 1
    assert "answered 401" in wrong.stderr
    assert "k-three" not in wrong.stderr + wrong.stdout
    assert healthcheck(env=port).returncode == 1  # no key at all


def test_loading_is_not_ready_but_alive(serve):
    server = serve(*MOCK, "--option", "load_delay=60", wait=False)
    wait_ready(server.url, path="/health")
    port = {"AKIDB_SERVER_PORT": str(server.port)}
    done = healthcheck(env=port)
    assert done.returncode == 1
    assert "not ready" in done.stderr and "503" in done.stderr and "loading" in done.stderr
    live = healthcheck("--live", env=port)
    assert live.returncode == 0, live.stderr
    assert "/health answered 200" in live.stdout


def test_nothing_listening_is_unhealthy():
    done = healthcheck(env={"AKIDB_SERVER_PORT": str(free_port())})
    assert done.returncode == 1
    assert done.stderr.startswith("unreachable: http://127.0.0.1:")
    assert healthcheck("--quiet", env={"AKIDB_SERVER_PORT": str(free_port())}).stderr == ""


def test_proxies_are_ignored(serve):
    server = serve(*MOCK)
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = {
        "AKIDB_SERVER_PORT": str(server.port),
        "HTTP_PROXY": dead_proxy,
        "http_proxy": dead_proxy,
        "ALL_PROXY": dead_proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    done = healthcheck(env=env)
    assert done.returncode == 0, done.stderr


def test_explicit_url(serve):
    server = serve(*MOCK)
    done = healthcheck("--url", f"{server.url}/ready", env={"AKIDB_SERVER_PORT": "1"})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"AKIDB_SERVER_PORT": "0"}, "is 0 (the OS picks the port"),
        ((), {"AKIDB_SERVER_PROT": "8080"}, "AKIDB_SERVER_PORT"),
        ((), {"AKIDB_SERVER_PORT": "http"}, "integer"),
        (("--timeout", "0"), {}, "must be > 0"),
        (("--timeout", "nan"), {}, "must be > 0"),
        (("--config", "/nonexistent/akidb.toml"), {}, "/nonexistent/akidb.toml"),
    ],
)
def test_bad_settings_exit_2(args, env, message):
    done = healthcheck(*args, env=env)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080/ready"),
        ("", "http://127.0.0.1:8080/ready"),
        ("::", "http://[::1]:8080/ready"),
        ("::1", "http://[::1]:8080/ready"),
        ("127.0.0.2", "http://127.0.0.2:8080/ready"),
        ("embed.internal", "http://embed.internal:8080/ready"),
    ],
)
def test_probe_url(host, url):
    assert probe_url(host, 8080) == url
