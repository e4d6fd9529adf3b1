"""Server settings: the ``[server]`` table, ``AKIDB_SERVER_*`` variables, ``serve`` flags.

Loading and validation run in-process; ``akidb-embed config`` and ``akidb-embed serve``
run as real subprocesses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from akidb_embed.cli import add_config_arguments, build_parser, main
from akidb_embed.errors import (
    ConfigError,
    ConfigFileError,
    ConfigTypeError,
    ConfigValueError,
    UnknownConfigKeyError,
)
from akidb_embed_server import ServerSettings
from akidb_embed_server._cli import _server_overrides
from akidb_embed_server._settings import ENV_ALIASES, ENV_PREFIX

if TYPE_CHECKING:  # the class behind the serve fixtures of conftest.py
    from conftest import Served

DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"
SECRET = "sk-live-0123456789abcdef"
OTHER_SECRET = "sk-live-fedcba9876543210"


def toml(tmp_path: Path, server: str, embedding: str = 'provider = "mock"\n') -> Path:
    path = tmp_path / "akidb.toml"
    path.write_text(f"[embedding]\n{embedding}\n[server]\n{server}")
    return path


# --- precedence and sources ----------------------------------------------------------------


def test_defaults_and_their_sources() -> None:
    settings = ServerSettings.load(environ={})
    assert settings == ServerSettings()
    assert set(settings.sources().values()) == {"default"}
    assert settings.fields() == tuple(settings.sources())


def test_file_then_env_then_flag(tmp_path: Path) -> None:
    path = toml(tmp_path, 'port = 9001\nhost = "0.0.0.0"\nmax_wait_ms = 5\nlog_level = "debug"\n')
    env = {"AKIDB_SERVER_PORT": "9002", "AKIDB_SERVER_MAX_WAIT_MS": "0.5"}
    settings = ServerSettings.load(path, environ=env, port=9003)
    assert settings.port == 9003 and settings.source("port") == "argument"
    assert settings.max_wait_ms == 0.5
    assert settings.source("max_wait_ms") == "env:AKIDB_SERVER_MAX_WAIT_MS"
    assert settings.host == "0.0.0.0" and settings.source("host") == f"file:{path.resolve()}"
    assert settings.log_level == "DEBUG"  # names are stored upper-case
    assert settings.source("max_batch_tokens") == "default"
    # Without the flag the environment wins, without both the file.
    assert ServerSettings.load(path, environ=env).port == 9002
    assert ServerSettings.load(path, environ={}).port == 9001
    with pytest.raises(UnknownConfigKeyError, match="source"):
        settings.source("nope")


def test_file_found_like_the_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(tmp_path, "port = 9100\n")
    monkeypatch.chdir(tmp_path)
    assert ServerSettings.load(environ={}).source("port") == f"file:{path.resolve()}"
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 9200\n")
    assert ServerSettings.load(environ={"AKIDB_CONFIG": str(other)}).port == 9200
    with pytest.raises(ConfigFileError, match="no such file"):
        ServerSettings.load(tmp_path / "missing.toml", environ={})
    (tmp_path / "broken.toml").write_text("[server\n")
    with pytest.raises(ConfigFileError, match="invalid TOML"):
        ServerSettings.load(tmp_path / "broken.toml", environ={})


def test_a_file_without_server_table_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "akidb.toml"
    path.write_text('[embedding]\nprovider = "mock"\n')
    assert ServerSettings.load(path, environ={}) == ServerSettings()


def test_seed_variables_and_their_precedence() -> None:
    env = {"AKIDB_LOG_LEVEL": "warning", "AKIDB_LOG_FORMAT": "json", "AKIDB_METRICS_ENABLED": "0"}
    settings = ServerSettings.load(environ=env)
    assert (settings.log_level, settings.log_format, settings.metrics_enabled) == (
        "WARNING",
        "json",
        False,
    )
    assert settings.source("log_format") == "env:AKIDB_LOG_FORMAT"
    both = ServerSettings.load(environ={**env, "AKIDB_SERVER_LOG_LEVEL": "error"})
    assert both.log_level == "ERROR" and both.source("log_level") == "env:AKIDB_SERVER_LOG_LEVEL"
    assert ServerSettings.load(environ=env, log_level="debug").log_level == "DEBUG"
    for raw, value in [("true", True), ("1", True), ("off", False), ("FALSE", False)]:
        assert ServerSettings.load(environ={"AKIDB_METRICS_ENABLED": raw}).metrics_enabled is value


def test_lists_from_file_env_and_arguments(tmp_path: Path) -> None:
    path = toml(tmp_path, 'cors_origins = ["https://a.example"]\npublic_paths = ["/health"]\n')
    settings = ServerSettings.load(path, environ={})
    assert settings.cors_origins == ("https://a.example",)
    assert settings.public_paths == ("/health",)
    env = {"AKIDB_SERVER_CORS_ORIGINS": " https://b.example, https://c.example ,"}
    assert ServerSettings.load(path, environ=env).cors_origins == (
        "https://b.example",
        "https://c.example",
    )
    assert ServerSettings.load(environ={"AKIDB_SERVER_PUBLIC_PATHS": ""}).public_paths == ()
    assert ServerSettings.load(path, environ={}, cors_origins=["*"]).cors_origins == ("*",)


def test_no_request_deadline_and_other_nulls(tmp_path: Path) -> None:
    path = toml(tmp_path, "request_timeout_s = 0\n")
    assert ServerSettings.load(path, environ={}).request_timeout_s is None
    env = {"AKIDB_SERVER_REQUEST_TIMEOUT_S": "none", "AKIDB_SERVER_MAX_BATCH_SIZE": ""}
    settings = ServerSettings.load(environ=env)
    assert settings.request_timeout_s is None and settings.max_batch_size is None
    assert ServerSettings(request_timeout_s=0).request_timeout_s is None
    assert ServerSettings(request_timeout_s=2).request_timeout_s == 2.0


def test_replace_marks_arguments_and_checks() -> None:
    settings = ServerSettings.load(environ={"AKIDB_SERVER_PORT": "9300"}).replace(max_wait_ms=1)
    assert settings.source("max_wait_ms") == "argument"
    assert settings.source("port") == "env:AKIDB_SERVER_PORT"
    with pytest.raises(UnknownConfigKeyError, match="max_wait_ms"):
        settings.replace(max_wait=1)
    with pytest.raises(ConfigValueError, match="max_queue_texts"):
        settings.replace(max_queue_texts=0)


# --- validation ----------------------------------------------------------------------------

FILE_ERRORS = [
    ("port = 1\nprot = 2\n", UnknownConfigKeyError, "prot", "Did you mean 'port'"),
    ('port = "80"\n', ConfigTypeError, "port", "must be an integer"),
    ("port = 70000\n", ConfigValueError, "port", "<= 65535"),
    ("port = -1\n", ConfigValueError, "port", ">= 0"),
    ("max_wait_ms = true\n", ConfigTypeError, "max_wait_ms", "must be a number"),
    ("max_wait_ms = -0.5\n", ConfigValueError, "max_wait_ms", ">= 0"),
    ("max_batch_tokens = 0\n", ConfigValueError, "max_batch_tokens", ">= 1"),
    ("max_batch_size = 0\n", ConfigValueError, "max_batch_size", ">= 1"),
    ("max_queue_texts = -5\n", ConfigValueError, "max_queue_texts", ">= 1"),
    ("max_client_batch_size = 0\n", ConfigValueError, "max_client_batch_size", ">= 1"),
    ("max_input_chars = 1.5\n", ConfigTypeError, "max_input_chars", "an integer"),
    ("max_body_bytes = -1\n", ConfigValueError, "max_body_bytes", ">= 1"),
    ("request_timeout_s = -1\n", ConfigValueError, "request_timeout_s", ">= 0"),
    ("drain_timeout_s = -1\n", ConfigValueError, "drain_timeout_s", ">= 0"),
    ('drain_timeout_s = "30"\n', ConfigTypeError, "drain_timeout_s", "a number"),
    ('cors_origins = "https://a"\n', ConfigTypeError, "cors_origins", "a list of strings"),
    ("cors_origins = [1]\n", ConfigTypeError, "cors_origins", "a list of strings"),
    ('public_paths = ["health"]\n', ConfigValueError, "public_paths", "start with '/'"),
    ('log_format = "xml"\n', ConfigValueError, "log_format", "'text', 'json'"),
    ('log_level = "loud"\n', ConfigValueError, "log_level", "INFO"),
    ('metrics_enabled = "yes"\n', ConfigTypeError, "metrics_enabled", "a boolean"),
    ('host = ""\n', ConfigValueError, "host", "empty"),
    ("served_model_name = 3\n", ConfigTypeError, "served_model_name", "a string or null"),
]


@pytest.mark.parametrize(("body", "error", "key", "text"), FILE_ERRORS)
def test_file_errors_name_the_key_and_file(
    tmp_path: Path, body: str, error: type[ConfigError], key: str, text: str
) -> None:
    path = toml(tmp_path, body)
    with pytest.raises(error) as info:
        ServerSettings.load(path, environ={})
    message = str(info.value)
    assert repr(key) in message and text in message and str(path.resolve()) in message


@pytest.mark.parametrize(
    ("var", "raw", "error", "text"),
    [
        ("AKIDB_SERVER_PROT", "1", UnknownConfigKeyError, "AKIDB_SERVER_PORT"),
        ("AKIDB_SERVER_PORT", "eighty", ConfigTypeError, "an integer"),
        ("AKIDB_SERVER_MAX_WAIT_MS", "soon", ConfigTypeError, "a number"),
        ("AKIDB_SERVER_MAX_QUEUE_TEXTS", "-1", ConfigValueError, ">= 1"),
        ("AKIDB_SERVER_DRAIN_TIMEOUT_S", "inf", ConfigValueError, "finite"),
        ("AKIDB_METRICS_ENABLED", "maybe", ConfigTypeError, "a boolean"),
        ("AKIDB_LOG_FORMAT", "yaml", ConfigValueError, "log_format"),
    ],
)
def test_env_errors_name_the_variable(
    var: str, raw: str, error: type[ConfigError], text: str
) -> None:
    with pytest.raises(error) as info:
        ServerSettings.load(environ={var: raw})
    message = str(info.value)
    assert var in message and text in message


@pytest.mark.parametrize(
    ("overrides", "error", "text"),
    [
        ({"max_wait": 1}, UnknownConfigKeyError, "max_wait_ms"),
        ({"port": True}, ConfigTypeError, "'port' from argument must be an integer"),
        ({"max_wait_ms": math.nan}, ConfigValueError, "finite"),
        ({"cors_origins": "https://a"}, ConfigTypeError, "a list of strings"),
        ({"public_paths": ["/ok", " "]}, ConfigValueError, "entry 1 is empty"),
    ],
)
def test_argument_errors(overrides: dict[str, Any], error: type[ConfigError], text: str) -> None:
    with pytest.raises(error, match=re.escape(text)):
        ServerSettings.load(environ={}, **overrides)


def test_server_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "akidb.toml"
    path.write_text("server = 3\n")
    with pytest.raises(ConfigTypeError, match="'server'"):
        ServerSettings.load(path, environ={})


# --- API keys ------------------------------------------------------------------------------


def test_api_keys_from_file_env_and_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# production\n\n  {SECRET}  \n# rotated in May\n{OTHER_SECRET}\n{SECRET}\n")
    path = toml(tmp_path, f'api_keys = ["{SECRET}"]\napi_key_file = "{keys}"\n')
    settings = ServerSettings.load(path, environ={})
    assert settings.api_keys == (SECRET, OTHER_SECRET)  # merged, duplicates dropped
    assert settings.source("api_keys") == f"file:{path.resolve()} + file:{keys.resolve()}"
    only_file = ServerSettings.load(environ={"AKIDB_SERVER_API_KEY_FILE": str(keys)})
    assert only_file.api_keys == (SECRET, OTHER_SECRET)
    assert only_file.source("api_keys") == f"file:{keys.resolve()}"
    from_env = ServerSettings.load(environ={"AKIDB_SERVER_API_KEYS": f"{SECRET}, {OTHER_SECRET}"})
    assert from_env.api_keys == (SECRET, OTHER_SECRET)
    assert from_env.source("api_keys") == "env:AKIDB_SERVER_API_KEYS"
    # replace() reads the key file again rather than keeping the old file's keys.
    assert only_file.replace(api_key_file=None).api_keys == ()
    assert settings.replace(port=1).api_keys == settings.api_keys
    assert settings.replace(port=1).source("api_keys") == settings.source("api_keys")


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (None, "no such file"),
        ("# only a comment\n\n", "has no keys"),
        (b"\xff\xfe key", "not UTF-8"),
        ("good-key\nbad key\n", "line 2: has a space"),
        ("directory", "cannot read"),
    ],
)
def test_bad_key_files(tmp_path: Path, content: str | bytes | None, text: str) -> None:
    keys = tmp_path / "keys"
    if content == "directory":
        keys.mkdir()  # unreadable as a file, even for root
    elif isinstance(content, bytes):
        keys.write_bytes(content)
    elif content is not None:
        keys.write_text(content)
    with pytest.raises(ConfigValueError) as info:
        ServerSettings.load(environ={"AKIDB_SERVER_API_KEY_FILE": str(keys)})
    message = str(info.value)
    assert "'api_key_file'" in message and "env:AKIDB_SERVER_API_KEY_FILE" in message
    assert text in message and "bad key" not in message
    with pytest.raises(ConfigValueError, match="api_key_file"):
        ServerSettings(api_key_file=str(keys))  # direct construction reads it too


def test_admin_keys_from_a_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "admin-keys"
    keys.write_text(f"# admin\n{OTHER_SECRET}\n{SECRET}\n")
    path = toml(tmp_path, f'admin_api_keys = ["{SECRET}"]\nadmin_api_key_file = "{keys}"\n')
    settings = ServerSettings.load(path, environ={})
    assert settings.admin_api_keys == (SECRET, OTHER_SECRET) and settings.api_keys == ()
    assert settings.source("admin_api_keys") == f"file:{path.resolve()} + file:{keys.resolve()}"
    assert settings.to_dict()["admin_api_keys"] == ["***", "***"]
    only_file = ServerSettings.load(environ={"AKIDB_SERVER_ADMIN_API_KEY_FILE": str(keys)})
    assert only_file.admin_api_keys == (OTHER_SECRET, SECRET)
    assert only_file.source("admin_api_keys") == f"file:{keys.resolve()}"
    # replace() reads the key files again: no stale keys, and each list keeps its own.
    assert only_file.replace(admin_api_key_file=None).admin_api_keys == ()
    both = only_file.replace(api_key_file=str(keys))
    assert both.api_keys == both.admin_api_keys == (OTHER_SECRET, SECRET)
    assert both.replace(api_key_file=None).admin_api_keys == (OTHER_SECRET, SECRET)
    assert settings.replace(port=1).source("admin_api_keys") == settings.source("admin_api_keys")
    keys.write_text("# none left\n")
    with pytest.raises(ConfigValueError) as info:
        ServerSettings.load(environ={"AKIDB_SERVER_ADMIN_API_KEY_FILE": str(keys)})
    message = str(info.value)
    assert "'admin_api_key_file'" in message and "has no keys" in message
    assert "env:AKIDB_SERVER_ADMIN_API_KEY_FILE" in message


def test_keys_never_shown(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(OTHER_SECRET + "\n")
    settings = ServerSettings(api_keys=(SECRET,), api_key_file=str(keys))
    for text in (repr(settings), str(settings), json.dumps(settings.to_dict())):
        assert SECRET not in text and OTHER_SECRET not in text
    assert settings.to_dict()["api_keys"] == ["***", "***"]
    # Errors about keys name the problem, never the key.
    for bad in ([SECRET, 3], [SECRET, f"{OTHER_SECRET} x"], SECRET):
        with pytest.raises(ConfigError) as info:
            ServerSettings(api_keys=bad)  # type: ignore[arg-type]
        assert SECRET not in str(info.value) and OTHER_SECRET not in str(info.value)
        assert "'api_keys'" in str(info.value)


def test_no_api_key_flag() -> None:
    assert main(["serve", "--api-key", SECRET]) == 2
    help_text = _serve_parser().format_help()
    assert "--api-key-file" in help_text and "ps" in help_text


# --- flags ---------------------------------------------------------------------------------


def _serve_parser() -> argparse.ArgumentParser:
    parser = build_parser("serve")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = sub.choices["serve"]
    return serve


def test_flags_become_overrides(tmp_path: Path) -> None:
    path = toml(tmp_path, "port = 9400\nmax_client_batch_size = 5\nmetrics_enabled = true\n")
    args = build_parser("serve").parse_args(
        [
            "serve",
            "--config",
            str(path),
            "--cors-origin",
            "https://a",
            "--cors-origin",
            "https://b",
            "--no-metrics",
            "--request-timeout-s",
            "0",
            "--max-wait-ms",
            "0.25",
            "--log-format",
            "json",
        ]
    )
    flags = _server_overrides(args)
    assert flags == {
        "cors_origins": ["https://a", "https://b"],
        "metrics_enabled": False,
        "request_timeout_s": 0.0,
        "max_wait_ms": 0.25,
        "log_format": "json",
    }
    settings = ServerSettings.load(args.config, environ={}, **flags)
    assert settings.port == 9400 and settings.source("port") == f"file:{path.resolve()}"
    assert settings.max_client_batch_size == 5  # flags left out override nothing
    assert settings.cors_origins == ("https://a", "https://b")
    assert settings.metrics_enabled is False and settings.source("metrics_enabled") == "argument"
    assert settings.request_timeout_s is None


def test_bad_flag_values_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--provider", "mock", "--max-queue-texts", "-3"]) == 2
    err = capsys.readouterr().err
    assert "'max_queue_texts' from argument" in err
    assert main(["serve", "--port", "eighty"]) == 2


# --- docs ----------------------------------------------------------------------------------


def _documented() -> list[list[str]]:
    section = DOCS.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip("|").split(" | ")]
        for line in section.splitlines()
        if re.match(r"^\| `\w+` \|", line)
    ]


def test_docs_list_every_setting_flag_and_variable() -> None:
    rows = _documented()
    keys = [re.fullmatch(r"`(\w+)`", row[0]).group(1) for row in rows]  # type: ignore[union-attr]
    assert keys == list(ServerSettings.fields())
    defaults = ServerSettings().to_dict()
    documented_flags: set[str] = set()
    for key, (_, env, flag, default, meaning) in zip(keys, rows, strict=True):
        variables = re.findall(r"`(AKIDB_\w+)`", env)
        assert variables[0] == ENV_PREFIX + key.upper()
        assert sorted(variables[1:]) == sorted(v for v, k in ENV_ALIASES.items() if k == key)
        assert json.loads(re.match(r"`(.*?)`", default).group(1)) == defaults[key], key  # type: ignore[union-attr]
        documented_flags |= set(re.findall(r"`(--[\w-]+)`", flag))
        assert meaning
    parser_flags = {opt for action in _serve_parser()._actions for opt in action.option_strings} - {
        "-h",
        "--help",
    }
    core = argparse.ArgumentParser()
    add_config_arguments(core)  # the [embedding] flags, shared with the core's commands
    embedding_flags = {opt for action in core._actions for opt in action.option_strings} - {
        "-h",
        "--help",
    }
    assert documented_flags == parser_flags - embedding_flags
    text = DOCS.read_text()
    assert all(f"`{flag}" in text for flag in embedding_flags)


# --- real processes ------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "akidb_embed.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_config_command_shows_server_values_and_sources(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{OTHER_SECRET}\n")
    path = toml(
        tmp_path,
        f'port = 9500\nserved_model_name = "minilm"\napi_keys = ["{SECRET}"]\n'
        f'api_key_file = "{keys}"\n',
    )
    env = {"AKIDB_SERVER_MAX_WAIT_MS": "0.5", "AKIDB_LOG_FORMAT": "json"}
    result = run_cli("config", "--config", str(path), "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout and OTHER_SECRET not in result.stdout
    data = json.loads(result.stdout)
    src = f"file:{path.resolve()}"
    assert data["provider"] == {"value": "mock", "source": src}  # [embedding] unchanged
    server = data["server"]
    assert set(server) == set(ServerSettings.fields())
    assert server["port"] == {"value": 9500, "source": src}
    assert server["served_model_name"] == {"value": "minilm", "source": src}
    assert server["max_wait_ms"] == {"value": 0.5, "source": "env:AKIDB_SERVER_MAX_WAIT_MS"}
    assert server["log_format"] == {"value": "json", "source": "env:AKIDB_LOG_FORMAT"}
    assert server["api_keys"] == {
        "value": ["***", "***"],
        "source": f"{src} + file:{keys.resolve()}",
    }
    assert server["host"] == {"value": "127.0.0.1", "source": "default"}

    table = run_cli("config", "--config", str(path), env=env, cwd=tmp_path)
    assert table.returncode == 0 and SECRET not in table.stdout
    assert re.search(r"^server\.port\s+9500\s+" + re.escape(src) + "$", table.stdout, re.M)
    assert re.search(r"^provider\s+\"mock\"", table.stdout, re.M)

    only = json.loads(
        run_cli("config", "--config", str(path), "--json", "--section", "server").stdout
    )
    assert set(only) == {"server"}
    embedding = run_cli("config", "--config", str(path), "--json", "--section", "embedding")
    assert "server" not in json.loads(embedding.stdout)
    unknown = run_cli("config", "--section", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "known sections: embedding, server" in unknown.stderr


def test_config_command_reports_bad_server_settings(tmp_path: Path) -> None:
    path = toml(tmp_path, "max_queue_texts = -1\n")
    result = run_cli("config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "'max_queue_texts'" in result.stderr and str(path.resolve()) in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_takes_its_settings_from_the_server_table(
    tmp_path: Path, serve: Callable[..., Served]
) -> None:
    path = toml(
        tmp_path,
        'host = "127.0.0.1"\nserved_model_name = "from-toml"\nmax_client_batch_size = 7\n'
        "max_batch_tokens = 1000\nrequest_timeout_s = 0\n",
    )
    served = serve("--config", str(path))
    info = httpx.get(f"{served.url}/info", timeout=10).json()
    assert info["model_id"] == "from-toml" and info["provider"] == "mock"
    limits = info["limits"]
    assert limits["max_client_batch_size"] == 7 and limits["max_batch_tokens"] == 1000
    assert limits["request_timeout_s"] is None
    models = httpx.get(f"{served.url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["from-toml"]


def test_serve_refuses_a_bad_setting_before_loading(tmp_path: Path) -> None:
    path = toml(tmp_path, "port = 80\nmax_body_bytes = 0\n", embedding='provider = "onnx"\n')
    result = run_cli("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "'max_body_bytes'" in result.stderr and str(path.resolve()) in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_stops_onnx_spinning_between_runs_unless_configured() -> None:
    from akidb_embed import EmbeddingConfig
    from akidb_embed_server._cli import serve_config

    onnx = serve_config(EmbeddingConfig(provider="onnx", options={"threads": 2}))
    assert onnx.options == {"threads": 2, "spinning": "in_run"}
    kept = serve_config(EmbeddingConfig(provider="onnx", options={"spinning": "always"}))
    assert kept.options == {"spinning": "always"}
    mock = EmbeddingConfig(provider="mock")
    assert serve_config(mock) is mock
