from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._generator import GeneratorMixin


class RandomWeighting(GeneratorMixin, Weighting):
    """Random weights: the softmax of a standard normal draw, new at every call.

    Random Loss Weighting (RLW) from Lin et al., *Reasonable Effectiveness of Random Weighting:
    A Litmus Test for Multi-Task Learning*, TMLR 2022 (https://arxiv.org/abs/2111.10603).

    Properties: weighted, linear under scaling (for a given draw); not non-conflicting, not
    deterministic.

    Args:
        generator: the ``torch.Generator`` to draw from (on the Gramian's device). ``None``
            uses PyTorch's global generator. Pass one to make runs reproducible.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        device = self.draw_device(gramian.device)
        draw = torch.randn(m, generator=self.generator, device=device, dtype=gramian.dtype)
        return torch.softmax(draw.to(gramian.device), dim=0)


class Random(GramianWeightedAggregator):
    """Combines the rows of the Jacobian with random weights. See :class:`RandomWeighting`."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__(RandomWeighting(generator=generator))
