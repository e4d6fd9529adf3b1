"""docker-compose.yaml and the Dockerfile: valid, and in agreement with each other, with the
settings the server accepts and with the docs.

No Docker engine runs here, so ``docker compose config`` cannot: the compose file is
validated against the Compose Specification's JSON schema (the copy check-jsonschema
ships), and the Dockerfile is read with BuildKit's own parser (the ``dockerfile``
package). scripts/check-image.sh builds the image and runs each service in it for real.
"""

from __future__ import annotations

import copy
import json
import platform
import re
import shlex
import subprocess
import sys
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import pytest
import yaml

from akidb_embed import EmbeddingConfig
from akidb_embed_server import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCS = ROOT / "docs" / "container.md"
# Variables the settings read besides the AKIDB_EMBEDDING_* and AKIDB_SERVER_* families.
OTHER_AKIDB_VARIABLES = {
    "AKIDB_CONFIG",
    "AKIDB_LOG_LEVEL",
    "AKIDB_LOG_FORMAT",
    "AKIDB_METRICS_ENABLED",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.protocols.Validator:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """The runtime stage of the Dockerfile: ENV, EXPOSE, HEALTHCHECK, USER, ..."""
    commands = dockerfile.parse_file(str(DOCKERFILE))
    stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    runtime = commands[stages[-1] :]
    out: dict[str, Any] = {"env": {}, "expose": set(), "all": commands}
    for c in runtime:
        if c.cmd == "ENV":
            out["env"].update(zip(c.value[::2], c.value[1::2], strict=True))
        elif c.cmd == "EXPOSE":
            out["expose"].update(c.value)
        else:
            out[c.cmd] = c
    return out


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# --- the schema ------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(compose, schema_validator):
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in schema_validator.iter_errors(compose)
    ]
    assert not errors


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["akidb-embed"].update(portz=["8080:8080"]),
        lambda c: c["services"]["akidb-embed"]["healthcheck"].update(tests=["CMD", "true"]),
        lambda c: c["services"]["akidb-embed"].update(volumes="./models:/models"),
        lambda c: c["services"]["akidb-embed"].update(environment=[["AKIDB_LOG_FORMAT", "json"]]),
        lambda c: c.update(servics=c.pop("services")),
    ],
    ids=["unknown-key", "healthcheck-key", "volumes-not-a-list", "bad-environment", "typo"],
)
def test_the_schema_check_catches_a_broken_file(compose, schema_validator, breakage):
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert list(schema_validator.iter_errors(broken))


# --- the variables -----------------------------------------------------------------------------


def all_variables(compose: dict[str, Any], image: dict[str, Any]) -> dict[str, dict[str, str]]:
    found = {name: environment(s) for name, s in services(compose).items()}
    found["Dockerfile"] = dict(image["env"])
    return found


def test_every_akidb_variable_is_a_setting(compose, image):
    for where, env in all_variables(compose, image).items():
        for var in env:
            if var.startswith("AKIDB_"):
                assert var.startswith(("AKIDB_EMBEDDING_", "AKIDB_SERVER_")) or (
                    var in OTHER_AKIDB_VARIABLES
                ), f"{where}: {var} is read by nothing"
        # Each service's variables over the image's, as the container sees them; the
        # loaders refuse an unknown AKIDB_EMBEDDING_* / AKIDB_SERVER_* name or a bad value.
        seen = {**image["env"], **env}
        config = EmbeddingConfig.load(env=seen)
        settings = ServerSettings.load(environ=seen)
        for var in env:
            if var.startswith("AKIDB_EMBEDDING_") and var != "AKIDB_EMBEDDING_TARGET":
                key = var.removeprefix("AKIDB_EMBEDDING_").lower()
                assert config.source(key) == f"env:{var}", (where, var)
        assert settings.host == "0.0.0.0", where  # listens beyond the container's loopback


def test_services_configure_what_the_image_expects(compose, image):
    assert image["env"]["AKIDB_LOG_FORMAT"] == "json"
    assert image["env"]["HF_HOME"].startswith("/data/")
    providers = {ep.name for ep in entry_points(group="akidb_embed.providers")}
    for name, service in services(compose).items():
        env = environment(service)
        assert env["AKIDB_EMBEDDING_PROVIDER"] in providers, name
        assert env["AKIDB_LOG_FORMAT"] == "json", name
        assert EmbeddingConfig.load(env=env).offline, f"{name}: a mounted model needs no hub"
        # The model lies in a read-only volume.
        model = env["AKIDB_EMBEDDING_MODEL"]
        mounts = [str(v).split(":") for v in service["volumes"]]
        assert any(m[2:] == ["ro"] and model.startswith(m[1] + "/") for m in mounts), name
        assert any(m[1] == "/data" for m in mounts), f"{name}: no volume for HF_HOME"


def test_bridge_service_runs_the_images_second_interpreter(compose, image):
    bridges = {
        name: environment(s)
        for name, s in services(compose).items()
        if environment(s)["AKIDB_EMBEDDING_PROVIDER"] == "python-bridge"
    }
    assert bridges, "no python-bridge variant"
    build = next(c for c in image["all"] if c.cmd == "RUN" and "venv" in c.value[0]).value[0]
    providers = {ep.name for ep in entry_points(group="akidb_embed.providers")}
    for name, env in bridges.items():
        python = env["AKIDB_EMBEDDING_PYTHON_PATH"]
        venv = python.removesuffix("/bin/python")
        assert venv != python and f"python3 -m venv {venv} " in build, name
        assert f"{venv}/bin/python -m pip install" in build, name
        assert env["AKIDB_EMBEDDING_TARGET"] in providers, name
        assert EmbeddingConfig.load(env=env).options["target"] == env["AKIDB_EMBEDDING_TARGET"]


# --- ports, health, signals ------------------------------------------------------------------


def test_ports_are_the_images(compose, image):
    assert image["expose"] == {"8080", "9090"}
    assert ServerSettings().port == 8080  # the image sets no port: the default is EXPOSEd
    host_ports = []
    for name, service in services(compose).items():
        targets = {str(p).rsplit(":", 1)[-1] for p in service["ports"]}
        assert targets == image["expose"], name
        host_ports += [str(p).split(":")[0] for p in service["ports"]]
    assert len(host_ports) == len(set(host_ports)), "two services publish one host port"


def test_healthchecks_run_the_cli(compose, image):
    check = image["HEALTHCHECK"]
    assert check.json and check.value == ("CMD", "akidb-embed", "healthcheck")
    commands = {ep.name for ep in entry_points(group="akidb_embed.commands")}
    assert "healthcheck" in commands
    for name, service in services(compose).items():
        assert service["healthcheck"]["test"] == list(check.value), name


def test_shutdown_drains_before_the_kill(compose, image):
    assert image["ENTRYPOINT"].json and image["CMD"].json  # exec form: the server gets SIGTERM
    assert image["STOPSIGNAL"].value == ("SIGTERM",)
    for name, service in services(compose).items():
        env = {**image["env"], **environment(service)}
        settings = ServerSettings.load(environ=env)
        # The port stays open for the grace, then in-flight requests get drain_timeout_s.
        drain = settings.drain_grace_s + settings.drain_timeout_s
        assert seconds(service["stop_grace_period"]) > drain, name
        assert service["init"] is True, name


def test_runs_as_a_non_root_user(image):
    user = image["USER"].value[0]
    assert user.split(":")[0] not in ("0", "root")


def test_base_image_is_an_argument(image):
    first = image["all"][0]
    assert first.cmd == "ARG" and first.value == ("BASE_IMAGE=python:3.11-slim-bookworm",)
    assert [c.value[0] for c in image["all"] if c.cmd == "FROM"] == ["${BASE_IMAGE}"] * 2


def test_build_installs_from_the_wheelhouse_only(image):
    for c in image["all"]:
        if c.cmd == "RUN" and "pip install" in c.value[0]:
            installs = re.findall(r"pip install ([^&]*)", c.value[0])
            assert installs and all("--no-index" in i for i in installs), c.original
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignore and "!wheelhouse/*.whl" in ignore


# --- the docs ------------------------------------------------------------------------------------


def test_docs_name_every_variable_and_service(compose, image):
    docs = DOCS.read_text()
    for where, env in all_variables(compose, image).items():
        for var in env:
            if var.startswith(("AKIDB_", "HF_")):
                assert f"`{var}" in docs, f"{var} ({where}) is not in docs/container.md"
    for name in services(compose):
        assert name in docs
    readme = (ROOT / "README.md").read_text()
    assert "docs/container.md" in readme and "docker compose up" in readme


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "sparc64"], "unsupported --arch sparc64"),
        (["--python-version", "3"], "--python-version must look like 3.11"),
        (["--platform", "linux"], "unknown argument: --platform"),
    ],
)
def test_make_wheelhouse_refuses_bad_arguments(args, message, tmp_path):
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-wheelhouse.sh"), "--out", str(tmp_path / "w"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "w").exists()  # nothing made, nothing removed


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (None, None),
        ("python=3.9 machine={machine}", "--python-version {python} --arch {machine}"),
        ("python={python} machine=riscv64", "the wheelhouse was made for"),
    ],
)
def test_build_refuses_a_wheelhouse_for_another_python(image, tmp_path, target, error):
    # The first command of the build stage's RUN, run here against a TARGET file.
    run = next(c for c in image["all"] if c.cmd == "RUN" and "/wheelhouse/TARGET" in c.value[0])
    argv = shlex.split(run.value[0].split(" && ")[0])
    assert argv[:2] == ["python3", "-c"]
    have = {"python": "{}.{}".format(*sys.version_info[:2]), "machine": platform.machine()}
    target = target or "python={python} machine={machine}"
    (tmp_path / "TARGET").write_text(target.format(**have) + "\n")
    code = argv[2].replace("/wheelhouse/TARGET", str(tmp_path / "TARGET"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if error is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 1
        assert error.format(**have) in done.stderr
