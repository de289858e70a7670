"""The reference backend of the dual-cone projection: one QP per row through ``qpsolvers``.

Slow (a numpy round trip and one solver call per row) but independent of jdopt's own solver,
which the tests compare against it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

REFERENCE_SOLVERS = ("quadprog", "osqp")

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

    Args:
        preferences: ``[k, m]`` lower bounds ``u``.
        gramian: ``[m, m]`` positive definite matrix ``G``.
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
    for u in preferences.detach().cpu().double().numpy():
        v = qpsolvers.solve_qp(matrix, np.zeros(m), G=constraint, h=-u, solver=solver, **options)
        if v is None:
            raise RuntimeError(f"qpsolvers ({solver}) found no solution to a dual-cone projection.")
        solutions.append(np.maximum(v, u))
    return torch.as_tensor(np.stack(solutions), dtype=gramian.dtype, device=gramian.device)
