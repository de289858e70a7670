"""The sure finish of the dual-cone solver: the primal active-set method, for the rows that
block pivoting leaves unsolved.

Block principal pivoting (:mod:`._dual_cone_box`) changes many coordinates per step and
usually needs a handful of steps. On badly conditioned problems (a tiny ridge on a low-rank
Gramian) rounding can make its swaps undo each other for hundreds of steps. The primal
active-set method changes one coordinate per row and step, keeps ``x`` feasible, and never
increases the objective, so it does not wander: each step either moves to the minimiser on the
current working set (stopping at the first bound in the way, which joins the set) or, at that
minimiser, releases the bound with the most negative multiplier. Its reduced systems are solved
exactly, by batched Cholesky; rows leave the batch as they finish.

Nocedal & Wright, *Numerical Optimization*, 2nd ed., 2006, Algorithm 16.3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._dual_cone_box import BoxQP
from ._dual_cone_linear import pad_with_identity, solve_direct


def unsolved(qp: BoxQP, x: Tensor, product: Tensor, tolerance: float) -> Tensor:
    """Returns ``[k]``: the rows whose ``x`` breaks a KKT condition by more than ``tolerance``.

    ``product`` is ``x @ M``; tolerances are relative to each problem's :meth:`BoxQP.scale`.
    """
    slack = tolerance * qp.scale()
    gradient = product - qp.linear
    broken = (
        (x < qp.lower - slack)
        | (gradient < -slack)
        | ((x > qp.lower + slack) & (gradient.abs() > slack))
    )
    return broken.any(dim=1) | ~torch.isfinite(x).all(dim=1)


def active_set(
    qp: BoxQP, x: Tensor, working: Tensor, *, tolerance: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Solves the problems of ``qp`` by the primal active-set method.

    Args:
        qp: the problems.
        x: ``[k, m]`` starting point; projected onto ``x ≥ ℓ``.
        working: ``[k, m]`` boolean, the bounds held at the start (``x = ℓ`` there).
        tolerance: relative violation of ``x ≥ ℓ`` or ``g ≥ 0`` accepted at the solution.
        max_iter: the most steps (each changes one coordinate of each row still going).

    Returns:
        ``(x, x @ M, converged)``, with ``x ≥ ℓ`` and ``converged`` of shape ``[k]``.
    """
    matrix, padded = qp.matrix, pad_with_identity(qp.matrix)
    k, m = x.shape
    lower, linear, slack = qp.lower, qp.linear, tolerance * qp.scale()
    working = working.clone()
    x = torch.where(working, lower, torch.maximum(x, lower))
    result, converged = x.clone(), torch.zeros(k, dtype=torch.bool, device=x.device)
    rows = torch.arange(k, device=x.device)
    positions = torch.arange(m, device=x.device)
    for _ in range(max_iter):
        target = solve_direct(padded, ~working, linear, x)  # the minimiser on the working set
        # Free coordinates that the move to the target would push below their bound.
        heading = ~working & (target < lower - slack)
        ratio = torch.where(heading, (x - lower) / (x - target), torch.inf)
        fraction, blocking = ratio.min(dim=1, keepdim=True)
        blocked = fraction < 1
        moved = torch.where(blocked, x + fraction * (target - x), target)
        hit = blocked & (positions == blocking)  # joins the working set, exactly on its bound
        working |= hit
        x = torch.where(hit, lower, torch.maximum(moved, lower))
        # At the minimiser: release the bound with the most negative multiplier, or stop.
        gradient = x @ matrix - linear
        multiplier, leaving = torch.where(working, gradient, torch.inf).min(dim=1, keepdim=True)
        done = (~blocked & (multiplier >= -slack)).squeeze(1)
        working &= ~(~blocked & (multiplier < -slack) & (positions == leaving))
        if bool(done.any()):
            result[rows[done]], converged[rows[done]] = x[done], True
            keep = ~done
            rows, x, working = rows[keep], x[keep], working[keep]
            lower, linear, slack = lower[keep], linear[keep], slack[keep]
            if rows.numel() == 0:
                break
    if rows.numel() > 0:
        result[rows] = x
    return result, result @ matrix, converged
