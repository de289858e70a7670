"""Block principal pivoting for small problems, where the fixed cost of each operation dominates.

The same method as :func:`._dual_cone_box.block_pivoting`, with the same safeguard, but every
step solves every row exactly by one batched Cholesky at full size (:func:`solve_masked`): no
bookkeeping of which rows changed or were solved exactly, so about half the operations per step.
Used up to ``m = SMALL_MAX_SIZE``, where a full-size ``[k, m, m]`` factorisation is still cheap.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._dual_cone_box import BoxQP, swaps
from ._dual_cone_linear import NOT_DEFINITE

SMALL_MAX_SIZE = 24


def pivot_small(
    qp: BoxQP, active: Tensor, *, tolerance: float, max_iter: int
) -> tuple[Tensor, Tensor, bool]:
    """Finds the active set of ``qp`` from the guess ``active [k, m]``.

    Returns ``(x, x @ M, converged)`` like :func:`._dual_cone_box.block_pivoting`.
    """
    matrix, linear, lower = qp.matrix, qp.linear, qp.lower
    k, m = lower.shape
    slack = tolerance * qp.scale()
    floor, shifted = linear - slack, lower - slack  # g < floor or x < shifted: broken
    exact = torch.ones(k, dtype=torch.bool, device=matrix.device)
    best = torch.full((k,), m + 1, device=matrix.device)
    chances = torch.zeros_like(best).fill_(3)
    stuck = torch.zeros_like(exact)
    identity = torch.eye(m, dtype=matrix.dtype, device=matrix.device)
    for _ in range(max_iter):
        x = solve_masked(matrix, identity, ~active, linear, lower)
        product = x @ matrix
        broken = torch.where(active, product < floor, x < shifted) & ~stuck.unsqueeze(1)
        count = broken.sum(dim=1)
        if not bool(count.any()):
            return torch.maximum(x, lower), product, not bool(stuck.any())
        swap, best, chances, stuck = swaps(broken, count, exact, best, chances, stuck)
        active = active ^ swap
    return torch.maximum(x, lower), product, False


def solve_masked(
    matrix: Tensor, identity: Tensor, free: Tensor, target: Tensor, fixed: Tensor
) -> Tensor:
    """Solves each row's reduced system exactly, embedded in an ``[m, m]`` one.

    Row ``r`` keeps ``x = fixed`` off its free set ``F`` and solves ``(x @ M)_F = target_F`` on
    it: its matrix is ``M`` where both coordinates are free and the identity elsewhere, which
    is positive definite when ``M`` is. Costs ``k m³``, in few operations.
    """
    outside = fixed * ~free
    rhs = torch.where(free, target - outside @ matrix, outside)
    reduced = torch.where(free.unsqueeze(2) & free.unsqueeze(1), matrix, identity)
    factor, info = torch.linalg.cholesky_ex(reduced)
    if bool(info.any()):
        raise RuntimeError(NOT_DEFINITE)
    return torch.cholesky_solve(rhs.unsqueeze(2), factor).squeeze(2)
