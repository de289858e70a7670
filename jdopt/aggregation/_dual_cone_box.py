"""Batched solver for box-constrained QPs that share one matrix: the engine of ``_dual_cone``.

Each row of ``linear`` and ``lower`` is one problem ``min_x ½ xᵀMx − bᵀx  s.t.  x ≥ ℓ`` with a
shared symmetric positive definite ``M [m, m]`` (unit diagonal after Jacobi scaling). Its KKT
conditions: ``x ≥ ℓ``, ``g = Mx − b ≥ 0``, ``(x − ℓ) ⊙ g = 0``.

1. :func:`accelerated_gradient` (FISTA, three tensor operations per step) cheaply guesses
   which bounds are active.
2. :func:`block_pivoting` (primal-dual active set, with the safeguards of block principal
   pivoting) fixes the guess: it solves ``x_A = ℓ_A, g_F = 0`` for the current active set ``A``
   and free set ``F``, swaps the coordinates that break ``x ≥ ℓ`` or ``g ≥ 0``, and repeats.
   A row whose number of broken coordinates stops decreasing is left alone (``stuck``):
   whole swaps can cycle, and the caller finishes such rows by the primal active-set method
   (:mod:`._dual_cone_active`), which cannot. The reduced
   systems ``M_FF x_F = (b − M_FA ℓ_A)_F`` are solved by a padded batched Cholesky when every
   ``|F| ≤ _DIRECT_MAX_SIZE``, by batched CG otherwise (:mod:`._dual_cone_linear`). All of it
   runs in the problem's dtype, except tight float64 CG solves: float32 CG corrections of
   float64 residuals (:func:`._dual_cone_linear.solve_refined`), to the same tolerance.

Kim & Park, *Fast nonnegative matrix factorization: an active-set-like method and
comparisons*, SIAM J. Sci. Comput. 2011 (block principal pivoting); Hintermüller, Ito &
Kunisch, *The primal-dual active set strategy as a semismooth Newton method*, SIAM J. Optim.
2002; Beck & Teboulle, *A fast iterative shrinkage-thresholding algorithm*, 2009.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._dual_cone_linear import (
    most_cg_steps,
    pad_with_identity,
    solve_cg,
    solve_direct,
    solve_refined,
)

# A row may swap its whole set of broken coordinates this many times without progress.
_BACKUP_CHANCES = 3
# Reduced systems up to this size are solved by batched Cholesky, larger ones by CG.
_DIRECT_MAX_SIZE = 64
# ... and only up to this m: larger problems rarely have such small free sets.
_PADDED_MAX_SIZE = 192
# Up to this m, FISTA's step comes from a bound by repeated squaring (see largest_eigenvalue).
_SQUARING_MAX_SIZE = 256
# In the first _LOOSE_STEPS pivoting steps, CG only reduces the residual by _LOOSE_REDUCTION,
# in at most _LOOSE_MAX_ITER iterations: the active set is still changing.
_LOOSE_STEPS = 4
_LOOSE_REDUCTION = 0.1
_LOOSE_MAX_ITER = 5


# Restarted FISTA stops once fewer coordinates than one in this many rows change in a period.
_SETTLED = 32


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
        """``[k, 1]`` the size of each problem's data, to which tolerances are relative.

        The positive parts of ``ℓ`` and ``b`` only: they set the size of the solution (for
        ``b = 0``, ``‖x*‖∞ ≥ max(ℓ)``), while very negative bounds, which hardly ever hold, would
        make the tolerances too loose.
        """
        return torch.maximum(self.lower.amax(1, keepdim=True), self.linear.amax(1, keepdim=True))


def largest_eigenvalue(matrix: Tensor, iterations: int = 10) -> float:
    """Returns an upper bound on ``λ_max(matrix)`` (symmetric positive semi-definite).

    Up to ``_SQUARING_MAX_SIZE``: ``‖M⁸‖_F^(1/8)``, from three squarings — a true bound, at most
    ``m^(1/16)`` times too large (when the spectrum is flat, where a loose bound costs FISTA
    little). Beyond: power iteration, plus 10% for safety, as ``m³`` products get expensive.
    """
    m = matrix.shape[0]
    if m <= _SQUARING_MAX_SIZE:
        power = matrix / matrix.diagonal().amax()  # keeps the eighth power in range (≤ m⁸)
        for _ in range(3):
            power = power @ power
        return float(torch.linalg.matrix_norm(power)) ** 0.125 * float(matrix.diagonal().amax())
    vector = 1 + torch.arange(m, dtype=matrix.dtype, device=matrix.device) / m
    for _ in range(iterations):
        vector = matrix @ vector
        vector = vector / vector.norm()
    return 1.1 * float(vector @ matrix @ vector)


def accelerated_gradient(
    qp: BoxQP, x: Tensor, iterations: int, *, period: int | None = None, tolerance: float = 0.0
) -> Tensor:
    """Runs FISTA from ``x [k, m]``: a cheap guess of the solution, not the solution.

    With a ``period``, the momentum restarts every ``period`` steps (which makes FISTA converge
    linearly on these strongly convex problems, as the momentum otherwise overshoots), and the
    run stops early once the active set ``{x ≤ ℓ + tolerance · scale}`` has settled: at most one
    coordinate in ``_SETTLED`` rows changed sides since the end of the previous period (pivoting
    fixes those few rows).
    """
    step = 1 / largest_eigenvalue(qp.matrix)
    # One projected gradient step from p is max(p @ (I − step M) + step b, ℓ).
    transition = torch.eye(qp.matrix.shape[0], dtype=x.dtype, device=x.device) - step * qp.matrix
    shift = qp.linear * step if bool(qp.linear.any()) else None
    ceiling = qp.lower + tolerance * qp.scale() if period else None
    x = torch.maximum(x, qp.lower)
    point, new = x.clone(), torch.empty_like(x)
    momentum, active = 1.0, None
    for iteration in range(1, iterations + 1):
        if shift is None:
            torch.mm(point, transition, out=new)
        else:
            torch.addmm(shift, point, transition, out=new)
        torch.maximum(new, qp.lower, out=new)
        if period and iteration % period == 0:
            previous, active = active, new <= ceiling
            if previous is not None and int((previous ^ active).sum()) <= len(x) // _SETTLED:
                return new
            point.copy_(new)
            x, new, momentum = new, x, 1.0
            continue
        next_momentum = (1 + (1 + 4 * momentum**2) ** 0.5) / 2
        torch.lerp(x, new, 1 + (momentum - 1) / next_momentum, out=point)
        x, new, momentum = new, x, next_momentum
    return x


def block_pivoting(
    qp: BoxQP,
    x: Tensor,
    active: Tensor,
    *,
    tolerance: float,
    max_iter: int,
    loose_steps: int = _LOOSE_STEPS,
    cg_max_iter: int | None = None,
) -> tuple[Tensor, Tensor, bool]:
    """Finds the active set by block principal pivoting, from a guess.

    Each step solves the reduced systems of the rows whose active set changed, then swaps the
    coordinates that break ``x ≥ ℓ`` (free ones) or ``g ≥ 0`` (active ones). CG solves are
    loose for the first few steps; rows solved loosely are solved again tightly before the
    end, and only exact solves count towards the safeguard. Rows that stop making progress
    (see :func:`swaps`) are left as they are and make the result unconverged.

    Args:
        qp: the problems.
        x: ``[k, m]`` starting point (a warm start for CG).
        active: ``[k, m]`` boolean guess of the active set ``{x = ℓ}``.
        tolerance: relative violation of ``x ≥ ℓ`` or ``g ≥ 0`` accepted at the solution.
        max_iter: the most pivoting steps.
        loose_steps: how many first steps may use loose CG solves (0 from a good guess).
        cg_max_iter: the most iterations of a tight CG solve (default
            :func:`._dual_cone_linear.most_cg_steps`); the rows that need more are solved by
            batched Cholesky. Small for badly conditioned matrices, on which CG stalls.

    Returns:
        ``(x, x @ M, converged)``, with ``x ≥ ℓ``; ``x @ M`` is stale in the rows left
        unsolved.
    """
    matrix, linear, lower = qp.matrix, qp.linear, qp.lower
    k, m = x.shape
    slack = tolerance * qp.scale()
    floor, shifted = linear - slack, lower - slack  # g < floor or x < shifted: broken
    active = active.clone()
    x = torch.maximum(x, lower).lerp_(lower, active.to(x.dtype))
    product = torch.empty_like(x)
    exact = torch.zeros(k, dtype=torch.bool, device=x.device)  # x solves its reduced system
    best = torch.full((k,), m + 1, device=x.device)
    chances = torch.full((k,), _BACKUP_CHANCES, device=x.device)
    stuck = torch.zeros_like(exact)
    padded = pad_with_identity(matrix) if m <= _PADDED_MAX_SIZE else None
    cg_max_iter = most_cg_steps(m) if cg_max_iter is None else cg_max_iter
    changed, tight = torch.ones_like(exact), False
    for step in range(max_iter):
        tight = tight or step >= loose_steps
        # Loose solves only for the rows whose active set changed; tight ones for every row
        # not solved exactly yet.
        rows = ((changed | ~exact) & ~stuck if tight else changed).nonzero().squeeze(1)
        exact[rows] = _solve_reduced(
            qp, padded, x, product, ~active, rows, cg_max_iter if tight else 0, slack
        )
        broken = (active & (product < floor)) | (~active & (x < shifted))
        broken &= ~stuck.unsqueeze(1)
        count = broken.sum(dim=1)
        if not bool(count.any()):
            if bool((exact | stuck).all()):
                return torch.maximum(x, lower), product, not bool(stuck.any())
            changed, tight = torch.zeros_like(exact), True
            continue
        swap, best, chances, stuck = swaps(broken, count, exact, best, chances, stuck)
        active ^= swap
        changed = swap.any(dim=1)
        exact &= ~changed
        torch.maximum(x, lower, out=x)  # coordinates entering the active set: onto the bound
    return torch.maximum(x, lower), product, False


def swaps(
    broken: Tensor, count: Tensor, exact: Tensor, best: Tensor, chances: Tensor, stuck: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rule of block principal pivoting: which coordinates change sides.

    A row swaps all its ``broken`` coordinates while their ``count`` keeps reaching new lows
    (``best``) or while its solve is inexact. After ``_BACKUP_CHANCES`` swaps without progress
    it is ``stuck``: whole swaps may cycle there, so it swaps nothing more, and the caller
    finishes it by a method that cannot cycle. Returns the swaps ``[k, m]`` and the updated
    ``best``, ``chances`` and ``stuck`` ``[k]``.
    """
    fewer = count < best
    improved = fewer | ~exact
    best = torch.where(fewer & exact, count, best)
    chances = torch.where(improved, _BACKUP_CHANCES, chances - 1)
    stuck = stuck | (chances < 0)
    return broken & ~stuck.unsqueeze(1), best, chances, stuck


def _solve_reduced(
    qp: BoxQP,
    padded: Tensor | None,
    x: Tensor,
    product: Tensor,
    free: Tensor,
    rows: Tensor,
    cg_steps: int,
    slack: Tensor,
) -> Tensor:
    """Solves ``g_F = 0`` for ``x_F`` in the given ``rows``, in place.

    By batched Cholesky when ``padded`` is given and every free set has at most
    ``_DIRECT_MAX_SIZE`` coordinates; by CG otherwise, tight in at most ``cg_steps`` iterations
    or loose (``cg_steps = 0``), and by batched Cholesky for the rows that tight CG leaves
    unsolved.

    Updates ``x`` and ``product = x @ M`` in those rows; returns which of them were solved
    exactly (``[len(rows)]``).
    """
    if rows.numel() == 0:
        return torch.ones(0, dtype=torch.bool, device=x.device)
    every = rows.numel() == x.shape[0]
    sub_x, sub_free = (x, free) if every else (x[rows], free[rows])
    sub_linear = qp.linear if every else qp.linear[rows]
    tight = cg_steps > 0
    if padded is not None and int(sub_free.sum(dim=1).max()) <= _DIRECT_MAX_SIZE:
        sub_x = solve_direct(padded, sub_free, sub_linear, sub_x)
        exact = torch.ones(rows.numel(), dtype=torch.bool, device=x.device)
    else:
        # CG's residual is measured in the 2-norm, the slack coordinate-wise.
        tolerance = 0.3 * (slack if every else slack[rows])
        sub_x, exact = _solve_iterative(qp.matrix, sub_x, sub_linear, sub_free, tolerance, cg_steps)
        if tight and not bool(exact.all()):  # badly conditioned: solve those rows exactly
            stalled = (~exact).nonzero().squeeze(1)
            padded = pad_with_identity(qp.matrix) if padded is None else padded
            sub_x[stalled] = solve_direct(
                padded, sub_free[stalled], sub_linear[stalled], sub_x[stalled]
            )
            exact[stalled] = True
    if every:
        if sub_x is not x:
            x.copy_(sub_x)
        torch.mm(x, qp.matrix, out=product)
    else:
        x[rows] = sub_x
        product[rows] = sub_x @ qp.matrix
    return exact


def _solve_iterative(
    matrix: Tensor, x: Tensor, target: Tensor, free: Tensor, tolerance: Tensor, max_iter: int
) -> tuple[Tensor, Tensor]:
    """CG: loose (a few iterations, ``max_iter = 0``) or tight, in at most ``max_iter``
    iterations, by float32-refined CG for a float64 ``matrix``."""
    if max_iter == 0:
        x, _ = solve_cg(matrix, x, target, free, tolerance, _LOOSE_MAX_ITER, _LOOSE_REDUCTION)
        return x, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if matrix.dtype == torch.float64:
        return solve_refined(matrix, x, target, free, tolerance, max_iter)
    return solve_cg(matrix, x, target, free, tolerance, max_iter)
