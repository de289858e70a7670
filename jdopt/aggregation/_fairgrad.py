"""FairGrad: the weights ``x > 0`` with ``G x = x^(-1/α)``, by damped Newton in torch.

``x`` is the unique minimiser over ``x > 0`` of the strictly convex potential
``F(x) = ½ xᵀGx + Σᵢ h(xᵢ)``, where ``h′(t) = −t^(−1/α)``: ``h(t) = −log t`` for ``α = 1`` and
``h(t) = −t^p / p`` with ``p = 1 − 1/α`` otherwise. Its gradient is ``Gx − x^(−1/α)`` and its
Hessian ``G + diag(x^(−1/α−1) / α)``, positive definite, so Newton's method with a backtracking
line search converges from any positive start.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_int, check_nonnegative

RIDGE = 1e-8
"""Ridge added to the cosine matrix of the rows, so that a singular ``G`` has a solution."""

TOLERANCE = 1e-10
"""Largest accepted ``|(Gx)ᵢ − xᵢ^(−1/α)|``, relative to ``(|G|x)ᵢ + xᵢ^(−1/α)``."""

DEFAULT_ITERS = 100
_ARMIJO = 0.25
_PURE_NEWTON = 1e-4  # squared Newton decrement below which the full step is tried first
_CPU = torch.device("cpu")


class FairGradWeighting(Weighting):
    """FairGrad: α-fair shares of the first-order progress.

    Each row gets the progress ``gᵢ·update = (Gx)ᵢ``; FairGrad picks the update that maximises
    the α-fair utility of these progresses (Equation 4 of the paper). Its weights are the
    ``x > 0`` with ``G x = x^(−1/α)`` elementwise, found by a damped Newton method on a strictly
    convex potential (no external solver), in float64 on the CPU. ``α = 0`` is the mean
    (weights ``1/m``), ``α = 1`` the Nash bargaining solution of Nash-MTL (without its
    clipping), and large ``α`` approaches max-min fairness.

    The system is solved on ``G`` with a ridge of ``1e-8`` times each diagonal entry (on the
    cosine matrix, whose eigenvalues are first clipped at 0), so that a singular ``G`` still
    has a solution; the weights are accurate to about that relative level. Zero rows cannot
    take a share and get weight 0; a zero ``G`` gives zero weights. Newton stops when every
    ``|(Gx)ᵢ − xᵢ^(−1/α)|`` is at most ``1e-10`` times ``(|G|x)ᵢ + xᵢ^(−1/α)`` (the size of the
    terms, so rounding cannot prevent it); if it does not within ``max_iters`` iterations, a
    ``RuntimeError`` is raised.

    From Ban & Ji, *Fair Resource Allocation in Multi-Task Learning*, ICML 2024
    (https://arxiv.org/abs/2402.15638).

    Properties: non-conflicting when the rows are linearly independent (``J·update =
    x^(−1/α) > 0``, up to the ridge), weighted, deterministic, permutation-invariant; not
    linear under scaling (scaling ``G`` by ``s`` scales ``x`` by ``s^(−α/(1+α))``). Not
    differentiable: the weights come from Newton's method, outside autograd.

    Args:
        alpha: the fairness parameter ``α ≥ 0``.
        max_iters: the maximum number of Newton iterations; ``None`` (default) means 100.
            Newton needs about 5–15 on full-rank Gramians, up to ~40 on singular ones.
    """

    stateless = True

    differentiable = False  # Newton's method runs outside autograd

    def __init__(self, alpha: float, max_iters: int | None = None) -> None:
        super().__init__()
        check_nonnegative(alpha, "alpha")
        if max_iters is not None:
            check_int(max_iters, "max_iters", minimum=1)
        self.alpha = alpha
        self.max_iters = max_iters

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        if self.alpha == 0:
            return torch.full((m,), 1.0 / m, dtype=gramian.dtype, device=gramian.device)
        iters = DEFAULT_ITERS if self.max_iters is None else self.max_iters
        weights, residual = solve_fairgrad(gramian, float(self.alpha), iters)
        if residual > TOLERANCE:
            raise RuntimeError(
                f"FairGrad: Newton did not solve G x = x^(-1/alpha) (alpha={self.alpha}) within "
                f"max_iters={iters} iterations (relative residual {residual:.2e} > "
                f"{TOLERANCE:.0e}). Increase `max_iters`, or check the Gramian's scale."
            )
        return weights.to(dtype=gramian.dtype, device=gramian.device)


class FairGrad(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`FairGradWeighting` (see it for the definition).

    Args:
        alpha: the fairness parameter ``α ≥ 0``.
        max_iters: the maximum number of Newton iterations; ``None`` (default) means 100.
    """

    weighting: FairGradWeighting

    def __init__(self, alpha: float, max_iters: int | None = None) -> None:
        super().__init__(FairGradWeighting(alpha, max_iters))

    def __str__(self) -> str:
        return f"{self.weighting.alpha}-FairGrad"


def solve_fairgrad(gramian: Tensor, alpha: float, max_iter: int) -> tuple[Tensor, float]:
    """Returns ``x`` (``[m]``, float64, CPU), 0 on the zero rows, and the final residual.

    The active rows' Gramian is divided by its largest diagonal entry ``s`` before the solve
    (then ``x`` is multiplied by ``s^(−α/(1+α))``, which solves the original system).
    """
    gramian = gramian.detach().to(device=_CPU, dtype=torch.float64)
    diagonal = gramian.diagonal().clamp(min=0.0)
    active = diagonal > 0
    x = torch.zeros_like(diagonal)
    if not bool(active.any()):
        return x, 0.0
    scale = float(diagonal[active].max())
    system = _regularize(gramian[active][:, active] / scale)
    solution = _start(system, alpha)
    for _ in range(max_iter):
        if _residual(system, solution, alpha) <= TOLERANCE:
            break
        solution = _newton_step(system, solution, alpha)
    x[active] = solution * scale ** (-alpha / (1 + alpha))
    return x, _residual(system, solution, alpha)


def _regularize(gramian: Tensor) -> Tensor:
    """``D (C⁺ + RIDGE·I) D``: ``C`` the cosine matrix with eigenvalues clipped at 0."""
    norms = gramian.diagonal().sqrt()
    cosines = gramian / norms.unsqueeze(1) / norms.unsqueeze(0)
    eigenvalues, eigenvectors = torch.linalg.eigh((cosines + cosines.T) / 2)
    cosines = (eigenvectors * (eigenvalues.clamp(min=0.0) + RIDGE)) @ eigenvectors.T
    return cosines * norms.unsqueeze(1) * norms.unsqueeze(0)


def _start(gramian: Tensor, alpha: float) -> Tensor:
    """The solution for the diagonal of ``G``: ``xᵢ = Gᵢᵢ^(−α/(1+α))``."""
    return gramian.diagonal() ** (-alpha / (1 + alpha))


def _potential(gramian: Tensor, x: Tensor, alpha: float) -> float:
    if not bool((x > 0).all()):
        return math.inf
    p = 1 - 1 / alpha
    barrier = -x.log().sum() if alpha == 1 else -(x**p).sum() / p
    return float(0.5 * x @ gramian @ x + barrier)


def _residual(gramian: Tensor, x: Tensor, alpha: float) -> float:
    target = x ** (-1 / alpha)
    error = (gramian @ x - target).abs()
    size = gramian.abs() @ x + target
    return float((error / size).max())


def _newton_step(gramian: Tensor, x: Tensor, alpha: float) -> Tensor:
    gradient = gramian @ x - x ** (-1 / alpha)
    hessian = gramian + torch.diag(x ** (-1 / alpha - 1) / alpha)
    direction = -torch.linalg.solve(hessian, gradient)
    decrement = float(-(gradient @ direction))
    candidate = x + direction
    # Near the solution the potential's changes drop below its rounding: take the full step
    # as long as it reduces the residual (Newton then converges quadratically).
    close = decrement < _PURE_NEWTON and bool((candidate > 0).all())
    if close and _residual(gramian, candidate, alpha) < _residual(gramian, x, alpha):
        return candidate
    return x + _line_search(gramian, x, direction, decrement, alpha) * direction


def _line_search(
    gramian: Tensor, x: Tensor, direction: Tensor, decrement: float, alpha: float
) -> float:
    """Backtracks (Armijo) from step 1, or from just short of the boundary ``x = 0``; when
    step 1 is accepted, extrapolates by doubling, which crosses the near-null directions of a
    singular ``G`` in few iterations."""
    start = _potential(gramian, x, alpha)
    # Stop short of the boundary x = 0: a coordinate can shrink 1000-fold in one step.
    shrinking = direction < 0
    ratios = -x[shrinking] / direction[shrinking]
    step = min(1.0, 0.999 * float(ratios.min())) if ratios.numel() else 1.0
    value = _potential(gramian, x + step * direction, alpha)
    while not value <= start - _ARMIJO * step * decrement:
        step /= 2
        if step < 1e-12:
            return 0.0
        value = _potential(gramian, x + step * direction, alpha)
    while 1.0 <= step < 2.0**40:
        doubled = _potential(gramian, x + 2 * step * direction, alpha)
        if not doubled < value:
            break
        step, value = 2 * step, doubled
    return step
