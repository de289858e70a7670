"""Exact minimisation of a convex quadratic over the probability simplex (MGDA, CAGrad).

``min_w f(w) = ½ wᵀQw + bᵀw  s.t.  w ≥ 0, Σw = 1``, with ``Q`` positive semi-definite (singular
included) and ``b = Q a`` for some ``a`` (MGDA: ``b = 0``; CAGrad: ``b = G·mean`` with
``Q ∝ G``). On the simplex ``f`` is then, up to a constant, ``½‖Σᵢ wᵢ qᵢ‖²`` for points ``qᵢ``
whose inner products are ``Q`` shifted by ``b``: the problem is the minimum-norm point of a
polytope, and Wolfe's algorithm solves it exactly in finitely many steps.

Wolfe's algorithm keeps a *corral*: a support ``S`` of affinely independent points and positive
weights ``λ`` that minimise ``f`` on the affine hull of ``S``. A major cycle adds the vertex with
the smallest gradient entry while the Frank–Wolfe gap ``λᵀ∇f − min ∇f`` exceeds the tolerance;
minor cycles then move towards the affine minimiser of the new support and drop the points
whose weight reaches zero. Affine independence keeps every linear system nonsingular even when
``Q`` is singular (e.g. a rank-deficient Jacobian whose hull contains 0), where a plain active-set
method on ``Q`` stalls.

From Wolfe, *Finding the nearest point in a polytope*, Mathematical Programming 11, 1976.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class Corral:
    """A support (indices into the vertices) and the positive weights on it."""

    support: np.ndarray
    weights: np.ndarray

    def dense(self, m: int) -> np.ndarray:
        w = np.zeros(m)
        w[self.support] = self.weights
        return w


def solve_simplex_qp(
    q: np.ndarray,
    b: np.ndarray,
    *,
    tol: float,
    max_iters: int,
    start: Corral | None = None,
) -> Corral:
    """Minimises ``½wᵀQw + bᵀw`` over the simplex (float64 arrays).

    Args:
        q: ``[m, m]`` symmetric positive semi-definite.
        b: ``[m]`` linear term, in the range of ``q``.
        tol: optimality tolerance on the Frank–Wolfe gap, relative to
            ``max diag(Q) + max |b|``.
        max_iters: cap on major cycles (each adds one vertex); a ``RuntimeWarning`` is raised
            when it is reached. Wolfe's algorithm needs few: about the size of the support.
        start: a corral to start from (e.g. the solution of a nearby problem). Its support must
            be affinely independent, which any corral returned by this function is.

    Returns:
        The optimal corral; ``corral.dense(m)`` gives the weights ``[m]``.
    """
    m = len(b)
    scale = float(np.abs(np.diagonal(q)).max() + np.abs(b).max())
    if scale == 0.0:  # every point of the simplex is optimal: the uniform one is symmetric
        return Corral(np.arange(m), np.full(m, 1.0 / m))
    q, b = q / scale, b / scale  # the same optimum, and well-scaled linear systems
    corral = _first_corral(q, b) if start is None else _reduce(q, b, start)
    for _ in range(max_iters):
        gradient = q[:, corral.support] @ corral.weights + b
        j = int(np.argmin(gradient))
        if corral.weights @ gradient[corral.support] - gradient[j] <= tol:
            return corral
        grown = _reduce(q, b, _with(corral, j))
        if j not in grown.support:  # rounding: j lies in the support's affine hull
            return grown
        corral = grown
    warnings.warn(
        f"The simplex QP solver stopped after max_iters={max_iters} major cycles without "
        "reaching optimality; the weights may be inexact. Increase `max_iters`.",
        RuntimeWarning,
        stacklevel=3,
    )
    return corral


def affine_minimizer(q: np.ndarray, b: np.ndarray, support: np.ndarray) -> np.ndarray | None:
    """``argmin ½αᵀQ_Sα + b_Sᵀα  s.t.  Σα = 1`` on ``support``; ``None`` when the support is
    (numerically) affinely dependent, which makes the bordered system singular. ``b`` may be
    ``[m, c]``: ``c`` linear terms at once, one solve, the minimisers as columns."""
    k = len(support)
    kkt = np.ones((k + 1, k + 1))
    kkt[:k, :k] = q[np.ix_(support, support)]
    kkt[k, k] = 0.0
    rhs = np.concatenate([-b[support], np.ones((1, *b.shape[1:]))])
    try:
        solution = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        return None
    return solution[:k] if np.isfinite(solution).all() else None


def _first_corral(q: np.ndarray, b: np.ndarray) -> Corral:
    """The best vertex."""
    best = int(np.argmin(np.diagonal(q) / 2 + b))
    return Corral(np.array([best]), np.ones(1))


def _with(corral: Corral, j: int) -> Corral:
    return Corral(np.append(corral.support, j), np.append(corral.weights, 0.0))


def _reduce(q: np.ndarray, b: np.ndarray, corral: Corral) -> Corral:
    """Wolfe's minor cycles: from feasible weights on a support, the corral it leads to."""
    support, weights = corral.support, corral.weights
    while True:
        alpha = affine_minimizer(q, b, support)
        if alpha is None:  # the last point added is in the hull of the others: drop it
            support, weights = support[:-1], weights[:-1]
            return Corral(support, weights / weights.sum())
        if (alpha >= 0).all():
            return Corral(support[alpha > 0], alpha[alpha > 0])
        # Move towards alpha until the first weight reaches zero; drop the zeros.
        falling = alpha < 0
        ratios = weights[falling] / (weights[falling] - alpha[falling])
        theta = float(ratios.min())
        weights = weights + theta * (alpha - weights)
        keep = weights > 0
        keep[np.flatnonzero(falling)[ratios == theta]] = False
        support, weights = support[keep], weights[keep]
        weights = weights / weights.sum()
