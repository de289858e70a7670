"""The collectives' cases: each runs on every process and reports what it got."""

from __future__ import annotations

import torch

from jdopt.distributed import bytes_sent, reset_bytes_sent
from jdopt.distributed._collectives import all_gather_cat, gather_sizes


def _part(rank: int, rows: int) -> torch.Tensor:
    """``[2, rows, 3]``: this process's rows along dimension 1, numbered by process."""
    return torch.arange(2 * rows * 3, dtype=torch.float64).reshape(2, rows, 3) + 100 * rank


def _gather(rank: int, rows: int, sizes: list[int] | None) -> dict:
    reset_bytes_sent()
    gathered = all_gather_cat(_part(rank, rows), 1, sizes)
    return {
        "gathered": gathered.tolist(),
        "contiguous": gathered.is_contiguous(),
        "bytes": bytes_sent(),
    }


def collective_cases(rank: int, world: int) -> dict[str, object]:
    unequal = [r + 1 for r in range(world)]
    return {
        "sizes": gather_sizes([rank + 1, 7, 10 * rank], torch.device("cpu")),
        "no_sizes": gather_sizes([], torch.device("cpu")),
        "equal": _gather(rank, 2, None),
        "equal_known": _gather(rank, 2, [2] * world),
        "unequal": _gather(rank, rank + 1, None),
        "unequal_known": _gather(rank, rank + 1, unequal),
        "empty": _gather(rank, 0, [0] * world),
        "wrong_sizes": _refused(lambda: all_gather_cat(_part(rank, 2), 1, [3] * world)),
    }


def _refused(run) -> str:
    try:
        run()
    except ValueError as error:
        return str(error)
    return "accepted"
