from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_int


class KrumWeighting(Weighting):
    """Krum and Multi-Krum: average the rows closest to their neighbours.

    Each row is scored by the sum of its squared distances to its ``m − f − 2`` nearest other
    rows (``f`` = ``n_byzantine``); the ``n_selected`` rows with the lowest scores get weight
    ``1/n_selected``, the others 0. Distances come from the Gramian:
    ``‖gᵢ − gⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ``.

    From Blanchard et al., *Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent*, NeurIPS 2017 (https://papers.nips.cc/paper/6617).

    Properties: weighted, deterministic, permutation-invariant (up to ties); not
    non-conflicting, not linear under scaling.

    Args:
        n_byzantine: the number ``f`` of rows that may be adversarial (``m ≥ f + 3`` needed).
        n_selected: how many rows to average (default ``1``: Krum; more: Multi-Krum).
    """

    stateless = True

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        super().__init__()
        check_int(n_byzantine, "n_byzantine", minimum=0)
        check_int(n_selected, "n_selected", minimum=1)
        self.n_byzantine = n_byzantine
        self.n_selected = n_selected

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        self._check_size(m)
        diagonal = gramian.diagonal()
        distances = (diagonal.unsqueeze(0) + diagonal.unsqueeze(1) - 2 * gramian).clamp(min=0.0)
        distances = distances + torch.diag(torch.full_like(diagonal, torch.inf))
        nearest = distances.topk(m - self.n_byzantine - 2, dim=1, largest=False).values
        selected = nearest.sum(dim=1).topk(self.n_selected, largest=False).indices
        weights = torch.zeros_like(diagonal)
        weights[selected] = 1.0 / self.n_selected
        return weights

    def _check_size(self, m: int) -> None:
        if m < self.n_byzantine + 3:
            raise ValueError(
                f"Krum needs at least n_byzantine + 3 = {self.n_byzantine + 3} rows. Found "
                f"m={m}. Lower `n_byzantine` or give more objectives."
            )
        if m < self.n_selected:
            raise ValueError(
                f"Krum cannot select n_selected={self.n_selected} rows out of m={m}. Lower "
                "`n_selected`."
            )


class Krum(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`KrumWeighting` (same arguments)."""

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        super().__init__(KrumWeighting(n_byzantine, n_selected))

    def __str__(self) -> str:
        return f"Krum{self.weighting.n_byzantine}-{self.weighting.n_selected}"
