"""Block principal pivoting: makes a guessed active set exact.

Each step solves ``x_A = ℓ_A, g_F = 0`` exactly for the current active set ``A`` and free set
``F`` of the rows whose sets changed, then swaps the coordinates that break ``x ≥ ℓ`` (free
ones) or ``g ≥ 0`` (active ones). A row whose number of broken coordinates stops decreasing is
left alone (``stuck``): whole swaps can cycle, and the active-set method, which cannot,
finishes it. The plan picks the reduced solve: :func:`masked` (every row at full size, for
small m) or :func:`gathered` (each row's free set: batched Cholesky or CG).

Kim & Park, *Fast nonnegative matrix factorization: an active-set-like method and
comparisons*, SIAM J. Sci. Comput. 2011; Hintermüller, Ito & Kunisch, *The primal-dual active
set strategy as a semismooth Newton method*, SIAM J. Optim. 2002.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._linear import solve_cg, solve_direct, solve_masked, solve_refined
from ._options import SolverOptions as Options
from ._problem import BoxQP


class Reduced(NamedTuple):
    """What a reduced solve gets: the problems, their free sets ``[k, m]``, the rows to solve
    (``[k]`` mask: those whose active set changed) and the absolute tolerances ``[k, 1]``."""

    qp: BoxQP
    free: Tensor
    todo: Tensor
    slack: Tensor


# (x, product, what, options): solves the rows exactly, updating x and product = x @ M.
ReducedSolve = Callable[[Tensor, Tensor, Reduced, Options], None]


def pivot(
    qp: BoxQP,
    x: Tensor | None,
    options: Options,
    *,
    solve: ReducedSolve,
    max_iter: int,
    reads: bool = True,
) -> tuple[Tensor, Tensor]:
    """Block principal pivoting from ``x`` (or ``max(ℓ, 0)``), whose coordinates within
    ``rough_tolerance`` of their bound are the guessed active set. Returns ``(x ≥ ℓ, [k]
    solved)``; the rows left unsolved (stuck, or out of steps) keep the last iterate. Without
    ``reads``, all ``max_iter`` steps run (a solved row's step solves it again), and nothing is
    read on the host."""
    x = qp.lower.clamp_min(0) if x is None else x
    tolerance = options.rough_tolerance if x.dtype == torch.float32 else options.tolerance
    k, m = x.shape
    scale = qp.scale()
    slack = tolerance * scale
    floor, shifted = qp.linear - slack, qp.lower - slack  # g < floor or x < shifted: broken
    active = x <= qp.lower + options.rough_tolerance * scale
    x = torch.where(active, qp.lower, torch.maximum(x, qp.lower))
    product, changed = torch.empty_like(x), torch.ones(k, dtype=torch.bool, device=x.device)
    best = torch.full((k,), m + 1, device=x.device)  # the fewest broken coordinates so far
    progress = (best, torch.full_like(best, options.backup_chances), torch.zeros_like(changed))
    count = torch.ones(k, dtype=torch.long, device=x.device)  # without a step: none solved
    for _ in range(max_iter):
        solve(x, product, Reduced(qp, ~active, changed, slack), options)
        broken = torch.where(active, product < floor, x < shifted) & ~progress[2].unsqueeze(1)
        count = broken.sum(dim=1)
        if reads and not bool(count.any()):
            break
        swap, progress = swaps(broken, count, progress, options)
        active ^= swap
        changed = swap.any(dim=1)
        torch.maximum(x, qp.lower, out=x)  # coordinates entering the active set: onto the bound
    return torch.maximum(x, qp.lower), (count == 0) & ~progress[2]


def swaps(
    broken: Tensor, count: Tensor, progress: tuple[Tensor, Tensor, Tensor], options: Options
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The rule of block principal pivoting: which coordinates change sides.

    A row swaps all its ``broken`` coordinates while their ``count`` keeps reaching new lows
    (``best``). After ``backup_chances`` swaps without progress it is ``stuck``: whole swaps
    may cycle there, so it swaps nothing more. ``progress`` is ``(best, chances, stuck)``
    ``[k]``; returns the swaps ``[k, m]`` and its update.
    """
    best, chances, stuck = progress
    fewer = count < best
    best = torch.where(fewer, count, best)
    chances = torch.where(fewer, options.backup_chances, chances - 1)
    stuck = stuck | (chances < 0)
    return broken & ~stuck.unsqueeze(1), (best, chances, stuck)


def masked(x: Tensor, product: Tensor, what: Reduced, options: Options) -> None:
    """Exact solves of every row at full size (:func:`._linear.solve_masked`): the rows whose
    sets did not change get their solution again, which costs less, at small m, than the
    bookkeeping to leave them out."""
    qp = what.qp
    x.copy_(solve_masked(qp.matrix, what.free, qp.linear, qp.lower))
    torch.mm(x, qp.matrix, out=product)


def unchecked(x: Tensor, product: Tensor, what: Reduced, options: Options) -> None:
    """:func:`masked` without reading whether the reduced systems are positive definite: the
    rows whose are not get NaN, which the final check fails."""
    qp = what.qp
    x.copy_(solve_masked(qp.matrix, what.free, qp.linear, qp.lower, strict=False))
    torch.mm(x, qp.matrix, out=product)


def gathered(x: Tensor, product: Tensor, what: Reduced, options: Options) -> None:
    """Exact solves of each row's gathered free set by batched Cholesky when every free set has
    at most ``direct_size`` coordinates (and m ≤ ``padded_size``); by CG otherwise (float32
    corrections of float64 residuals), and Cholesky for the rows that CG leaves unsolved."""
    qp, rows = what.qp, what.todo.nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    m = qp.matrix.shape[0]
    free, linear, solution = what.free[rows], qp.linear[rows], x[rows]
    if m <= options.padded_size and int(free.sum(1).max()) <= options.direct_size:
        solution = solve_direct(qp.padded, free, linear, solution)
    else:  # CG's residual is measured in the 2-norm, the slack coordinate-wise
        system = (
            qp.matrix,
            solution,
            linear,
            free,
            0.3 * what.slack[rows],
            options.most_cg_steps(m),
        )
        refined = qp.matrix.dtype == torch.float64
        solution, solved = solve_refined(*system, options) if refined else solve_cg(*system)
        if not bool(solved.all()):  # badly conditioned: exactly
            stalled = (~solved).nonzero().squeeze(1)
            solution[stalled] = solve_direct(
                qp.padded, free[stalled], linear[stalled], solution[stalled]
            )
    x[rows], product[rows] = solution, solution @ qp.matrix
