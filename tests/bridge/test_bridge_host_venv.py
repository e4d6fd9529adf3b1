"""The main use: a host interpreter that cannot import a provider embeds through it.

``host_python`` is a second virtualenv (``.cache/bridge-host-venv``) with only the core
and numpy. The worker runs in this test session's interpreter, which has everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from akidb_embed import EmbeddingConfig, EmbeddingManager
from akidb_embed.bridge import PythonBridgeProvider
from akidb_embed.errors import WorkerStartupError
from akidb_embed.testing import conformance_texts

HEAVY = ("onnxruntime", "tokenizers", "torch", "transformers", "akidb_embed_onnx")

# Runs inside the host venv: proves it cannot import the heavy modules, embeds through
# the bridge, and saves the vectors.
HOST_SCRIPT = """
import importlib.util, json, sys
import numpy as np
from akidb_embed import EmbeddingConfig, EmbeddingManager

request = json.loads(sys.argv[1])
heavy = request["heavy"]
assert all(importlib.util.find_spec(m) is None for m in heavy), "host venv is not bare"
config = EmbeddingConfig(**request["config"])
with EmbeddingManager.from_config(config) as manager:
    vectors = manager.embed(request["texts"])
    provider = type(manager.provider).__name__
    info = manager.info.to_dict()
leaked = sorted(m for m in heavy if m in sys.modules)
np.save(request["out"], vectors)
print(json.dumps({"provider": provider, "info": info, "leaked": leaked,
                  "executable": sys.executable}))
"""


def run_host(host_python: str, config: EmbeddingConfig, texts: list[str], out: Path) -> Any:
    request = {"config": config.to_dict(), "texts": texts, "out": str(out), "heavy": HEAVY}
    done = subprocess.run(
        [host_python, "-c", HOST_SCRIPT, json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(out)


def test_host_venv_cannot_import_heavy_modules(host_python: str) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    out = subprocess.run(
        [host_python, "-c", probe, *HEAVY], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    # ... while the worker's interpreter (this one) has them.
    assert subprocess.run([sys.executable, "-c", "import onnxruntime"]).returncode == 0


def test_host_embeds_through_a_worker_in_another_interpreter(
    host_python: str, tmp_path: Path
) -> None:
    texts = conformance_texts()
    config = EmbeddingConfig(
        provider="python-bridge",
        model="mock",
        python_path=sys.executable,
        options={"target": "mock", "dimension": 32},
    )
    report, vectors = run_host(host_python, config, texts, tmp_path / "v.npy")
    assert report["provider"] == "PythonBridgeProvider" and report["leaked"] == []
    assert Path(report["executable"]).parent == Path(host_python).parent
    in_process = config.replace(provider="mock", options={"dimension": 32})
    with EmbeddingManager.from_config(in_process) as m:
        np.testing.assert_array_equal(vectors, m.embed(texts))
        assert report["info"] == m.info.to_dict()


def test_target_missing_in_the_worker_interpreter_names_its_pip(host_python: str) -> None:
    config = EmbeddingConfig(
        provider="python-bridge", python_path=host_python, options={"target": "onnx"}
    )
    with pytest.raises(WorkerStartupError) as info:
        PythonBridgeProvider(config)
    message = str(info.value)
    assert f"{host_python} -m pip install 'akidb-embed[onnx]'" in message
    assert info.value.install == f"{host_python} -m pip install 'akidb-embed[onnx]'"
    assert "ProviderNotInstalledError" in message
