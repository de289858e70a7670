"""The problems the solver poses, and their KKT conditions."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

NOT_DEFINITE = (
    "A principal submatrix of the Gramian is not numerically positive definite, so the "
    "dual-cone projection cannot be solved exactly. Regularise the Gramian more (a larger "
    "`reg_eps`), or use solver='quadprog'."
)


class NotDefinite(RuntimeError):
    """A reduced system that an exact solve needs is not numerically positive definite."""

    def __init__(self) -> None:
        super().__init__(NOT_DEFINITE)


@dataclass(frozen=True)
class BoxQP:
    """``k`` problems ``min ½ xᵀMx − bᵀx s.t. x ≥ ℓ`` sharing ``M``.

    KKT conditions: ``x ≥ ℓ``, ``g = Mx − b ≥ 0``, ``(x − ℓ) ⊙ g = 0``.

    Attributes:
        matrix: ``[m, m]`` symmetric positive definite ``M``.
        linear: ``[k, m]`` linear terms ``b``.
        lower: ``[k, m]`` lower bounds ``ℓ``.
        diagonal: whether ``ℓ`` and ``b`` are ``[m, m]`` with nonzero entries on their
            diagonals only, as UPGrad's are (products with them then scale rows).
        homogeneous: whether ``b = 0``, as in the primal form (steps need no shift).
    """

    matrix: Tensor
    linear: Tensor
    lower: Tensor
    diagonal: bool = False
    homogeneous: bool = False

    def scale(self) -> Tensor:
        """``[k, 1]`` the size of each problem's data, to which tolerances are relative.

        The positive parts of ``ℓ`` and ``b`` only: they set the size of the solution (for
        ``b = 0``, ``‖x*‖∞ ≥ max(ℓ)``), while very negative bounds, which hardly ever hold, would
        make the tolerances too loose.
        """
        return torch.maximum(self.lower.amax(1, keepdim=True), self.linear.amax(1, keepdim=True))

    @cached_property
    def padded(self) -> Tensor:
        """``[[M, 0], [0, I]]`` ``[2m, 2m]``, from which exact reduced solves gather."""
        matrix = self.matrix
        identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        return torch.block_diag(matrix, identity)

    def rows(self, index: Tensor) -> BoxQP:
        """The problems of the given rows."""
        linear, lower = self.linear[index], self.lower[index]
        return BoxQP(self.matrix, linear, lower, homogeneous=self.homogeneous)

    def to(self, dtype: torch.dtype) -> BoxQP:
        if dtype == self.matrix.dtype:
            return self
        matrix, linear, lower = self.matrix.to(dtype), self.linear.to(dtype), self.lower.to(dtype)
        return BoxQP(matrix, linear, lower, self.diagonal, self.homogeneous)

    def residual(self, x: Tensor, product: Tensor) -> Tensor:
        """``[k]`` each row's KKT residual (:func:`violation`) in units of its scale, at ``x``
        with ``product = x @ M``; infinite in non-finite rows."""
        residual = violation(x - self.lower, product - self.linear) / self.scale().squeeze(1)
        return torch.where(residual.isnan(), torch.inf, residual)


def violation(distance: Tensor, gradient: Tensor) -> Tensor:
    """``[k]`` the KKT residual of box problems, ``max |min(x − ℓ, g)|`` per row, from
    ``distance = x − ℓ`` and ``g``: zero exactly at the solution, where ``x ≥ ℓ``, ``g ≥ 0`` and
    one of them is zero, coordinate by coordinate."""
    return torch.minimum(distance, gradient).abs_().amax(dim=1)


def kkt_residual(weights: Tensor, preferences: Tensor, gramian: Tensor) -> Tensor:
    """Returns the relative KKT residual of each row's solution, ``[k]``.

    The KKT conditions of ``argmin_v vᵀGv s.t. v ≥ u`` are ``v ≥ u``, ``Gv ≥ 0`` and
    ``(Gv) ⊙ (v − u) = 0``; the residual is the largest violation, relative to ``‖v‖∞`` and
    ``max diag(G)``. The native solver guarantees at most ``KKT_TOLERANCE`` or raises.
    """
    tiny = torch.finfo(weights.dtype).tiny
    size = weights.abs().amax(dim=1).clamp_min_(tiny)
    product = weights @ gramian
    difference = weights - preferences
    # Each violation is min(·, 0) divided by a negative scale. Clamped: an all-zero row
    # (preferences ≤ 0) has no violation, not 0/0.
    scale = (gramian.diagonal().amax() * size).clamp_min_(tiny)
    primal = difference.amin(dim=1).clamp_max_(0).div_(-size)
    dual = product.amin(dim=1).clamp_max_(0).div_(-scale)
    gap = (product * difference).abs_().amax(dim=1).div_((scale * size).clamp_min_(tiny))
    return torch.maximum(torch.maximum(primal, dual), gap)
