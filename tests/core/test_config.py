from __future__ import annotations

from pathlib import Path

import pytest

from akidb_embed import EmbeddingConfig
from akidb_embed.errors import (
    ConfigError,
    ConfigFileError,
    ConfigTypeError,
    ConfigValueError,
    UnknownConfigKeyError,
)


def write(tmp_path: Path, text: str, name: str = "akidb.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = EmbeddingConfig.load(env={})
    assert config.provider == "onnx"
    assert config.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.normalize is True
    assert config.truncation == "truncate"
    assert config.python_path is None
    assert config.options == {}
    assert set(config.sources().values()) == {"default"}


def test_keyword_construction_and_replace() -> None:
    config = EmbeddingConfig(provider="mock", batch_size=8)
    assert config.source("provider") == "argument"
    assert config.source("model") == "default"
    changed = config.replace(model="other")
    assert changed.model == "other" and changed.source("model") == "argument"
    assert config.model == "sentence-transformers/all-MiniLM-L6-v2"


def test_file_env_argument_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [embedding]
        provider = "mock"
        model = "from-file"
        batch_size = 4
        normalize = false

        [embedding.options]
        dimension = 16
        target = "file-target"
        """,
    )
    env = {
        "AKIDB_EMBEDDING_MODEL": "from-env",
        "AKIDB_EMBEDDING_BATCH_SIZE": "8",
        "AKIDB_EMBEDDING_TARGET": "env-target",
    }
    config = EmbeddingConfig.load(path, env=env, batch_size=16)
    assert config.provider == "mock"
    assert config.source("provider") == f"file:{path.resolve()}"
    assert config.model == "from-env" and config.source("model") == "env:AKIDB_EMBEDDING_MODEL"
    assert config.batch_size == 16 and config.source("batch_size") == "argument"
    assert config.normalize is False
    assert config.options == {"dimension": 16, "target": "env-target"}
    assert config.source("options") == "env:AKIDB_EMBEDDING_TARGET"


def test_env_names_every_field() -> None:
    env = {
        "AKIDB_EMBEDDING_PROVIDER": "mock",
        "AKIDB_EMBEDDING_MODEL": "m",
        "AKIDB_EMBEDDING_PYTHON_PATH": "/usr/bin/python3",
        "AKIDB_EMBEDDING_BATCH_SIZE": "7",
        "AKIDB_EMBEDDING_MAX_LENGTH": "128",
        "AKIDB_EMBEDDING_NORMALIZE": "no",
        "AKIDB_EMBEDDING_TRUNCATION": "error",
        "AKIDB_EMBEDDING_CACHE_DIR": "/srv/models",
        "AKIDB_EMBEDDING_OFFLINE": "1",
        "AKIDB_EMBEDDING_CACHE_SIZE": "0",
        "AKIDB_EMBEDDING_OPTIONS": '{"threads": 2}',
    }
    config = EmbeddingConfig.load(env=env)
    assert config.to_dict() == {
        "provider": "mock",
        "model": "m",
        "python_path": "/usr/bin/python3",
        "batch_size": 7,
        "max_length": 128,
        "normalize": False,
        "truncation": "error",
        "cache_dir": "/srv/models",
        "offline": True,
        "cache_size": 0,
        "options": {"threads": 2},
    }
    assert all(src.startswith("env:") for src in config.sources().values())


def test_akidb_config_env_selects_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[embedding]\nprovider = "mock"\n', name="custom.toml")
    config = EmbeddingConfig.load(env={"AKIDB_CONFIG": str(path)})
    assert config.provider == "mock"


def test_cwd_akidb_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, '[embedding]\nmodel = "cwd-model"\n')
    monkeypatch.chdir(tmp_path)
    assert EmbeddingConfig.load(env={}).model == "cwd-model"


def test_file_without_embedding_table_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "[other]\nx = 1\n")
    assert EmbeddingConfig.load(path, env={}).provider == "onnx"


def test_unknown_key_names_key_file_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, '[embedding]\nprovder = "mock"\n')
    with pytest.raises(UnknownConfigKeyError) as info:
        EmbeddingConfig.load(path, env={})
    msg = str(info.value)
    assert "'provder'" in msg and str(path.resolve()) in msg and "'provider'" in msg
    assert isinstance(info.value, ValueError)


def test_unknown_env_var_is_reported() -> None:
    pattern = r"AKIDB_EMBEDDING_MODLE.*AKIDB_EMBEDDING_MODEL"
    with pytest.raises(UnknownConfigKeyError, match=pattern):
        EmbeddingConfig.load(env={"AKIDB_EMBEDDING_MODLE": "x"})


def test_unknown_override() -> None:
    with pytest.raises(UnknownConfigKeyError, match=r"batchsize.*batch_size"):
        EmbeddingConfig.load(env={}, batchsize=3)


def test_wrong_type_in_file_names_key_type_and_source(tmp_path: Path) -> None:
    path = write(tmp_path, '[embedding]\nbatch_size = "big"\n')
    with pytest.raises(ConfigTypeError) as info:
        EmbeddingConfig.load(path, env={})
    msg = str(info.value)
    assert "'batch_size'" in msg and "an integer" in msg and str(path.resolve()) in msg
    assert isinstance(info.value, TypeError) and isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("AKIDB_EMBEDDING_BATCH_SIZE", "lots", "an integer"),
        ("AKIDB_EMBEDDING_OFFLINE", "maybe", "a boolean"),
        ("AKIDB_EMBEDDING_OPTIONS", "[1, 2]", "a JSON object"),
        ("AKIDB_EMBEDDING_OPTIONS", "{nope", "a JSON object"),
    ],
)
def test_wrong_type_in_env(var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigTypeError, match=expected) as info:
        EmbeddingConfig.load(env={var: value})
    assert f"env:{var}" in str(info.value)


def test_bool_is_not_an_int_and_int_not_a_bool() -> None:
    with pytest.raises(ConfigTypeError):
        EmbeddingConfig(batch_size=True)
    with pytest.raises(ConfigTypeError):
        EmbeddingConfig(normalize=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"max_length": -1},
        {"truncation": "drop"},
        {"provider": " "},
        {"cache_size": -5},
    ],
)
def test_invalid_values(kwargs: dict) -> None:
    with pytest.raises(ConfigValueError):
        EmbeddingConfig(**kwargs)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[embedding]\nprovider = "mock"\nmodel = \n')
    with pytest.raises(ConfigFileError) as info:
        EmbeddingConfig.load(path, env={})
    assert info.value.line == 3
    assert f"{path.resolve()}, line 3" in str(info.value)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file"):
        EmbeddingConfig.load(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigFileError, match=r"absent\.toml"):
        EmbeddingConfig.load(env={"AKIDB_CONFIG": str(tmp_path / "absent.toml")})


def test_not_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[embedding]\nmodel = "\xff\xfe"\n')
    with pytest.raises(ConfigFileError):
        EmbeddingConfig.load(path, env={})


def test_options_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[embedding]\noptions = "x"\n')
    with pytest.raises(ConfigTypeError, match="options"):
        EmbeddingConfig.load(path, env={})


def test_real_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKIDB_EMBEDDING_PROVIDER", "mock")
    assert EmbeddingConfig.load().provider == "mock"


def test_repr_hides_secret_options_but_to_dict_keeps_them() -> None:
    from akidb_embed.config import SECRET_MASK, redact_options

    config = EmbeddingConfig(
        provider="remote", options={"api_key": "sk-1", "url": "u", "auth": {"password": "p"}}
    )
    assert "sk-1" not in repr(config) and "'p'" not in repr(config)
    assert "url': 'u'" in repr(config)
    assert config.to_dict()["options"]["api_key"] == "sk-1"  # what a bridge worker needs
    shown = config.to_dict(redact=True)["options"]
    assert shown == {"api_key": SECRET_MASK, "url": "u", "auth": {"password": SECRET_MASK}}
    assert redact_options({"max_tokens": 5, "token": None}) == {"max_tokens": 5, "token": None}
