"""Operator splitting (ADMM) for the box-constrained QPs of :mod:`._dual_cone_box`.

For ``min ½ xᵀMx − bᵀx  s.t.  x ≥ ℓ`` split as ``f(x) = ½ xᵀMx − bᵀx`` plus the indicator of the
box on a copy ``z = x``, over-relaxed ADMM in its Douglas–Rachford form iterates on one variable
``s``::

    z = max(s, ℓ)                          (projection onto the box)
    x = (b + ρ (2z − s)) (M + ρI)⁻¹         (proximal step of f)
    s = s + α (x − z)

All ``k`` problems share ``M``, so ``(M + ρI)⁻¹`` is computed once (one ``m × m`` inverse).
In ``t = s − ℓ`` (``z = ℓ + max(t, 0)``, ``2z − s = ℓ + |t|``) a step is three operations::

    t ← (1 − α/2) t + α (c − ℓ) + |t| · α (ρ (M + ρI)⁻¹ − I/2),   c = (ρℓ + b)(M + ρI)⁻¹

Unlike projected gradient methods, whose speed follows the condition number of the whole
``M``, ADMM with a well-chosen ``ρ`` converges at the speed of the reduced problem on the free
coordinates, which is much better conditioned on UPGrad's Gramians: tens of steps to a KKT
residual of 1e-8 with one fixed ``ρ`` (the Jacobi scaling gives ``M`` a unit diagonal).

Rows are checked against the KKT conditions at ``z`` (which is feasible) when the slowest of
them should meet them, predicted from its violation and the rate of convergence measured
between two checks (at most ``_CHECK_PERIOD`` steps apart); solved rows leave the batch once
they are half of it. A float64 problem first runs in float32 (products twice as fast) until
its rows are solved to 1e-6, then in float64, unless float32 solved fewer than ``_ENOUGH`` of
them (slow convergence: every row is then left to the caller); the caller finishes the rows
that do not converge by pivoting.

Boyd, Parikh, Chu, Peleato & Eckstein, *Distributed optimization and statistical learning via
the alternating direction method of multipliers*, 2011 (§3.4.3, over-relaxation); Stellato
et al., *OSQP: an operator splitting solver for quadratic programs*, 2020.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._dual_cone_box import BoxQP

# The default penalty for a unit-diagonal M, and the over-relaxation: measured on UPGrad's
# Gramians (full rank and low rank, m = 64–1024; OSQP's adaptive penalty lowered ρ where 0.5
# was better). Callers may pass a better ρ (see _dual_cone._penalty).
RHO, _RELAXATION = 0.5, 1.8
# The first KKT check comes at step _FIRST_CHECK (from a cold start, hardly any row converges
# sooner; from a warm start, at step _CHECK_PERIOD). With a penalty below _FAST_PENALTY, at
# step _SLOW_FIRST_CHECK: such problems (the dual, random Jacobians, per-sample CNN Gramians)
# converged in 20 to 40 steps in every measured case, those of per-sample MLP Gramians
# (ρ ≈ 0.9) in 6 to 17. The float64 phase checks first at step _FLOAT64_FIRST_CHECK: it needed
# 1 to 14 steps on the measured problems, 1 or 2 on per-sample MLP Gramians and low-rank ones
# at m = 256 (the first check then also sets the pace of the next).
_CHECK_PERIOD, _FIRST_CHECK = 10, 20
_SLOW_FIRST_CHECK, _FAST_PENALTY = 30, 0.8
_FLOAT64_FIRST_CHECK = 3
# Each later check comes when the slowest row should meet the tolerance, at most
# _CHECK_PERIOD steps on: its violation falls linearly at the rate measured between the last
# two checks, or at _RATE per step where that is faster or unknown (measured on UPGrad's
# Gramians: 0.45 to 0.8 per step; a check costs about two steps at m = 64).
_RATE = 0.75
# The float32 phase stops at this relative KKT residual ...
_FLOAT32_TOLERANCE = 1e-6
# ... and goes on in float64 when it has solved this fraction of the rows (near rank m/2, a
# primal problem that solves half of them in float32 is still faster than its dual).
_ENOUGH = 0.5
# Once one row in _FEW at most is left in a phase, it gets _PATIENCE more checks: slow rows
# are left to pivoting.
_FEW, _PATIENCE = 8, 2
# From this m on, square bounds and linear terms whose nonzero entries are all on their
# diagonals (UPGrad's, in the primal and in the dual) multiply M by scaling its rows: three
# m³ products fewer per solve (m = 256: 1.4 ms of 13). Below, the test costs what it saves.
_DIAGONAL_MIN_SIZE = 128


def splitting(
    qp: BoxQP,
    x: Tensor | None,
    *,
    tolerance: float,
    max_iter: int,
    rho: float = RHO,
    give_up: bool = False,
) -> tuple[Tensor, Tensor]:
    """Runs ADMM on ``qp`` from ``x`` (or a cold start) until every row meets the KKT
    conditions to ``tolerance`` (relative to :meth:`BoxQP.scale`) or the steps run out.

    A float64 ``qp`` runs at most ``max_iter`` float32 steps, then (when they solved at least
    ``_ENOUGH`` of the rows to ``_FLOAT32_TOLERANCE``) at most ``max_iter // 2`` float64 ones on
    every row.

    Returns ``(z, solved)``: the feasible iterate ``z ≥ ℓ`` and ``[k]`` which rows meet the
    conditions. ``rho`` is the penalty ``ρ``. With ``give_up``, the float32 phase stops early
    when, at the rate measured between two checks, it would not solve ``_ENOUGH`` of the rows
    in its steps (for a caller with a better plan than pivoting from ``z``).
    """
    lower = qp.lower
    if x is not None:
        first = _CHECK_PERIOD
    else:
        first = _FIRST_CHECK if rho >= _FAST_PENALTY else _SLOW_FIRST_CHECK
    scale = qp.scale().squeeze(1)
    diagonal = _diagonal(qp)
    gradient_at_lower = _affine(lower, qp.matrix, qp.linear, diagonal)  # ℓM − b
    weight, bias = _step(qp, rho, diagonal)
    if qp.matrix.dtype != torch.float64:
        t = _start(qp, x, tolerance, rho, diagonal)
        step = (weight, bias, gradient_at_lower, scale * tolerance)
        t, solved = _run(qp.matrix, t, step, max_iter, first, give_up=give_up)
        return lower + t.clamp_min_(0), solved
    t = _start(qp, x, tolerance, rho, diagonal).float()
    rough_step = (weight.float(), bias.float(), gradient_at_lower.float(), scale.float())
    rough_step[3].mul_(_FLOAT32_TOLERANCE)
    t, rough_solved = _run(qp.matrix.float(), t, rough_step, max_iter, first, give_up=give_up)
    t = t.double()
    count = int(rough_solved.count_nonzero())
    if count < _ENOUGH * len(t):  # slow: pivoting will do better
        return lower + t.clamp_min_(0), torch.zeros_like(rough_solved)
    # Every row goes on in float64, those float32 left too: most of them only sit at float32's
    # rounding floor, just above its tolerance (the slow ones go to pivoting after it).
    step = (weight, bias, gradient_at_lower, scale.mul_(tolerance))
    t, solved = _run(qp.matrix, t, step, max_iter // 2, _FLOAT64_FIRST_CHECK)
    return lower + t.clamp_min_(0), solved


def _start(qp: BoxQP, x: Tensor | None, tolerance: float, rho: float, diagonal: bool) -> Tensor:
    """``t`` at ``x`` (or ``max(ℓ, 0)``), with the multipliers ``ν = max(Mz − b, 0)`` of the
    bounds it sits on (``diagonal``: see :func:`_diagonal`)."""
    if x is None:
        z, on_bound = qp.lower.clamp_min(0), qp.lower >= 0
    else:
        z = torch.maximum(x, qp.lower)
        on_bound = z <= qp.lower + tolerance * qp.scale()
        diagonal = False
    gradient = _affine(z, qp.matrix, qp.linear, diagonal)  # Mz − b
    return (z - qp.lower).sub_(gradient.clamp_min_(0).mul_(on_bound), alpha=1 / rho)


def _diagonal(qp: BoxQP) -> bool:
    """Whether ``ℓ`` and ``b`` are ``[m, m]`` with nonzero entries on their diagonals only (and
    ``m ≥ _DIAGONAL_MIN_SIZE``): products with ``M`` then scale its rows."""
    m = qp.matrix.shape[0]
    lower, linear = qp.lower, qp.linear
    if m < _DIAGONAL_MIN_SIZE or lower.shape != (m, m) or linear.shape != (m, m):
        return False
    nonzero = torch.count_nonzero(lower) + torch.count_nonzero(linear)
    on_diagonal = torch.count_nonzero(lower.diagonal()) + torch.count_nonzero(linear.diagonal())
    return bool(nonzero == on_diagonal)


def _affine(
    rows: Tensor, matrix: Tensor, shift: Tensor, diagonal: bool, factor: float = 1.0
) -> Tensor:
    """``factor (rows @ matrix − shift)``, by scaling the rows of ``matrix`` when ``rows`` is
    diagonal. Row-major, like ``shift``, whatever the layout of ``matrix`` (LAPACK's inverses
    are column-major, and ADMM's elementwise steps on mixed layouts are 1.5 times slower)."""
    if diagonal:
        out = torch.empty_like(shift, memory_format=torch.contiguous_format)
        torch.mul(rows.diagonal().mul(factor).unsqueeze(1), matrix, out=out)
        return out.sub_(shift, alpha=factor)
    return torch.addmm(shift, rows, matrix, beta=-factor, alpha=factor)


def _run(
    matrix: Tensor,
    t: Tensor,
    step: tuple[Tensor, Tensor, Tensor, Tensor],
    max_iter: int,
    first_check: int,
    *,
    give_up: bool = False,
) -> tuple[Tensor, Tensor]:
    """ADMM steps in the dtype of ``matrix`` (``M``), checked at step ``first_check``, then
    when the slowest row should be solved (see :func:`_gap`), and at the last; returns
    ``(t, solved rows)``. With ``give_up``, they stop when fewer than half the rows are solved
    and the middle row would not be by ``max_iter`` (see :func:`_too_slow`).

    ``step`` holds :func:`_step`'s ``(weight, bias)``, the gradient ``ℓM − b`` at the bounds
    and the ``[k]`` absolute tolerances of the check. Once half the rows of the batch are
    solved, they leave it: the last, slow rows then cost little per step.
    """
    # t is updated in place (result is t until rows leave the batch). Only solved rows leave
    # it: those still in it at the end are solved only if the last check says so.
    result, rows = t, None
    weight, bias, gradient_at_lower, slack = step
    # The largest and the middle violation at the last check, in tolerances, and its step.
    previous_worst = previous_middle = math.inf
    last, next_check = 0, first_check
    magnitude = torch.empty_like(t)
    patience = _PATIENCE
    for iteration in range(1, max_iter + 1):
        # In place: an addmm into a separate output costs about 1.5 times an in-place one.
        torch.abs(t, out=magnitude)
        torch.add(bias, t, alpha=1 - _RELAXATION / 2, out=t)
        t.addmm_(magnitude, weight)
        if iteration < next_check and iteration != max_iter:
            continue
        excess = torch.clamp_min(t, 0, out=magnitude)  # z − ℓ
        gradient = torch.clone(gradient_at_lower).addmm_(excess, matrix)
        # The conditions of _dual_cone_active.unsolved, in fewer operations (z ≥ ℓ holds here):
        # g ≥ 0 everywhere and g = 0 off the bounds, i.e. |min(z − ℓ, g)| ≤ slack.
        violation = torch.minimum(excess, gradient, out=gradient).abs_().amax(dim=1)
        done = violation <= slack
        count = int(done.count_nonzero())
        if count == len(done):
            break
        level = violation.div_(slack)
        worst = float(level.amax())
        gap = _gap(previous_worst, worst, iteration - last)
        if give_up and rows is None and 2 * count < len(done):
            middle = float(level.median())
            if _too_slow(previous_middle, middle, iteration - last, max_iter - iteration):
                break
            previous_middle = middle
        previous_worst, last, next_check = worst, iteration, iteration + gap
        if len(done) * _FEW <= len(result):
            patience -= 1
            if patience < 0:  # the last few rows converge slowly: pivoting finishes them
                break
        if 2 * count >= len(done):  # the solved rows leave the batch
            if rows is not None:  # (until then, t is result: its rows hold their values)
                result[rows[done]] = t[done]
            keep = (~done).nonzero().squeeze(1)
            rows = keep if rows is None else rows[keep]
            t, bias, slack, done = t[keep], bias[keep], slack[keep], done[keep]
            gradient_at_lower = gradient_at_lower[keep]
            magnitude = torch.empty_like(t)
    if rows is None:
        return result, done
    result[rows] = t
    solved = torch.ones(len(result), dtype=torch.bool, device=t.device)
    solved[rows] = done
    return result, solved


def _gap(previous: float, worst: float, steps: int) -> int:
    """Steps to the next check: until a violation of ``worst`` tolerances (the slowest row's,
    ``previous`` at the check ``steps`` before, infinite at the first) falls to 1, at the rate
    measured between the two or ``_RATE`` per step, whichever is slower; at most
    ``_CHECK_PERIOD``, which is also the answer without progress (or with a zero tolerance, or
    NaN)."""
    decay = -math.log(_RATE)
    if not math.isinf(previous):
        measured = _decay(previous, worst, steps)
        if measured == 0:
            return _CHECK_PERIOD
        decay = min(decay, measured)
    steps_left = math.log(worst) / decay
    if not steps_left < _CHECK_PERIOD:
        return _CHECK_PERIOD
    return max(1, math.ceil(steps_left))


def _too_slow(previous: float, level: float, steps: int, steps_left: int) -> bool:
    """Whether a violation that went from ``previous`` to ``level`` (in tolerances) over the
    last ``steps`` steps would still be above 1 after ``steps_left`` more, converging linearly
    at that rate (``previous`` is infinite at the first check: no rate yet)."""
    if math.isinf(previous):
        return False
    decay = _decay(previous, level, steps)
    return decay == 0 or math.log(level) / decay > steps_left


def _decay(previous: float, level: float, steps: int) -> float:
    """The linear rate, in nats per step, at which a violation went from ``previous`` to
    ``level`` over ``steps`` steps; 0 without progress (NaN too)."""
    decay = math.log(previous / level) / steps
    return decay if decay > 0 else 0.0


def _step(qp: BoxQP, rho: float, diagonal: bool) -> tuple[Tensor, Tensor]:
    """The matrix ``α (ρ (M + ρI)⁻¹ − I/2)`` and the bias ``α (c − ℓ)`` of a step
    (``diagonal``: see :func:`_diagonal`)."""
    shifted = qp.matrix.clone()
    shifted.diagonal().add_(rho)
    # M + ρI is positive definite (M is positive semi-definite): LU needs no check, and MKL's
    # LU inverse is faster than the Cholesky one (at m = 256, 0.8 ms against 1 ms).
    inverse = torch.linalg.inv_ex(shifted)[0]
    weight = inverse * (rho * _RELAXATION)
    weight.diagonal().sub_(_RELAXATION / 2)
    # α (c − ℓ) = α ((ρℓ + b)(M + ρI)⁻¹ − ℓ)
    scaled = torch.add(qp.linear, qp.lower, alpha=rho)
    return weight, _affine(scaled, inverse, qp.lower, diagonal, _RELAXATION)
