"""``akidb_embed.backend.sorted_runs``: how a provider call is cut into runs."""

from __future__ import annotations

import itertools
import random

import pytest

from akidb_embed.backend import sorted_runs


def _rows(lengths: list[int]) -> list[list[int]]:
    return [[7] * n for n in lengths]


def test_runs_of_size_in_length_order() -> None:
    rows = _rows([5, 1, 4, 2, 3])
    assert sorted_runs(rows, 2) == [[1, 3], [4, 2], [0]]
    assert sorted_runs([], 4) == []


@pytest.mark.parametrize("seed", range(5))
def test_token_budget(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 120) for _ in range(200)]
    rows = _rows(lengths)
    runs = sorted_runs(rows, 32, 256)
    flat = [i for run in runs for i in run]
    assert sorted(flat) == list(range(len(rows)))  # every row once
    assert [lengths[i] for i in flat] == sorted(lengths)  # in length order
    for run in runs:
        longest = max(lengths[i] for i in run)
        assert len(run) <= 32
        assert len(run) * longest <= 256 or len(run) == 1
    # Greedy: no run could have taken the next row.
    for run, after in itertools.pairwise(runs):
        n, nxt = len(run), lengths[after[0]]
        assert n == 32 or (n + 1) * nxt > 256


def test_a_row_over_the_budget_runs_alone() -> None:
    rows = _rows([3, 3, 300, 3, 500])
    assert sorted_runs(rows, 32, 64) == [[0, 1, 3], [2], [4]]
    assert sorted_runs(rows, 2, 64) == [[0, 1], [3], [2], [4]]
