from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting


class IMTLGWeighting(Weighting):
    """Impartial Multi-Task Learning, gradient part (IMTL-G).

    Finds the combination of the rows whose projections onto every unit row ``gᵢ/‖gᵢ‖`` are
    equal: ``Gw ∝ √diag(G)``, i.e. ``w ∝ G⁺ √diag(G)``, normalised to sum to 1. When the
    normalising sum vanishes (e.g. a zero Jacobian) the weights are zero.

    From Liu et al., *Towards Impartial Multi-task Learning*, ICLR 2021
    (https://openreview.net/forum?id=IMPnRXEWpvr).

    Properties: weighted, deterministic, permutation-invariant; not non-conflicting, not
    linear under scaling.
    """

    stateless = True

    def forward(self, gramian: Tensor, /) -> Tensor:
        g = gramian.to(torch.float64)
        # √0 has an infinite derivative: a zero row gets the zero one, as vector_norm gives.
        diagonal = g.diagonal().clamp(min=0.0)
        norms = torch.where(diagonal > 0, diagonal, 1.0).sqrt() * (diagonal > 0)
        v = torch.linalg.pinv(g, hermitian=True) @ norms
        total = v.sum()
        if total.abs() <= 1e-12 * v.abs().sum().clamp(min=torch.finfo(g.dtype).tiny):
            return torch.zeros_like(gramian[0])
        return (v / total).to(gramian.dtype)


class IMTLG(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`IMTLGWeighting`."""

    def __init__(self) -> None:
        super().__init__(IMTLGWeighting())
