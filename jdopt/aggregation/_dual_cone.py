"""Projection onto the dual cone ``{x : J x ≥ 0}`` in weight space (placeholder dispatch)."""

from __future__ import annotations

from torch import Tensor

from ._qpsolvers import REFERENCE_SOLVERS, project_weights_reference

SOLVERS = ("native", *REFERENCE_SOLVERS)


def project_weights(preferences: Tensor, gramian: Tensor, *, solver: str = "native") -> Tensor:
    backend = "quadprog" if solver == "native" else solver
    return project_weights_reference(preferences, gramian, backend)
