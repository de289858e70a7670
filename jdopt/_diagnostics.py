"""What JDOptimizer reports about each step, computed cheaply from the Gramian."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepInfo:
    """Diagnostics of the last ``backward``, read from ``JDOptimizer.last_step``.

    All fields are tensors on the parameters' device (reading them may synchronise it).

    Attributes:
        engine: ``"autojac"``, ``"autojac-mtl"`` or ``"autogram"``.
        weights: the weights given to the losses, in the losses' shape; ``None`` for
            aggregators that are not weighted (ConFIG, GradDrop, TrimmedMean).
        gramian: ``[m, m]`` inner products of the gradients of the (flattened) losses.
        cosine_similarities: ``[m, m]`` pairwise cosine similarities (0 for a zero gradient).
        conflict_fraction: fraction of the ``m(m-1)/2`` pairs of gradients with a negative
            inner product (0-d tensor; 0 when ``m = 1``).
        skipped: whether the Jacobian had inf/NaN entries (with a GradScaler: the scaler
            skips the step and lowers its scale).
    """

    engine: str
    weights: Tensor | None
    gramian: Tensor
    cosine_similarities: Tensor
    conflict_fraction: Tensor
    skipped: bool = False


def step_info(engine: str, gramian: Tensor, weights: Tensor | None, skipped: bool) -> StepInfo:
    gramian = gramian.detach()
    norms = gramian.diagonal().clamp(min=0.0).sqrt()
    outer = norms.unsqueeze(0) * norms.unsqueeze(1)
    cosines = torch.where(outer > 0, gramian / outer.where(outer > 0, 1.0), 0.0)
    m = gramian.shape[0]
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool, device=gramian.device), diagonal=1)
    pairs = max(m * (m - 1) // 2, 1)
    conflicts = ((gramian < 0) & upper).sum() / pairs
    weights = None if weights is None else weights.detach()
    return StepInfo(engine, weights, gramian, cosines, conflicts, skipped)
