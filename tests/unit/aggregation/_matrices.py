"""Seeded families of Jacobians, the hard cases every method must survive."""

from __future__ import annotations

import torch
from torch import Tensor

from tests.utils.device import draw, seeded

N = 11  # columns: more than the largest m, so random families have independent rows


def _gen(seed: int) -> torch.Generator:
    return seeded(seed)  # drawn on the CPU and moved: the same matrices on every device


def conflicting(m: int, seed: int = 0) -> Tensor:
    """Independent rows with many negative pairwise inner products."""
    g = _gen(seed)
    base = draw(1, N, generator=g, dtype=torch.float64)
    signs = torch.tensor([(-1.0) ** i for i in range(m)], dtype=torch.float64).unsqueeze(1)
    return signs * base + 0.8 * draw(m, N, generator=g, dtype=torch.float64)


def aligned(m: int, seed: int = 0) -> Tensor:
    """Independent rows that all agree with one common direction."""
    g = _gen(seed)
    base = draw(1, N, generator=g, dtype=torch.float64)
    return 2 * base + 0.3 * draw(m, N, generator=g, dtype=torch.float64)


def rank_deficient(m: int, seed: int = 0) -> Tensor:
    g = _gen(seed)
    a = draw(m, 2, generator=g, dtype=torch.float64)
    return a @ draw(2, N, generator=g, dtype=torch.float64)


def duplicated(m: int, seed: int = 0) -> Tensor:
    row = draw(1, N, generator=_gen(seed), dtype=torch.float64)
    return row.repeat(m, 1)


def with_zero_row(m: int, seed: int = 0) -> Tensor:
    matrix = conflicting(m, seed)
    matrix[0] = 0.0
    return matrix


def zero(m: int, seed: int = 0) -> Tensor:
    return torch.zeros(m, N, dtype=torch.float64)


def tiny(m: int, seed: int = 0) -> Tensor:
    return 1e-10 * conflicting(m, seed)


def huge(m: int, seed: int = 0) -> Tensor:
    return 1e10 * conflicting(m, seed)


INDEPENDENT = [conflicting, aligned, tiny, huge]
HARD = [*INDEPENDENT, rank_deficient, duplicated, with_zero_row, zero]
SIZES = [1, 2, 5, 9]
