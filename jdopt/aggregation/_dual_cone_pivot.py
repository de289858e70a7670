"""The native solve of one batch of box-constrained QPs (:mod:`._dual_cone_box`).

- for ``_SPLITTING_MIN_SIZE ≤ m ≤ _SPLITTING_MAX_SIZE``: ADMM (:mod:`._dual_cone_splitting`), then
  block pivoting from its answer for the rows it leaves unsolved;
- otherwise: a guess, pivoting from it: up to ``m = SMALL_MAX_SIZE``, all in float64, with
  full-size masked solves (:mod:`._dual_cone_small`); beyond, mixed precision (float32
  products are about twice as fast on CPU): a float32 guess, then a float64 pivoting that
  starts from it and usually confirms it in one or two steps;
- the rows that pivoting leaves unsolved go to the active-set method
  (:mod:`._dual_cone_active`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._dual_cone_active import active_set, unsolved
from ._dual_cone_box import BoxQP, accelerated_gradient, block_pivoting
from ._dual_cone_linear import pad_with_identity, solve_direct
from ._dual_cone_small import SMALL_MAX_SIZE, pivot_small
from ._dual_cone_splitting import RHO, splitting

# ADMM first for _SPLITTING_MIN_SIZE ≤ m ≤ _SPLITTING_MAX_SIZE, with at most _SPLITTING_STEPS
# float32 steps (and half as many float64 ones). On UPGrad's Gramians it is faster than the
# pivoting path from m = 32 to m = 1024 (measured: 1.5–2.5× at m = 64–128, a third less time
# at m = 32 over random Jacobians of ranks 5 to m); below, FISTA's guess and a small batched
# Cholesky cost less. See benchmarks/dual_cone.py.
_SPLITTING_MIN_SIZE, _SPLITTING_MAX_SIZE, _SPLITTING_STEPS = 32, 4096, 80

# FISTA before pivoting, by size: (largest m, most steps, restart period or None). Small
# problems pivot cheaply. Beyond SMALL_MAX_SIZE, FISTA runs in float32: up to
# _LONG_GUESS_MAX_SIZE restarted until its active set settles (the float64 pivoting then only
# confirms it), beyond that briefly, followed by a float32 pivoting whose CG drops the rows
# that have converged (a FISTA step costs a full m³ product). See benchmarks/dual_cone.py.
_LONG_GUESS_MAX_SIZE = 384
_WARM_ITERATIONS = (
    (12, 10, None),
    (SMALL_MAX_SIZE, 30, None),
    (_LONG_GUESS_MAX_SIZE, 100, 20),
    (None, 10, None),
)
# The relative violation of the KKT conditions accepted by pivoting and the finish.
PIVOTING_TOLERANCE = 1e-8
# Block pivoting steps (plus m / 2) before the rows it has not solved go to the active-set
# method, which may take this many times m steps (one coordinate per step).
_PIVOTING_STEPS, _ACTIVE_SET_STEPS = 30, 4
# The float32 guess: tolerance, and most pivoting steps (plus m / 4) beyond the long guess.
_ROUGH_TOLERANCE, _ROUGH_MAX_ITER = 1e-5, 20


def splits(m: int) -> bool:
    """Whether :func:`solve_box` runs ADMM first on problems of size ``m``."""
    return _SPLITTING_MIN_SIZE <= m <= _SPLITTING_MAX_SIZE


def solve_box(
    qp: BoxQP,
    x: Tensor | None,
    *,
    splitting_first: bool = True,
    penalty: float = RHO,
    pivot_all: bool = True,
    cg_max_iter: int | None = None,
) -> tuple[Tensor | None, bool]:
    """Solves ``qp`` from the start ``x`` (or a cold start).

    For ``_SPLITTING_MIN_SIZE ≤ m ≤ _SPLITTING_MAX_SIZE`` (unless not ``splitting_first``), ADMM
    first (with the penalty ``penalty``), pivoting for the rows it leaves; otherwise a guess,
    pivoting, and the sure finish. ``cg_max_iter`` bounds pivoting's CG solves (see
    :func:`._dual_cone_box.block_pivoting`).

    Returns the solution and whether ADMM solved any of its rows (when it did not, solving
    again by pivoting alone would only repeat the work). When ADMM solves no row and not
    ``pivot_all``, returns ``(None, False)`` instead of pivoting every row.
    """
    m = qp.matrix.shape[0]
    max_iter = _PIVOTING_STEPS + m // 2
    if splitting_first and splits(m):
        x, solved = splitting(
            qp,
            x,
            tolerance=PIVOTING_TOLERANCE,
            max_iter=_SPLITTING_STEPS,
            rho=penalty,
            give_up=not pivot_all,
        )
        if bool(solved.all()):
            return x, True
        rows = (~solved).nonzero().squeeze(1)
        some = len(rows) < len(x)
        if not (some or pivot_all):
            return None, False
        sub = BoxQP(qp.matrix, qp.linear[rows], qp.lower[rows])
        active = x[rows] <= sub.lower + _ROUGH_TOLERANCE * sub.scale()
        x[rows], _, converged = block_pivoting(
            sub,
            x[rows],
            active,
            tolerance=PIVOTING_TOLERANCE,
            max_iter=max_iter,
            loose_steps=0,
            cg_max_iter=cg_max_iter,
        )
        return (x if converged else _finish(qp, x)), some
    x = torch.clamp_min(qp.lower, 0) if x is None else x
    if m <= SMALL_MAX_SIZE:
        x, active = _guess(qp, x, PIVOTING_TOLERANCE)
        x, _, converged = pivot_small(qp, active, tolerance=PIVOTING_TOLERANCE, max_iter=max_iter)
    else:
        x, active = _rough_guess(qp, x)
        x, _, converged = block_pivoting(
            qp,
            x,
            active,
            tolerance=PIVOTING_TOLERANCE,
            max_iter=max_iter,
            loose_steps=0,
            cg_max_iter=cg_max_iter,
        )
    return (x if converged else _finish(qp, x)), False


def _guess(qp: BoxQP, x: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """FISTA's guess of the solution and of its active set, in the problem's dtype."""
    m = qp.matrix.shape[0]
    steps, period = next((n, p) for size, n, p in _WARM_ITERATIONS if size is None or m <= size)
    # Also from a warm start: FISTA keeps an optimal point and improves a stale one.
    x = accelerated_gradient(qp, x, steps, period=period, tolerance=tolerance)
    return x, x <= qp.lower + tolerance * qp.scale()


def _finish(qp: BoxQP, x: Tensor) -> Tensor:
    """Solves the rows that pivoting left unsolved by the (slower, sure) active-set method."""
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    rows = unsolved(qp, x, x @ qp.matrix, PIVOTING_TOLERANCE).nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    sub = BoxQP(qp.matrix, qp.linear[rows], qp.lower[rows])
    start = x[rows]
    working = start <= sub.lower + PIVOTING_TOLERANCE * sub.scale()
    max_iter = _ACTIVE_SET_STEPS * qp.matrix.shape[0]
    x[rows], _, _ = active_set(sub, start, working, tolerance=PIVOTING_TOLERANCE, max_iter=max_iter)
    return x


def _rough_guess(qp: BoxQP, x: Tensor) -> tuple[Tensor, Tensor]:
    """A float32 guess of the solution and of its active set.

    Float32 matrix products are about twice as fast; the float64 pivoting that follows starts
    from this guess and usually only has to confirm it with one exact solve.
    """
    rough = BoxQP(qp.matrix.float(), qp.linear.float(), qp.lower.float())
    x, active = _guess(rough, x.float(), _ROUGH_TOLERANCE)
    m = qp.matrix.shape[0]
    if m > _LONG_GUESS_MAX_SIZE:
        try:
            x, _, _ = block_pivoting(
                rough, x, active, tolerance=_ROUGH_TOLERANCE, max_iter=_ROUGH_MAX_ITER + m // 4
            )
            active = x <= rough.lower  # x ≥ ℓ, with equality exactly on the active set
        except RuntimeError:  # a float32 reduced system is not positive definite: keep FISTA's
            pass
    return x.to(qp.matrix), active


def polish(qp: BoxQP, x: Tensor) -> Tensor:
    """``x`` with each row's reduced system on its free set (``x > ℓ``) solved exactly, by one
    padded batched Cholesky, in the rows where that keeps ``x`` feasible.

    Iterative solves (ADMM, CG) leave a gradient of their tolerance on the free coordinates,
    which the complementarity ``g ⊙ (x − ℓ)`` of the final check multiplies by the slack: with
    very negative bounds (mixed-sign preferences), that product misses the check although the
    active set, and so the exact solution, is found.
    """
    free = x > qp.lower
    exact = solve_direct(pad_with_identity(qp.matrix), free, qp.linear, qp.lower)
    slack = PIVOTING_TOLERANCE * qp.scale()
    feasible = (exact >= qp.lower - slack).all(dim=1, keepdim=True)
    return torch.where(feasible, torch.maximum(exact, qp.lower), x)


def refine(qp: BoxQP, x: Tensor, ridge: Tensor, steps: int) -> Tensor:
    """Proximal-point steps from ``x``, the solution of ``qp``, towards the solution of the same
    problem without the ridge ``diag(ridge)`` that ``qp.matrix`` holds.

    A step solves ``min ½ yᵀ(M − diag(ridge))y − bᵀy + ½ (y − x)ᵀ diag(ridge) (y − x)`` on the
    free set of ``x`` (``x > ℓ``): the matrix of the reduced system is the well-conditioned
    ``M``, and ``x`` moves towards the solution without the ridge, by a factor
    ``ridge / (λ + ridge)`` of its distance along each eigenvalue ``λ`` of the reduced matrix,
    and not at all along its null space. A row keeps its last step that stays a solution of its
    step's problem (feasible, non-negative multipliers on the bounds); the others keep ``x``.

    Args:
        qp: the problem with the ridge.
        x: ``[k, m]`` its solution.
        ridge: ``[m]`` the ridge on the diagonal of ``qp.matrix``.
        steps: how many steps.
    """
    padded = pad_with_identity(qp.matrix)
    slack = PIVOTING_TOLERANCE * qp.scale()
    for _ in range(steps):
        free = x > qp.lower
        linear = qp.linear + ridge * x
        step = solve_direct(padded, free, linear, qp.lower)
        feasible = step >= qp.lower - slack
        step = torch.maximum(step, qp.lower)
        exact = torch.where(free, feasible, step @ qp.matrix - linear >= -slack)
        x = torch.where(exact.all(dim=1, keepdim=True), step, x)
    return x
