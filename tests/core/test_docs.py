"""The examples in docs/ run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def test_testing_guide_examples_pass(pytester: pytest.Pytester) -> None:
    blocks = [b for b in python_blocks("testing.md") if "def test_" in b]
    assert len(blocks) == 2
    pytester.makepyfile(test_guide="import pytest\n" + "\n\n".join(blocks))
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


def test_plugin_guide_conformance_example(pytester: pytest.Pytester) -> None:
    (provider_block,) = [b for b in python_blocks("plugins.md") if "class MyProvider" in b]
    # The guide's provider, with its model swapped for the mock so it runs anywhere.
    module = provider_block.replace(
        "import my_heavy_dependency       # import heavy things here, not at module level\n", ""
    )
    module = module.replace(
        "my_heavy_dependency.load(config.model)",
        "__import__('akidb_embed').MockEmbeddingProvider()",
    )
    module = module.replace('requires = ("my_heavy_dependency",)', "requires = ()")
    module = module.replace(
        "self.model.encode(list(texts)).astype(np.float32)", "self.model.embed_batch(texts)"
    )
    pytester.makepyfile(akidb_embed_mine=module)
    (suite,) = [b for b in python_blocks("plugins.md") if "ProviderConformance)" in b]
    pytester.makepyfile(test_mine=suite)
    pytester.runpytest_subprocess().assert_outcomes(passed=14)


def test_manager_guide_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks("manager.md")
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "docs/manager.md", "exec"), {})
    out = capsys.readouterr().out
    assert "failed: Text at index 1 has 2000 tokens" in out
    assert "failed: texts[1] must be str" in out
    assert "(2, 384)" in out and "request ok 1" in out
