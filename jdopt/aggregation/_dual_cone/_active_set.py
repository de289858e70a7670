"""The sure finish: the primal active-set method, for the rows that pivoting leaves unsolved.

Block principal pivoting (:mod:`._pivoting`) changes many coordinates per step and
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

from ._linear import solve_direct
from ._options import SolverOptions as Options
from ._problem import BoxQP


def active_set(qp: BoxQP, x: Tensor, options: Options) -> tuple[Tensor, Tensor]:
    """Solves the problems of ``qp`` by the primal active-set method, from ``x`` (projected
    onto ``x ≥ ℓ``; the bounds it sits on, to ``tolerance``, are the first working set), in at
    most ``active_set_steps · m`` steps (each changes one coordinate of each row still going).

    Returns ``(x ≥ ℓ, [k] solved)``.
    """
    matrix, padded = qp.matrix, qp.padded
    k, m = x.shape
    lower, linear, slack = qp.lower, qp.linear, options.tolerance * qp.scale()
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    working = x <= lower + slack
    x = torch.where(working, lower, torch.maximum(x, lower))
    result, converged = x.clone(), torch.zeros(k, dtype=torch.bool, device=x.device)
    rows = torch.arange(k, device=x.device)
    positions = torch.arange(m, device=x.device)
    for _ in range(options.active_set_steps * m):
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
    return result, converged
