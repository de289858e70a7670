"""The collectives the engines use (3 gloo processes): gathering rows of equal or unequal
sizes, with the sizes known (no size collective, no read on the host) or gathered."""

from __future__ import annotations

import json

import pytest
import torch

from ._collective_cases import _part
from ._spawn import spawn
from ._worker import collectives_worker

WORLD = 3


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("collectives")
    spawn(WORLD, out, collectives_worker)
    return [json.loads((out / f"collectives{r}.json").read_text()) for r in range(WORLD)]


def _expected(rows: list[int]) -> list:
    return torch.cat([_part(r, n) for r, n in enumerate(rows)], dim=1).tolist()


def test_gather_sizes_gives_every_process_each_count_in_rank_order(reports) -> None:
    for report in reports:
        assert report["sizes"] == [[1, 2, 3], [7, 7, 7], [0, 10, 20]]
        assert report["no_sizes"] == []


@pytest.mark.parametrize(
    ("case", "rows"),
    [
        ("equal", [2, 2, 2]),
        ("equal_known", [2, 2, 2]),
        ("unequal", [1, 2, 3]),
        ("unequal_known", [1, 2, 3]),
        ("empty", [0, 0, 0]),
    ],
)
def test_all_gather_cat_concatenates_in_rank_order(reports, case: str, rows: list[int]) -> None:
    """Along a middle dimension, contiguous, whether the sizes are equal or not."""
    for report in reports:
        assert report[case]["gathered"] == _expected(rows)
        assert report[case]["contiguous"]


@pytest.mark.parametrize("case", ["equal", "unequal"])
def test_known_sizes_are_not_gathered_again(reports, case: str) -> None:
    """Given the sizes, a gather sends its rows only (8 bytes less: no size collective)."""
    for report in reports:
        assert report[case]["bytes"] == report[f"{case}_known"]["bytes"] + 8


def test_sizes_that_do_not_match_this_process_are_refused(reports) -> None:
    for report in reports:
        assert "this process's being 2" in report["wrong_sizes"]
