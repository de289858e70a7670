"""Batched solver for box-constrained QPs that share one matrix: the engine of ``_dual_cone``.

Each row of ``linear`` and ``lower`` is one problem ``min_x ½ xᵀMx − bᵀx  s.t.  x ≥ ℓ`` with a
shared symmetric positive definite ``M [m, m]`` (unit diagonal after Jacobi scaling). Its KKT
conditions: ``x ≥ ℓ``, ``g = Mx − b ≥ 0``, ``(x − ℓ) ⊙ g = 0``.

1. :func:`accelerated_gradient` (FISTA with adaptive restart, per row) cheaply guesses which
   bounds are active.
2. :func:`block_pivoting` (primal-dual active set, with the safeguards of block principal
   pivoting) fixes the guess: it solves ``x_A = ℓ_A, g_F = 0`` for the current active set ``A``
   and free set ``F``, swaps the coordinates that break ``x ≥ ℓ`` or ``g ≥ 0``, and repeats.
   When a row's number of broken coordinates stops decreasing it falls back to swapping only
   the last one (Murty's rule), which terminates for any positive definite ``M``.

Kim & Park, *Fast nonnegative matrix factorization: an active-set-like method and
comparisons*, SIAM J. Sci. Comput. 2011 (block principal pivoting); Hintermüller, Ito &
Kunisch, *The primal-dual active set strategy as a semismooth Newton method*, SIAM J. Optim.
2002; Beck & Teboulle, *A fast iterative shrinkage-thresholding algorithm*, 2009.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._dual_cone_linear import rowdot, solve_cg, solve_direct

# A row may swap its whole set of broken coordinates this many times without progress.
_BACKUP_CHANCES = 3
# Reduced systems up to this size are solved by batched Cholesky, larger ones by CG.
_DIRECT_MAX_SIZE = 96
# Before the active set settles, CG only reduces the residual by this factor, in at most
# this many iterations.
_LOOSE_REDUCTION = 0.05
_LOOSE_MAX_ITER = 8


@dataclass(frozen=True)
class BoxQP:
    """``k`` problems ``min ½ xᵀMx − bᵀx s.t. x ≥ ℓ`` sharing ``M``.

    Attributes:
        matrix: ``[m, m]`` symmetric positive definite ``M``.
        linear: ``[k, m]`` linear terms ``b``.
        lower: ``[k, m]`` lower bounds ``ℓ``.
    """

    matrix: Tensor
    linear: Tensor
    lower: Tensor

    def scale(self) -> Tensor:
        """``[k, 1]`` the size of each problem's data, to which tolerances are relative."""
        return torch.maximum(self.lower.abs().amax(1, keepdim=True), self.linear.abs().amax(1, keepdim=True))


def largest_eigenvalue(matrix: Tensor, iterations: int = 30) -> float:
    """Returns an estimate of ``λ_max(matrix)`` from above-ish (power iteration, plus 10%)."""
    m = matrix.shape[0]
    vector = 1 + torch.arange(m, dtype=matrix.dtype, device=matrix.device) / m
    for _ in range(iterations):
        vector = matrix @ vector
        vector = vector / vector.norm()
    return 1.1 * float(vector @ matrix @ vector)


def accelerated_gradient(qp: BoxQP, x: Tensor, iterations: int) -> Tensor:
    """Runs FISTA with per-row gradient restart (O'Donoghue & Candès 2015) from ``x [k, m]``."""
    step = 1 / largest_eigenvalue(qp.matrix)
    x = torch.maximum(x, qp.lower)
    point, momentum = x.clone(), torch.ones_like(x[:, :1])
    for _ in range(iterations):
        new = torch.maximum(point - (point @ qp.matrix - qp.linear) * step, qp.lower)
        restart = rowdot(point - new, new - x) > 0
        next_momentum = (1 + (1 + 4 * momentum.square()).sqrt()) / 2
        weight = (momentum - 1) / next_momentum * ~restart
        momentum = torch.where(restart, 1.0, next_momentum)
        point = (new - x).mul_(weight).add_(new)
        x = new
    return x


def block_pivoting(
    qp: BoxQP, x: Tensor, active: Tensor, *, tolerance: float, max_iter: int
) -> tuple[Tensor, Tensor, bool]:
    """Finds the active set by block principal pivoting, from a guess.

    Args:
        qp: the problems.
        x: ``[k, m]`` starting point (a warm start for CG).
        active: ``[k, m]`` boolean guess of the active set ``{x = ℓ}``.
        tolerance: relative violation of ``x ≥ ℓ`` or ``g ≥ 0`` accepted at the solution.
        max_iter: the most pivoting steps.

    Returns:
        ``(x, x @ M, converged)``, with ``x ≥ ℓ``.
    """
    matrix, linear, lower = qp.matrix, qp.linear, qp.lower
    k, m = x.shape
    slack = tolerance * qp.scale()
    active = active.clone()
    x = torch.where(active, lower, torch.maximum(x, lower))
    product = x @ matrix
    best = torch.full((k,), m + 1, device=x.device)
    chances = torch.full((k,), _BACKUP_CHANCES, device=x.device)
    positions = torch.arange(1, m + 1, device=x.device)
    tight, rows = False, None
    for _ in range(max_iter):
        x, product, exact = _solve_reduced(qp, x, product, ~active, rows, tight, slack)
        gradient = product - linear
        broken = (active & (gradient < -slack)) | (~active & (x < lower - slack))
        count = broken.sum(dim=1)
        if not bool(count.any()):
            if exact:
                return torch.maximum(x, lower), product, True
            tight, rows = True, None
            continue
        improved = count < best
        best = torch.where(improved, count, best)
        chances = torch.where(improved, _BACKUP_CHANCES, chances - 1)
        last = (broken * positions).argmax(dim=1, keepdim=True)
        single = torch.zeros_like(broken).scatter_(1, last, True) & broken
        swap = torch.where((improved | (chances >= 0)).unsqueeze(1), broken, single)
        rows = swap.any(dim=1).nonzero().squeeze(1)
        # Coordinates entering the active set move onto their bound; keep product = x @ M.
        shift = (lower[rows] - x[rows]) * (swap[rows] & ~active[rows])
        x[rows] += shift
        product[rows] += shift @ matrix
        active ^= swap
    return torch.maximum(x, lower), product, False


def _solve_reduced(
    qp: BoxQP,
    x: Tensor,
    product: Tensor,
    free: Tensor,
    rows: Tensor | None,
    tight: bool,
    slack: Tensor,
) -> tuple[Tensor, Tensor, bool]:
    """Solves ``g_F = 0`` with ``x`` fixed off ``F``; returns ``(x, x @ M, exact)``.

    ``rows`` (``None`` for all) are the rows whose free set changed: the direct solver only
    redoes those, CG lets the others stop at once.
    """
    selected = free if rows is None else free[rows]
    if selected.shape[0] == 0:
        return x, product, True
    if int(selected.sum(dim=1).max()) <= _DIRECT_MAX_SIZE:
        linear = qp.linear if rows is None else qp.linear[rows]
        start = x if rows is None else x[rows]
        solution = solve_direct(qp.matrix, selected, linear, start)
        image = solution @ qp.matrix
        if rows is None:
            return solution, image, True
        x[rows], product[rows] = solution, image
        return x, product, True
    # CG's residual is measured in the 2-norm; the slack is checked coordinate-wise.
    tolerance = slack * 0.1
    if tight:
        return solve_cg(qp.matrix, x, product, qp.linear, free, tolerance, 10 * x.shape[1])
    x, product, _ = solve_cg(
        qp.matrix, x, product, qp.linear, free, tolerance, _LOOSE_MAX_ITER, _LOOSE_REDUCTION
    )
    return x, product, False
