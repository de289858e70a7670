from __future__ import annotations

from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting


class SumWeighting(Weighting):
    """Weight ``1`` for every objective: the gradient of the summed loss.

    Properties: linear under scaling, weighted, deterministic; not non-conflicting.
    """

    stateless = True

    def forward(self, gramian: Tensor, /) -> Tensor:
        return gramian.new_ones(gramian.shape[0])


class Sum(GramianWeightedAggregator):
    """Sums the rows of the Jacobian. See :class:`SumWeighting`."""

    def __init__(self) -> None:
        super().__init__(SumWeighting())
