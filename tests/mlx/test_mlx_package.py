"""The akidb-embed-mlx distribution: cheap import, entry point, and a wheel holding only itself."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from akidb_embed import available_providers

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "akidb_embed_mlx"


def test_import_is_cheap() -> None:
    probe = (
        "import sys, json, akidb_embed_mlx\n"
        "heavy = ('mlx', 'tokenizers', 'huggingface_hub', 'torch', 'onnxruntime')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == []


def test_registered_and_loadable() -> None:
    status = available_providers()["mlx"]
    assert status.loadable, status.reason
    assert (status.distribution, status.value) == (
        "akidb-embed-mlx",
        "akidb_embed_mlx:MLXEmbeddingProvider",
    )


def test_wheel_holds_only_the_package(tmp_path: Path) -> None:
    # Without hatchling installed, build fetches it into an isolated environment.
    isolation = ["--no-isolation"] if importlib.util.find_spec("hatchling") else []
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", str(tmp_path)],
        cwd=PACKAGE,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("akidb_embed_mlx-0.1.0-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"akidb_embed_mlx", "akidb_embed_mlx-0.1.0.dist-info"}
    assert "akidb_embed_mlx/_provider.py" in names and "akidb_embed_mlx/py.typed" in names
    entry_points = zipfile.ZipFile(wheel).read("akidb_embed_mlx-0.1.0.dist-info/entry_points.txt")
    assert b"mlx = akidb_embed_mlx:MLXEmbeddingProvider" in entry_points
