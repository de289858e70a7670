"""Exact finishes: reduced solves on a solution's free set, and proximal-point refinement."""

from __future__ import annotations

import torch
from torch import Tensor

from ._linear import solve_direct
from ._options import SolverOptions as Options
from ._problem import BoxQP


def polish(qp: BoxQP, x: Tensor, options: Options) -> tuple[Tensor, Tensor]:
    """``x`` with each row's reduced system on its free set (``x > ℓ``) solved exactly, by one
    padded batched Cholesky, in the rows where that keeps ``x`` feasible.

    Iterative solves (ADMM, CG) leave a gradient of their tolerance on the free coordinates,
    which the complementarity ``g ⊙ (x − ℓ)`` of the final check multiplies by the slack: with
    very negative bounds (mixed-sign preferences), that product misses the check although the
    active set, and so the exact solution, is found.
    """
    exact = solve_direct(qp.padded, x > qp.lower, qp.linear, qp.lower)
    feasible = (exact >= qp.lower - options.tolerance * qp.scale()).all(dim=1, keepdim=True)
    x = torch.where(feasible, torch.maximum(exact, qp.lower), x)
    return x, qp.residual(x, x @ qp.matrix) <= options.tolerance


def refine(qp: BoxQP, x: Tensor, options: Options, *, ridge: Tensor) -> tuple[Tensor, Tensor]:
    """``options.refinements`` proximal-point steps from ``x``, the solution of ``qp``, towards
    the solution of the same problem without the ridge ``diag(ridge) [m]`` that ``qp.matrix``
    holds.

    A step solves ``min ½ yᵀ(M − diag(ridge))y − bᵀy + ½ (y − x)ᵀ diag(ridge) (y − x)`` on the
    free set of ``x`` (``x > ℓ``): the matrix of the reduced system is the well-conditioned
    ``M``, and ``x`` moves towards the solution without the ridge, by a factor
    ``ridge / (λ + ridge)`` of its distance along each eigenvalue ``λ`` of the reduced matrix,
    and not at all along its null space. A row keeps its last step that stays a solution of its
    step's problem (feasible, non-negative multipliers on the bounds); the others keep ``x``.
    Every row is reported solved: the final check, on the problem without the ridge, decides.
    """
    slack = options.tolerance * qp.scale()
    for _ in range(options.refinements):
        free = x > qp.lower
        linear = qp.linear + ridge * x
        step = solve_direct(qp.padded, free, linear, qp.lower)
        feasible = step >= qp.lower - slack
        step = torch.maximum(step, qp.lower)
        exact = torch.where(free, feasible, step @ qp.matrix - linear >= -slack)
        x = torch.where(exact.all(dim=1, keepdim=True), step, x)
    return x, torch.ones(len(x), dtype=torch.bool, device=x.device)
