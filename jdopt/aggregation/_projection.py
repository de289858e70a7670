"""What UPGrad and DualProj share: preferences, normalisation, ridge and solver choice."""

from __future__ import annotations

from torch import Tensor

from .._linalg import normalize, regularize
from ._bases import Weighting
from ._checks import check_choice, check_nonnegative
from ._dual_cone import SOLVERS
from ._pref import check_pref_vector, pref_weights


class ProjectionWeighting(Weighting):
    """Base of the weightings that project onto the dual cone ``{x : J x ≥ 0}``.

    Not differentiable: the projections are solved outside autograd.
    """

    differentiable = False

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        solver: str = "native",
    ) -> None:
        super().__init__()
        check_nonnegative(norm_eps, "norm_eps")
        check_nonnegative(reg_eps, "reg_eps")
        check_choice(solver, "solver", SOLVERS)
        self.register_buffer("pref_vector", check_pref_vector(pref_vector))
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.solver = solver

    def prepare(self, gramian: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the preference weights ``[m]`` and the normalised, regularised Gramian."""
        weights = pref_weights(self.pref_vector, gramian)
        return weights, regularize(normalize(gramian, self.norm_eps), self.reg_eps)
