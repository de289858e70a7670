from __future__ import annotations

from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_length, check_vector
from ._repr import vector_str


class ConstantWeighting(Weighting):
    """Returns the same user-given weights whatever the Gramian.

    Properties: linear under scaling, weighted, deterministic; not non-conflicting.

    Args:
        weights: ``[m]`` finite weights, one per objective. Empty weights are valid: they
            weight the ``[0, 0]`` Gramian of no objectives (as in TorchJD).
    """

    stateless = True

    accepts_no_objectives = True

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        weights = check_vector(weights, "weights", allow_empty=True)
        self.register_buffer("weights", weights.detach().clone())

    def forward(self, gramian: Tensor, /) -> Tensor:
        check_length(self.weights, "weights", gramian.shape[0])
        return self.weights.to(dtype=gramian.dtype, device=gramian.device)


class Constant(GramianWeightedAggregator):
    """Combines the rows of the Jacobian with fixed weights. See :class:`ConstantWeighting`.

    With empty weights, it maps a Jacobian with no rows (``[0, n]``) to a zero update.
    """

    def __init__(self, weights: Tensor) -> None:
        super().__init__(ConstantWeighting(weights))

    def __str__(self) -> str:
        return f"Constant({vector_str(self.weighting.weights)})"
