"""The reference backend of the dual-cone projection: one QP per row through ``qpsolvers``.

Slow (a numpy round trip and one solver call per row) but independent of jdopt's own solver,
which the tests compare against it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

REFERENCE_SOLVERS = ("quadprog", "osqp")

# quadprog solves G directly when its smallest eigenvalue is above _DEFINITE times its largest,
# and the equivalent problem on a factor of G otherwise, without the eigenvalues below _RANK
# times the largest (a change of G below its rounding errors).
_DEFINITE, _RANK = 1e-12, 1e-14
# A smallest eigenvalue below -_INDEFINITE times the largest is more than rounding (float32
# Gramians of rank-deficient Jacobians reach about -1e-6; the native solver's largest ridge is
# 1e-4 of the diagonal). Above, negative eigenvalues count as zero.
_INDEFINITE = 1e-4
_NO_SOLUTION = "qpsolvers ({solver}) found no solution to a dual-cone projection."

# OSQP's defaults leave the weights tens of percent off; these make it match quadprog.
_OSQP_OPTIONS = {
    "eps_abs": 1e-10,
    "eps_rel": 1e-10,
    "max_iter": 200_000,
    "polishing": True,
    "verbose": False,
    "raise_error": True,
}


def project_weights_reference(preferences: Tensor, gramian: Tensor, solver: str) -> Tensor:
    """Solves ``argmin_v vᵀGv s.t. v ≥ u`` for each row ``u`` of ``preferences``, one at a time.

    quadprog needs a positive definite ``G``: when ``G`` is singular (or nearly: its smallest
    eigenvalue below ``_DEFINITE`` times its largest), it solves the equivalent projection
    of ``Rᵀu`` onto the cone ``{y : R y ≥ 0}`` instead, where ``G = R Rᵀ`` (``R`` from the
    eigendecomposition, without the eigenvalues below ``_RANK`` times the largest): its
    Hessian is the identity, and ``v = u + λ`` with ``λ`` its multipliers. The weights of a
    singular ``G`` are not unique; ``Jᵀv`` is.

    Args:
        preferences: ``[k, m]`` lower bounds ``u``.
        gramian: ``[m, m]`` positive semi-definite matrix ``G``.
        solver: ``"quadprog"`` or ``"osqp"``.

    Returns:
        ``[k, m]`` solutions, on the device and dtype of ``gramian``.
    """
    import qpsolvers

    if solver not in qpsolvers.available_solvers:
        raise ImportError(
            f"The {solver!r} backend of qpsolvers is not installed. Install it with "
            f'`pip install {solver}` (or `pip install "jdopt[test]"` for quadprog), or use '
            'solver="native".'
        )
    matrix = gramian.detach().cpu().double().numpy()
    matrix = (matrix + matrix.T) / 2
    bounds = preferences.detach().cpu().double().numpy()
    if solver == "quadprog" and len(matrix) > 0:
        eigenvalues, eigenvectors = np.linalg.eigh(matrix)
        if eigenvalues[0] < -_INDEFINITE * abs(eigenvalues[-1]):
            raise ValueError(
                "`gramian` should be positive semi-definite (a Gramian J Jᵀ). Found a smallest "
                f"eigenvalue of {eigenvalues[0]:.1e} for a largest of {eigenvalues[-1]:.1e}."
            )
        if not eigenvalues[0] > _DEFINITE * eigenvalues[-1]:
            solutions = _project_semidefinite(eigenvalues, eigenvectors, bounds)
            return torch.as_tensor(solutions, dtype=gramian.dtype, device=gramian.device)
    m = matrix.shape[0]
    constraint = -np.eye(m)
    options = {}
    if solver == "osqp":  # OSQP works on sparse matrices; giving them avoids a warning.
        from scipy import sparse

        matrix, constraint, options = (
            sparse.csc_matrix(matrix),
            sparse.csc_matrix(constraint),
            _OSQP_OPTIONS,
        )
    solutions = []
    for u in bounds:
        v = qpsolvers.solve_qp(matrix, np.zeros(m), G=constraint, h=-u, solver=solver, **options)
        if v is None:
            raise RuntimeError(_NO_SOLUTION.format(solver=solver))
        solutions.append(np.maximum(v, u))
    return torch.as_tensor(np.stack(solutions), dtype=gramian.dtype, device=gramian.device)


def _project_semidefinite(
    eigenvalues: np.ndarray, eigenvectors: np.ndarray, bounds: np.ndarray
) -> np.ndarray:
    """quadprog on ``min ½‖y − Rᵀu‖² s.t. R y ≥ 0`` for each ``u``: ``v = u + λ``."""
    import qpsolvers

    kept = eigenvalues > _RANK * max(eigenvalues[-1], 0.0)
    factor = eigenvectors[:, kept] * np.sqrt(eigenvalues[kept])  # G ≈ R Rᵀ, [m, r]
    m, r = factor.shape
    if r == 0:  # G = 0: every v ≥ u is optimal; the smallest
        return np.maximum(bounds, 0.0)
    solutions = []
    for u in bounds:
        problem = qpsolvers.Problem(np.eye(r), -(factor.T @ u), G=-factor, h=np.zeros(m))
        solution = qpsolvers.solve_problem(problem, solver="quadprog")
        if not solution.found:
            raise RuntimeError(_NO_SOLUTION.format(solver="quadprog"))
        solutions.append(u + np.maximum(solution.z, 0.0))
    return np.stack(solutions)
