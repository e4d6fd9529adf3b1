"""Kill a process while it saves, at random moments: the index always loads, old or new."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from akidb_embed.index import VectorIndex

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX-only (platform limit)"
)

# Saves versions v, v+1, ... of an index whose content is a function of v % 3, printing
# "begin v" before each save and "end v" after it.
CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from akidb_embed.index import VectorIndex

    def content(v):
        rng = np.random.default_rng(v % 3)
        n = 1500 + 100 * (v % 3)
        return [f"c{v % 3}-{i}" for i in range(n)], rng.normal(size=(n, 48)).astype(np.float32)

    root, v = sys.argv[1], int(sys.argv[2])
    built = {}
    for c in range(3):
        ids, vectors = content(c)
        index = VectorIndex(48, backend="hnsw", M=8, ef_construction=40)
        index.add(ids, vectors, metadata=[{"c": c, "i": i} for i in range(len(ids))])
        built[c] = index
    while True:
        index = built[v % 3]
        index.attributes["version"] = v
        print(f"begin {v}", flush=True)
        index.save(root)
        print(f"end {v}", flush=True)
        v += 1
    """
)


def expected(v: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(v % 3)
    n = 1500 + 100 * (v % 3)
    vectors = rng.normal(size=(n, 48)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [f"c{v % 3}-{i}" for i in range(n)], vectors


def check_loaded(root: Path, allowed: set[int]) -> int:
    index = VectorIndex.load(root)
    version = index.attributes["version"]
    assert version in allowed, f"loaded version {version}, expected one of {sorted(allowed)}"
    ids, vectors = expected(version)
    assert index.ids() == ids
    assert len(index) == len(ids)
    assert index.uses_hnsw
    np.testing.assert_allclose(np.stack([it.vector for it in index.get(ids)]), vectors, atol=1e-6)
    hits = index.search(vectors[:20], k=1)
    assert [row[0] for row in hits.ids] == ids[:20]
    assert hits.metadata[5][0] == {"c": version % 3, "i": 5}
    return version


def test_kill_during_save_20_times(tmp_path: Path) -> None:
    script = tmp_path / "saver.py"
    script.write_text(CHILD)
    root = tmp_path / "index"
    rng = random.Random(20240601)
    ids, vectors = expected(0)
    initial = VectorIndex(48, backend="hnsw", M=8, ef_construction=40)
    initial.add(ids, vectors, metadata=[{"c": 0, "i": i} for i in range(len(ids))])
    initial.attributes["version"] = 0
    initial.save(root)
    next_version = 1
    last_loaded = 0
    mid_save = 0
    for round_ in range(20):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root), str(next_version)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            first = proc.stdout.readline()  # type: ignore[union-attr]
            assert first.startswith("begin"), f"saver failed: {first}{proc.stderr.read()}"  # type: ignore[union-attr]
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(proc.pid, signal.SIGKILL)
            out, _err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        lines = (first + out).split()
        events = list(zip(lines[::2], map(int, lines[1::2]), strict=True))
        kind, version = events[-1]
        completed = [v for k, v in events if k == "end"]
        if kind == "begin":
            mid_save += 1
            # Killed during this save: the previous version, or this one if the pointer
            # was already swapped when the kill landed.
            allowed = {version, completed[-1] if completed else last_loaded}
        else:
            allowed = {version}
        last_loaded = check_loaded(root, allowed)
        next_version = version + 1
        # Leftovers of killed saves are cleaned by the next save: at most a few remain.
        assert len([p for p in root.iterdir() if p.name.startswith(".tmp-")]) <= 1, round_
    assert mid_save >= 10, f"only {mid_save} of 20 kills landed during a save"
