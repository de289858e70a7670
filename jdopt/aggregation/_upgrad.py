from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator
from ._dual_cone import SolverOptions
from ._projection import ProjectionWeighting, without_default_options
from ._repr import vector_suffix


class UPGradWeighting(ProjectionWeighting):
    """Unconflicting Projection of Gradients (UPGrad), the Gramian form.

    Each row ``gᵢ`` of the Jacobian, scaled by its preference ``pᵢ``, is projected onto the dual
    cone ``{x : J x ≥ 0}``; the update is the sum of the projections. In weight space, the
    projection of ``Jᵀu`` is ``Jᵀv*`` with ``v* = argmin_v vᵀGv s.t. v ≥ u``, so the weights are
    ``Σᵢ v*(pᵢ eᵢ)``: m small quadratic programs that share ``G``, solved together by a batched
    solver (see ``solver``).

    From Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024
    (https://arxiv.org/abs/2406.16232).

    Properties: non-conflicting (``J·update ≥ 0`` up to the ridge ``reg_eps``), linear under
    scaling, weighted, deterministic, permutation-invariant with uniform preferences.

    Args:
        pref_vector: ``[m]`` preference weights ``p``. ``None`` (default) means ``1/m`` each.
        norm_eps: the Gramian is divided by its trace before solving; a trace below
            ``norm_eps`` (default ``1e-4``) counts as zero and gives back ``p``.
        reg_eps: ridge added to the normalised Gramian to make it positive definite (default
            ``1e-4``). Larger values make the solve easier and the update less exactly
            non-conflicting. ``0`` solves the problem on the Gramian itself, singular or not
            (rank-deficient Jacobians, zero or duplicated rows): the update is then exactly
            non-conflicting (to the solver's tolerance), at 3–17 times the cost of the default
            (measured at m = 16–100, rank m/5), more on large degenerate Gramians, as with any
            ridge below ``1e-5``.
        solver: ``"native"`` (default) — jdopt's batched torch solver, on the Gramian's device;
            ``"quadprog"`` or ``"osqp"`` — one QP per row through ``qpsolvers`` on the CPU, the
            slow reference.
        options: the native solver's tunables (:class:`SolverOptions`). ``None`` (default):
            the defaults for the Gramian's device — on a GPU, a first attempt of fixed length
            that reads the device once, then the final check.
    """

    def forward(self, gramian: Tensor, /) -> Tensor:
        weights, regularized = self.prepare(gramian)
        return self.project(torch.diag(weights), regularized).sum(dim=0)


class UPGrad(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`UPGradWeighting` (same arguments)."""

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        solver: str = "native",
        options: SolverOptions | None = None,
    ) -> None:
        super().__init__(UPGradWeighting(pref_vector, norm_eps, reg_eps, solver, options))

    def constructor_arguments(self) -> dict[str, Any]:
        return without_default_options(super().constructor_arguments())

    def __str__(self) -> str:
        return f"UPGrad{vector_suffix(self.weighting.pref_vector)}"
