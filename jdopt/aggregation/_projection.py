"""What UPGrad and DualProj share: preferences, normalisation, ridge and solver choice."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._linalg import normalize, regularize
from ._bases import Weighting
from ._checks import check_choice, check_nonnegative
from ._dual_cone import SOLVERS, SolverOptions, project_weights
from ._pref import check_pref_vector, pref_weights


class ProjectionWeighting(Weighting):
    """Base of the weightings that project onto the dual cone ``{x : J x ≥ 0}``.

    Not differentiable: the projections are solved outside autograd.
    """

    stateless = True

    differentiable = False

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        solver: str = "native",
        options: SolverOptions | None = None,
    ) -> None:
        super().__init__()
        check_nonnegative(norm_eps, "norm_eps")
        check_nonnegative(reg_eps, "reg_eps")
        check_choice(solver, "solver", SOLVERS)
        self.register_buffer("pref_vector", check_pref_vector(pref_vector))
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.solver = solver
        self.options = check_options(options)

    def constructor_arguments(self) -> dict[str, Any]:
        return without_default_options(super().constructor_arguments())

    def project(self, preferences: Tensor, gramian: Tensor) -> Tensor:
        """The projections of the rows ``preferences [k, m]`` (see :func:`project_weights`)."""
        return project_weights(preferences, gramian, solver=self.solver, options=self.options)

    def prepare(self, gramian: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the preference weights ``[m]`` and the normalised, regularised Gramian."""
        weights = pref_weights(self.pref_vector, gramian)
        return weights, regularize(normalize(gramian, self.norm_eps), self.reg_eps)


def check_options(options: object) -> SolverOptions | None:
    if options is not None and not isinstance(options, SolverOptions):
        raise TypeError(
            "`options` should be None (the defaults for the Gramian's device) or a "
            f"jdopt.aggregation.SolverOptions. Found {type(options).__name__}."
        )
    return options


def without_default_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments without ``options=None``: the repr stays TorchJD's."""
    if arguments.get("options", False) is None:
        del arguments["options"]
    return arguments
