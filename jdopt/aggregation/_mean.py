from __future__ import annotations

from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting


class MeanWeighting(Weighting):
    """Weights ``1/m`` for every objective: the gradient of the mean loss.

    Properties: linear under scaling, weighted, deterministic; not non-conflicting.
    """

    stateless = True

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        return gramian.new_full((m,), 1.0 / m)


class Mean(GramianWeightedAggregator):
    """Averages the rows of the Jacobian. See :class:`MeanWeighting`."""

    def __init__(self) -> None:
        super().__init__(MeanWeighting())
