"""An exact solver for small quadratic programs on the probability simplex.

``min_w ½ wᵀQw + bᵀw  s.t.  w ≥ 0, Σw = 1`` by a primal active-set method: keep a support
``S``, solve the equality-constrained problem on it, step back to feasibility when a weight would
turn negative, and add the index with the most negative multiplier until none is left. It
terminates in finitely many steps and returns the exact optimum (up to rounding), unlike
Frank–Wolfe, whose iterates only approach it. Used by MGDA and CAGrad.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def solve_simplex_qp(
    q: Tensor, b: Tensor, *, tol: float, max_iters: int, initial: Tensor | None = None
) -> Tensor:
    """Solves ``min ½wᵀQw + bᵀw`` over the simplex, in float64 on the CPU.

    Args:
        q: ``[m, m]`` symmetric positive semi-definite; a ridge of ``1e-12·max(diag)`` is added
            so that ties between equivalent weightings resolve to the smallest weights.
        b: ``[m]`` linear term.
        tol: optimality tolerance on the multipliers, relative to ``max |diag(Q)| + max |b|``.
        max_iters: cap on active-set changes; a warning is raised when it is reached.
        initial: optional feasible starting point ``[m]`` (its support is reused).

    Returns:
        ``[m]`` the optimal weights, float64 on the CPU.
    """
    q = q.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    m = q.shape[0]
    scale = float(q.diagonal().abs().max() + b.abs().max())
    if scale == 0.0:
        return torch.full((m,), 1.0 / m, dtype=torch.float64)
    # Scaling the objective leaves the optimum unchanged and keeps the KKT systems well scaled.
    q, b = q / scale, b / scale
    q = q + 1e-12 * float(q.diagonal().max().clamp(min=0.0)) * torch.eye(m, dtype=torch.float64)
    w = _start(q, b) if initial is None else initial.detach().to("cpu", torch.float64).clone()
    support = w > 0
    for _ in range(max_iters):
        target, multiplier = _solve_on_support(q, b, support)
        if (target[support] >= 0).all():
            w = target
            gradient = q @ w + b
            reduced = torch.where(support, 0.0, gradient - multiplier)
            j = int(reduced.argmin())
            if reduced[j] >= -tol:
                return w
            support[j] = True
        else:
            w = _step_to_boundary(w, target, support)
            support &= w > 0
    warnings.warn(
        f"The simplex QP solver stopped after max_iters={max_iters} active-set changes without "
        "reaching optimality; the weights may be inexact. Increase `max_iters`.",
        RuntimeWarning,
        stacklevel=3,
    )
    return w


def _start(q: Tensor, b: Tensor) -> Tensor:
    """The best vertex of the simplex."""
    w = torch.zeros_like(b)
    w[int((q.diagonal() / 2 + b).argmin())] = 1.0
    return w


def _solve_on_support(q: Tensor, b: Tensor, support: Tensor) -> tuple[Tensor, float]:
    """Minimises on ``{w : w_j = 0 off the support, Σw = 1}``; returns ``w`` and ``λ``."""
    index = support.nonzero().squeeze(1)
    k = index.numel()
    kkt = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    kkt[:k, :k] = q[index][:, index]
    kkt[:k, k] = -1.0
    kkt[k, :k] = 1.0
    rhs = torch.cat([-b[index], torch.ones(1, dtype=torch.float64)])
    solution = torch.linalg.solve(kkt, rhs)
    w = torch.zeros_like(b)
    w[index] = solution[:k]
    return w, float(solution[k])


def _step_to_boundary(w: Tensor, target: Tensor, support: Tensor) -> Tensor:
    """Moves from ``w`` towards ``target`` until the first weight reaches zero."""
    direction = target - w
    blocking = support & (direction < 0)
    ratios = torch.where(blocking, w / -direction.where(blocking, -1.0), torch.inf)
    step = float(ratios.min().clamp(max=1.0))
    w = w + step * direction
    w[blocking & (ratios <= step)] = 0.0
    return w.clamp(min=0.0)
