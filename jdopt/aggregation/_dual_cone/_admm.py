"""Over-relaxed ADMM for the box-constrained problems: converges at the speed of the reduced
problems on the free coordinates, in tens of steps, each one matrix product.

For ``min ½ xᵀMx − bᵀx  s.t.  x ≥ ℓ`` split as ``f(x) = ½ xᵀMx − bᵀx`` plus the indicator of the
box on a copy ``z = x``, ADMM in its Douglas–Rachford form iterates on one variable ``s``::

    z = max(s, ℓ)                          (projection onto the box)
    x = (b + ρ (2z − s)) (M + ρI)⁻¹         (proximal step of f)
    s = s + α (x − z)

All ``k`` problems share ``M``, so ``(M + ρI)⁻¹`` is computed once. In ``t = s − ℓ``
(``z = ℓ + max(t, 0)``, ``2z − s = ℓ + |t|``) a step is three operations::

    t ← (1 − α/2) t + α (c − ℓ) + |t| · α (ρ (M + ρI)⁻¹ − I/2),   c = (ρℓ + b)(M + ρI)⁻¹

Rows are checked at ``z`` when the slowest of them should be solved, at the rate of convergence
measured between two checks (:mod:`._admm_checks`); solved rows leave the batch once they are
half of it. A float64 problem first runs in float32 (products twice as fast) to
``float32_tolerance``, then in float64, unless float32 solved fewer than ``enough`` of its
rows: every row is then left to the next stage.

Boyd, Parikh, Chu, Peleato & Eckstein, *Distributed optimization and statistical learning via
the alternating direction method of multipliers*, 2011 (§3.4.3); Stellato et al., *OSQP: an
operator splitting solver for quadratic programs*, 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._admm_checks import Batch, Schedule, Step
from ._options import SolverOptions as Options
from ._problem import BoxQP


def admm(
    qp: BoxQP,
    x: Tensor | None,
    options: Options,
    *,
    penalty: float,
    give_up: bool = False,
) -> tuple[Tensor, Tensor]:
    """Runs ADMM with the penalty ``ρ = penalty`` on the float64 ``qp`` from ``x`` (or a cold
    start) until every row is solved to ``options.tolerance`` or the steps run out: at most
    ``admm_steps`` float32 ones, then ``admm_steps // 2`` float64 ones. With ``give_up``, the
    float32 phase stops early when its rate says it would not solve ``enough`` of the rows.

    Returns ``(z ≥ ℓ, [k] solved)``.
    """
    if x is not None:
        first = options.check_period
    elif penalty >= options.fast_penalty:
        first = options.first_check
    else:
        first = options.slow_first_check
    diagonal = _diagonal(qp, options.diagonal_size)
    step = _step(qp, penalty, diagonal, options.relaxation)
    start = _start(qp, x, options, penalty, diagonal and x is None)
    scale, steps = qp.scale().squeeze(1), options.admm_steps
    matrix, weight, bias, gradient = step.matrix, step.weight, step.bias, step.gradient_at_lower
    slack = options.float32_tolerance * scale.float()
    rough = Step(matrix.float(), weight.float(), bias.float(), gradient.float(), slack)
    t, rough_solved = _run(rough, start.float(), steps, first, options, give_up)
    t = t.double()
    if int(rough_solved.count_nonzero()) < options.enough * t.shape[0]:  # slow: leave it all
        return qp.lower + t.clamp_min_(0), torch.zeros_like(rough_solved)
    # Every row goes on in float64, those float32 left too: most of them only sit at float32's
    # rounding floor, just above its tolerance.
    tight = Step(matrix, weight, bias, gradient, options.tolerance * scale)
    t, solved = _run(tight, t, steps // 2, options.float64_first_check, options)
    return qp.lower + t.clamp_min_(0), solved


def admm_fixed(
    qp: BoxQP, x: Tensor | None, options: Options, *, penalty: float, steps: tuple[int, int]
) -> tuple[Tensor, None]:
    """ADMM with the penalty ``ρ = penalty`` on the float64 ``qp`` from ``x`` (or a cold start):
    ``steps`` float32 then float64 steps, without a check (nothing is read on the host).

    Returns ``(z ≥ ℓ, None)``: no row is known to be solved; the final check decides.
    """
    diagonal = _diagonal(qp, options.diagonal_size)
    step = _step(qp, penalty, diagonal, options.relaxation)
    t = _start(qp, x, options, penalty, diagonal and x is None)
    keep = 1 - options.relaxation / 2
    for dtype, count in zip((torch.float32, torch.float64), steps, strict=True):
        t, weight, bias = t.to(dtype), step.weight.to(dtype), step.bias.to(dtype)
        magnitude = torch.empty_like(t)
        for _ in range(count):
            torch.abs(t, out=magnitude)
            torch.add(bias, t, alpha=keep, out=t)
            t.addmm_(magnitude, weight)
    return qp.lower + t.clamp_min_(0), None


def _run(
    step: Step,
    t: Tensor,
    max_iter: int,
    first_check: int,
    options: Options,
    give_up: bool = False,
) -> tuple[Tensor, Tensor]:
    """ADMM steps in ``step``'s dtype, checked when :class:`Schedule` says, and at the last;
    returns ``(t, [k] solved)``."""
    batch = Batch(t, step)
    schedule = Schedule(first_check, options, give_up)
    keep = 1 - options.relaxation / 2
    # The step in locals, in place: it runs tens of times per solve (an addmm into a separate
    # output costs 1.5 times an in-place one).
    t, magnitude, bias, weight = batch.t, batch.magnitude, batch.step.bias, step.weight
    for iteration in range(1, max_iter + 1):
        torch.abs(t, out=magnitude)
        torch.add(bias, t, alpha=keep, out=t)
        t.addmm_(magnitude, weight)
        if iteration < schedule.next_check and iteration != max_iter:
            continue
        done, level = batch.check()
        count, rows = int(done.count_nonzero()), done.shape[0]
        if count == rows:
            break
        if schedule.stop(iteration, level, (count, rows), max_iter, batch.size):
            break
        if 2 * count >= rows:  # the solved rows leave the batch
            batch.drop(done)
            t, magnitude, bias = batch.t, batch.magnitude, batch.step.bias
    return batch.result()


def _start(qp: BoxQP, x: Tensor | None, options: Options, rho: float, diagonal: bool) -> Tensor:
    """``t`` at ``x`` (or ``max(ℓ, 0)``), with the multipliers ``ν = max(Mz − b, 0)`` of the
    bounds it sits on (``diagonal``: see :func:`_diagonal`)."""
    if x is None:
        z, on_bound = qp.lower.clamp_min(0), qp.lower >= 0
    else:
        z = torch.maximum(x, qp.lower)
        on_bound = z <= qp.lower + options.tolerance * qp.scale()
    gradient = _affine(z, qp.matrix, qp.linear, diagonal)  # Mz − b
    return (z - qp.lower).sub_(gradient.clamp_min_(0).mul_(on_bound), alpha=1 / rho)


def _diagonal(qp: BoxQP, smallest: int) -> bool:
    """Whether ``ℓ`` and ``b`` are diagonal (see BoxQP) and ``m ≥ smallest``: products with
    ``M`` then scale its rows, three ``m³`` products fewer per solve (m = 256: 1.4 ms of 13;
    below, the test costs what it saves)."""
    return qp.diagonal and qp.matrix.shape[0] >= smallest


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


def _step(qp: BoxQP, rho: float, diagonal: bool, relaxation: float) -> Step:
    """The matrix ``α (ρ (M + ρI)⁻¹ − I/2)``, the bias ``α (c − ℓ)`` of a step and the
    gradient ``ℓM − b`` at the bounds (``diagonal``: see :func:`_diagonal`)."""
    shifted = qp.matrix.clone()
    shifted.diagonal().add_(rho)
    # M + ρI is positive definite (M is positive semi-definite): LU needs no check, and MKL's
    # LU inverse is faster than the Cholesky one (at m = 256, 0.8 ms against 1 ms).
    inverse = torch.linalg.inv_ex(shifted)[0]
    weight = inverse * (rho * relaxation)
    weight.diagonal().sub_(relaxation / 2)
    # α (c − ℓ) = α ((ρℓ + b)(M + ρI)⁻¹ − ℓ)
    scaled = torch.add(qp.linear, qp.lower, alpha=rho)
    bias = _affine(scaled, inverse, qp.lower, diagonal, relaxation)
    gradient_at_lower = _affine(qp.lower, qp.matrix, qp.linear, diagonal)
    return Step(qp.matrix, weight, bias, gradient_at_lower, None)
