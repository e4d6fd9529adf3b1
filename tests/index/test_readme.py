"""The README's quick start runs as written (with the exported model of the test session)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quick_start_runs(minilm_onnx_dir: Path, tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick start") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert ".cache/models/all-MiniLM-L6-v2-onnx" in code
    code = code.replace(".cache/models/all-MiniLM-L6-v2-onnx", str(minilm_onnx_dir))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    # The two cat sentences outrank the stock market for a question about a sleeping cat.
    assert all("cat" in line or "kitten" in line for line in lines), lines
