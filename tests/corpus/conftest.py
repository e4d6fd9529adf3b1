"""Fixtures of the corpus and Ray tests: a varied input folder, and output readers
(``write_corpus``, ``read_output`` and ``read_rejects`` give the functions below)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from akidb_embed.corpus import read_embeddings


def _write_corpus(folder: Path, n_txt: int = 37, n_jsonl: int = 29, n_parquet: int = 23) -> int:
    """A folder with a .txt (with blank lines), a .jsonl (with extra fields) and a .parquet
    file; returns the number of rows (blank lines are not rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_txt):
        lines.append(f"the cat number {i} sat on the mat near the {i % 5} dogs")
        if i % 9 == 4:
            lines.append("")
    (folder / "a.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with (folder / "b.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n_jsonl):
            record = {"text": f"stock markets fell {i} points on day {i % 7}", "lang": "en"}
            record["score"] = i * 0.5
            fh.write(json.dumps(record) + "\n")
    table = pa.table(
        {
            "text": [f"bake the bread {i} for forty minutes" for i in range(n_parquet)],
            "year": list(range(2000, 2000 + n_parquet)),
        }
    )
    pq.write_table(table, folder / "c.parquet", row_group_size=7)
    return n_txt + n_jsonl + n_parquet


def _read_output(out: Path) -> tuple[pa.Table, np.ndarray]:
    """The output's rows (without vectors) and the vectors, in output order."""
    table = pa.concat_tables(list(read_embeddings(out).tables()))
    vectors = np.asarray(
        table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
        dtype=np.float32,
    ).reshape(table.num_rows, -1)
    return table.drop_columns(["embedding"]), vectors


def _rejects(out: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted((out / "_rejects").glob("*.jsonl")):
        found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


@pytest.fixture
def write_corpus() -> Any:
    return _write_corpus


@pytest.fixture
def read_output() -> Any:
    return _read_output


@pytest.fixture
def read_rejects() -> Any:
    return _rejects
