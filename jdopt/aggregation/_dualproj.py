from __future__ import annotations

from typing import Any

from torch import Tensor

from ._bases import GramianWeightedAggregator
from ._dual_cone import SolverOptions
from ._projection import ProjectionWeighting, without_default_options
from ._repr import vector_suffix


class DualProjWeighting(ProjectionWeighting):
    """DualProj: projects the preference-weighted combination of the rows onto the dual cone.

    The update is the projection of ``Jᵀp`` onto ``{x : J x ≥ 0}``, i.e. the weights are
    ``argmin_v vᵀGv s.t. v ≥ p`` — the projection step of Gradient Episodic Memory.

    From Lopez-Paz & Ranzato, *Gradient Episodic Memory for Continual Learning*, NeurIPS 2017
    (https://arxiv.org/abs/1706.08840).

    Properties: non-conflicting (up to the ridge ``reg_eps``), weighted, deterministic,
    permutation-invariant with uniform preferences; not linear under scaling.

    Args:
        pref_vector: ``[m]`` preference weights ``p``. ``None`` (default) means ``1/m`` each.
        norm_eps: trace below which the Gramian counts as zero (default ``1e-4``); see
            :class:`UPGradWeighting`.
        reg_eps: ridge added to the normalised Gramian (default ``1e-4``; ``0`` allowed, see
            :class:`UPGradWeighting`).
        solver: ``"native"`` (default), ``"quadprog"`` or ``"osqp"``; see
            :class:`UPGradWeighting`.
        options: the native solver's tunables; see :class:`UPGradWeighting`.
    """

    def forward(self, gramian: Tensor, /) -> Tensor:
        weights, regularized = self.prepare(gramian)
        return self.project(weights.unsqueeze(0), regularized)[0]


class DualProj(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`DualProjWeighting` (same arguments)."""

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        solver: str = "native",
        options: SolverOptions | None = None,
    ) -> None:
        super().__init__(DualProjWeighting(pref_vector, norm_eps, reg_eps, solver, options))

    def constructor_arguments(self) -> dict[str, Any]:
        return without_default_options(super().constructor_arguments())

    def __str__(self) -> str:
        return f"DualProj{vector_suffix(self.weighting.pref_vector)}"
