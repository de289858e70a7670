from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._generator import GeneratorMixin


class PCGradWeighting(GeneratorMixin, Weighting):
    """Projecting Conflicting Gradients (PCGrad), in weight space.

    For each row ``gᵢ``, visit the other rows in a random order and, whenever the current
    ``gᵢ'`` conflicts with ``gⱼ`` (negative inner product), remove its component along ``gⱼ``;
    the update is ``Σᵢ gᵢ'``. Every ``gᵢ'`` is a combination ``Σₖ Wᵢₖ gₖ`` whose inner products
    come from the Gramian, so the weights are ``Σᵢ Wᵢ``. All rows are processed at once (one
    pass over the visiting positions), each with its own random order.

    From Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020
    (https://arxiv.org/abs/2001.06782).

    Properties: weighted, linear under scaling (for a given draw); not non-conflicting, not
    deterministic (except for ``m ≤ 2``).

    Args:
        generator: the ``torch.Generator`` that draws the visiting orders. ``None`` uses
            PyTorch's global generator. Pass one to make runs reproducible.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        device = self.draw_device(gramian.device)
        # float32 whatever the default dtype: the same generator gives the same orders.
        draw = torch.rand(m, m, generator=self.generator, device=device, dtype=torch.float32)
        orders = draw.argsort(dim=1)
        orders = orders.to(gramian.device)
        rows = torch.arange(m, device=gramian.device)
        weights = torch.eye(m, dtype=gramian.dtype, device=gramian.device)
        diagonal = gramian.diagonal()
        for position in range(m):
            j = orders[:, position]
            inner = (weights * gramian[j]).sum(dim=1)
            conflict = (inner < 0) & (j != rows) & (diagonal[j] > 0)
            step = torch.where(conflict, inner / diagonal[j].where(conflict, 1.0), 0.0)
            # Out of place: autograd differentiates the weights through every step.
            weights = weights.index_put((rows, j), -step, accumulate=True)
        return weights.sum(dim=0)


class PCGrad(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`PCGradWeighting` (same arguments)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__(PCGradWeighting(generator=generator))
