from __future__ import annotations

from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_length, check_vector


class ConstantWeighting(Weighting):
    """Returns the same user-given weights whatever the Gramian.

    Properties: linear under scaling, weighted, deterministic; not non-conflicting.

    Args:
        weights: ``[m]`` finite weights, one per objective.
    """

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", check_vector(weights, "weights").detach().clone())

    def forward(self, gramian: Tensor, /) -> Tensor:
        check_length(self.weights, "weights", gramian.shape[0])
        return self.weights.to(dtype=gramian.dtype, device=gramian.device)

    def extra_repr(self) -> str:
        return f"weights={self.weights.tolist()}"


class Constant(GramianWeightedAggregator):
    """Combines the rows of the Jacobian with fixed weights. See :class:`ConstantWeighting`."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__(ConstantWeighting(weights))
