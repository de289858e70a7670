"""The Nash bargaining weights: the ``α > 0`` with ``G α = 1/α``, by damped Newton.

``α`` is the unique minimiser of the strictly convex potential
``F(α) = ½ αᵀGα − Σᵢ log αᵢ`` over ``α > 0`` (its gradient is ``Gα − 1/α``). ``F`` is
self-concordant, so Newton's method with a backtracking line search converges from any positive
start, and quadratically once the Newton decrement is below ``¼``: 3–10 iterations on
full-rank Jacobians (2–3 from a warm start), up to ~16 on rank-deficient ones with many more
rows than their rank. The solve runs in float64 on the CPU: ``G`` is tiny (``[m, m]``) and the loop
makes many small, data-dependent decisions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RIDGE = 1e-6
"""Ridge added to the cosine matrix (unit diagonal), so that a singular ``G`` has a solution."""

TOLERANCE = 1e-7
"""Convergence threshold on the relative residual ``max |αᵢ (Gα)ᵢ − 1|``."""

_PURE_NEWTON = 0.25  # Newton decrement below which the full step is safe and converges fast.
_ARMIJO = 0.25


def solve_nash(gramian: Tensor, warm_start: Tensor | None, max_iter: int) -> tuple[Tensor, float]:
    """Returns ``α`` (``[m]``, float64, CPU) and the final relative residual.

    The problem is solved on the cosine matrix ``C = D⁻¹GD⁻¹`` (``D = diag(‖gᵢ‖)``): with
    ``α = D⁻¹β``, ``G α = 1/α`` is exactly ``C β = 1/β``, so the scale of each row drops out.
    ``C`` gets a ridge ``RIDGE·I`` so that a singular ``G`` still has a solution. Zero rows
    cannot take part in the bargaining; they get weight 0. A zero ``G`` gives zeros.

    Args:
        gramian: ``[m, m]`` positive semi-definite matrix.
        warm_start: ``[m]`` previous solution, or ``None``. Only its direction matters.
        max_iter: the maximum number of Newton iterations.
    """
    gramian = gramian.detach().to(device="cpu", dtype=torch.float64)
    norms = gramian.diagonal().clamp(min=0.0).sqrt()
    active = norms > 0
    alpha = torch.zeros_like(norms)
    if not bool(active.any()):
        return alpha, 0.0
    norms = norms[active]
    # Dividing by each norm in turn cannot underflow, unlike dividing by their product.
    cosines = gramian[active][:, active] / norms.unsqueeze(1) / norms.unsqueeze(0)
    cosines = _regularize(cosines)
    warm = None if warm_start is None else warm_start.detach().cpu().double()[active] * norms
    beta = _start(cosines, warm)
    for _ in range(max_iter):
        if _residual(cosines, beta) <= TOLERANCE:
            break
        beta = _newton_step(cosines, beta)
    alpha[active] = beta / norms
    return alpha, _residual(cosines, beta)


def _regularize(gramian: Tensor) -> Tensor:
    """Clips the eigenvalues at 0 (rounding can make them slightly negative), adds the ridge."""
    eigenvalues, eigenvectors = torch.linalg.eigh((gramian + gramian.T) / 2)
    eigenvalues = eigenvalues.clamp(min=0.0) + RIDGE
    return (eigenvectors * eigenvalues) @ eigenvectors.T


def _potential(gramian: Tensor, alpha: Tensor) -> float:
    if not bool((alpha > 0).all()):
        return math.inf
    return float(0.5 * alpha @ gramian @ alpha - alpha.log().sum())


def _residual(gramian: Tensor, alpha: Tensor) -> float:
    return float((alpha * (gramian @ alpha) - 1).abs().max())


def _start(gramian: Tensor, warm_start: Tensor | None) -> Tensor:
    """The better of ``1/√diag(C)`` (exact for diagonal ``C``) and the warm start.

    Each candidate is first rescaled by the ``t`` that minimises ``F(t·α)``:
    ``t = √(m / αᵀGα)``.
    """
    candidates = [gramian.diagonal().rsqrt()]
    if warm_start is not None and bool((warm_start > 0).all() & warm_start.isfinite().all()):
        candidates.append(warm_start)
    m = gramian.shape[0]
    scaled = [alpha * math.sqrt(m / float(alpha @ gramian @ alpha)) for alpha in candidates]
    return min(scaled, key=lambda alpha: _potential(gramian, alpha))


def _newton_step(gramian: Tensor, alpha: Tensor) -> Tensor:
    gradient = gramian @ alpha - 1 / alpha
    hessian = gramian + torch.diag(alpha.pow(-2))
    direction = -torch.linalg.solve(hessian, gradient)
    decrement = float(-(gradient @ direction))  # λ², the squared Newton decrement
    candidate = alpha + direction
    if decrement < _PURE_NEWTON**2 and bool((candidate > 0).all()):
        return candidate
    return alpha + _line_search(gramian, alpha, direction, decrement) * direction


def _line_search(gramian: Tensor, alpha: Tensor, direction: Tensor, decrement: float) -> float:
    """Backtracks from step 1 (Armijo); when step 1 is accepted, extrapolates by doubling.

    Doubling matters when ``G`` is (nearly) singular: along a near-null direction ``F``
    behaves like ``½εt² − log t`` and plain Newton only doubles ``α`` per iteration.
    """
    start = _potential(gramian, alpha)
    step = 1.0
    value = _potential(gramian, alpha + direction)
    while value > start - _ARMIJO * step * decrement:
        step /= 2
        if step < 1e-12:
            return 0.0
        value = _potential(gramian, alpha + step * direction)
    while step >= 1.0 and step < 2.0**40:
        doubled = _potential(gramian, alpha + 2 * step * direction)
        if not doubled < value:
            break
        step, value = 2 * step, doubled
    return step
