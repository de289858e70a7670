from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from .._linalg import normalize
from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_nonnegative
from ._repr import number_str
from ._simplex import affine_minimizer, solve_simplex_qp

_MAX_ROUNDS = 200
_TOLERANCE = 1e-12


class CAGradWeighting(Weighting):
    """Conflict-Averse Gradient descent (CAGrad).

    With ``g₀`` the mean row and ``g_w = Jᵀw``, it solves
    ``w* = argmin_{w ∈ simplex} g_wᵀg₀ + c‖g₀‖‖g_w‖`` and returns the update
    ``g₀ + c‖g₀‖ g_w*/‖g_w*‖``: the direction within a ball of radius ``c‖g₀‖`` around ``g₀``
    that maximises the worst improvement among the objectives. The inner problem is solved
    exactly without cvxpy: a one-dimensional root search over exact simplex QPs, which lands on
    the optimum in closed form once their support is the optimal one. Where ``g_w* = 0`` (0 is
    in the rows' convex hull, so no update improves every objective), the weights are zero, as
    in TorchJD: the zero update reaches the best worst-case improvement, 0, though for ``c < 1``
    it lies outside the ball (where other updates reach 0 too).

    From Liu et al., *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS 2021
    (https://arxiv.org/abs/2110.14048). The paper's final rescaling by ``1/(1 + c²)`` is left
    to the learning rate.

    Properties: weighted, deterministic, permutation-invariant; not non-conflicting in general,
    not linear under scaling. ``c = 0`` gives the mean.

    Args:
        c: radius of the ball around the mean gradient, relative to its norm (``c ≥ 0``; the
            paper uses values in ``[0, 1)``, e.g. ``0.4``).
        norm_eps: the Gramian is divided by its trace; a trace below ``norm_eps`` (default
            ``1e-4``) counts as zero and gives the mean weights back; a norm ``‖g_w*‖`` below it
            (in the trace-normalised Gramian) counts as zero and gives zero weights.
    """

    stateless = True

    differentiable = False  # the inner problem is solved outside autograd

    def __init__(self, c: float, norm_eps: float = 1e-4) -> None:
        super().__init__()
        check_nonnegative(c, "c")
        check_nonnegative(norm_eps, "norm_eps")
        self.c = c
        self.norm_eps = norm_eps

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        g = normalize(gramian.detach(), self.norm_eps).to("cpu", torch.float64).numpy()
        mean = np.full(m, 1.0 / m)
        linear = g @ mean  # (g_i · g₀)_i
        radius = self.c * math.sqrt(max(float(mean @ linear), 0.0))
        weights = mean
        if radius > 0.0:
            w, norm = _solve_inner(g, linear, radius, self.norm_eps)
            # ‖g_w*‖ ≈ 0: no update improves every objective; TorchJD's choice is not to move.
            weights = (
                mean + (radius / norm) * w if norm > 0 and norm >= self.norm_eps else np.zeros(m)
            )
        return torch.from_numpy(weights).to(dtype=gramian.dtype, device=gramian.device)


def _solve_inner(
    g: np.ndarray, linear: np.ndarray, radius: float, norm_eps: float
) -> tuple[np.ndarray, float]:
    """``w* = argmin_{w ∈ simplex} linearᵀw + radius·‖g_w‖`` and ``‖g_w*‖`` (``0.0`` when it is
    below ``norm_eps``).

    For ``μ > 0`` let ``w(μ)`` minimise the smooth ``(μ/2)‖g_w‖² + linearᵀw`` (an exact simplex
    QP). Where ``‖g_w*‖ > 0``, ``w* = w(μ*)`` for the root ``μ*`` of
    ``h(μ) = μ‖g_{w(μ)}‖ − radius``, which is non-decreasing in ``μ`` (the inner objective is
    ``min_τ linearᵀw + radius·(‖g_w‖²/τ + τ)/2``, jointly convex, with ``μ = radius/τ``). The root
    is bracketed, and each step jumps to the root that the current support would give in closed
    form (see :func:`_root_on_support`), or bisects when that leaves the bracket: once the
    support is the optimal one, the jump lands on ``μ*`` exactly. No root below ``μ`` with
    ``radius/μ ≤ norm_eps`` means ``‖g_w*‖ < norm_eps``; nor with ``radius/μ`` below the
    resolution of norms computed from ``g`` (``√ε`` of the longest row), whatever ``norm_eps``.
    """
    lo, hi, mu, corral = 0.0, math.inf, 1.0, None
    resolution = math.sqrt(np.finfo(np.float64).eps * float(np.diagonal(g).max()))
    for _ in range(_MAX_ROUNDS):
        corral = solve_simplex_qp(
            mu * g, linear, tol=_TOLERANCE, max_iters=10 * len(g) + 10, start=corral
        )
        w = corral.dense(len(g))
        norm = math.sqrt(max(float(w @ g @ w), 0.0))
        h = mu * norm - radius
        if abs(h) <= _TOLERANCE * radius or hi <= lo * (1 + _TOLERANCE):
            return w, norm
        if h < 0:
            lo = mu
            if radius / mu <= max(norm_eps, resolution):  # ‖g_w*‖ < radius/μ
                return w, 0.0
        else:
            hi = mu
        mu = _next_mu(_root_on_support(g, linear, radius, corral.support), lo, hi)
    warnings.warn(
        f"CAGrad's inner problem did not converge in {_MAX_ROUNDS} rounds; the weights may be "
        "inexact. Please report this input.",
        RuntimeWarning,
        stacklevel=4,
    )
    return w, norm


def _root_on_support(
    g: np.ndarray, linear: np.ndarray, radius: float, support: np.ndarray
) -> float | None:
    """The root of ``h`` if the optimal support were ``support``, or ``None``.

    On a fixed (affinely independent) support, ``w(μ) = w₀ + u/μ`` with ``w₀`` the affine
    minimiser of ``‖g_w‖²`` and ``u`` (``Σu = 0``) that of ``‖g_u‖²/2 + linearᵀu``; since
    ``G_S w₀ ∝ 1``, ``g_{w₀} ⟂ g_u`` and ``μ²‖g_{w(μ)}‖² = μ²A + C`` with ``A = ‖g_{w₀}‖²``,
    ``C = ‖g_u‖²``.
    """
    both = affine_minimizer(g, np.stack([np.zeros_like(linear), linear], axis=1), support)
    if both is None:
        return None
    w0, shifted = both.T  # shifted = w₀ + u
    u = shifted - w0
    g_s = g[np.ix_(support, support)]
    a, c = float(w0 @ g_s @ w0), float(u @ g_s @ u)
    if a <= 0.0 or c >= radius**2:
        return None
    return math.sqrt((radius**2 - c) / a)


def _next_mu(candidate: float | None, lo: float, hi: float) -> float:
    """``candidate`` if it lies strictly inside the bracket, else a bisection step in log."""
    if candidate is not None and lo < candidate < hi:
        return candidate
    if hi == math.inf:
        return 16.0 * lo
    if lo == 0.0:
        return hi / 16.0
    return math.sqrt(lo * hi)


class CAGrad(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`CAGradWeighting` (same arguments)."""

    def __init__(self, c: float, norm_eps: float = 1e-4) -> None:
        super().__init__(CAGradWeighting(c, norm_eps))

    def __str__(self) -> str:
        return f"CAGrad{number_str(self.weighting.c)}"
