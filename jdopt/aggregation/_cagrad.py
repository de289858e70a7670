from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .._linalg import normalize
from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_nonnegative
from ._simplex import solve_simplex_qp

_MAX_ROUNDS = 500
_TOLERANCE = 1e-12


class CAGradWeighting(Weighting):
    """Conflict-Averse Gradient descent (CAGrad).

    With ``g₀`` the mean row and ``g_w = Jᵀw``, it solves
    ``w* = argmin_{w ∈ simplex} g_wᵀg₀ + c‖g₀‖‖g_w‖`` and returns the update
    ``g₀ + c‖g₀‖ g_w*/‖g_w*‖``: the direction within a ball of radius ``c‖g₀‖`` around ``g₀``
    that maximises the worst improvement among the objectives. The inner problem is solved
    without cvxpy: ``‖g_w‖ = min_τ (‖g_w‖²/τ + τ)/2``, so alternating exact simplex QPs in ``w``
    with the closed form in ``τ`` converges to the optimum.

    From Liu et al., *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS 2021
    (https://arxiv.org/abs/2110.14048). The paper's final rescaling by ``1/(1 + c²)`` is left
    to the learning rate.

    Properties: weighted, deterministic, permutation-invariant; not non-conflicting in general,
    not linear under scaling. ``c = 0`` gives the mean.

    Args:
        c: radius of the ball around the mean gradient, relative to its norm (``c ≥ 0``; the
            paper uses values in ``[0, 1)``, e.g. ``0.4``).
        norm_eps: the Gramian is divided by its trace; a trace, or a norm ``‖g_w*‖``, below
            ``norm_eps`` (default ``1e-4``) counts as zero and gives the mean weights back.
    """

    def __init__(self, c: float, norm_eps: float = 1e-4) -> None:
        super().__init__()
        check_nonnegative(c, "c")
        check_nonnegative(norm_eps, "norm_eps")
        self.c = c
        self.norm_eps = norm_eps

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        g = normalize(gramian, self.norm_eps).to("cpu", torch.float64)
        mean = torch.full((m,), 1.0 / m, dtype=torch.float64)
        radius = self.c * math.sqrt(max(float(mean @ g @ mean), 0.0))
        weights = mean
        if radius > 0.0:
            w = _solve_inner(g, g @ mean, radius)
            norm = math.sqrt(max(float(w @ g @ w), 0.0))
            if norm >= self.norm_eps:
                weights = mean + (radius / norm) * w
        return weights.to(dtype=gramian.dtype, device=gramian.device)

    def extra_repr(self) -> str:
        return f"c={self.c}, norm_eps={self.norm_eps}"


def _solve_inner(g: Tensor, linear: Tensor, radius: float) -> Tensor:
    """``argmin_{w ∈ simplex} linearᵀw + radius·sqrt(wᵀgw)`` by alternating minimisation."""
    w = solve_simplex_qp(g, torch.zeros_like(linear), tol=1e-12, max_iters=10 * len(linear))
    tau = math.sqrt(max(float(w @ g @ w), 0.0))
    for _ in range(_MAX_ROUNDS):
        if tau <= 0.0:
            return w
        w = solve_simplex_qp(
            (radius / tau) * g, linear, tol=1e-12, max_iters=10 * len(linear), initial=w
        )
        new_tau = math.sqrt(max(float(w @ g @ w), 0.0))
        if abs(new_tau - tau) <= _TOLERANCE * max(tau, 1.0):
            return w
        tau = new_tau
    warnings.warn(
        f"CAGrad's inner problem did not converge in {_MAX_ROUNDS} rounds; the weights may be "
        "inexact.",
        RuntimeWarning,
        stacklevel=4,
    )
    return w


class CAGrad(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`CAGradWeighting` (same arguments)."""

    def __init__(self, c: float, norm_eps: float = 1e-4) -> None:
        super().__init__(CAGradWeighting(c, norm_eps))
