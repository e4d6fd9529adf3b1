from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from akidb_embed import MockEmbeddingProvider
from akidb_embed.cli import main


def run(*args: str, stdin: str | None = None, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "akidb_embed.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_providers_table() -> None:
    result = run("providers")
    assert result.returncode == 0
    assert "mock" in result.stdout and "NAME" in result.stdout
    data = json.loads(run("providers", "--json").stdout)
    assert data["mock"]["loadable"] is True


def test_config_shows_sources(tmp_path: Path) -> None:
    cfg = tmp_path / "akidb.toml"
    cfg.write_text('[embedding]\nprovider = "mock"\n')
    result = run("config", "--config", str(cfg), "--json", env={"AKIDB_EMBEDDING_BATCH_SIZE": "9"})
    data = json.loads(result.stdout)
    assert data["provider"] == {"value": "mock", "source": f"file:{cfg.resolve()}"}
    assert data["batch_size"] == {"value": 9, "source": "env:AKIDB_EMBEDDING_BATCH_SIZE"}
    assert data["model"]["source"] == "default"


def test_config_masks_secret_options(tmp_path: Path) -> None:
    cfg = tmp_path / "akidb.toml"
    cfg.write_text(
        '[embedding]\nprovider = "remote"\n[embedding.options]\n'
        'url = "http://127.0.0.1:9"\napi_key = "sk-live-123"\nhf_token = "hf_abc"\n'
        "max_tokens = 7\n"
    )
    table = run("config", "--config", str(cfg), "--section", "embedding")
    as_json = run("config", "--config", str(cfg), "--section", "embedding", "--json")
    for result in (table, as_json):
        assert result.returncode == 0, result.stderr
        assert "sk-live-123" not in result.stdout and "hf_abc" not in result.stdout
    options = json.loads(as_json.stdout)["options"]["value"]
    assert options == {
        "url": "http://127.0.0.1:9",
        "api_key": "***",
        "hf_token": "***",
        "max_tokens": 7,
    }


def test_embed_arguments_to_json() -> None:
    result = run("embed", "--provider", "mock", "hello world", "second")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dimension"] == 384 and [d["text"] for d in doc["data"]] == ["hello world", "second"]
    expected = MockEmbeddingProvider().embed_batch(["hello world"])[0]
    np.testing.assert_allclose(doc["data"][0]["embedding"], expected, atol=1e-6)


def test_embed_stdin_to_npy(tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"
    result = run("embed", "--provider", "mock", "-o", str(out), stdin="one\ntwo\n\nthree\n")
    assert result.returncode == 0, result.stderr
    vectors = np.load(out)
    assert vectors.shape == (4, 384)  # the empty line is a valid (empty) text
    assert "wrote 4 vectors" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]


def test_embed_file_skip_empty_and_progress(tmp_path: Path) -> None:
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(f"line {i}" if i % 3 else "" for i in range(600)))
    out = tmp_path / "v.npy"
    result = run("embed", "--provider", "mock", "--file", str(src), "--skip-empty", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert np.load(out).shape == (400, 384)
    assert "400/400" in result.stderr  # the progress bar


def test_embed_query_mode() -> None:
    doc = json.loads(run("embed", "--provider", "mock", "--query", "a question").stdout)
    assert len(doc["data"]) == 1


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("embed", "--provider", "mokc", "x"), 1, "Did you mean 'mock'?"),
        (("embed", "--provider", "mock", "--batch-size", "0", "x"), 2, "batch_size"),
        (("embed", "--provider", "mock", "--file", "/nonexistent/file.txt"), 1, "not found"),
        (("embed", "--provider", "mock", "--format", "npy", "x"), 2, "needs --output"),
        (("embed", "--provider", "mock", "--option", "novalue", "x"), 2, "KEY=VALUE"),
        (("nonsense",), 2, "invalid choice"),
        (("config", "--config", "/nonexistent.toml"), 2, "no such file"),
    ],
)
def test_errors_are_one_line(args, code, fragment) -> None:
    result = run(*args)
    assert result.returncode == code
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_debug_shows_traceback() -> None:
    result = run("--debug", "embed", "--provider", "mokc", "x")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_failed_npy_write_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    out.write_bytes(b"previous content")
    result = run("embed", "--provider", "mokc", "-o", str(out), "x")
    assert result.returncode == 1
    assert out.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_console_script_installed() -> None:
    exe = Path(sys.executable).with_name("akidb-embed")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "akidb-embed 0.1.0" in result.stdout


# --- commands from the entry point group akidb_embed.commands ----------------------------


def command_dist(site: Path, dist: str, commands: dict[str, str], modules: dict[str, str]) -> None:
    """An installed distribution declaring ``[akidb_embed.commands]`` entry points."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[akidb_embed.commands]"] + [f"{k} = {v}" for k, v in commands.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


HELLO = """
    def register(subparsers):
        p = subparsers.add_parser("hello", help="say hello from a plugin")
        p.add_argument("who")
        p.set_defaults(func=lambda args: print(f"hello {args.who}") or 0)
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    return path


def run_with(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return run(*args, env={"PYTHONPATH": path})


def test_help_lists_every_command_with_its_help() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:1] == ["index"] and "vector indexes" in line for line in lines)
    assert any(line.split()[:1] == ["search"] and "by meaning" in line for line in lines)
    names = [line.split()[0] for line in lines if line.startswith("    ") and line.split()]
    assert {"providers", "config", "embed", "export", "index", "search"} <= set(names)


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from akidb_embed.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('onnxruntime', 'tokenizers', 'torch', 'mlx', 'hnswlib', 'huggingface_hub',\n"
        "         'transformers', 'onnx', 'tqdm')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_builtin_command_reads_no_entry_points() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from akidb_embed.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        # Other sections (the server's) come from entry points: only [embedding] here.
        "    main(['config', '--json', '--section', 'embedding'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('importlib.metadata', \n"
        "    'akidb_embed.index', 'akidb_embed_onnx', 'akidb_embed_mlx'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_command_from_an_entry_point(site: Path) -> None:
    command_dist(site, "hello-plugin", {"hello": "hello_cmd:register"}, {"hello_cmd": HELLO})
    result = run_with(site, "hello", "world")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello world\n"
    assert "say hello from a plugin" in run_with(site, "--help").stdout


def test_plugin_command_loads_only_itself(site: Path) -> None:
    command_dist(
        site,
        "two-plugins",
        {"hello": "hello_cmd:register", "other": "other_cmd:register"},
        {"hello_cmd": HELLO, "other_cmd": "raise RuntimeError('must not be imported')\n"},
    )
    result = run_with(site, "hello", "you")
    assert result.returncode == 0, result.stderr


def test_broken_plugin_command_is_reported_and_hides_nothing(site: Path) -> None:
    command_dist(
        site,
        "broken-cmd",
        {"broken": "broken_cmd:register", "hello": "hello_cmd:register"},
        {"broken_cmd": "raise RuntimeError('boom at import')\n", "hello_cmd": HELLO},
    )
    help_ = run_with(site, "--help")
    assert help_.returncode == 0, help_.stderr
    assert "say hello from a plugin" in help_.stdout
    assert "(unavailable: run `akidb-embed broken` to see why)" in help_.stdout
    result = run_with(site, "broken")
    assert result.returncode == 1
    assert "broken_cmd:register (from broken-cmd)" in result.stderr
    assert "boom at import" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" in run_with(site, "--debug", "broken").stderr


def test_plugin_command_missing_a_dependency(site: Path) -> None:
    command_dist(
        site,
        "needy-cmd",
        {"needy": "needy_cmd:register"},
        {"needy_cmd": "import surely_not_installed_module_xyz\n"},
    )
    result = run_with(site, "needy")
    assert result.returncode == 1
    assert "not installed" in result.stderr and "pip install --upgrade 'needy-cmd'" in result.stderr


def test_plugin_command_claimed_twice_names_both(site: Path) -> None:
    command_dist(site, "hello-a", {"hello": "hello_a:register"}, {"hello_a": HELLO})
    command_dist(site, "hello-b", {"hello": "hello_b:register"}, {"hello_b": HELLO})
    result = run_with(site, "hello", "x")
    assert result.returncode == 1
    assert "hello_a:register (from hello-a)" in result.stderr
    assert "hello_b:register (from hello-b)" in result.stderr


def test_entry_point_must_add_its_own_command(site: Path) -> None:
    command_dist(site, "misnamed", {"greet": "hello_cmd:register"}, {"hello_cmd": HELLO})
    result = run_with(site, "greet", "x")
    assert result.returncode == 1
    assert "did not add a 'greet' command" in result.stderr


def test_builtin_names_are_reserved(site: Path) -> None:
    shadow = HELLO.replace('"hello"', '"embed"')
    command_dist(site, "shadow", {"embed": "shadow_cmd:register"}, {"shadow_cmd": shadow})
    result = run_with(site, "embed", "--provider", "mock", "x")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dimension"] == 384


def test_known_missing_command_gives_install_hint(monkeypatch, capsys) -> None:
    from akidb_embed import _registry

    real = _registry._read_group

    def without_export(group: str):
        found = real(group)
        found.pop("export", None)  # as if akidb-embed-onnx were not installed
        return found

    monkeypatch.setattr(_registry, "_read_group", without_export)
    assert main(["export", "some/model", "--out", "x"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: the 'export' command is not installed; "
        "install it with: pip install 'akidb-embed[onnx]'\n"
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "export      (not installed: pip install 'akidb-embed[onnx]')" in capsys.readouterr().out
