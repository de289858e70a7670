"""Operator splitting (ADMM) for the box-constrained QPs of :mod:`._dual_cone_box`.

For ``min ½ xᵀMx − bᵀx  s.t.  x ≥ ℓ`` split as ``f(x) = ½ xᵀMx − bᵀx`` plus the indicator of the
box on a copy ``z = x``, over-relaxed ADMM in its Douglas–Rachford form iterates on one variable
``s``::

    z = max(s, ℓ)                          (projection onto the box)
    x = (b + ρ (2z − s)) (M + ρI)⁻¹         (proximal step of f)
    s = s + α (x − z)

All ``k`` problems share ``M``, so ``(M + ρI)⁻¹`` is computed once (one ``m × m`` Cholesky).
In ``t = s − ℓ`` (``z = ℓ + max(t, 0)``, ``2z − s = ℓ + |t|``) a step is three operations::

    t ← (1 − α/2) t + α (c − ℓ) + |t| · α (ρ (M + ρI)⁻¹ − I/2),   c = (ρℓ + b)(M + ρI)⁻¹

Unlike projected gradient methods, whose speed follows the condition number of the whole
``M``, ADMM with a well-chosen ``ρ`` converges at the speed of the reduced problem on the free
coordinates, which is much better conditioned on UPGrad's Gramians: tens of steps to a KKT
residual of 1e-8. ``ρ`` follows the balance of the primal and dual residuals (OSQP's rule),
the factorisation redone when it asks for a change by more than ``_RHO_CHANGE``; ``t`` is
rescaled so that the multipliers ``ν = ρ (z − s)`` carry over.

Rows are checked every ``_CHECK_PERIOD`` steps against the KKT conditions at ``z`` (which is
feasible). A float64 problem first runs in float32 (products twice as fast) until that
precision stops helping; the caller finishes the rows that do not converge by pivoting.

Boyd, Parikh, Chu, Peleato & Eckstein, *Distributed optimization and statistical learning via
the alternating direction method of multipliers*, 2011 (§3.4.1, over-relaxation and varying
penalty); Stellato et al., *OSQP: an operator splitting solver for quadratic programs*, 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._dual_cone_box import BoxQP

# The starting penalty for a unit-diagonal M, and the over-relaxation.
_RHO, _RELAXATION = 0.5, 1.8
# KKT check every _CHECK_PERIOD steps; penalty update at every other check, when the
# residuals ask for a change by more than a factor _RHO_CHANGE.
_CHECK_PERIOD, _RHO_CHANGE = 10, 2.0
# ... within this factor of _RHO.
_RHO_RANGE = 20.0
# From a cold start, no row converges in fewer steps than this: the first check.
_FIRST_CHECK = 20
# The float32 phase stops at this relative KKT residual.
_ROUGH_TOLERANCE = 1e-6
# ... and goes on in float64 when it has solved this fraction of the rows.
_ENOUGH = 0.75


def splitting(
    qp: BoxQP, x: Tensor | None, *, tolerance: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Runs ADMM on ``qp`` from ``x`` (or a cold start) until every row meets the KKT
    conditions to ``tolerance`` (relative to :meth:`BoxQP.scale`) or the steps run out.

    A float64 ``qp`` runs at most ``max_iter`` float32 steps, then (when they solved most rows
    to ``_ROUGH_TOLERANCE``) at most ``max_iter // 2`` float64 ones.

    Returns ``(z, solved)``: the feasible iterate ``z ≥ ℓ`` and ``[k]`` which rows meet the
    conditions.
    """
    rho, lower = _RHO, qp.lower
    # From x (or max(ℓ, 0)), with the multipliers ν = max(Mz − b, 0) of the bounds it sits on.
    first = _FIRST_CHECK if x is None else _CHECK_PERIOD
    z = lower.clamp_min(0) if x is None else torch.maximum(x, lower)
    on_bound = z <= lower + tolerance * qp.scale()
    t = (z - lower) - (z @ qp.matrix - qp.linear).clamp_min_(0).mul_(on_bound) / rho
    step = _step(qp, rho, _inverse(qp.matrix, rho))
    if qp.matrix.dtype == torch.float64:
        rough = BoxQP(qp.matrix.float(), qp.linear.float(), lower.float())
        rough_step = (step[0].float(), step[1].float())
        t, changed, solved = _run(
            rough, t.float(), rho, rough_step, _ROUGH_TOLERANCE, max_iter, first
        )
        t = t.double()
        if int(solved.sum()) < _ENOUGH * len(solved):  # slow: pivoting will do better
            return lower + t.clamp_min(0), torch.zeros_like(solved)
        if changed != rho:
            rho, step = changed, _step(qp, changed, _inverse(qp.matrix, changed))
        # Float64 polishes what float32 found: checked more often, with the same penalty.
        t, _, solved = _run(
            qp, t, rho, step, tolerance, max_iter // 2, _CHECK_PERIOD, _CHECK_PERIOD // 2, False
        )
        return lower + t.clamp_min(0), solved
    t, _, solved = _run(qp, t, rho, step, tolerance, max_iter, first)
    return lower + t.clamp_min(0), solved


def _run(
    qp: BoxQP,
    t: Tensor,
    rho: float,
    step: tuple[Tensor, Tensor],
    tolerance: float,
    max_iter: int,
    first_check: int,
    period: int = _CHECK_PERIOD,
    adapt: bool = True,
) -> tuple[Tensor, float, Tensor]:
    """ADMM steps in the dtype of ``qp``, from :func:`_step`'s ``(weight, bias)``, checked at step
    ``first_check`` and every ``period`` steps after it, adapting ``ρ`` at every other check
    if ``adapt``; returns ``(t, ρ, solved rows)``.

    Once half the rows of the batch are solved, they leave it: the last, slow rows then cost
    little per step.
    """
    result, solved = t, torch.zeros(len(t), dtype=torch.bool, device=t.device)
    rows = torch.arange(len(t), device=t.device)
    sub, t = qp, t.clone()
    weight, bias = step
    slack = tolerance * sub.scale()
    gradient_at_lower = sub.lower @ sub.matrix - sub.linear
    magnitude, base = torch.empty_like(t), torch.empty_like(t)
    checks = 0
    for iteration in range(1, max_iter + 1):
        checking = (
            iteration >= first_check and (iteration - first_check) % period == 0
        ) or iteration == max_iter
        adapting = adapt and checking and checks % 2 == 1
        previous = t.clone() if adapting else None
        torch.abs(t, out=magnitude)
        torch.add(bias, t, alpha=1 - _RELAXATION / 2, out=base)
        torch.addmm(base, magnitude, weight, out=t)
        if not checking:
            continue
        checks += 1
        excess = t.clamp_min(0)  # z − ℓ
        gradient = torch.addmm(gradient_at_lower, excess, sub.matrix)
        # g ≥ 0 everywhere, and g = 0 off the bounds.
        done = (gradient.amin(dim=1, keepdim=True) >= -slack) & (
            (gradient * (excess > slack)).abs_().amax(dim=1, keepdim=True) <= slack
        )
        done = done.squeeze(1)
        solved[rows] = done
        count = int(done.sum())
        if count == len(done):
            break
        if previous is not None:
            rho, weight, bias, t = _adapt(sub, rho, t, previous, excess, gradient, weight, bias)
        if 2 * count >= len(done):  # the solved rows leave the batch
            result[rows[done]] = t[done]
            keep = (~done).nonzero().squeeze(1)
            rows, t, bias, slack = rows[keep], t[keep], bias[keep], slack[keep]
            gradient_at_lower = gradient_at_lower[keep]
            sub = BoxQP(sub.matrix, sub.linear[keep], sub.lower[keep])
            magnitude, base = torch.empty_like(t), torch.empty_like(t)
    result[rows] = t
    return result, rho, solved


def _adapt(
    qp: BoxQP,
    rho: float,
    t: Tensor,
    previous: Tensor,
    excess: Tensor,
    gradient: Tensor,
    weight: Tensor,
    bias: Tensor,
) -> tuple[float, Tensor, Tensor, Tensor]:
    """OSQP's penalty update: ``ρ √(primal / dual)`` of the relative residuals, within
    ``_RHO_RANGE`` of ``_RHO``, applied when it changes ``ρ`` by more than ``_RHO_CHANGE``.

    The primal residual is ``x − z = (t − previous) / α``, the dual one ``Mz − b − ν`` with the
    multipliers ``ν = ρ (z − s)``. Returns ``(ρ, weight, bias, t)``, ``t`` rescaled to keep ``ν``.
    """
    multipliers = (t - excess).mul_(-rho)
    primal = float((t - previous).norm()) / _RELAXATION
    primal /= max(float((qp.lower + excess).norm()), 1e-300)
    dual = float((gradient - multipliers).norm())
    dual /= max(float(gradient.norm() + qp.linear.norm()), float(multipliers.norm()), 1e-300)
    ratio = (primal / max(dual, 1e-300)) ** 0.5
    new_rho = min(max(rho * ratio, _RHO / _RHO_RANGE), _RHO * _RHO_RANGE)
    if rho / _RHO_CHANGE <= new_rho <= rho * _RHO_CHANGE:
        return rho, weight, bias, t
    weight, bias = _step(qp, new_rho, _inverse(qp.matrix, new_rho))
    return new_rho, weight, bias, excess + (t - excess) * (rho / new_rho)


def _inverse(matrix: Tensor, rho: float) -> Tensor:
    """``(M + ρI)⁻¹``."""
    shifted = matrix.clone()
    shifted.diagonal().add_(rho)
    return torch.cholesky_inverse(torch.linalg.cholesky(shifted))


def _step(qp: BoxQP, rho: float, inverse: Tensor) -> tuple[Tensor, Tensor]:
    """The matrix ``α (ρ (M + ρI)⁻¹ − I/2)`` and the bias ``α (c − ℓ)`` of a step."""
    weight = inverse * (rho * _RELAXATION)
    weight.diagonal().sub_(_RELAXATION / 2)
    # α (c − ℓ) = α ((ρℓ + b)(M + ρI)⁻¹ − ℓ)
    source = qp.lower * rho if not bool(qp.linear.any()) else qp.lower * rho + qp.linear
    bias = torch.addmm(qp.lower, source, inverse, beta=-_RELAXATION, alpha=_RELAXATION)
    return weight, bias
