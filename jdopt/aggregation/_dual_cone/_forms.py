"""The two forms of the projection problem the solver poses, and the facts its plan reads.

For weights ``v`` with ``v ≥ u``, Jacobi scaling (``G`` to a unit diagonal ``S``) gives the
primal, a box-constrained problem in ``w = √diag(G) ⊙ v``; its dual is
``min_{λ≥0} ½λᵀS⁻¹λ − ℓᵀλ`` (``w = S⁻¹λ``), Jacobi-scaled again (``λ = unit ⊙ μ``). Both are
:class:`~._problem.BoxQP`; a form maps weights to its variable and back.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor

from ._options import SolverOptions as Options
from ._plan import Facts
from ._problem import BoxQP


class Scaled(NamedTuple):
    """``√diag(G)``, ``G`` scaled to a unit diagonal, its Cholesky factor, the factor's
    smallest pivot (NaN where the factorisation fails: singular, indefinite, non-finite) and
    the plan's facts."""

    root: Tensor
    matrix: Tensor
    factor: Tensor
    pivot: float
    facts: Facts


def factorize(
    gramian: Tensor, options: Options, checks: tuple[Tensor, ...] = ()
) -> tuple[Scaled, list[float]]:
    """Jacobi scaling, Cholesky and the plan's facts of ``gramian``, and the values of the
    0-d ``checks``: everything the host needs, read from the device at once.

    ``1 / pivot²`` bounds the condition number from below (each squared pivot is at least the
    smallest eigenvalue, and the largest is at least 1). The primal's ADMM penalty is the mean
    squared pivot, between the small and the large eigenvalues: near the best ``ρ`` measured
    (0.5 for random Jacobians, 0.9 for per-sample Gramians).
    """
    root = gramian.diagonal().sqrt()
    scaled = gramian / root.unsqueeze(1) / root.unsqueeze(0)  # unit diagonal
    factor, info = torch.linalg.cholesky_ex(scaled)
    pivots = factor.diagonal()
    values = [pivots.amin(), info, torch.linalg.vector_norm(scaled), pivots.square().mean()]
    dtype = gramian.dtype
    read = torch.stack([v if v.dtype == dtype else v.to(dtype) for v in (*values, *checks)])
    read = read.tolist()
    (pivot, failed, norm, mean_square), checked = read[:4], read[4:]
    # LAPACK reports NaN through `info`; the pivot check also catches a factor with NaN (where
    # G has a non-finite entry or a non-positive diagonal one) from a backend that does not.
    pivot = pivot if failed == 0 and pivot > 0 else math.nan
    m = gramian.shape[0]
    fraction = math.inf if pivot**-2 > options.dual_max_condition else m / norm**2
    penalty = math.nan  # read by ADMM only
    if options.admm_sizes[0] <= m <= options.admm_sizes[1]:
        low, high = options.penalty_range
        penalty = min(max(mean_square, low), high)
    facts = Facts(m, fraction, penalty, gramian.dtype, gramian.device)
    return Scaled(root, scaled, factor, pivot, facts), checked


class Forms:
    """The primal and (built on first use) the dual of the problems ``(G, u)``, for any rows
    ``u`` (``bounds``), and the maps between weights and their variables."""

    def __init__(self, scaled: Scaled, options: Options) -> None:
        self.scaled, self.options = scaled, options

    @cached_property
    def dual(self) -> tuple[Tensor, Tensor]:
        """The dual's matrix ``H``, and ``unit``: ``w = (μ @ H) / unit``."""
        inverse = torch.cholesky_inverse(self.scaled.factor)  # symmetric, exactly
        unit = inverse.diagonal().rsqrt()
        return inverse * torch.outer(unit, unit), unit

    def problem(self, form: str, bounds: Tensor, diagonal: bool = False) -> BoxQP:
        """The problems of ``form`` for the rows ``bounds`` (``diagonal``: see BoxQP)."""
        lower = bounds * self.scaled.root
        if form == "primal":
            zeros = torch.zeros_like(lower)
            return BoxQP(self.scaled.matrix, zeros, lower, diagonal, homogeneous=True)
        matrix, unit = self.dual
        return BoxQP(matrix, lower * unit, torch.zeros_like(lower), diagonal)

    def start(self, form: str, weights: Tensor | None, bounds: Tensor) -> Tensor | None:
        """The variable of ``form`` at ``weights``; for the dual, the multipliers ``λ = Sw`` on
        the coordinates where ``w`` sits on its bound, 0 elsewhere."""
        if weights is None or form == "primal":
            return None if weights is None else weights * self.scaled.root
        w, lower = weights * self.scaled.root, bounds * self.scaled.root
        on_bound = w <= lower + self.options.tolerance * lower.abs().amax(dim=1, keepdim=True)
        return (w @ self.scaled.matrix).clamp_min(0) / self.dual[1] * on_bound

    def weights(self, form: str, x: Tensor, bounds: Tensor) -> Tensor:
        """The weights ``v ≥ u`` at the variable ``x`` of ``form``."""
        if form == "dual":
            matrix, unit = self.dual
            x = x @ matrix / unit
        return torch.maximum(x / self.scaled.root, bounds)
